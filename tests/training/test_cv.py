"""`tumorseg cv`: folds trained through monai.bundle as MLflow child runs of one parent,
killed mid-way and resumed, out-of-fold probabilities; the fold command (plain and torchrun)
and the refusals that come before anything is trained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tumorseg.cli import main
from tumorseg.data.manifest import build_manifest, write_manifest
from tumorseg.data.synthetic import generate_dataset
from tumorseg.io import is_temporary
from tumorseg.training.cv import (
    CVError,
    bundle_overrides,
    fold_checkpoints,
    run_cv,
    training_command,
)

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_segmentation"
#: 1 epoch of a tiny network on 32^3 volumes, on the CPU.
TINY_ARGS = [
    "--epochs", "1", "--roi_size", "[32,32,32]", "--filters", "[4,8,16,32,32]",
    "--batch_size", "1", "--num_samples", "1", "--num_workers", "0", "--sw_batch_size", "2",
    "--cache_rate", "0", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cv")
    generate_dataset(root / "data", num_cases=4, shape=(32, 32, 32), seed=11, layout="brats2021")
    manifest = write_manifest(
        build_manifest(root / "data", num_folds=2, seed=0, name="cv"), root / "data" / "m.json"
    )
    return {"root": root, "data": root / "data", "manifest": manifest}


def _cv_cmd(dataset: dict[str, Path], work: Path) -> list[str]:
    return [
        sys.executable, "-m", "tumorseg", "cv", "--bundle", str(BUNDLE),
        "--datalist", str(dataset["manifest"]), "--output", str(work / "cv"),
        "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--device", "cpu", "--", *TINY_ARGS,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_cv_killed_during_fold_1_and_rerun_ends_with_two_folds(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    import mlflow

    from tumorseg.tracking.runs import child_runs

    cv = tmp_path / "cv"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        _cv_cmd(dataset, tmp_path), cwd=tmp_path, env=_env(), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    # kill the whole process group once fold 1's training has opened its MLflow run
    deadline = time.monotonic() + 1500
    started = cv / "fold1" / "models" / "mlflow_run.json"
    while not started.is_file():
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "fold 1 did not start"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    log.close()
    assert (cv / "fold0" / "done.json").is_file()
    assert not (cv / "fold1" / "done.json").exists()
    fold0_model = (cv / "fold0" / "models" / "model.pt").read_bytes()

    second = subprocess.run(
        _cv_cmd(dataset, tmp_path), cwd=tmp_path, env=_env(), capture_output=True, text=True,
        timeout=1500,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "fold 0: finished before, skipped" in second.stdout
    assert "folds trained now [1], finished before [0]" in second.stdout
    # exactly two trained folds; fold 0 was not retrained
    assert fold_checkpoints(cv) == [cv / f"fold{k}" / "models" / "model.pt" for k in (0, 1)]
    assert (cv / "fold0" / "models" / "model.pt").read_bytes() == fold0_model
    # one parent run and two child runs in the real store
    state = json.loads((cv / "cv.json").read_text())
    client = mlflow.MlflowClient(state["tracking_uri"])
    experiment = client.get_experiment_by_name(state["experiment_name"])
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`tumorseg.kind` = 'cross-validation'"
    )
    assert [p.info.run_id for p in parents] == [state["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["cv_folds"] == 2
    children = child_runs(client, state["parent_run_id"])
    assert len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert len(client.search_runs([experiment.experiment_id])) == 3
    # out-of-fold probabilities of every case, each from its own fold's model
    cases = {t["case_id"] for t in json.loads(dataset["manifest"].read_text())["training"]}
    assert {p.stem for p in (cv / "oof" / "probabilities").glob("*.npz")} == cases
    assert {p.name.split(".")[0] for p in (cv / "oof").glob("*.nii.gz")} == cases
    # a third run has nothing to do; the rule search runs on the out-of-fold predictions
    assert main(["postprocess", "--search", "--cv", str(cv)]) == 0
    assert (cv / "postprocess.json").is_file()
    assert (cv / "fold1" / "models" / "postprocess.json").is_file()


def test_fold_command_plain_and_under_torchrun(tmp_path: Path) -> None:
    plain = training_command(
        BUNDLE, fold=1, datalist="m.json", ckpt_dir=tmp_path / "f1", parent_run_id="P",
        tracking_uri="sqlite:///x.db", experiment_name="E", bundle_args=["--epochs", "3"],
        config_files=[BUNDLE / "configs" / "networks" / "segresnet.json"],
    )  # fmt: skip
    assert plain[1:5] == ["-m", "monai.bundle", "run", "training"]
    config = plain[plain.index("--config_file") + 1]
    assert json.loads(config) == [
        str(BUNDLE / "configs" / "train.json"),
        str(BUNDLE / "configs" / "networks" / "segresnet.json"),
    ]
    expected = {"--fold": "1", "--parent_run_id": "P", "--epochs": "3", "--experiment_name": "E"}
    expected["--ckpt_dir"] = str(tmp_path / "f1")
    for flag, value in expected.items():
        assert plain[plain.index(flag) + 1] == value
    ddp = training_command(BUNDLE, fold=0, datalist="m.json", ckpt_dir="c", nproc_per_node=2)
    assert ddp[1:3] == ["-m", "torch.distributed.run"]
    assert ddp[ddp.index("--nproc-per-node") + 1] == "2"
    assert "multi_gpu_train.json" in ddp[ddp.index("--config_file") + 1]
    assert ddp[ddp.index("--fold") + 1] == "0"


def test_bundle_overrides_parse_like_monai() -> None:
    got = bundle_overrides(
        ["--epochs", "3", "--filters=[4,8]", "--device", "cpu", "--amp", "False"]
    )
    assert got == {"epochs": 3, "filters": [4, 8], "device": "cpu", "amp": False}
    with pytest.raises(CVError, match="has no value"):
        bundle_overrides(["--epochs"])
    with pytest.raises(CVError, match="--key VALUE, got 'epochs' in the bundle overrides"):
        bundle_overrides(["epochs", "3"])


def test_refusals_before_any_training(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["cv", "--bundle", str(BUNDLE), "--datalist", str(dataset["manifest"]),
            "--output", str(tmp_path / "cv"), "--tracking-uri", uri]  # fmt: skip
    cases = [
        ([*base, "--folds", "0", "2"], "folds [0, 2] are not distinct folds"),
        ([*base, "--folds", "1", "1"], "folds [1, 1] are not distinct folds"),
        ([*base, "--", "--fold", "1"], "--fold is set by tumorseg cv"),
        ([*base, "--", "--ckpt_dir=x"], "--ckpt_dir is set by tumorseg cv"),
        ([*base, "--", "--epochs"], "--epochs in the bundle overrides has no value"),
        ([*base[:2], str(tmp_path), *base[3:]], "has no configs/train.json"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "cv").exists()
    # a folder started with other settings is not mixed with these
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "cv.json").write_text(
        json.dumps({"folds": [0, 1], "bundle": str(BUNDLE), "datalist": "other.json"})
    )
    with pytest.raises(CVError, match="was started with datalist='other.json'"):
        run_cv(BUNDLE, dataset["manifest"], tmp_path / "cv", tracking_uri=uri)
    with pytest.raises(CVError, match="no finished fold yet"):
        fold_checkpoints(tmp_path / "cv")
    with pytest.raises(CVError, match="not a cross-validation folder"):
        fold_checkpoints(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two torchrun trainings and their inference on shared CPUs
def test_cv_on_two_gloo_processes_per_fold(dataset: dict[str, Path], tmp_path: Path) -> None:
    """`tumorseg cv --nproc-per-node 2`: each fold trained by torchrun on two Gloo CPU ranks,
    one MLflow child run per fold (rank 0's), the out-of-fold maps written once, by the driver."""
    import mlflow
    import torch

    from tumorseg.tracking.runs import child_runs

    cmd = _cv_cmd(dataset, tmp_path)
    cmd[cmd.index("--"):cmd.index("--")] = ["--nproc-per-node", "2"]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=3300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "folds trained now [0, 1], finished before []" in done.stdout
    cv = tmp_path / "cv"
    for fold in (0, 1):
        models = cv / f"fold{fold}" / "models"
        # rank 0 alone writes the checkpoints and the run record
        assert sorted(p.name for p in models.iterdir() if p.is_file()) == [
            "checkpoint_latest.pt", "mlflow_run.json", "model.pt"
        ]  # fmt: skip
        latest = torch.load(models / "checkpoint_latest.pt", map_location="cpu", weights_only=False)
        assert not any(k.startswith("module.") for k in latest["network"])  # unwrapped from DDP
        # predicted once per fold, by the driver after torchrun ended
        assert done.stdout.count(f"fold {fold}: predicting 2 validation case(s)") == 1
    state = json.loads((cv / "cv.json").read_text())
    client = mlflow.MlflowClient(state["tracking_uri"])
    experiment = client.get_experiment_by_name(state["experiment_name"])
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    parent = client.get_run(state["parent_run_id"])
    assert parent.data.tags["tumorseg.kind"] == "cross-validation"
    assert parent.info.status == "FINISHED" and parent.data.metrics["cv_folds"] == 2
    children = child_runs(client, state["parent_run_id"])
    assert sorted(c.data.params["fold"] for c in children) == ["0", "1"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["world_size"] == "2"
        assert "val_mean_dice" in child.data.metrics
    cases = {t["case_id"] for t in json.loads(dataset["manifest"].read_text())["training"]}
    probabilities = sorted((cv / "oof" / "probabilities").iterdir())
    assert [p.name for p in probabilities] == sorted(f"{c}.npz" for c in cases)
    assert {p.name.split(".")[0] for p in (cv / "oof").glob("*.nii.gz")} == cases
    assert not [p for p in cv.rglob("*") if is_temporary(p)]
