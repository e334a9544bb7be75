"""The LGG 2D bundle through MONAI's CLI on a tiny synthetic kaggle_3m set: one-epoch training,
evaluation (per-slice and per-patient scores) and folder inference writing mask TIFs."""

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
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd
from PIL import Image

from tumorseg.checkpoint_meta import META_KEY, load_checkpoint, read_meta
from tumorseg.data.lgg import LGGDatasetError
from tumorseg.data.synthetic_lgg import generate_kaggle_3m
from tumorseg.inference import Predictor
from tumorseg.inference.lgg import segment_kaggle_3m_folder
from tumorseg.networks import pack_members
from tumorseg.transforms import SliceIntensityd

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "lgg_flair_segmentation_2d"
CONFIGS = BUNDLE / "configs"
SHAPE = (32, 32, 16)
#: A narrow network and no worker processes: two CPU cores.
TINY: dict[str, Any] = {"channels": [4, 8, 16, 32, 64], "num_workers": 0, "num_folds": 2}
METRICS = ("val_mean_dice", "val_iou_patient", "val_dice_slice", "val_iou_slice")


def _cli(workflow: str, configs: list[str], overrides: dict[str, Any]) -> list[str]:
    files = [str(CONFIGS / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", workflow, "--meta_file"]
    cmd += [
        str(CONFIGS / "metadata.json"),
        "--config_file",
        files[0] if len(files) == 1 else str(files),
    ]
    cmd += ["--logging_file", str(CONFIGS / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value).replace(" ", "")]
    return cmd


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train one epoch on 4 synthetic patients (2 validation patients in fold 0)."""
    work = tmp_path_factory.mktemp("lgg_bundle")
    generate_kaggle_3m(work / "kaggle_3m", num_patients=4, shape=SHAPE, seed=5)
    overrides = {
        **TINY,
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(work / "kaggle_3m"),
        "ckpt_dir": str(work / "models"),
        "cache_dir": str(work / "cache"),
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "experiment_name": "lgg-test",
        "epochs": 1,
    }
    proc = _run(_cli("training", ["train.json"], overrides), work)
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    return work


def _common(work: Path, **more: Any) -> dict[str, Any]:
    return {
        **TINY,
        "bundle_root": str(BUNDLE),
        "ckpt_dir": str(work / "models"),
        "cache_dir": str(work / "cache"),
        "log_mlflow": False,
        **more,
    }


def _eval_metrics(out: Path) -> dict[str, float]:
    with open(out / "metrics.csv") as fh:
        return {row[0]: float(row[1]) for row in csv.reader(fh)}


def test_one_epoch_training_writes_checkpoints_and_scores(work: Path) -> None:
    assert (work / "models" / "model.pt").is_file()
    assert (work / "models" / "checkpoint_latest.pt").is_file()
    log = (work / "train.log").read_text()
    for name in (*METRICS, "val_dice_patient_cc", "val_dice_slice_cc"):
        assert f"{name}: " in log, name
    run = json.loads((work / "models" / "mlflow_run.json").read_text())
    assert run  # the shared MLflow handler logged the run


def _evaluate(work: Path, ckpt_dir: Path, out: Path) -> dict[str, float]:
    """``run evaluating`` (train.json + evaluate.json) of ``ckpt_dir``'s model.pt; its metrics."""
    overrides = _common(work, dataset_dir=work / "kaggle_3m", output_dir=out, ckpt_dir=ckpt_dir)
    _run(_cli("evaluating", ["train.json", "evaluate.json"], overrides), work)
    return _eval_metrics(out)


@pytest.fixture(scope="module")
def evaluated(work: Path) -> Path:
    """The trained model's evaluation folder (one evaluation for the tests that read it)."""
    _evaluate(work, work / "models", work / "eval")
    return work / "eval"


def test_evaluation_scores_per_slice_and_per_patient(evaluated: Path) -> None:
    metrics = _eval_metrics(evaluated)
    assert set(METRICS) <= set(metrics)
    assert all(0.0 <= metrics[m] <= 1.0 for m in METRICS)
    with open(evaluated / "patient_dice.csv") as fh:
        patients = list(csv.DictReader(fh))
    with open(evaluated / "slice_dice.csv") as fh:
        slices = list(csv.DictReader(fh))
    assert len(patients) == 2 and len(slices) == 2 * SHAPE[2]
    mean = np.mean([float(p["dice"]) for p in patients])
    assert mean == pytest.approx(metrics["val_mean_dice"], abs=1e-5)


def test_evaluating_loads_a_packed_checkpoint_without_a_network_file(
    work: Path, evaluated: Path
) -> None:
    """``run evaluating`` with train.json and evaluate.json only: a packed file of two copies
    of the trained model averages two equal probabilities, so it scores what the model does."""
    packed = work / "packed_models"
    pack_members([work / "models" / "model.pt"] * 2, packed / "model.pt")
    scores = _evaluate(work, packed, work / "eval_packed")
    single = _eval_metrics(evaluated)
    for metric in METRICS:
        assert scores[metric] == pytest.approx(single[metric], abs=1e-6)


def test_folder_inference_writes_masks_in_the_same_layout(work: Path) -> None:
    new = work / "new"
    ids = generate_kaggle_3m(new, num_patients=2, shape=SHAPE, seed=11, with_masks=False)
    out = work / "pred"
    overrides = _common(work, dataset_dir=new, output_dir=out)
    _run(_cli("inferring", ["train.json", "inference.json"], overrides), work)
    for patient in ids:
        masks = sorted(p.name for p in (out / patient).iterdir())
        assert masks == sorted(f"{patient}_{i}_mask.tif" for i in range(1, SHAPE[2] + 1))
        with Image.open(out / patient / masks[0]) as img:
            assert img.size == (SHAPE[1], SHAPE[0])
            assert set(np.unique(np.array(img))) <= {0, 255}


def _intensity_modes(predictor: Predictor) -> list[str]:
    transforms = getattr(predictor.preprocessing, "transforms", ())
    return [t.mode for t in transforms if isinstance(t, SliceIntensityd)]


def test_checkpoint_records_the_intensity_mode_and_an_inference_repeats_it(
    work: Path, tmp_path: Path
) -> None:
    trained = work / "models" / "model.pt"
    meta = read_meta(trained)
    assert meta is not None and meta.preprocessing_settings == {"intensity_mode": "zscore"}
    # The same weights, described as trained on the 8-bit scale: an inference must follow the
    # file, not the bundle's default, or the network sees inputs it was not trained on.
    state = load_checkpoint(trained)
    state[META_KEY] = {**state[META_KEY], "preprocessing_settings": {"intensity_mode": "uint8"}}
    uint8 = tmp_path / "uint8.pt"
    torch.save(state, uint8)
    assert _intensity_modes(Predictor.from_bundle(BUNDLE, checkpoint=trained, device="cpu")) == [
        "zscore"
    ]
    assert _intensity_modes(Predictor.from_bundle(BUNDLE, checkpoint=uint8, device="cpu")) == [
        "uint8"
    ]
    conflict = r"intensity_mode=zscore \(the checkpoint has intensity_mode=uint8\)"
    with pytest.raises(ValueError, match=conflict):
        Predictor.from_bundle(
            BUNDLE, checkpoint=uint8, device="cpu", overrides={"intensity_mode": "zscore"}
        )


def test_a_bad_intensity_mode_fails_before_training_naming_the_choices(tmp_path: Path) -> None:
    overrides = {**TINY, "bundle_root": str(BUNDLE), "intensity_mode": "percentile"}
    overrides |= {"dataset_dir": str(tmp_path / "none"), "log_mlflow": False}
    proc = subprocess.run(
        _cli("training", ["train.json"], overrides), cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "intensity_mode must be one of ('zscore', 'uint8'), got 'percentile'" in proc.stderr


class _Constant(torch.nn.Module):
    """Logits from the FLAIR channel: positive wherever it is bright (deterministic)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:2] - 1.0


def test_inference_reports_bad_files_and_goes_on(tmp_path: Path) -> None:
    ids = generate_kaggle_3m(tmp_path / "in", num_patients=2, shape=SHAPE, seed=3, with_masks=False)
    (tmp_path / "in" / ids[0] / "notes.txt").write_text("not a slice")
    odd = tmp_path / "in" / ids[1] / f"{ids[1]}_4.tif"
    Image.new("RGB", (20, 20)).save(odd)
    preprocessing = Compose(
        [
            LoadImaged("image", reader="PILReader", reverse_indexing=False, image_only=True),
            EnsureChannelFirstd("image"),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    report = segment_kaggle_3m_folder(
        tmp_path / "in", tmp_path / "out", network=_Constant(), preprocessing=preprocessing
    )
    assert len(report.failures) == 2
    with pytest.raises(LGGDatasetError, match="notes.txt: not a TIF file"):
        report.raise_for_failures()
    assert len(report.written) == 2 * SHAPE[2] - 1
    assert not (tmp_path / "out" / ids[1] / f"{ids[1]}_4_mask.tif").exists()
    # The 3D clean-up only ever removes voxels.
    cleaned = segment_kaggle_3m_folder(
        tmp_path / "in",
        tmp_path / "cc",
        network=_Constant(),
        preprocessing=preprocessing,
        min_slices=3,
    )
    for path in cleaned.written:
        raw = np.array(Image.open(tmp_path / "out" / path.relative_to(tmp_path / "cc")))
        assert not (np.array(Image.open(path)) & ~raw).any()
    # Without overwrite, finished patients are skipped.
    again = segment_kaggle_3m_folder(
        tmp_path / "in", tmp_path / "out", network=_Constant(), preprocessing=preprocessing
    )
    assert again.written == []
