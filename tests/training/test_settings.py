"""Issue 18: command-line overrides of a bundle are type-checked before anything is created.

``--device cpu`` (the README's own example) arrives as a string and used to fail in the data
loaders (``'str' object has no attribute 'type'``); ``--roi_size "[16,16,16]"`` with the
default network used to fail at the first iteration, after the MLflow run was created.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tumorseg.training.settings import check_device, check_roi_size, check_settings

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
sys.path.insert(0, str(REPO / "tests"))
from _bundle_utils import TINY, bundle_cmd, bundle_env  # noqa: E402

sys.path.remove(str(REPO / "tests"))


def _parser(bundle: str, files: tuple[str, ...] = ("train.json",), **overrides: Any) -> Any:
    from monai.bundle import ConfigParser

    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / f) for f in files])
    parser.read_meta(str(configs / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLES / bundle), **overrides})
    return parser


@pytest.mark.parametrize(
    "bundle",
    ["brats_mri_segmentation", "brats_slice_segmentation_2d", "lgg_flair_segmentation_2d"],
)
def test_device_given_as_a_string(bundle: str) -> None:
    parser = _parser(bundle, device="cpu")
    for key in ("train#dataloader#pin_memory", "validate#dataloader#pin_memory"):
        # The old configs read @device.type: AttributeError on the string "cpu".
        assert parser.get_parsed_content(key) is False, key
    for bad, message in ((0, "device name"), ("gpu", "not a device"), ("", "device name")):
        # MONAI wraps an expression's error: "Failed to evaluate ...", caused by ours.
        with pytest.raises(RuntimeError) as err:
            _parser(bundle, device=bad).get_parsed_content("initialize#0")
        assert isinstance(err.value.__cause__, ValueError), err.value
        assert message in str(err.value.__cause__)


def test_check_device() -> None:
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        check_device("cpu:x:y")
    with pytest.raises(ValueError, match="device name"):
        check_device(["cpu"])
    with pytest.raises(ValueError, match="not supported"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda:0")


def test_roi_size_against_the_default_network() -> None:
    network = _parser("brats_mri_segmentation", filters=[4, 8, 16, 32, 32]).get_parsed_content(
        "network_def"
    )
    before = {k: v.clone() for k, v in network.state_dict().items()}
    assert check_roi_size(network, [32, 32, 32]) == [32, 32, 32]
    assert check_roi_size(network, (96, 64, 32)) == [96, 64, 32]
    with pytest.raises(ValueError, match=r"roi_size \[16, 16, 16\] does not fit") as err:
        check_roi_size(network, [16, 16, 16])  # a one-voxel bottleneck under instance norm
    assert "downsamples by [16, 16, 16]" in str(err.value)
    with pytest.raises(ValueError, match="does not fit"):
        check_roi_size(network, [40, 40, 40])
    for bad in ([32, 32], [32, 32, 0], [32.5, 32, 32], "96", 96, [True, 32, 32]):
        with pytest.raises(ValueError, match="roi_size"):
            check_settings(roi_size=bad, network=network)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert network.training


def test_roi_size_against_other_networks() -> None:
    swin = _parser(
        "brats_mri_segmentation",
        ("train.json", "networks/swinunetr.json"),
    ).get_parsed_content("network_def")
    check_roi_size(swin, [64, 64, 64])
    with pytest.raises(ValueError, match="does not fit"):
        check_roi_size(swin, [48, 48, 48])
    flexible = _parser("brats_slice_segmentation_2d").get_parsed_content("network_def")
    check_roi_size(flexible, [64, 64])
    check_roi_size(flexible, [40, 40])  # its decoder pads what the encoder halved unevenly
    with pytest.raises(ValueError, match="does not fit"):
        check_roi_size(flexible, [64])


def test_bad_roi_size_stops_before_the_mlflow_run(tmp_path: Path) -> None:
    import subprocess

    configs = BUNDLES / "brats_mri_segmentation" / "configs"
    overrides = {
        **TINY,
        "bundle_root": str(configs.parent),
        "demo_dir": str(tmp_path / "demo"),
        "ckpt_dir": str(tmp_path / "models"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "experiment_name": "settings-test",
        "roi_size": [16, 16, 16],
        "device": "cpu",
        "epochs": 1,
    }
    cmd = bundle_cmd(configs, "training", ["train.json"], overrides)
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=bundle_env()
    )
    assert proc.returncode != 0
    assert "roi_size [16, 16, 16] does not fit" in proc.stderr + proc.stdout
    # Nothing was created: no MLflow run (the old code had one, RUNNING or FAILED), no data.
    db = tmp_path / "mlflow.db"
    if db.exists():
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name("settings-test")
        assert experiment is None or not client.search_runs([experiment.experiment_id])
    assert not (tmp_path / "models").exists()
    assert not (tmp_path / "demo").exists()
