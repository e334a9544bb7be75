"""The LGG bundle on real patients: ``make bench BENCH=lgg_real DATA=<kaggle_3m folder>``.

Scores a model on the 22 held-out test patients of the project's fixed split
(``../shared/data/lgg_kaggle_3m_split.json``) exactly as a user would get it: the copy is checked
against the split's SHA-256 list, ``tumorseg infer`` segments the test patients' slices (the
bundle's default post-processing included) and every patient's predicted masks, stacked by slice
index, get one 3D Dice against the dataset's masks (both empty scores 1), the published
anchor's rule (Buda et al. 2019: mean 83.6 %, median 87.3 %).

By default the committed model (``bundles/lgg_flair_segmentation_2d/models/model.pt``) is
scored. ``TRAIN=1`` first trains one as the released one was, on the 88 development patients
(the test patients are never read), timing it, and scores that; ``SEEDS=0,1`` trains one
model per seed (``--seed``) and packs them into one ensemble checkpoint
(:func:`tumorseg.networks.pack_members`, float16), as the released model was made;
``LGG_NETWORK=transunet`` (or another ``configs/networks/*.json``) picks the network,
``LGG_CHECKPOINT=path`` scores other weights; ``WORK=dir``
keeps the manifest, the model, the masks and ``scores.json`` there (default a temporary folder).
Without ``DATA`` the section says how to run it and nothing else happens: the data is not in
the repository.

``SWEEP=0.3,0.4,0.5,0.6,0.7`` instead chooses the threshold on development data: the fold
``FOLD`` (default 0) patients of the 88, segmented by ``tumorseg infer`` with the weights of
``LGG_CHECKPOINT`` (a model trained without that fold) once per threshold, scored as above. The
test patients are not read. That is how the bundle's ``threshold`` 0.3 was chosen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lgg_flair_segmentation_2d"
SPLIT = REPO.parent / "shared" / "data" / "lgg_kaggle_3m_split.json"
TITLE = "## LGG kaggle_3m, real patients (22 held-out test patients)"
SWEEP_TITLE = "## LGG kaggle_3m, threshold chosen on a development fold"


def _tumorseg(*args: str) -> None:
    # The console script of this interpreter's environment: what a user runs.
    subprocess.run([str(Path(sys.executable).with_name("tumorseg")), *args], check=True)


#: The released model's training: every development patient (``--fold -1``, so no validation
#: slice is left out) for the epoch count chosen on development fold 0 (best at epoch 34 of 50).
RELEASE_ARGS = ("--fold", "-1", "--epochs", "36", "--val_interval", "1000")


def _train(manifest: Path, data: str, models: Path, network: str, seed: int | None = None) -> float:
    """Train on the development patients; returns wall seconds.

    ``LGG_TRAIN_ARGS`` (e.g. ``"--fold 0 --epochs 20 --val_interval 2"``) replaces the
    release settings; ``seed`` is the bundle's ``seed`` (None: its default).
    """
    configs = [str(BUNDLE / "configs" / "train.json")]
    if network:
        configs.append(str(BUNDLE / "configs" / "networks" / f"{network}.json"))
    conf = BUNDLE / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--meta_file", str(conf / "metadata.json"),
           "--config_file", str(configs), "--logging_file", str(conf / "logging.conf"),
           "--bundle_root", str(BUNDLE), "--dataset_dir", data, "--datalist", str(manifest),
           "--ckpt_dir", str(models)]  # fmt: skip
    cmd += os.environ.get("LGG_TRAIN_ARGS", "").split() or list(RELEASE_ARGS)
    if seed is not None:
        cmd += ["--seed", str(seed)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def _seeds(text: str) -> list[int]:
    """``SEEDS``: comma-separated distinct integers (empty: the bundle's seed)."""
    try:
        seeds = [int(v) for v in text.split(",")] if text.strip() else []
    except ValueError:
        raise SystemExit(f"SEEDS must be integers like 0,1, got SEEDS={text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"SEEDS must be distinct, got SEEDS={text!r}")
    return seeds


def _trained(models: Path) -> Path:
    """A training's weights: without validation (the release settings) no best model.pt is
    chosen, so the last state."""
    checkpoint = models / "model.pt"
    return checkpoint if checkpoint.is_file() else models / "checkpoint_latest.pt"


def _segment_and_score(
    data: str,
    patients: list[str],
    checkpoint: Path,
    network: str,
    work: Path,
    name: str,
    overrides: tuple[str, ...] = (),
) -> tuple[dict[str, Any], float]:
    """``tumorseg infer`` on ``patients`` only (a folder of links to theirs), then their Dice."""
    from tumorseg.metrics.lgg import score_mask_folders

    inputs = work / f"{name}_inputs"
    inputs.mkdir(exist_ok=True)
    root = Path(data) / "kaggle_3m" if (Path(data) / "kaggle_3m").is_dir() else Path(data)
    for patient in patients:
        link = inputs / patient
        if not link.exists():
            link.symlink_to((root / patient).resolve(), target_is_directory=True)
    masks = work / f"{name}_masks"
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(inputs), "--output", str(masks),
            "--checkpoint", str(checkpoint), "--overwrite"]  # fmt: skip
    if network:
        args += ["--config-file", f"networks/{network}.json"]
    for override in overrides:
        args += ["--override", override]
    start = time.perf_counter()
    _tumorseg(*args)
    infer_s = time.perf_counter() - start
    return score_mask_folders(masks, root, patients), infer_s


def _sweep(data: str, listed: dict[str, Any], network: str, work: Path) -> str:
    """Per-patient Dice of one development fold at each threshold of ``SWEEP``."""
    from tumorseg.metrics.lgg import summarise_patient_dice

    try:
        fold = int(os.environ.get("FOLD") or 0)
        thresholds = [float(v) for v in os.environ["SWEEP"].split(",")]
    except ValueError:
        raise SystemExit(
            f"SWEEP must be thresholds like 0.3,0.5 and FOLD a fold number, got "
            f"SWEEP={os.environ['SWEEP']!r} FOLD={os.environ.get('FOLD')!r}"
        ) from None
    if not all(0.0 < t < 1.0 for t in thresholds):
        raise SystemExit(f"SWEEP thresholds must lie in (0, 1), got {thresholds}")
    checkpoint = os.environ.get("LGG_CHECKPOINT", "")
    if not checkpoint:
        needs = f"SWEEP needs LGG_CHECKPOINT, a model trained without fold {fold}"
        return f"{SWEEP_TITLE}\n\nskipped: {needs}\n"
    patients = sorted({t["patient"] for t in listed["training"] if t.get("fold") == fold})
    if not patients:
        folds = sorted({t.get("fold") for t in listed["training"]})
        raise SystemExit(f"FOLD={fold} has no development patient; the manifest's folds: {folds}")
    rows = []
    for value in thresholds:
        scores, _ = _segment_and_score(
            data, patients, Path(checkpoint), network, work, f"fold{fold}_t{value:g}",
            (f"threshold={value}",),
        )  # fmt: skip
        summary = summarise_patient_dice(scores["patient"])
        rows.append(f"| {value:g} | {summary['mean']:.4f} | {summary['median']:.4f} |")
    return "\n".join([
        SWEEP_TITLE, "",
        f"fold {fold}: {len(patients)} development patients; checkpoint `{checkpoint}`; flip TTA "
        "and the bundle's post-processing, per-patient 3D Dice", "",
        "| threshold | mean | median |", "|---|---|---|", *rows,
    ]) + "\n"  # fmt: skip


def run() -> str:
    """Run the benchmark (see the module docstring); returns its markdown section."""
    data = os.environ.get("DATA", "")
    if not data:
        return f"{TITLE}\n\nskipped: run `make bench BENCH=lgg_real DATA=<kaggle_3m folder>`\n"
    from tumorseg.metrics.lgg import summarise_patient_dice

    split_file = Path(os.environ.get("SPLIT", str(SPLIT)))
    network = os.environ.get("LGG_NETWORK", "")
    work = Path(os.environ.get("WORK") or tempfile.mkdtemp(prefix="bench_lgg_real_"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.json"
    _tumorseg("manifest", data, "--split-file", str(split_file), "--verify", "-o", str(manifest))
    listed = json.loads(manifest.read_text())
    if os.environ.get("SWEEP"):
        return _sweep(data, listed, network, work)
    test_patients = sorted({t["patient"] for t in listed["testing"]})

    checkpoint = Path(os.environ.get("LGG_CHECKPOINT") or BUNDLE / "models" / "model.pt")
    train_s = None
    if os.environ.get("TRAIN", "") in ("1", "true", "yes"):
        seeds = _seeds(os.environ.get("SEEDS", ""))
        if len(seeds) < 2:
            train_s = _train(manifest, data, work / "models", network, *seeds)
            checkpoint = _trained(work / "models")
        else:
            from tumorseg.networks import pack_members

            members = []
            train_s = 0.0
            for seed in seeds:
                train_s += _train(manifest, data, work / f"models_seed{seed}", network, seed)
                members.append(_trained(work / f"models_seed{seed}"))
            checkpoint = work / "models" / "model.pt"
            pack_members(members, checkpoint)

    scores, infer_s = _segment_and_score(
        data, sorted(test_patients), checkpoint, network, work, "test"
    )
    summary = summarise_patient_dice(scores["patient"])
    record = {
        "network": network or "unet2d (default)",
        "checkpoint": str(checkpoint),
        "split_sha256": listed.get("split_sha256"),
        "train_s": train_s,
        "infer_s": infer_s,
        "patient_dice": {p: v[0] for p, v in scores["patient"].items()},
        "slice_dice_mean": scores["slice_dice"],
        **summary,
    }
    (work / "scores.json").write_text(json.dumps(record, indent=2) + "\n")
    sites = ", ".join(
        f"{s} {v['mean']:.3f} (n={v['n']})" for s, v in summary["per_institution"].items()
    )
    lines = [
        TITLE,
        "",
        f"network: {record['network']}; checkpoint: `{checkpoint}`",
        "",
        "| per-patient Dice | mean | median | patients | per institution (mean) |",
        "|---|---|---|---|---|",
        f"| test | {summary['mean']:.3f} | {summary['median']:.3f} | {summary['n']} | {sites} |",
        "",
        f"inference of {len(test_patients)} patients: {infer_s:.0f} s"
        + (f"; training: {train_s / 60:.1f} min" if train_s is not None else ""),
        f"(per patient: `{work / 'scores.json'}`)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
