"""Output files: the input's header kept exactly, atomic replacement, stale temporaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tumorseg.inference import writer
from tumorseg.inference.writer import (
    atomic_write_bytes,
    label_image,
    remove_stale_temporaries,
    write_label_atomic,
)


def _oblique(theta: float, shift: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    affine = np.diag([-0.9, -1.1, 2.5, 1.0])
    affine[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ affine[:3, :3]
    affine[:3, 3] = [90.0, 120.0 + shift, -70.0]
    return affine


def test_mask_header_is_the_inputs_but_for_type(tmp_path: Path) -> None:
    # An input whose qform and sform differ (both coded), scaled and windowed, 4D.
    qform, sform = _oblique(0.2, 0.0), _oblique(0.2, 0.3)
    ref = nib.Nifti1Image(np.ones((6, 5, 4, 4), np.int16), sform)
    ref.set_qform(qform, code=2)
    ref.set_sform(sform, code=1)
    ref.header.set_slope_inter(2.0, 10.0)
    ref.header["cal_max"] = 900
    ref.header.set_intent("vector")
    ref.header["descrip"] = b"scanner X"
    nib.save(ref, tmp_path / "ref.nii.gz")
    header = nib.load(str(tmp_path / "ref.nii.gz")).header

    label = np.zeros((6, 5, 4), np.uint8)
    label[1, 2, 3] = 4
    path = write_label_atomic(tmp_path / "mask.nii.gz", label_image(label, header))
    out: Any = nib.load(str(path))
    assert out.get_data_dtype() == np.uint8 and out.shape == (6, 5, 4)
    assert np.array_equal(np.asanyarray(out.dataobj), label)  # not rescaled by 2x + 10
    np.testing.assert_array_equal(out.header.get_qform(), header.get_qform())
    np.testing.assert_array_equal(out.header.get_sform(), header.get_sform())
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (2, 1)
    assert out.header["descrip"] == header["descrip"]
    assert out.header.get_intent()[0] == "none" and float(out.header["cal_max"]) == 0.0
    np.testing.assert_array_equal(out.header.get_zooms()[:3], header.get_zooms()[:3])

    with pytest.raises(ValueError, match=r"label shape \(6, 5\) differs from the input's"):
        label_image(np.zeros((6, 5), np.uint8), header)


def test_same_mask_gives_the_same_bytes(tmp_path: Path) -> None:
    img = label_image(np.eye(4, dtype=np.uint8)[..., None].repeat(3, -1), None, np.eye(4))
    a = write_label_atomic(tmp_path / "a.nii.gz", img).read_bytes()
    b = write_label_atomic(tmp_path / "b.nii.gz", img).read_bytes()
    assert a == b


def test_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "case.nii.gz"
    atomic_write_bytes(target, b"old complete file")

    def crash(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(writer.os, "fsync", crash)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]


def test_only_own_stale_temporaries_are_removed(tmp_path: Path) -> None:
    names = [".A.nii.gz.k3j2.tmp", ".volumes.csv.zz.tmp", "keep.tmp", ".keep", "A.nii.gz"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".A.nii.gz.k3j2.tmp", ".volumes.csv.zz.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", "A.nii.gz", "keep.tmp"]
    assert remove_stale_temporaries(tmp_path / "absent") == []
