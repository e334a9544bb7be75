"""The 3D bundle through MONAI's own entry points, on tiny synthetic data.

``python -m monai.bundle run training`` trains and validates, writes the best model and an
atomic latest checkpoint, logs one MLflow run, resumes after an interruption; ``evaluate.json``
scores the best model; MONAI's ``verify_net_in_out`` accepts the network; the real studies go
through the bundle's preprocessing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from _bundle_utils import CONFIGS, TINY, bundle_cmd, run_ok
from tumorseg.checkpoint_meta import META_KEY
from tumorseg.cli import main
from tumorseg.config_errors import format_config_error
from tumorseg.data.synthetic import generate_dataset
from tumorseg.training import load_checkpoint
from tumorseg.transforms import regions_to_labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle_data")
    generate_dataset(root, num_cases=6, shape=(32, 32, 32), seed=3, layout="brats2023")
    return root


def _overrides(dataset: Path, work: Path, **more: Any) -> dict[str, Any]:
    return {
        **TINY,
        "bundle_root": str(CONFIGS.parent),
        "dataset_dir": str(dataset),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "experiment_name": "bundle-test",
        **more,
    }


def _cli(workflow: str, configs: list[str], overrides: dict[str, Any]) -> list[str]:
    return bundle_cmd(CONFIGS, workflow, configs, overrides)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_ok(cmd, cwd)


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bundle_run")
    _run(_cli("training", ["train.json"], _overrides(dataset, work, epochs=2)), work)
    return work


def test_training_writes_best_and_latest_checkpoints(trained: Path) -> None:
    latest = load_checkpoint(trained / "models" / "checkpoint_latest.pt")
    assert {"network", "optimizer", "lr_scheduler", "trainer", "checkpointer"} <= set(latest)
    assert latest["trainer"]["iteration"] > 0
    best = load_checkpoint(trained / "models" / "model.pt")
    # The weights beside their description (tumorseg.checkpoint_meta).
    assert set(best) == {"network", "tumorseg_meta"}
    assert all(torch.is_tensor(v) for v in best["network"].values())
    assert best["tumorseg_meta"]["network_name"] == "dynunet"
    assert not list((trained / "models").glob("*.tmp"))


def test_training_logs_exactly_one_mlflow_run(trained: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bundle-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["network"] == "dynunet"
    assert run.data.params["label_convention"] == "brats2023"
    history = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert [m.step for m in history] == [1, 2]
    assert 0.0 <= history[-1].value <= 1.0
    assert client.get_metric_history(run.info.run_id, "train_loss")


def test_resume_after_kill_continues_from_latest_checkpoint(dataset: Path, tmp_path: Path) -> None:
    # fold 0 of 3 holds out 2 of the 6 cases: 4 iterations per epoch at batch size 1.
    per_epoch = 4
    latest = tmp_path / "models" / "checkpoint_latest.pt"
    cmd = _cli(
        "training", ["train.json"], _overrides(dataset, tmp_path, epochs=50, log_mlflow=False)
    )
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert latest.exists(), err.decode()[-3000:]
    # The kill may land mid-save: the file present is then the previous complete one.
    done = load_checkpoint(latest)["trainer"]["iteration"]
    assert done % per_epoch == 0 and done >= per_epoch

    epochs = done // per_epoch + 1
    overrides = _overrides(dataset, tmp_path, epochs=epochs, log_mlflow=False)
    out = _run(_cli("training", ["train.json"], overrides), tmp_path)
    assert "resumed from" in out.stdout + out.stderr
    assert load_checkpoint(latest)["trainer"]["iteration"] == epochs * per_epoch


def test_evaluate_workflow_scores_the_best_model(dataset: Path, trained: Path) -> None:
    overrides = _overrides(dataset, trained, log_mlflow=False)
    _run(_cli("evaluating", ["train.json", "evaluate.json"], overrides), trained)
    report = (trained / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(report) == 1 + 2  # header + the 2 validation cases of fold 0
    assert (trained / "eval" / "metrics.csv").read_text().count("val_dice_") == 3


def test_positive_patches_are_centred_on_edema_only_tumour_too() -> None:
    # MONAI's RandCropByPosNegLabeld reads the 3 region channels as one-hot and drops WT; a
    # tumour with no core then never gave a positive patch.
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**TINY, "roi_size": [16, 16, 16], "num_samples": 60})
    transforms = Compose(parser.get_parsed_content("train#random_transforms"))
    transforms.set_random_state(seed=0)
    image = np.ones((4, 64, 64, 64), np.float32)
    label = np.zeros((3, 64, 64, 64), np.float32)
    label[0, 40:46, 40:46, 40:46] = 1.0  # WT only: edema without core
    samples = transforms({"image": MetaTensor(image), "label": MetaTensor(label)})
    assert len(samples) == 60 and all("tumour" not in s for s in samples)
    share = float(np.mean([float(s["label"].sum()) > 0 for s in samples]))
    assert share >= 0.6, share  # pos 2 : neg 1; a random 16^3 patch hits it ~4 % of the time


def test_verify_net_in_out_accepts_the_network(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--config_file", str(CONFIGS / "train.json"), "--n", "2"]
    cmd += ["--filters", "[4,8,16,32,32]", "--device", "cpu"]
    out = _run(cmd, tmp_path)
    assert "verified with no error" in out.stdout + out.stderr


@pytest.mark.shared_data
@pytest.mark.parametrize("layout", ["brats2020_layout", "brats2023_layout"])
def test_real_studies_go_through_the_bundle_preprocessing(shared_data: Path, layout: str) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["dataset_dir"] = str(shared_data / layout)
    data = parser.get_parsed_content("data")
    items = data.files("all")
    assert len(items) == 1
    out = parser.get_parsed_content("validate#preprocessing")(items[0])
    image = out["image"]
    assert image.shape[0] == 4
    # Cropped to the brain's bounding box, smaller than the 240x240x155 canvas.
    assert all(s <= c for s, c in zip(image.shape[1:], (240, 240, 155), strict=True))
    assert abs(float(image[0][image[0] != 0].mean())) < 0.1  # non-zero z-score
    if layout == "brats2020_layout":
        regions = out["label"]
        assert regions.shape == (3, *image.shape[1:])
        assert regions[0].sum() > 1000  # whole tumour present
        assert regions[2].sum() == 0  # this study has no enhancing tumour (README)
    else:
        assert "label" not in out


def test_ckpt_export_writes_a_torchscript_model_of_the_best_weights(trained: Path) -> None:
    ts = trained / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
    cmd += ["--filepath", str(ts), "--ckpt_file", str(trained / "models" / "model.pt")]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--config_file", str(CONFIGS / "train.json"), "--filters", "[4,8,16,32,32]"]
    # model.pt holds the weights under "network", beside their description (tumorseg_meta).
    cmd += ["--key_in_ckpt", "network"]
    _run(cmd, trained)
    scripted = torch.jit.load(str(ts))
    out = scripted(torch.zeros(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)


def test_finetune_config_resolves_with_the_default_network_in_a_fresh_process() -> None:
    # The default DynUNet's `_target_` is MONAI's, so nothing imports tumorseg.networks before
    # finetune.json's `$tumorseg.networks...` expressions run (a bug once).
    code = (
        "from monai.bundle import ConfigParser; p = ConfigParser(); "
        f"p.read_config([{str(CONFIGS / 'train.json')!r}, {str(CONFIGS / 'finetune.json')!r}]); "
        "p['filters'] = [4, 8, 16, 32, 32]; print(repr(p.get_parsed_content('encoder_prefix')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() not in ("", "''", "None")


def test_finetune_checkpoints_go_apart_from_a_trainings() -> None:
    # `make train` then `make finetune` once resumed the training's checkpoint_latest.pt (its
    # optimizer has one parameter group, a fine-tuning's two) and stopped with MONAI's "loaded
    # state dict has a different number of parameter groups".
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")])
    parser["bundle_root"] = "B"
    train_dir = parser.get_parsed_content("ckpt_dir")
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "finetune.json")])
    parser["bundle_root"] = "B"
    assert train_dir == "B/models"
    assert parser.get_parsed_content("ckpt_dir") == "B/models/finetune"


# -- the resection cavity as a fourth region (issue 16) -------------------------------------

RC4 = ["WT", "TC", "ET", "RC"]


@pytest.fixture(scope="module")
def rc_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Post-operative cases: BraTS 2023 file names, brats2024 labels with a cavity (label 4)."""
    root = tmp_path_factory.mktemp("rc_data")
    generate_dataset(
        root,
        num_cases=6,
        shape=(32, 32, 32),
        seed=7,
        layout="brats2023",
        label_convention="brats2024",
        resection_cavity=True,
    )
    return root


def _rc_parser(dataset: Path, **more: Any) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(
        {
            **TINY,
            "dataset_dir": str(dataset),
            "device": "cpu",
            "regions": RC4,
            "label_convention": "brats2024",
            **more,
        }
    )
    return parser


def test_one_regions_id_sets_network_labels_metrics_and_checkpoint(rc_dataset: Path) -> None:
    parser = _rc_parser(rc_dataset)
    assert parser.get_parsed_content("initialize")[0] is True  # brats2024 has a cavity
    network = parser.get_parsed_content("network_def")
    assert network(torch.zeros(1, 4, 32, 32, 32)).shape == (1, 4, 32, 32, 32)
    item = parser.get_parsed_content("data").files("val")[0]
    regions = parser.get_parsed_content("validate#preprocessing")(item)["label"]
    assert regions.shape[0] == 4
    assert float(regions[3].sum()) > 0  # the cavity of this case
    assert float((regions[3] * regions[0]).sum()) == 0  # and no part of the whole tumour
    metrics = parser.get_parsed_content("validation_metrics")
    assert metrics.key_name == "val_mean_dice" and "val_dice_rc" in metrics.reported
    meta = parser.get_parsed_content("checkpoint_meta")
    assert meta.regions == RC4 and meta.label_convention == "brats2024"


def test_a_cavity_channel_is_refused_for_labels_without_one(dataset: Path) -> None:
    parser = _rc_parser(dataset, label_convention="")  # the brats2023 layout's own labels
    with pytest.raises(RuntimeError) as err:
        parser.get_parsed_content("initialize")
    message = format_config_error(err.value) or ""
    first = message.splitlines()[0]
    assert "region RC" in first and "'brats2023'" in first and "['brats2024']" in first


@pytest.mark.slow
def test_training_with_the_cavity_and_inferring_it(rc_dataset: Path, tmp_path: Path) -> None:
    """One epoch on cavity labels: four outputs, an RC Dice in validation, and inference from
    the checkpoint alone (its description says RC) writes label 4."""
    overrides = _overrides(rc_dataset, tmp_path, epochs=1, log_mlflow=False, cache_rate=0.0)
    overrides.update(
        {"filters": [8, 16, 32, 64, 128], "regions": RC4, "label_convention": "brats2024"}
    )
    out = run_ok(_cli("training", ["train.json"], overrides), tmp_path, timeout=1800)
    assert "val_dice_rc:" in out.stdout + out.stderr
    best = load_checkpoint(tmp_path / "models" / "model.pt")
    assert best[META_KEY]["regions"] == RC4
    assert best["network"]["output_block.conv.conv.weight"].shape[0] == 4

    # The weights as trained: the mask is what their probabilities say (tumour wins over RC),
    # compared where the stored float16 probabilities are clearly on one side of 0.5.
    args = ["infer", "--bundle", str(CONFIGS.parent), "--input", str(rc_dataset)]
    args += ["--label-convention", "brats2024", "--device", "cpu", "--no-progress"]
    trained_args = ["--checkpoint", str(tmp_path / "models" / "model.pt")]
    trained_args += ["--output", str(tmp_path / "a"), "--save-probabilities"]
    assert main([*args, *trained_args]) == 0
    for npz in sorted((tmp_path / "a" / "probabilities").glob("*.npz"))[:2]:
        with np.load(npz) as saved:
            assert saved["regions"].tolist() == RC4
            probabilities = saved["probabilities"].astype(np.float32)
        expected = regions_to_labels(probabilities > 0.5, "brats2024")
        clear = (np.abs(probabilities - 0.5) > 2e-3).all(axis=0)
        written = np.asarray(nib.load(tmp_path / "a" / f"{npz.stem}.nii.gz").dataobj)
        assert clear.any() and np.array_equal(written[clear], expected[clear])
    # The same weights, cavity logit +20 and tumour logits -20: label 4 over the brain box.
    best["network"]["output_block.conv.conv.bias"] += torch.tensor([0.0, 0.0, 0.0, 20.0])
    best["network"]["output_block.conv.conv.bias"][:3] -= 20.0
    shifted = tmp_path / "shifted.pt"
    torch.save(best, shifted)
    assert main([*args, "--checkpoint", str(shifted), "--output", str(tmp_path / "b")]) == 0
    label = np.asarray(nib.load(sorted((tmp_path / "b").glob("*.nii.gz"))[0]).dataobj)
    assert np.count_nonzero(label == 4) > label.size // 4
