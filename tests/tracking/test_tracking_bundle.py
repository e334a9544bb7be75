"""The bundle's real train.json logging to real MLflow stores, read back by `tumorseg compare`.

SQLite in the working folder, a real `mlflow server` on a free loopback port, a server that
is not there at start and one that dies while the training runs.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from _tracking_utils import (
    ITERATIONS_PER_EPOCH,
    Server,
    bundle_cmd,
    bundle_env,
    free_port,
    printed_metrics,
)

from _bundle_utils import CONFIGS
from tumorseg.cli import main
from tumorseg.networks import read_state_dict
from tumorseg.tracking import read_run_record
from tumorseg.training import load_checkpoint


def _train(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=bundle_env()
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _best_printed(log: str) -> dict[str, str]:
    """The best value the trainer printed for each validation metric, as printed."""
    best = {}
    for name, values in printed_metrics(log).items():
        if name.startswith("val_"):
            pick = min if "hd95" in name else max
            best[name] = pick(values, key=float)
    return best


def _compare_csv(uri: str, experiment: str, out: Path) -> dict[str, dict[str, str]]:
    argv = ["compare", "--experiment", experiment, "--tracking-uri", uri, "--csv", str(out)]
    assert main(argv) == 0
    return {row["run_id"]: row for row in csv.DictReader(out.open())}


def test_sqlite_one_run_per_training_resume_continues_it_compare_reads_it_back(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("track-sqlite")
    # An earlier training that crashed with the same name, left RUNNING: never to be reused.
    stale = client.create_run(experiment, run_name="unet-a").info.run_id
    common = {"tracking_uri": uri, "experiment_name": "track-sqlite", "run_name": "unet-a"}

    log = _train(bundle_cmd(tiny_dataset, tmp_path, epochs=1, **common), tmp_path)
    # Same checkpoint folder, more epochs: the Checkpointer resumes, and so does the run.
    log += _train(bundle_cmd(tiny_dataset, tmp_path, epochs=2, **common), tmp_path)
    assert "resumed from" in log

    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    assert len(runs) == 2 and not runs[stale].data.metrics
    record = read_run_record(tmp_path / "models")
    assert record is not None and record["run_id"] in runs and record["run_id"] != stale
    run = runs[record["run_id"]]
    assert run.info.status == "FINISHED"
    assert run.data.tags["tumorseg.resumed_at_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_hd95_et")] == [1, 2]

    printed = _best_printed(log)
    assert {"val_mean_dice", "val_dice_et", "val_hd95_et"} <= set(printed)
    row = _compare_csv(uri, "track-sqlite", tmp_path / "cmp.csv")[run.info.run_id]
    assert {m: f"{float(row[m]):.4f}" for m in printed} == printed


# ~35 s (a server plus a training); make test keeps the SQLite-store run of the same bundle.
@pytest.mark.slow
def test_server_run_has_params_metrics_artifacts_and_compare_matches_the_printed_numbers(
    tiny_dataset: Path, tmp_path: Path, server: Server
) -> None:
    cmd = bundle_cmd(
        tiny_dataset, tmp_path, epochs=2, tracking_uri=server.uri, experiment_name="track-srv"
    )
    log = _train(cmd, tmp_path)
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("track-srv")
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("dynunet-fold0-")

    params = run.data.params
    version = json.loads((CONFIGS / "metadata.json").read_text())["version"]
    assert params["bundle"] == "brats_mri_segmentation" and params["bundle_version"] == version
    assert params["roi_size"] == "[32, 32, 32]" and params["fold"] == "0"
    assert params["loss"] == "RegionDiceBCELoss" and params["device"] == "cpu"
    assert params["torch_version"] == torch.__version__
    assert len(params["git_commit"]) == 40 or params["git_commit"] == "unknown"
    assert params["train_cases"] == "4" and params["val_cases"] == "2"
    assert run.data.tags["tumorseg.kind"] == "training"
    for key in ("train_loss", "lr", "val_mean_dice", "val_dice_wt", "val_hd95_et"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key

    listing = {f.path for f in client.list_artifacts(run_id, "validation/overlays")}
    assert len(listing) == 2 and all(p.endswith(".png") for p in listing)
    local = Path(client.download_artifacts(run_id, "", str(tmp_path / "download")))
    config = json.loads((local / "config" / "config.json").read_text())
    assert config["roi_size"] == [32, 32, 32] and config["tracking_uri"] == server.uri
    cases = list(csv.DictReader((local / "validation" / "cases.csv").open()))
    assert len(cases) == 2 and {"case_id", "dice_et", "hd95_et"} <= set(cases[0])
    uploaded = read_state_dict(local / "checkpoints" / "model.pt")
    saved = read_state_dict(tmp_path / "models" / "model.pt")
    assert saved and all(torch.equal(uploaded[k], saved[k]) for k in saved)

    printed = _best_printed(log)
    row = _compare_csv(server.uri, "track-srv", tmp_path / "cmp.csv")[run_id]
    assert {m: f"{float(row[m]):.4f}" for m in printed} == printed

    # The UI the Makefile's `mlflow-ui` serves: the same server program, answering with HTML.
    import urllib.request

    with urllib.request.urlopen(server.uri + "/", timeout=10) as page:
        assert page.status == 200 and b"<html" in page.read(2000).lower()


def test_an_unreachable_server_stops_the_training_before_it_starts(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    cmd = bundle_cmd(tiny_dataset, tmp_path, epochs=1, tracking_uri=uri)
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=bundle_env()
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"MLflow tracking store '{uri}' is not reachable" in log
    assert "--tracking_uri sqlite:///mlflow.db" in log and "--log_mlflow false" in log
    assert "Epoch[1]" not in log
    assert not (tmp_path / "models" / "checkpoint_latest.pt").exists()


# ~70 s of training against a server that dies: run by `make test-slow`, not `make test`.
@pytest.mark.slow
def test_a_server_dying_mid_run_costs_a_warning_not_the_training(
    tiny_dataset: Path, tmp_path: Path, server: Server
) -> None:
    """Kills the module's server: the last test of this file (its fixture then stops a dead
    server). Sharing it saves a server start (several seconds of the test budget)."""
    epochs = 4  # epochs 2-4 run after the kill (the kill follows epoch 1's validation)
    cmd = bundle_cmd(
        tiny_dataset, tmp_path, epochs=epochs, tracking_uri=server.uri, experiment_name="dies"
    )
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=bundle_env(),
    )
    try:
        client = mlflow.MlflowClient(server.uri)
        deadline = time.monotonic() + 300
        logged = False
        while not logged and proc.poll() is None and time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("dies")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            logged = bool(runs and "val_mean_dice" in runs[0].data.metrics)
            time.sleep(0.1)
        assert logged, "no validation metric reached the server"
        server.stop()  # kill -9 the server and its workers, mid-training
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, log[-4000:]
    assert "Training continues" in log and server.uri in log
    assert "not uploaded" in log
    latest = load_checkpoint(tmp_path / "models" / "checkpoint_latest.pt")
    assert latest["trainer"]["iteration"] == epochs * ITERATIONS_PER_EPOCH
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "models" / "mlflow_artifacts" / "validation" / "cases.csv").is_file()
    assert len(printed_metrics(log)["val_mean_dice"]) == epochs  # all still in the local log
