"""Bad studies are reported and skipped; a killed batch resumes; outputs and tables are right."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from _infer_utils import (
    BUNDLE,
    TINY_FILTERS,
    EncodedRegions,
    midpoint_thresholds,
    sphere_study,
    tiny_checkpoint,
    write_encoded_dataset,
)

from tumorseg.cli import main
from tumorseg.conventions import REGIONS
from tumorseg.data.synthetic import generate_dataset, orientation_affine, write_case
from tumorseg.inference import OutputError, Predictor
from tumorseg.inference import writer as writer_module
from tumorseg.transforms import labels_to_regions

HERE = Path(__file__).resolve().parent


def _predictor(**kwargs: Any) -> Predictor:
    network = kwargs.pop("network", None) or EncodedRegions()
    return Predictor.from_bundle(
        BUNDLE, network=network, roi_size=(32, 32, 32), device="cpu", **kwargs
    )


def _mask(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# --------------------------------------------------------------------------- bad studies


def _save_like(reference: Path, data: np.ndarray, path: Path) -> None:
    ref: Any = nib.load(str(reference))
    nib.save(nib.Nifti1Image(data, ref.affine), path)


def _break_studies(root: Path) -> dict[str, tuple[str, str]]:
    """Damage cases 1-7 in different ways; returns case id -> (file suffix, reason part)."""
    case = {i: (root / f"SYN2021_{i:03d}", f"SYN2021_{i:03d}") for i in range(8)}

    folder, cid = case[1]
    (folder / f"{cid}_t1ce.nii.gz").unlink()
    folder, cid = case[2]
    _save_like(
        folder / f"{cid}_t2.nii.gz", np.ones((30, 32, 30), np.int16), folder / f"{cid}_t2.nii.gz"
    )
    folder, cid = case[3]
    flair = folder / f"{cid}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])  # a cut-off download
    folder, cid = case[4]
    t1 = folder / f"{cid}_t1.nii.gz"
    data = np.asanyarray(nib.load(str(t1)).dataobj).astype(np.float32)
    data[10:12, 10:12, 10:12] = np.nan
    _save_like(t1, data, t1)
    folder, cid = case[5]
    for path in folder.glob("*.nii.gz"):
        _save_like(path, np.zeros(nib.load(str(path)).shape, np.int16), path)
    folder, cid = case[6]
    t2 = folder / f"{cid}_t2.nii.gz"
    _save_like(t2, np.zeros(nib.load(str(t2)).shape, np.int16), t2)
    folder, cid = case[7]
    (folder / f"{cid}_flair.nii").write_bytes(b"")  # a second file claiming to be FLAIR
    return {
        "SYN2021_001": ("SYN2021_001_t1ce.nii.gz", "missing t1ce image"),
        "SYN2021_002": ("SYN2021_002_t2.nii.gz", "shape (30, 32, 30) differs from flair"),
        "SYN2021_003": ("SYN2021_003_flair.nii.gz", "cannot read the voxels"),
        "SYN2021_004": ("SYN2021_004_t1.nii.gz", "8 NaN or infinite voxel(s)"),
        "SYN2021_005": ("SYN2021_005_flair.nii.gz", "empty brain"),
        "SYN2021_006": ("SYN2021_006_t2.nii.gz", "empty image"),
        "SYN2021_007": ("SYN2021_007_flair.nii", "2 files match 'flair'"),
    }


def test_bad_studies_are_reported_and_the_batch_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "in"
    generate_dataset(root, num_cases=1, num_unlabelled=8, shape=(32, 32, 30), seed=3)
    expected = _break_studies(root)
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(root), "--output", str(out)]
    args += ["--checkpoint", str(ckpt), "--override", f"filters={TINY_FILTERS}"]
    args += ["--roi-size", "32", "32", "32", "--no-progress"]

    assert main(args) == 1
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        "SYN2021_000.nii.gz",
        "SYN2021_008.nii.gz",
    ]
    failures = {r["case_id"]: r for r in _rows(out / "failures.csv")}
    assert failures.keys() == expected.keys()
    for case_id, (file, reason) in expected.items():
        assert failures[case_id]["file"].endswith(file), failures[case_id]
        assert reason in failures[case_id]["reason"], failures[case_id]
    err = capsys.readouterr().err
    assert "FAILED SYN2021_003:" in err and "7 studies failed" in err
    assert [r["case_id"] for r in _rows(out / "volumes.csv")] == ["SYN2021_000", "SYN2021_008"]

    # A rerun skips the good studies and tries the bad ones again.
    assert main(args) == 1
    assert {r["case_id"] for r in _rows(out / "failures.csv")} == expected.keys()
    assert "0 written, 2 skipped" in capsys.readouterr().out


# --------------------------------------------------------------------------- kill and resume


def test_killed_batch_leaves_no_partial_file_and_the_rerun_finishes_it(tmp_path: Path) -> None:
    labels = write_encoded_dataset(tmp_path / "in", 5, seed=20)
    out = tmp_path / "out"
    script = (
        "from _infer_utils import BUNDLE, EncodedRegions\n"
        "from tumorseg.inference import Predictor\n"
        "p = Predictor.from_bundle(\n"
        "    BUNDLE, network=EncodedRegions(delay=0.6), roi_size=(32, 32, 32)\n"
        ")\n"
        f"p.predict_folder({str(tmp_path / 'in')!r}, {str(out)!r}, progress=False)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.nii.gz")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no mask written within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no cleanup handler can run
    finally:
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()

    done = sorted(p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz"))
    assert 1 <= len(done) < len(labels), done
    for case_id in done:  # every mask present is complete and right
        assert np.array_equal(_mask(out / f"{case_id}.nii.gz"), labels[case_id])
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert visible == {f"{c}.nii.gz" for c in done} | {"volumes.csv", "failures.csv"}
    # What a kill during a write would leave: a hidden temporary, never a truncated mask.
    (out / ".ENC_004.nii.gz.x1y2z3.tmp").write_bytes(b"\x1f\x8b truncated")
    mtimes = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in done}

    predictor = _predictor()
    report = predictor.predict_folder(tmp_path / "in", out, progress=False)
    missing = sorted(set(labels) - set(done))
    assert report.skipped == done and report.written == missing and report.ok
    assert predictor.network.calls == len(missing)  # one window per 32^3 study
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in done} == mtimes
    assert _hidden(out) == []
    for case_id, drawn in labels.items():
        assert np.array_equal(_mask(out / f"{case_id}.nii.gz"), drawn)
    assert [r["case_id"] for r in _rows(out / "volumes.csv")] == sorted(labels)


def test_interrupted_batch_resumes_with_only_the_missing_studies(tmp_path: Path) -> None:
    labels = write_encoded_dataset(tmp_path / "in", 5, seed=30)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _predictor(network=EncodedRegions(interrupt_at=3)).predict_folder(
            tmp_path / "in", out, progress=False
        )
    done = sorted(labels)[:2]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in done]
    assert _hidden(out) == []
    assert [r["case_id"] for r in _rows(out / "volumes.csv")] == done

    predictor = _predictor()
    report = predictor.predict_folder(tmp_path / "in", out, progress=False)
    assert report.skipped == done and report.written == sorted(labels)[2:]
    assert predictor.network.calls == 3

    again = _predictor().predict_folder(tmp_path / "in", out, overwrite=True, progress=False)
    assert again.written == sorted(labels) and again.skipped == []


def test_a_failed_write_is_reported_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = write_encoded_dataset(tmp_path / "in", 3, seed=40)
    real_replace = os.replace

    def full_disk(src: Any, dst: Any) -> None:
        if "ENC_001" in str(dst):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(writer_module.os, "replace", full_disk)
    out = tmp_path / "out"
    # A full disk stops the batch (every later study would fail the same way), naming the
    # output that failed; what was written stays (issue 18).
    with pytest.raises(OutputError, match="No space left on device") as err:
        _predictor().predict_folder(tmp_path / "in", out, progress=False)
    report = err.value.report
    assert report is not None and report.written == ["ENC_000"]
    assert [(f.case_id, f.file) for f in report.failed] == [
        ("ENC_001", str(out / "ENC_001.nii.gz"))
    ]
    assert "No space left" in report.failed[0].reason
    assert not (out / "ENC_001.nii.gz").exists() and _hidden(out) == []
    assert len(labels) == 3


# --------------------------------------------------------------------------- pipelining


def test_next_study_loads_while_the_current_one_is_in_the_network(tmp_path: Path) -> None:
    write_encoded_dataset(tmp_path / "in", 3, seed=50)
    second_loading = threading.Event()
    predictor = _predictor(network=EncodedRegions(wait_for=second_loading))
    load_case = predictor.load_case

    def spy(images: Any, *, case_id: str | None = None) -> Any:
        if case_id == "ENC_001":
            second_loading.set()
        return load_case(images, case_id=case_id)

    predictor.load_case = spy  # type: ignore[method-assign]
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", progress=False)
    assert report.ok and len(report.written) == 3
    # The first study's network call saw the second study being loaded.
    assert predictor.network.waited is True


# --------------------------------------------------------------------------- outputs


def test_probabilities_volumes_and_tta(tmp_path: Path) -> None:
    shape, spacing = (36, 26, 17), (1.0, 1.4, 2.2)
    affine = orientation_affine("LAS", shape=shape, spacing=spacing)
    images, drawn, _ = sphere_study(shape, affine, offset_mm=(4.0, -3.0, 2.0), seed=4)
    write_case(tmp_path / "in", "VOL", images, None, affine=affine)
    predictor = _predictor()
    predictor.network.thresholds = midpoint_thresholds(images)
    out = tmp_path / "out"
    report = predictor.predict_folder(tmp_path / "in", out, save_probabilities=True, progress=False)
    assert report.ok

    mask = _mask(out / "VOL.nii.gz")
    regions = labels_to_regions(mask, "brats2021")
    with np.load(out / "probabilities" / "VOL.npz") as npz:
        probs, saved_affine, names = npz["probabilities"], npz["affine"], npz["regions"]
    assert probs.dtype == np.float16 and probs.shape == (3, *shape)
    assert list(names) == list(REGIONS)
    np.testing.assert_allclose(saved_affine, affine, atol=1e-6)
    decided = np.abs(probs.astype(np.float32) - 0.5) > 1e-3
    assert np.array_equal((probs > 0.5)[decided], regions.astype(bool)[decided])

    voxel_ml = 1.0 * 1.4 * 2.2 / 1000
    (row,) = _rows(out / "volumes.csv")
    assert row["case_id"] == "VOL"
    for c, region in enumerate(REGIONS):
        assert float(row[f"{region}_ml"]) == pytest.approx(regions[c].sum() * voxel_ml, abs=1e-4)
        assert regions[c].sum() > 0

    # Mirror TTA: 8 passes; a pointwise network gives the same answer only if every flip is
    # undone on the output.
    files = [tmp_path / "in" / "VOL" / f"VOL_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]
    tta = _predictor(tta=True)
    tta.network.thresholds = predictor.network.thresholds
    result = tta.predict_case(files)
    assert tta.network.calls == 8
    assert np.array_equal(result.label, mask)


def test_custom_file_naming(tmp_path: Path) -> None:
    labels = write_encoded_dataset(tmp_path / "in", 1, seed=60)
    ((case_id, drawn),) = labels.items()
    folder = tmp_path / "in" / case_id
    for old, new in (("_flair", "_FLAIR"), ("_t1ce", "_T1CE"), ("_t1", "_T1"), ("_t2", "_T2")):
        (folder / f"{case_id}{old}.nii.gz").rename(folder / f"{case_id}{new}.nii.gz")
    report = _predictor().predict_folder(
        tmp_path / "in",
        tmp_path / "out",
        modality_suffixes="flair=_FLAIR,t1=_T1,t1ce=_T1CE,t2=_T2",
        progress=False,
    )
    assert report.written == [case_id]
    assert np.array_equal(_mask(tmp_path / "out" / f"{case_id}.nii.gz"), drawn)
    with pytest.raises(ValueError, match="got 'flair'"):
        _predictor().predict_folder(tmp_path / "in", tmp_path / "o2", modality_suffixes="flair")
