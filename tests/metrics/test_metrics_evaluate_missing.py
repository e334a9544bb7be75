"""Issue 18: `tumorseg evaluate` does not pass off missing predictions as a result.

An empty (or wrong) prediction folder used to exit 0 with every Dice 0. Now no matching
prediction at all is an error (exit 2), and some missing ones exit 1 after writing the
reports, unless ``--allow-missing`` says that scoring them Dice 0 (the BraTS rule) is meant.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorseg.cli import main
from tumorseg.metrics.evaluate import EvaluationError, evaluate_folder

SHAPE = (24, 24, 12)


def _save(path: Path, shift: int = 0) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[6 + shift : 14 + shift, 6:14, 3:9] = 2
    label[8 + shift : 12 + shift, 8:12, 4:8] = 4
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))


@pytest.fixture
def refs(tmp_path: Path) -> Path:
    for cid in ("case_a", "case_b"):
        _save(tmp_path / "ref" / f"{cid}.nii.gz")
    return tmp_path / "ref"


def _args(pred: Path, ref: Path, out: Path) -> list[str]:
    return ["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(out)] + [
        "--num-workers",
        "0",
        "--no-progress",
        "--no-lesionwise",
    ]


def test_empty_prediction_folder_is_an_error(
    refs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "pred"
    empty.mkdir()
    assert main(_args(empty, refs, tmp_path / "o")) == 2  # the old code: 0, every Dice 0
    err = capsys.readouterr().err
    assert str(empty) in err and "no prediction" in err and "--allow-missing" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(EvaluationError, match="no prediction"):
        evaluate_folder(empty, refs, num_workers=0, progress=False)
    # Predictions named after other cases (the wrong folder) are the same mistake.
    _save(empty / "other_case.nii.gz")
    assert main(_args(empty, refs, tmp_path / "o")) == 2
    # Asked for: every case scored as missing, exit 0.
    assert main([*_args(empty, refs, tmp_path / "o"), "--allow-missing"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["missing_predictions"] == ["case_a", "case_b"]


def test_some_missing_predictions_exit_1_after_the_reports(
    refs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred = tmp_path / "pred"
    _save(pred / "case_a.nii.gz", shift=1)
    out = tmp_path / "o"
    assert main(_args(pred, refs, out)) == 1
    captured = capsys.readouterr()
    assert "case_b" in captured.err and "--allow-missing" in captured.err
    assert (out / "per_case.csv").is_file()  # the reports are still written
    assert main([*_args(pred, refs, out), "--allow-missing"]) == 0
    assert "missing predictions (1" in capsys.readouterr().out
