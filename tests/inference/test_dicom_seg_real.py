"""The real study TCGA-DU-7294 as DICOM: the DICOM-SEG equals the NIfTI path's mask.

The four NIfTI files of ``../shared/data`` are written as four DICOM MR series (pydicom, one
file per slice, LPS geometry, rescale slope/intercept in three series); ``tumorseg infer``
segments them with a DynUNet checkpoint and writes a DICOM-SEG, and segments the NIfTI study
with the same checkpoint. Decoding the SEG with highdicom and resampling it onto the source
grid must give the NIfTI mask voxel for voxel, and the SEG must reference the source series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from _infer_utils import TINY_FILTERS, tiny_checkpoint

from _dicom_utils import referenced_uids, seg_labels_on_grid, write_dicom_study
from tumorseg.cli import main
from tumorseg.conventions import CHANNEL_ORDER, get_convention

pytest.importorskip("highdicom")
pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

CASE = "TCGA-DU-7294"


def test_real_study_dicom_round_trip_equals_nifti_mask(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = shared_data / "brats2020_layout"
    files = [source / CASE / f"{CASE}_{m}.nii.gz" for m in CHANNEL_ORDER]
    flair: Any = nib.load(str(files[0]))
    images = np.stack([np.asanyarray(nib.load(str(f)).dataobj) for f in files])
    uids = write_dicom_study(tmp_path / "dicom" / CASE, images, flair.affine)

    ckpt = tiny_checkpoint(tmp_path / "model.pt", seed=1)
    common = [
        "--checkpoint", str(ckpt), "--override", f"filters={TINY_FILTERS}",
        "--roi-size", "96", "96", "96", "--overlap", "0.25", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    dicom_out, nifti_out = tmp_path / "out_dicom", tmp_path / "out_nifti"
    dicom_args = ["--input", str(tmp_path / "dicom"), "--output", str(dicom_out)]
    code = main(["infer", *dicom_args, "--output-format", "dicom-seg", *common])
    assert code == 0, capsys.readouterr().err
    assert main(["infer", "--input", str(source), "--output", str(nifti_out), *common]) == 0

    want = np.asanyarray(nib.load(str(nifti_out / f"{CASE}.nii.gz")).dataobj)
    classes = get_convention("brats2021").classes
    got = seg_labels_on_grid(dicom_out / f"{CASE}.seg.dcm", flair.affine, flair.shape, classes)
    assert (want > 0).sum() > 1000, "the checkpoint should segment something"
    assert np.array_equal(got, want), f"{int((got != want).sum())} voxels differ"
    assert referenced_uids(dicom_out / f"{CASE}.seg.dcm") == {
        series: set(sops) for series, sops in uids.values()
    }
    assert (dicom_out / "volumes.csv").read_text() == (nifti_out / "volumes.csv").read_text()
