"""Every network file trains and infers through the bundle; fine-tuning through finetune.json.

One subprocess runs all the trainings with ``monai.bundle.run`` (what ``python -m
monai.bundle run training`` calls), so the start-up of MONAI, MLflow and torch is paid once;
each run's failure is recorded and asserted per network.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tumorseg.data.synthetic import generate_dataset
from tumorseg.networks import ResEncUNet

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_segmentation" / "configs"
NETWORKS = ["unet", "segresnet", "swinunetr", "transunet", "resenc_unet"]

#: Narrow widths for 2 CPU cores (config ids -> values), and the roi per network.
WIDTH: dict[str, dict[str, Any]] = {
    "unet": {"filters": [4, 8, 16, 32, 32]},
    "segresnet": {"network_def#init_filters": 8},
    "swinunetr": {"network_def#feature_size": 12, "network_def#depths": [1, 1, 1, 1]},
    "transunet": {
        "network_def#channels": [4, 8, 16, 32, 32],
        "network_def#hidden_size": 32,
        "network_def#num_heads": 4,
        "network_def#num_layers": 1,
    },
    "resenc_unet": {
        "network_def#depth": 10,
        "network_def#block_inplanes": [8, 8, 16, 16],
        "network_def#decoder_channels": [16, 8, 8, 8, 4],
    },
}
ROI = {"swinunetr": [64, 64, 64]}  # five halvings and instance norm: >= 64
#: Trained by `make test`; the other networks (unet is also covered by tests/bundles/) by
#: `make test-slow`: every network file costs ~20 s of two CPU cores.
FAST = ["transunet", "finetune"]

_RUNNER = r"""
import json, sys, traceback
from monai.bundle import run
jobs = json.loads(open(sys.argv[1]).read())
results = {}
for name, job in jobs.items():
    try:
        run(run_id="training", meta_file=job["meta"], config_file=job["configs"],
            logging_file=job["logging"], **job["overrides"])
        results[name] = "ok"
    except BaseException:
        results[name] = traceback.format_exc()[-3000:]
open(sys.argv[2], "w").write(json.dumps(results))
"""


def _overrides(name: str, dataset: Path, work: Path, **more: Any) -> dict[str, Any]:
    return {
        **WIDTH[name],
        "roi_size": ROI.get(name, [32, 32, 32]),
        "epochs": 1,
        "batch_size": 1,
        # Two patches per batch: resenc_unet's batch-norm encoder sees a 1^3 map at 32^3.
        "num_samples": 2,
        "num_workers": 0,
        "num_folds": 3,
        "sw_batch_size": 2,
        "amp": False,
        "bundle_root": str(CONFIGS.parent),
        "dataset_dir": str(dataset),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "cache_dir": str(work / "cache"),
        "tracking_uri": f"sqlite:///{work.parent / 'mlflow.db'}",
        "experiment_name": "networks-test",
        **more,
    }


def _job(configs: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": str(CONFIGS / "metadata.json"),
        "configs": [str(CONFIGS / c) for c in configs],
        "logging": str(CONFIGS / "logging.conf"),
        "overrides": overrides,
    }


def _medicalnet_style(path: Path) -> None:
    """An encoder-only, 1-channel, ``module.``-prefixed checkpoint in a ``state_dict`` entry."""
    torch.manual_seed(5)
    net = ResEncUNet(
        in_channels=1, depth=10, block_inplanes=(8, 8, 16, 16), decoder_channels=(16, 8, 8, 8, 4)
    )
    enc = {f"module.{k}": v for k, v in net.encoder.state_dict().items()}
    torch.save({"state_dict": enc}, path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("networks_bundle")
    generate_dataset(root / "data", num_cases=3, shape=(32, 32, 32), seed=4, layout="brats2023")
    _medicalnet_style(root / "resnet_10.pth")
    return root


def _run_jobs(root: Path, names: list[str], tag: str) -> dict[str, str]:
    dataset = root / "data"
    jobs = {}
    for name in names:
        if name == "finetune":
            jobs[name] = _job(
                ["train.json", "networks/resenc_unet.json", "finetune.json"],
                _overrides(
                    "resenc_unet",
                    dataset,
                    root / "finetune",
                    epochs=2,
                    pretrained=str(root / "resnet_10.pth"),
                    freeze_encoder_epochs=1,
                ),
            )
        else:
            jobs[name] = _job(
                ["train.json", f"networks/{name}.json"],
                _overrides(name, dataset, root / name, log_mlflow=False),
            )
    (root / f"jobs_{tag}.json").write_text(json.dumps(jobs))
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(root / f"jobs_{tag}.json"), str(root / "out.json")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / f"log_{tag}.txt").write_text(proc.stdout + proc.stderr)
    return dict(json.loads((root / "out.json").read_text()))


@pytest.fixture(scope="module")
def runs(data_root: Path) -> tuple[Path, dict[str, str]]:
    return data_root, _run_jobs(data_root, FAST, "fast")


@pytest.fixture(scope="module")
def slow_runs(data_root: Path) -> tuple[Path, dict[str, str]]:
    return data_root, _run_jobs(data_root, [n for n in NETWORKS if n not in FAST], "slow")


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in NETWORKS]
)
def test_one_epoch_training_and_inference(name: str, request: pytest.FixtureRequest) -> None:
    from tumorseg.inference import Predictor

    root, results = request.getfixturevalue("runs" if name in FAST else "slow_runs")
    assert results[name] == "ok", results[name]
    model = root / name / "models" / "model.pt"
    assert model.is_file()
    predictor = Predictor.from_bundle(
        CONFIGS.parent,
        config_files=[f"networks/{name}.json"],
        overrides=WIDTH[name],
        checkpoint=model,
        device="cpu",
        roi_size=ROI.get(name, [32, 32, 32]),
    )
    case = sorted(p for p in (root / "data").iterdir() if p.is_dir())[0]
    out = predictor.predict_folder(case.parent, root / name / "pred", progress=False)
    assert out.ok and len(out.written) == 3, out.failed
    assert (root / name / "pred" / f"{case.name}.nii.gz").is_file()


def test_finetune_loads_pretrained_freezes_and_tags_mlflow(
    runs: tuple[Path, dict[str, str]],
) -> None:
    import mlflow

    root, results = runs
    assert results["finetune"] == "ok", results["finetune"]
    log = (root / "log_fast.txt").read_text()
    assert "of the encoder (" in log and "tiled x 1/4" in log  # the LoadReport summary
    assert "epoch 1: encoder frozen" in log and "epoch 2: encoder unfrozen" in log
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("networks-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["tumorseg.pretrained"] == str((root / "resnet_10.pth").resolve())
    assert len(run.data.tags["tumorseg.pretrained.sha256"]) == 64
    assert run.data.params["pretrained"] == str(root / "resnet_10.pth")
    assert run.data.params["network"] == "resenc_unet"
    assert run.data.params["encoder_lr_scale"] == "0.1"
