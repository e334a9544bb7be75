"""The LGG bundle under DDP: per-patient scores gathered from every rank's shard of slices.

A fast check runs two Gloo ranks in this process's children (``torch.multiprocessing``) on
hand-made masks; the bundle check starts ``tumorseg launch --nproc-per-node 2`` (torchrun, two
Gloo CPU ranks) for one epoch and compares the validation per-patient Dice with a
single-process evaluation of the checkpoint it saved.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from monai.data import MetaTensor

from _bundle_utils import free_port, override_args
from tumorseg.cli import main
from tumorseg.data.synthetic_lgg import generate_kaggle_3m
from tumorseg.metrics.lgg import LGGOverlapMetric, score_patients
from tumorseg.training import SyncBuffers

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "lgg_flair_segmentation_2d"
CONFIGS = BUNDLE / "configs"
TUMORSEG = Path(sys.executable).parent / "tumorseg"
SHAPE = (32, 32, 16)
TINY: dict[str, Any] = {"channels": [4, 8, 16, 32, 64], "num_folds": 2, "val_batch_size": 8}


# ----------------------------------------------------------------------------- gather, 2 ranks


def _masks(
    seed: int = 0,
) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, dict[int, np.ndarray]]]:
    """Two patients of 5 slices: random predictions and references of 8x8."""
    rng = np.random.default_rng(seed)
    preds: dict[str, dict[int, np.ndarray]] = {}
    refs: dict[str, dict[int, np.ndarray]] = {}
    for patient in ("P_A", "P_B"):
        for index in range(1, 6):
            preds.setdefault(patient, {})[index] = rng.random((8, 8)) > 0.6
            refs.setdefault(patient, {})[index] = rng.random((8, 8)) > 0.5
    return preds, refs


def _item(patient: str, index: int, pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    image = MetaTensor(torch.zeros(3, 8, 8), meta={"filename_or_obj": f"/d/{patient}_{index}.tif"})
    as_tensor = lambda m: torch.as_tensor(m[None].astype(np.float32))  # noqa: E731
    return {"image": image, "pred": as_tensor(pred), "label": as_tensor(ref)}


def _rank(rank: int, port: int, out_dir: str) -> None:
    """One rank: its interleaved shard of slices (rank 1 repeats one, like a padding sampler)."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        preds, refs = _masks()
        flat = [(p, i) for p in sorted(preds) for i in sorted(preds[p])]
        shard = flat[rank::2] + ([flat[0]] if rank == 1 else [])
        results = {}
        for level in ("patient", "slice"):
            metric = LGGOverlapMetric(
                level=level, kind="dice", save_path=Path(out_dir) / f"{level}_rank{rank}.csv"
            )
            metric.reset()
            metric.update([_item(p, i, preds[p][i], refs[p][i]) for p, i in shard])
            results[level] = metric.compute()
        # BatchNorm statistics that differ per rank become rank 0's.
        norm = torch.nn.BatchNorm2d(2)
        norm.running_mean.fill_(float(rank + 1))
        SyncBuffers(norm)(None)
        results["running_mean"] = norm.running_mean.tolist()
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        torch.distributed.destroy_process_group()


# Two Gloo ranks, ~12 s; the rank-local metric test below stays in make test.
@pytest.mark.slow
def test_two_ranks_score_every_slice_once_and_only_rank0_writes(tmp_path: Path) -> None:
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    preds, refs = _masks()
    single = score_patients(preds, refs)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["patient"] == pytest.approx(single["patient_dice"], abs=1e-12)
        assert got["slice"] == pytest.approx(single["slice_dice"], abs=1e-12)
        assert got["running_mean"] == [1.0, 1.0]
    # Each rank alone would score only its shard: the gather made the difference.
    alone = score_patients(
        {p: {i: m for i, m in s.items() if i % 2} for p, s in preds.items()},
        {p: {i: m for i, m in s.items() if i % 2} for p, s in refs.items()},
    )
    assert alone["patient_dice"] != pytest.approx(single["patient_dice"])
    with open(tmp_path / "slice_rank0.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10  # every slice once, the repeated one included once
    assert not (tmp_path / "slice_rank1.csv").exists()
    assert not (tmp_path / "patient_rank1.csv").exists()


def test_without_a_process_group_the_metric_and_broadcast_are_local() -> None:
    preds, refs = _masks(seed=1)
    metric = LGGOverlapMetric(level="patient")
    metric.reset()
    metric.update([_item(p, i, preds[p][i], refs[p][i]) for p in preds for i in preds[p]])
    assert metric.compute() == pytest.approx(score_patients(preds, refs)["patient_dice"])
    norm = torch.nn.BatchNorm2d(1)
    norm.running_mean.fill_(3.0)
    SyncBuffers(norm)(None)
    assert norm.running_mean.tolist() == [3.0]


# ----------------------------------------------------------------------------- the DDP bundle


def test_launch_dry_run_uses_the_lgg_ddp_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["launch", "--nproc-per-node", "2", "--bundle", str(BUNDLE), "--dry-run", "--"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{CONFIGS / 'train.json'}" in out and f"{CONFIGS / 'multi_gpu_train.json'}" in out


def _overrides(work: Path, **more: Any) -> list[str]:
    values = {
        **TINY,
        "dataset_dir": str(work / "kaggle_3m"),
        "ckpt_dir": str(work / "models"),
        "cache_dir": str(work / "cache"),
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "experiment_name": "lgg-ddp-test",
        **more,
    }
    return override_args(values)


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _csv(path: Path) -> dict[str, float]:
    with open(path) as fh:
        return {row[0]: float(row[1]) for row in list(csv.reader(fh))[1:]}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the bundle on two Gloo ranks; rank 0 writes the per-patient scores."""
    work = tmp_path_factory.mktemp("lgg_ddp")
    generate_kaggle_3m(work / "kaggle_3m", num_patients=4, shape=SHAPE, seed=5)
    cmd = [str(TUMORSEG), "launch", "--nproc-per-node", "2", "--bundle", str(BUNDLE), "--"]
    cmd += _overrides(work, epochs=1, **{"validate#metric_dir": str(work / "ddp_scores")})
    (work / "launch.log").write_text(_run(cmd, work))
    return work


# The two-rank LGG run costs ~50 s; make test keeps the 3D bundle's DDP checks (tests/training).
@pytest.mark.slow
def test_ddp_run_writes_one_checkpoint_set(ddp_run: Path) -> None:
    files = sorted(p.name for p in (ddp_run / "models").iterdir() if p.is_file())
    assert files == ["checkpoint_latest.pt", "mlflow_run.json", "model.pt"]
    # Rank 0 alone wrote the gathered scores: both validation patients, every slice once.
    assert len(_csv(ddp_run / "ddp_scores" / "patient_dice.csv")) == 2
    assert len(_csv(ddp_run / "ddp_scores" / "slice_dice.csv")) == 2 * SHAPE[2]


# Uses the ~50 s two-rank LGG run above.
@pytest.mark.slow
def test_ddp_validation_dice_equals_single_process_evaluation(ddp_run: Path) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating"]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json")]
    cmd += [
        "--config_file",
        json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]),
    ]
    cmd += ["--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root", str(BUNDLE)]
    cmd += _overrides(ddp_run, num_workers=0, log_mlflow=False, output_dir=str(ddp_run / "eval"))
    _run(cmd, ddp_run)
    ddp = _csv(ddp_run / "ddp_scores" / "patient_dice.csv")
    single = _csv(ddp_run / "eval" / "patient_dice.csv")
    assert ddp.keys() == single.keys()
    for patient, dice in single.items():
        assert ddp[patient] == pytest.approx(dice, abs=1e-6), patient
    assert _csv(ddp_run / "ddp_scores" / "slice_dice.csv") == pytest.approx(
        _csv(ddp_run / "eval" / "slice_dice.csv"), abs=1e-6
    )
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{ddp_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lgg-ddp-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["val_mean_dice"] == pytest.approx(
        np.mean(list(single.values())), abs=1e-6
    )
