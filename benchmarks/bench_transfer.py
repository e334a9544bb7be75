"""Does transfer learning help? Pretrain on one synthetic set, fine-tune on a small shifted one.

Issue #5. Everything goes through the bundle, as a user would run it (one child
``python -m monai.bundle run`` process per step, like ``tumorseg.demo``):

1. **pretrain**: ``train.json`` on :data:`PRETRAIN_CASES` default-contrast phantoms;
2. **zero-shot**: ``train.json`` + ``evaluate.json``: the pretrained ``model.pt`` scored on the
   shifted validation cases, before any fine-tuning (epoch 0 of the fine-tuned curve);
3. **fine-tuned**: ``train.json`` + ``finetune.json`` with ``pretrained`` = step 1's
   ``model.pt``, on :data:`TARGET_CASES` shifted cases (its own defaults: learning rate 5e-4,
   encoder at 0.1 x);
4. **scratch**: ``train.json`` alone on the same shifted cases, same epochs, same seed, with the
   learning rate the demo trains from scratch with (3e-3).

The shifted set differs in contrast and in tumour statistics (:data:`SHIFT_CONTRAST`,
:data:`SHIFT_TUMOUR_SCALE`): edema fainter on FLAIR but brighter on T2, weak enhancement on
T1ce, a necrotic core bright on FLAIR, and tumours 0.6x the size. Both arms validate every other
epoch on the same :data:`TARGET_VAL` shifted cases. All runs go to one MLflow experiment
(:data:`EXPERIMENT`), and the validation curves (``val_mean_dice``, mean over WT/TC/ET) are read
back from it.

Small settings (48^3 volumes, 32^3 patches, DynUNet filters 8..128) keep it to ~10 minutes on
two CPU cores. The tracking store is a SQLite file in a temporary folder, removed afterwards,
unless ``--tracking_uri`` (or ``$TUMORSEG_BENCH_TRACKING_URI``) names one to keep.

Run alone with ``python benchmarks/bench_transfer.py [--tracking_uri URI] [--workdir DIR]``;
``make bench`` / ``python benchmarks/run.py transfer`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _bundle_run import run_bundle_workflow

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brats_mri_segmentation"
EXPERIMENT = "tumorseg-transfer-bench"
SIZE = 48
PRETRAIN_CASES = 12
PRETRAIN_VAL = 4
PRETRAIN_EPOCHS = 40
TARGET_CASES = 3
TARGET_VAL = 4
FINETUNE_EPOCHS = 30
FINETUNE_VAL_INTERVAL = 2
BATCH_SIZE = 2
SEED = 0
#: Overrides of :data:`tumorseg.data.synthetic.DEFAULT_CONTRAST` for the shifted set: a
#: "different protocol": edema only moderately bright on FLAIR (brighter on T2 instead), weak
#: enhancement on T1ce, the necrotic core bright on FLAIR; strong enough that the pretrained
#: model does noticeably worse on it than on its own domain.
SHIFT_CONTRAST: dict[str, dict[str, float]] = {
    "flair": {"ED": 0.80, "ET": 0.65, "NCR": 1.10},
    "t1": {"ED": 0.85, "ET": 0.75, "NCR": 0.55},
    "t1ce": {"ET": 1.15, "NCR": 0.55},
    "t2": {"ED": 1.30, "ET": 0.60, "NCR": 1.00},
}
SHIFT_TUMOUR_SCALE = 0.6
# Shared by every run: the demo's small settings (see tumorseg.demo.DemoSettings).
COMMON: dict[str, Any] = {
    "roi_size": [32, 32, 32],
    "filters": [8, 16, 32, 64, 128],
    "batch_size": BATCH_SIZE,
    "num_samples": 4,
    "cache_rate": 1.0,
    "num_workers": 0,
    "seed": SEED,
    "experiment_name": EXPERIMENT,
}
SCRATCH_LR = 0.003


def _dataset(root: Path, *, train: int, val: int, seed: int, shifted: bool) -> Path:
    """Generate ``train + val`` cases in ``root`` and a 2-fold manifest: fold 0 = the last
    ``val`` cases (validation), fold 1 = the others, so the split is fixed, not shuffled."""
    from tumorseg.data.manifest import build_manifest, write_manifest
    from tumorseg.data.synthetic import generate_dataset

    extra: dict[str, Any] = (
        {"contrast": SHIFT_CONTRAST, "tumour_scale": SHIFT_TUMOUR_SCALE} if shifted else {}
    )
    ids = generate_dataset(
        root, num_cases=train + val, shape=(SIZE,) * 3, seed=seed, overwrite=True, **extra
    )
    manifest = build_manifest(root, num_folds=2, seed=seed, name=root.name)
    val_ids = set(ids[train:])
    for item in manifest["training"]:
        item["fold"] = 0 if item["case_id"] in val_ids else 1
    path = root / "manifest.json"
    write_manifest(manifest, path)
    return path


def _curve(client: Any, experiment_id: str, run_name: str, metric: str) -> dict[int, float]:
    """``{step (epoch): value}`` of ``metric`` in the run called ``run_name``."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'"
    )
    if len(runs) != 1:
        raise RuntimeError(f"expected one MLflow run named {run_name!r}, found {len(runs)}")
    history = client.get_metric_history(runs[0].info.run_id, metric)
    return {int(m.step): float(m.value) for m in history}


def _format(
    scratch: dict[int, float],
    tuned: dict[int, float],
    zero_shot: float,
    steps_per_epoch: int,
) -> list[str]:
    lines = [
        "| epoch | steps | patches | fine-tuned | scratch | difference |",
        "|---|---|---|---|---|---|",
        f"| 0 | 0 | 0 | {zero_shot:.3f} (zero-shot) | - | - |",
    ]
    patches = 4 * TARGET_CASES  # num_samples patches per case, every case once per epoch
    for epoch in sorted(set(tuned) | set(scratch)):
        a, b = tuned.get(epoch, math.nan), scratch.get(epoch, math.nan)
        lines.append(
            f"| {epoch} | {epoch * steps_per_epoch} | {epoch * patches} | {a:.3f} | {b:.3f} "
            f"| {a - b:+.3f} |"
        )
    return lines


def run(tracking_uri: str = "", workdir: str = "") -> str:
    import mlflow

    from tumorseg.tracking import run_name

    tracking_uri = tracking_uri or os.environ.get("TUMORSEG_BENCH_TRACKING_URI", "")
    with tempfile.TemporaryDirectory(prefix="tumorseg-transfer-") as tmp:
        work = Path(workdir).resolve() if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
        t0 = time.perf_counter()
        source = _dataset(
            work / "source", train=PRETRAIN_CASES, val=PRETRAIN_VAL, seed=SEED, shifted=False
        )
        # Another seed: the shifted cases are new brains, not the source ones recoloured.
        target = _dataset(
            work / "target", train=TARGET_CASES, val=TARGET_VAL, seed=SEED + 1000, shifted=True
        )
        base = {**COMMON, "bundle_root": str(BUNDLE), "tracking_uri": uri, "fold": 0}
        names = {k: run_name("transfer", k, "dynunet") for k in ("pretrain", "finetune", "scratch")}
        walls: dict[str, float] = {}

        print(f"[transfer] pretraining ({PRETRAIN_CASES} cases x {PRETRAIN_EPOCHS} epochs)")
        walls["pretrain"] = run_bundle_workflow(
            BUNDLE,
            "training",
            ["train.json"],
            {
                **base,
                "dataset_dir": str(source.parent),
                "datalist": str(source),
                "ckpt_dir": str(work / "pretrain" / "models"),
                "output_dir": str(work / "pretrain" / "eval"),
                "epochs": PRETRAIN_EPOCHS,
                "val_interval": 5,
                "learning_rate": SCRATCH_LR,
                "run_name": names["pretrain"],
            },
            work / "pretrain.log",
        )
        pretrained = work / "pretrain" / "models" / "model.pt"

        target_data = {"dataset_dir": str(target.parent), "datalist": str(target)}
        print("[transfer] zero-shot: the pretrained model on the shifted validation cases")
        walls["zero-shot"] = run_bundle_workflow(
            BUNDLE,
            "evaluating",
            ["train.json", "evaluate.json"],
            {
                **base,
                **target_data,
                "ckpt_dir": str(pretrained.parent),
                "output_dir": str(work / "zero_shot"),
                "run_name": names["pretrain"] + "-shifted",
            },
            work / "zero_shot.log",
        )
        for arm, configs, extra in (
            (
                "finetune",
                ["train.json", "finetune.json"],
                {"pretrained": str(pretrained)},
            ),
            ("scratch", ["train.json"], {"learning_rate": SCRATCH_LR}),
        ):
            print(f"[transfer] {arm} ({TARGET_CASES} shifted cases x {FINETUNE_EPOCHS} epochs)")
            walls[arm] = run_bundle_workflow(
                BUNDLE,
                "training",
                configs,
                {
                    **base,
                    **target_data,
                    **extra,
                    "ckpt_dir": str(work / arm / "models"),
                    "output_dir": str(work / arm / "eval"),
                    "epochs": FINETUNE_EPOCHS,
                    "val_interval": FINETUNE_VAL_INTERVAL,
                    "run_name": names[arm],
                },
                work / f"{arm}.log",
            )
        total = time.perf_counter() - t0

        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        assert experiment is not None
        eid = experiment.experiment_id
        source_curve = _curve(client, eid, names["pretrain"], "val_mean_dice")
        zero = _curve(client, eid, "eval-" + names["pretrain"] + "-shifted", "val_mean_dice")
        tuned = _curve(client, eid, names["finetune"], "val_mean_dice")
        scratch = _curve(client, eid, names["scratch"], "val_mean_dice")
        (work / "curves.json").write_text(
            json.dumps({"finetune": tuned, "scratch": scratch, "pretrain": source_curve})
        )

    steps_per_epoch = math.ceil(TARGET_CASES / BATCH_SIZE)
    last = max(set(tuned) & set(scratch))
    zero_shot = next(iter(zero.values()))
    lines = [
        "## Transfer learning (issue #5): fine-tuned vs from scratch on a small shifted set",
        "",
        f"Through the bundle: pretrain `train.json` on {PRETRAIN_CASES} default-contrast "
        f"{SIZE}^3 phantoms x {PRETRAIN_EPOCHS} epochs (best source-validation Dice "
        f"{max(source_curve.values()):.3f} on {PRETRAIN_VAL} cases); then {TARGET_CASES} "
        f"shifted cases (contrast `{json.dumps(SHIFT_CONTRAST)}`, tumour_scale "
        f"{SHIFT_TUMOUR_SCALE}) x {FINETUNE_EPOCHS} epochs, `train.json` + `finetune.json` "
        f"(`pretrained` = the pretraining's `model.pt`, lr 5e-4, encoder x0.1) versus "
        f"`train.json` alone (lr {SCRATCH_LR}), same seed and budget. roi 32^3, DynUNet filters "
        f"{COMMON['filters']}, batch {BATCH_SIZE} cases x {COMMON['num_samples']} patches. "
        f"`val_mean_dice` (WT/TC/ET) on the same {TARGET_VAL} shifted validation cases, read "
        f"back from MLflow experiment `{EXPERIMENT}`; epoch 0 = the pretrained model before "
        "fine-tuning (`evaluate.json`).",
        "",
        *_format(scratch, tuned, zero_shot, steps_per_epoch),
        "",
        f"After {last} epochs: fine-tuned {tuned[last]:.3f}, scratch {scratch[last]:.3f}; "
        f"best fine-tuned {max(tuned.values()):.3f}, best scratch {max(scratch.values()):.3f}.",
        "",
        "Wall seconds (2 CPU threads): "
        + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
        + f"; total with data generation {total:.0f}.",
    ]
    if tracking_uri:
        lines += ["", f"MLflow store: `{tracking_uri}`."]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking_uri", default="", help="MLflow store to keep the runs in")
    parser.add_argument("--workdir", default="", help="keep data, checkpoints and logs here")
    args = parser.parse_args()
    print(run(args.tracking_uri, args.workdir))
