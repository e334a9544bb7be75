"""The end-to-end demo behind ``make demo``: synthesise, train, segment, score, track.

Everything runs through the same public pieces a user calls: the synthetic generator, the
manifest builder, the bundle's ``training`` workflow (``monai.bundle.run``), the predictor and
the evaluator. Only the settings differ from a real run: small volumes, a narrow network and
a short schedule, so it finishes in minutes on a laptop CPU.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoSettings", "run_demo", "training_command"]

logger = logging.getLogger(__name__)

REPO_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_segmentation"


@dataclass
class DemoSettings:
    """Knobs of the demo; defaults reach mean region Dice >= 0.8 on 2 CPU cores.

    Args:
        workdir: everything the demo writes goes here (data, models, predictions, results).
        bundle: the bundle folder to train.
        num_train: synthetic training cases (one fold of them validates).
        num_heldout: synthetic held-out cases, segmented and scored at the end.
        size: edge of the cubic synthetic volumes, in voxels (1 mm).
        epochs: training epochs.
        seed: seed of data generation and training.
        overrides: extra bundle overrides (e.g. ``{"roi_size": [48, 48, 48]}``).
    """

    workdir: Path = Path("demo")
    bundle: Path = REPO_BUNDLE
    num_train: int = 16
    num_heldout: int = 4
    size: int = 48
    epochs: int = 80
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)

    def bundle_overrides(self) -> dict[str, Any]:
        """Settings the demo passes to the bundle on top of ``train.json``."""
        w = self.workdir.resolve()
        base: dict[str, Any] = {
            "bundle_root": str(self.bundle.resolve()),
            "ckpt_dir": str(w / "models"),
            "output_dir": str(w / "eval"),
            "dataset_dir": str(w / "data" / "train"),
            "datalist": str(w / "manifest.json"),
            "fold": 0,
            "num_folds": 4,
            "epochs": self.epochs,
            # Validate at least at the last epoch, so a short run still selects model.pt.
            "val_interval": max(1, min(5, self.epochs)),
            "roi_size": [32, 32, 32],
            "filters": [8, 16, 32, 64, 128],
            "batch_size": 2,
            "num_samples": 4,
            "cache_rate": 1.0,
            "num_workers": 0,
            "learning_rate": 0.003,
            "seed": self.seed,
            "experiment_name": "tumorseg-demo",
        }
        base.update(self.overrides)
        return base


def training_command(bundle: Path, overrides: dict[str, Any]) -> list[str]:
    """The ``python -m tumorseg.bundle_run run training ...`` argument list for these overrides
    (MONAI's ``monai.bundle run`` with one-line config errors, :mod:`tumorseg.bundle_run`)."""
    cfg = bundle / "configs"
    cmd = [sys.executable, "-m", "tumorseg.bundle_run", "run", "training"]
    cmd += ["--meta_file", str(cfg / "metadata.json"), "--config_file", str(cfg / "train.json")]
    cmd += ["--logging_file", str(cfg / "logging.conf")]
    for key, value in overrides.items():
        text = str(value).replace(" ", "") if isinstance(value, list) else str(value)
        cmd += [f"--{key}", text]
    return cmd


def _shell(cmd: list[str]) -> str:
    """``cmd`` as a copy-pastable shell line, one option per line."""
    lines = [" ".join(shlex.quote(c) for c in cmd[:5])]
    lines += [f"{cmd[i]} {shlex.quote(cmd[i + 1])}" for i in range(5, len(cmd) - 1, 2)]
    return " \\\n    ".join(lines)


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(settings: DemoSettings) -> dict[str, float]:
    """Run the demo and return the held-out mean Dice per region.

    Raises:
        FileNotFoundError: when the bundle folder is missing.
    """
    from tumorseg.data.manifest import build_manifest, write_manifest
    from tumorseg.data.synthetic import generate_dataset
    from tumorseg.tracking import run_name as make_run_name

    cfg = settings.bundle / "configs"
    if not (cfg / "train.json").is_file():
        raise FileNotFoundError(f"bundle configs not found in {cfg}")
    work = settings.workdir.resolve()
    # Each demo starts from scratch: an earlier demo's checkpoint would be resumed, not retrained.
    for stale in ("models", "predictions", "results"):
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    shape = (settings.size,) * 3
    t0 = time.perf_counter()

    _say(
        f"[1/5] synthesising {settings.num_train} training + {settings.num_heldout} held-out cases"
    )
    train_dir, heldout_dir = work / "data" / "train", work / "data" / "heldout"
    generate_dataset(
        train_dir, num_cases=settings.num_train, shape=shape, seed=settings.seed, overwrite=True
    )
    generate_dataset(
        heldout_dir,
        num_cases=settings.num_heldout,
        shape=shape,
        seed=settings.seed + 10_000,
        case_prefix="HELDOUT",
        overwrite=True,
    )
    manifest = build_manifest(train_dir, num_folds=4, seed=settings.seed, name="tumorseg-demo")
    # Records dataset_dir (data/train, relative to the manifest): DATASET=demo/manifest.json
    # alone finds the cases (make finetune).
    write_manifest(manifest, work / "manifest.json")

    overrides = settings.bundle_overrides()
    run_name = make_run_name("demo", "dynunet")
    _say(
        "[2/5] training; the same run from the shell:\n"
        + _shell(training_command(settings.bundle, {**overrides, "run_name": run_name}))
    )
    _train(settings.bundle, overrides, run_name)

    _say("[3/5] segmenting the held-out folder")
    from tumorseg.inference import Predictor

    # model.pt describes itself (network filters, roi_size, pixdim): no overrides needed.
    predictor = Predictor.from_bundle(settings.bundle, checkpoint=work / "models" / "model.pt")
    pred_dir = work / "predictions"
    predictor.predict_folder(heldout_dir, pred_dir, label_convention="brats2021", overwrite=True)

    _say("[4/5] scoring against the held-out labels")
    from tumorseg.metrics.evaluate import evaluate_folder

    results = evaluate_folder(
        pred_dir,
        heldout_dir,
        convention="brats2021",
        output_dir=work / "results",
        num_workers=1,
        progress=False,
    )
    scores = _region_dice(results)
    _print_table(scores)

    _say("[5/5] logging held-out scores to MLflow")
    _log_heldout(work / "models", scores)
    _say(f"done in {time.perf_counter() - t0:.0f} s. Browse the runs with:\n    make mlflow-ui")
    return scores


def _train(bundle: Path, overrides: dict[str, Any], run_name: str) -> None:
    # A child process, exactly the command printed above: MONAI's runner configures global
    # logging from logging.conf, which must not leak into the caller's process.
    cmd = training_command(bundle, {**overrides, "run_name": run_name})
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training failed (exit code {done.returncode}); see the log above")


def _region_dice(results: Any) -> dict[str, float]:
    """Mean Dice per region from an :class:`~tumorseg.metrics.evaluate.EvaluationResult`."""
    from tumorseg.conventions import REGIONS

    scores = {r: float(results.summary[f"dice_{r}"]["mean"]) for r in REGIONS}
    scores["mean"] = sum(scores[r] for r in REGIONS) / len(REGIONS)
    return scores


def _print_table(scores: dict[str, float]) -> None:
    _say("\n  held-out Dice")
    _say("  " + "  ".join(f"{k:>6}" for k in scores))
    _say("  " + "  ".join(f"{v:6.3f}" for v in scores.values()) + "\n")


def _log_heldout(ckpt_dir: Path, scores: dict[str, float]) -> None:
    """Add the held-out scores to the MLflow run the training logged to."""
    import mlflow

    from tumorseg.tracking import read_run_record

    record = read_run_record(ckpt_dir)
    if record is None:
        logger.warning("no MLflow run recorded in %s; held-out scores not logged", ckpt_dir)
        return
    client = mlflow.MlflowClient(record["tracking_uri"])
    for key, value in scores.items():
        client.log_metric(record["run_id"], f"heldout_dice_{key.lower()}", value)
