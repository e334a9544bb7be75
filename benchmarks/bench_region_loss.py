"""Does the region loss stop false positives? Old loss vs new on tumour-free and ET-free cases.

Issue #15. Two trainings of the 3D bundle, as a user runs it (one child
``python -m monai.bundle run training`` each, like ``tumorseg.demo``), identical but for
``loss``:

* **old**: MONAI ``DiceCELoss(sigmoid=True, smooth_nr=0, smooth_dr=1e-5, squared_pred=True)``,
  the bundle's loss before issue 15 (merged over ``train.json`` from a small config file);
* **new**: ``train.json`` as it is (``tumorseg.losses.RegionDiceBCELoss``: batch Dice +
  per-channel BCE with logits).

Everything else is the current recipe for both (BraTS-rule ``val_mean_dice`` selects
``model.pt``; negative patches anywhere in the brain), same data, seed and budget. The
synthetic set mixes three kinds of 48^3 phantoms (:func:`tumorseg.data.synthetic.make_phantom`):
ordinary gliomas (NCR core, ET rim, edema), **ET-free** gliomas (the rim given the necrotic
core's contrast and labelled NCR: non-enhancing tumour) and **tumour-free** brains. Each
``model.pt`` segments held-out cases of each kind (``tumorseg.inference.Predictor``), and the
table reports, per kind, the false-positive volume (1 mm voxels, so mL = voxels / 1000):
predicted whole tumour on tumour-free brains, predicted ET on ET-free tumours; plus the
BraTS-rule Dice per region over every held-out case.

Run alone with ``python benchmarks/bench_region_loss.py [--workdir DIR] [--epochs N]``;
``make bench`` / ``python benchmarks/run.py region_loss`` calls :func:`run`. About 10 CPU
minutes on two idle cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _bundle_run import run_bundle_workflow

from tumorseg.demo import DemoSettings

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brats_mri_segmentation"
SIZE = 48
SEED = 0
#: Settings shared with the demo.
DEMO_KEYS = (
    "roi_size",
    "filters",
    "batch_size",
    "num_samples",
    "cache_rate",
    "num_workers",
    "learning_rate",
)
#: (kind, training cases, validation cases, held-out cases)
KINDS: tuple[tuple[str, int, int, int], ...] = (
    ("glioma", 6, 2, 4),
    ("et_free", 3, 1, 4),
    ("tumour_free", 3, 1, 4),
)
EPOCHS = 30
VAL_INTERVAL = 5
OLD_LOSS: dict[str, Any] = {
    "_target_": "DiceCELoss",
    "sigmoid": True,
    "smooth_nr": 0.0,
    "smooth_dr": 1e-05,
    "squared_pred": True,
}
#: The demo's small settings, taken from it (tumorseg.demo.DemoSettings) so the two stay alike.
_DEMO = DemoSettings().bundle_overrides()
COMMON: dict[str, Any] = {
    **{key: _DEMO[key] for key in DEMO_KEYS},
    "seed": SEED,
    "log_mlflow": False,
}


def _et_free_contrast() -> dict[str, dict[str, float]]:
    """The enhancing rim drawn with the necrotic core's level in every sequence."""
    from tumorseg.data.synthetic import DEFAULT_CONTRAST

    return {seq: {"ET": levels["NCR"]} for seq, levels in DEFAULT_CONTRAST.items()}


def _phantom(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tumorseg.data.synthetic import make_phantom

    shape = (SIZE,) * 3
    if kind == "tumour_free":
        return make_phantom(shape, seed=seed, num_tumours=0, orientation="LPS")
    if kind == "et_free":
        images, label = make_phantom(
            shape, seed=seed, contrast=_et_free_contrast(), orientation="LPS"
        )
        return images, np.where(label == 4, 1, label).astype(label.dtype)
    return make_phantom(shape, seed=seed, orientation="LPS")


def _write_sets(root: Path) -> tuple[Path, dict[str, str]]:
    """Training/validation cases + a 2-fold manifest (fold 0 validates), and held-out cases.

    Returns the manifest path and ``{held-out case id: kind}``.
    """
    from tumorseg.data.manifest import build_manifest, write_manifest
    from tumorseg.data.synthetic import orientation_affine, write_case

    affine = orientation_affine("LPS", shape=(SIZE,) * 3, spacing=(1.0, 1.0, 1.0))
    val_ids: set[str] = set()
    heldout: dict[str, str] = {}
    seed = SEED * 100_000
    for kind, n_train, n_val, n_held in KINDS:
        for i in range(n_train + n_val + n_held):
            seed += 1
            images, label = _phantom(kind, seed)
            case_id = f"{kind}_{i:02d}"
            if i < n_train + n_val:
                write_case(root / "train", case_id, images, label, affine=affine, overwrite=True)
                if i >= n_train:
                    val_ids.add(case_id)
            else:
                write_case(root / "heldout", case_id, images, label, affine=affine, overwrite=True)
                heldout[case_id] = kind
    manifest = build_manifest(root / "train", num_folds=2, seed=SEED, name="region-loss-bench")
    for item in manifest["training"]:
        item["fold"] = 0 if item["case_id"] in val_ids else 1
    path = root / "manifest.json"
    write_manifest(manifest, path)
    return path, heldout


def _score(pred_dir: Path, heldout_dir: Path, kinds: dict[str, str]) -> dict[str, Any]:
    """False-positive voxels per kind and BraTS-rule Dice per region over all held-out cases."""
    import nibabel as nib

    from tumorseg.metrics import case_metrics

    fp: dict[str, list[int]] = {"tumour_free": [], "et_free": []}
    dice: dict[str, list[float]] = {r: [] for r in ("WT", "TC", "ET")}
    glioma_dice: dict[str, list[float]] = {r: [] for r in ("WT", "TC", "ET")}
    for case_id, kind in sorted(kinds.items()):
        pred = np.asarray(nib.load(pred_dir / f"{case_id}.nii.gz").dataobj).astype(np.int16)
        ref_img = nib.load(heldout_dir / case_id / f"{case_id}_seg.nii.gz")
        ref = np.asarray(ref_img.dataobj).astype(np.int16)
        if kind == "tumour_free":
            fp["tumour_free"].append(int(np.count_nonzero(pred)))
        elif kind == "et_free":
            fp["et_free"].append(int(np.count_nonzero(pred == 4)))
        scores = case_metrics(pred, ref, lesionwise=False)
        for r in dice:
            dice[r].append(scores[f"dice_{r}"])
            if kind == "glioma":
                glioma_dice[r].append(scores[f"dice_{r}"])
    return {
        "fp": fp,
        "dice": {r: float(np.mean(v)) for r, v in dice.items()},
        "glioma_dice": {r: float(np.mean(v)) for r, v in glioma_dice.items()},
    }


def _row(arm: str, s: dict[str, Any]) -> str:
    tf, ef = s["fp"]["tumour_free"], s["fp"]["et_free"]
    d, g = s["dice"], s["glioma_dice"]
    mean = sum(d.values()) / 3
    return (
        f"| {arm} | {np.mean(tf):.0f} ({', '.join(map(str, tf))}) "
        f"| {np.mean(ef):.0f} ({', '.join(map(str, ef))}) "
        f"| {g['WT']:.3f} / {g['TC']:.3f} / {g['ET']:.3f} "
        f"| {d['WT']:.3f} / {d['TC']:.3f} / {d['ET']:.3f} | {mean:.3f} |"
    )


def run(workdir: str = "", epochs: int = EPOCHS) -> str:
    from tumorseg.inference import Predictor

    with tempfile.TemporaryDirectory(prefix="tumorseg-region-loss-") as tmp:
        work = Path(workdir).resolve() if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        manifest, kinds = _write_sets(work / "data")
        old_cfg = work / "old_loss.json"
        old_cfg.write_text(json.dumps({"loss": OLD_LOSS}, indent=2))
        arms = {
            "old: DiceCELoss(sigmoid, smooth_nr=0)": [BUNDLE / "configs" / "train.json", old_cfg],
            "new: RegionDiceBCELoss": [BUNDLE / "configs" / "train.json"],
        }
        results: dict[str, dict[str, Any]] = {}
        walls: dict[str, float] = {}
        for i, (arm, configs) in enumerate(arms.items()):
            out = work / f"arm{i}"
            print(f"[region-loss] training {arm} ({epochs} epochs)", flush=True)
            walls[arm] = run_bundle_workflow(
                BUNDLE,
                "training",
                configs,
                {
                    **COMMON,
                    "bundle_root": str(BUNDLE),
                    "dataset_dir": str(manifest.parent / "train"),
                    "datalist": str(manifest),
                    "fold": 0,
                    "num_folds": 2,
                    "epochs": epochs,
                    # At least at the last epoch, so a short run still selects model.pt.
                    "val_interval": max(1, min(VAL_INTERVAL, epochs)),
                    "ckpt_dir": str(out / "models"),
                    "output_dir": str(out / "eval"),
                },
                work / f"arm{i}.log",
            )
            predictor = Predictor.from_bundle(
                BUNDLE,
                checkpoint=out / "models" / "model.pt",
                overrides={"filters": COMMON["filters"], "roi_size": COMMON["roi_size"]},
            )
            predictor.predict_folder(
                work / "data" / "heldout",
                out / "pred",
                label_convention="brats2021",
                overwrite=True,
            )
            results[arm] = _score(out / "pred", work / "data" / "heldout", kinds)
        total = time.perf_counter() - t0
        (work / "results.json").write_text(json.dumps(results, indent=2))

    n = {k: h for k, _, _, h in KINDS}
    lines = [
        "| loss | FP whole tumour on tumour-free brains, voxels (mean; per case) "
        "| FP ET on ET-free tumours, voxels (mean; per case) "
        f"| Dice WT / TC / ET, {n['glioma']} gliomas with ET "
        f"| Dice WT / TC / ET, all {sum(n.values())} held-out (BraTS rule) | mean |",
        "|---|---|---|---|---|---|",
        *(_row(arm, s) for arm, s in results.items()),
    ]
    train_desc = ", ".join(f"{a} {k}" for k, a, _, _ in KINDS)
    return "\n".join(
        [
            f"3D bundle, DynUNet filters {COMMON['filters']}, roi 32^3, batch 2 x 4 patches, "
            f"{epochs} epochs, lr {COMMON['learning_rate']}, seed {SEED}; training cases: "
            f"{train_desc} ({SIZE}^3); `model.pt` chosen on 4 validation cases by "
            f"`val_mean_dice` every {VAL_INTERVAL} epochs; held out: "
            + ", ".join(f"{h} {k}" for k, _, _, h in KINDS)
            + ". 1 voxel = 1 mm^3.",
            "",
            *lines,
            "",
            "Training wall seconds: "
            + ", ".join(f"{a} {math.ceil(w)}" for a, w in walls.items())
            + f"; total with data and inference {total:.0f}.",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="", help="keep data, checkpoints and logs here")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per arm")
    args = parser.parse_args()
    print(run(args.workdir, args.epochs))
