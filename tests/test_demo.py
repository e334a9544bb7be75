"""`tumorseg demo` at toy size: synth, manifest, train, segment, score, MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumorseg.cli import main


def test_demo_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the MLflow store goes to the working directory
    code = main(["demo", "--workdir", "work", "--epochs", "2", "--num-train", "4", "--size", "32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "python -m tumorseg.bundle_run run training" in out
    assert "held-out Dice" in out and "make mlflow-ui" in out
    work = tmp_path / "work"
    assert (work / "models" / "model.pt").is_file()
    predictions = sorted(p.name for p in (work / "predictions").glob("*.nii.gz"))
    assert predictions == [f"HELDOUT_{i:03d}.nii.gz" for i in range(4)]
    assert (work / "results" / "per_case.csv").is_file()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tumorseg-demo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert {"heldout_dice_wt", "heldout_dice_tc", "heldout_dice_et", "val_mean_dice"} <= set(
        run.data.metrics
    )
