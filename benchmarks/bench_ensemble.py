"""Ensembles and post-processing chosen on cross-validation (issue 17).

Two measurements:

1. Out-of-fold Dice with and without the searched post-processing rules, single model vs a
   two-model ensemble, on a synthetic cross-validation with planted false positives. The
   "models" are simulated, not trained: each case's probabilities are its reference regions,
   smoothed, with noise, a few missed voxels and small false-positive components planted at
   random places (a different place per model), so what is measured is the effect of the
   averaging and of the rules, with known ground truth.
2. Time and peak memory of a 5-model ensemble on a real 240x240x155 study on the CPU, against
   one model, each in its own child process. The five models are randomly initialised
   DynUNets of the 3D bundle with small filters (timing only: their masks mean nothing).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brats_mri_segmentation"
STUDY = ROOT.parent / "shared" / "data" / "brats2020_layout" / "TCGA-DU-7294"
FILTERS = [8, 16, 32, 64, 128]
MODELS = 5


def _simulated_cv(num_cases: int = 12, seed: int = 0) -> dict[str, object]:
    from scipy import ndimage

    from tumorseg.data.synthetic import make_phantom
    from tumorseg.inference.ensemble import ensemble_probability_folders, read_probabilities
    from tumorseg.inference.postprocess import apply_rules, brats_region_dice, search_rules
    from tumorseg.inference.writer import write_probabilities_atomic
    from tumorseg.transforms import labels_to_regions

    rng = np.random.default_rng(seed)
    refs, models = [], [[], []]
    for i in range(num_cases):
        _, label = make_phantom((64, 64, 64), seed=100 + i, label_convention="brats2021")
        if i % 3 == 0:
            label[label == 4] = 1  # a third of the cases have no enhancing tumour
        ref = np.asarray(labels_to_regions(label, "brats2021"), dtype=bool)
        refs.append(ref)
        for m in range(2):
            probs = np.stack([ndimage.gaussian_filter(r.astype(np.float32), 1.0) for r in ref])
            probs += rng.normal(0, 0.08, probs.shape).astype(np.float32)
            for _ in range(3):  # planted false positives: small blobs of ET (so TC, WT too)
                c = rng.integers(6, 58, size=3)
                blob = np.zeros(ref.shape[1:], bool)
                blob[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2] - 1 : c[2] + 2] = True
                probs[:, blob] = np.maximum(probs[:, blob], 0.6 + 0.4 * rng.random())
            models[m].append(np.clip(probs, 0, 1))
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for m, cases in enumerate(models):
            folder = Path(tmp) / f"model{m}"
            for i, probs in enumerate(cases):
                write_probabilities_atomic(
                    folder / f"case{i:02d}.npz", probs, affine=np.eye(4), regions=("WT", "TC", "ET")
                )
            folders.append(folder)
        ensemble_probability_folders(folders, Path(tmp) / "ensemble")
        ensembled = [
            read_probabilities(Path(tmp) / "ensemble" / "probabilities" / f"case{i:02d}.npz")[0]
            for i in range(num_cases)
        ]
    out: dict[str, object] = {}
    for name, cases in (("single model", models[0]), ("ensemble of 2", ensembled)):
        oof = [(p > 0.5, r, 1.0) for p, r in zip(cases, refs, strict=True)]
        rules = search_rules(oof)
        check = np.mean(
            [brats_region_dice(apply_rules(p, rules, voxel_mm3=v), r) for p, r, v in oof]
        )
        assert abs(check - rules.oof["dice_with"]) < 1e-9
        out[name] = rules
    return out


def _child(mode: str) -> None:
    """One timed prediction of the real study (run in a fresh process for its peak memory)."""
    import torch

    from tumorseg.inference import Predictor, load_bundle
    from tumorseg.inference.ensemble import ensemble_from_config

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    config = load_bundle(BUNDLE, overrides={"filters": FILTERS})
    checkpoints = []
    for seed in range(MODELS if mode == "ensemble" else 1):
        torch.manual_seed(seed)
        network = config.get_parsed_content("network_def", instantiate=True, lazy=False)
        path = tmp / f"m{seed}.pt"
        torch.save(network.state_dict(), path)
        checkpoints.append(path)
    settings = {"device": "cpu", "roi_size": [128, 128, 128], "sw_batch_size": 1}
    predictor = (
        ensemble_from_config(config, checkpoints, **settings)
        if len(checkpoints) > 1
        else Predictor.from_config(config, checkpoint=checkpoints[0], **settings)
    )
    images = [STUDY / f"TCGA-DU-7294_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]
    start = time.perf_counter()
    result = predictor.predict_case(images)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "shape": list(result.label.shape)}))


def _timed(mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run() -> str:
    lines = ["## Ensembles and post-processing chosen on cross-validation (issue 17)", ""]
    results = _simulated_cv()
    lines += [
        "Simulated 12-case CV (64^3 phantoms, a third without ET), 3 planted 27-voxel false",
        "positives per case per model; rules searched on the out-of-fold set:",
        "",
        "| predictions | rules chosen | OOF mean Dice without | with | ET without | ET with |",
        "|---|---|---|---|---|---|",
    ]
    for name, rules in results.items():
        o = rules.oof  # type: ignore[attr-defined]
        lines.append(
            f"| {name} | {rules.describe()} | {o['dice_without']:.4f} | "  # type: ignore[attr-defined]
            f"{o['dice_with']:.4f} | {o['dice_ET_without']:.4f} | {o['dice_ET_with']:.4f} |"
        )
    if STUDY.is_dir():
        single, ensemble = _timed("single"), _timed("ensemble")
        lines += [
            "",
            f"Real study TCGA-DU-7294 (240x240x155) on the CPU, random-init DynUNet filters "
            f"{FILTERS}, roi 128^3, overlap 0.5, 2 threads, each in a fresh process:",
            "",
            "| models | seconds | peak RSS MiB |",
            "|---|---|---|",
            f"| 1 | {single['seconds']:.1f} | {single['peak_mib']:.0f} |",
            f"| {MODELS} (EnsemblePredictor) | {ensemble['seconds']:.1f} | "
            f"{ensemble['peak_mib']:.0f} |",
            "",
            f"time ratio {ensemble['seconds'] / single['seconds']:.2f}x, peak-memory ratio "
            f"{ensemble['peak_mib'] / single['peak_mib']:.2f}x",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        print(run())
