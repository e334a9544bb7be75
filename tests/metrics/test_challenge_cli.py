"""`tumorseg evaluate --challenge` and `tumorseg compare --challenge` from the command line."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import numpy as np
import pytest

from tumorseg.cli import main
from tumorseg.cli.evaluate import _CHALLENGES
from tumorseg.metrics.challenge import CHALLENGES

nib = pytest.importorskip("nibabel")


def _blob(et_label: int | None = None) -> np.ndarray:
    arr = np.zeros((16, 16, 16), np.uint8)
    arr[3:13, 3:13, 3:13] = 2
    arr[5:11, 5:11, 5:11] = 1
    if et_label is not None:
        arr[7:9, 7:9, 7:9] = et_label
    return arr


def _folders(tmp: Path, pred: np.ndarray, ref: np.ndarray) -> tuple[str, str]:
    for folder, data in (("pred", pred), ("ref", ref)):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp / folder / "case1.nii.gz"))
    return str(tmp / "pred"), str(tmp / "ref")


def _evaluate(pred: str, ref: str, out: Path, *extra: str) -> int:
    return main(
        [
            "evaluate",
            "--pred",
            pred,
            "--ref",
            ref,
            "-o",
            str(out),
            "--num-workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


def test_cli_challenge_list_matches_the_package_table() -> None:
    assert _CHALLENGES == CHALLENGES


def test_evaluate_challenge_writes_the_package_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shifted = np.roll(_blob(et_label=3), 1, axis=0)
    pred, ref = _folders(tmp_path, shifted, _blob(et_label=3))
    assert _evaluate(pred, ref, tmp_path / "out", "--challenge", "gli") == 0
    out = capsys.readouterr().out
    assert "--challenge gli" in out and "brats2024" in out and "panoptica" in out
    table_rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"wt", "tc", "et", "rc", "netc", "snfh"} <= table_rows
    with open(tmp_path / "out" / "per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["subject_id"] for r in rows] == ["case1"]
    for column in ("global_dsc_wt", "global_nsd_wt", "global_hd95_wt", "all_instance_tp_et"):
        assert column in rows[0]
    assert 0.0 < float(rows[0]["global_dsc_wt"]) < 1.0
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        assert [r["subject_id"] for r in csv.DictReader(fh)] == ["mean", "std", "median"]


def test_evaluate_challenge_refuses_an_undeclared_2021_mask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, ref = _folders(tmp_path, _blob(et_label=4), _blob(et_label=4))
    assert _evaluate(pred, ref, tmp_path / "out", "--challenge", "gli") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "holds label 4" in err and "--convention brats2021" in err
    assert not (tmp_path / "out").exists()
    # Declared: converted (4 -> ET) and scored.
    code = _evaluate(pred, ref, tmp_path / "out", "--challenge", "gli", "--convention", "brats2021")
    assert code == 0
    with open(tmp_path / "out" / "per_case.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["global_dsc_et"]) == 1.0 and float(row["all_instance_tp_rc"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--challenge", "gli", "--per-label"], "--per-label do(es) not apply"),
        (["--challenge", "gli", "--hd-variant", "monai"], "--hd-variant"),
        (["--pred-convention", "brats2021"], "--pred-convention applies only with --challenge"),
        (["--challenge", "gli", "--convention", "brats1999"], "unknown label convention"),
    ],
)
def test_evaluate_challenge_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    pred, ref = _folders(tmp_path, _blob(), _blob())
    assert _evaluate(pred, ref, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_challenge_is_rejected_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, ref = _folders(tmp_path, _blob(), _blob())
    with pytest.raises(SystemExit) as exc:
        _evaluate(pred, ref, tmp_path / "out", "--challenge", "brats2021")
    assert exc.value.code == 2
    assert "invalid choice: 'brats2021'" in capsys.readouterr().err


def test_evaluate_challenge_without_the_package_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def no_panoptica(name: str, *args, **kwargs):
        if name in ("brats_evaluation", "panoptica"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_panoptica)
    pred, ref = _folders(tmp_path, _blob(), _blob())
    assert _evaluate(pred, ref, tmp_path / "out", "--challenge", "mets") == 2
    err = capsys.readouterr().err
    assert "pip install 'tumorseg[brats]'" in err and "Traceback" not in err


def test_compare_challenge_sorts_and_shows_the_challenge_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("challenge")
    for name, score in (("low", 0.5), ("high", 0.8)):
        run_id = client.create_run(experiment, run_name=name).info.run_id
        metrics = [
            Metric("val_mean_lesionwise_dsc_mean", score, 0, 1),
            Metric("val_global_nsd_wt", score / 2, 0, 1),
            Metric("val_mean_dice", 1.0 - score, 0, 1),
        ]
        client.log_batch(run_id, metrics=metrics)
        client.set_terminated(run_id, "FINISHED")
    code = main(["compare", "--experiment", "challenge", "--challenge", "--tracking-uri", uri])
    assert code == 0
    out = capsys.readouterr().out
    assert "sorted by best val_mean_lesionwise_dsc_mean" in out
    assert "val_global_nsd_wt" in out and "val_mean_dice" not in out
    lines = [line for line in out.splitlines() if line.lstrip().startswith(("1 ", "2 "))]
    assert "high" in lines[0] and "low" in lines[1]
