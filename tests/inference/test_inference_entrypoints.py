"""`tumorseg infer` and the bundle's train.json + inference.json (``python -m monai.bundle run``)
make the same masks; settings; checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _infer_utils import BUNDLE, TINY_FILTERS, tiny_checkpoint

from tumorseg.cli import main
from tumorseg.data.synthetic import generate_dataset
from tumorseg.inference import Predictor

ROI = ["32", "32", "32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("entry")
    generate_dataset(
        root / "in", num_cases=1, num_unlabelled=2, shape=(36, 32, 30), orientation="LPS", seed=5
    )
    return {"root": root, "input": root / "in", "ckpt": tiny_checkpoint(root / "model.pt")}


def _masks(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


def test_cli_and_bundle_run_give_identical_masks(data: dict[str, Path], tmp_path: Path) -> None:
    cli_out, bundle_out = tmp_path / "cli", tmp_path / "bundle"
    code = main(
        [
            "infer",
            "--bundle",
            str(BUNDLE),
            "--input",
            str(data["input"]),
            "--output",
            str(cli_out),
            "--checkpoint",
            str(data["ckpt"]),
            "--override",
            f"filters={TINY_FILTERS}",
            "--roi-size",
            *ROI,
            "--no-progress",
        ]
    )
    assert code == 0
    # The model-zoo command, run from elsewhere: train.json then inference.json.
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    configs = [str(BUNDLE / "configs" / name) for name in ("train.json", "inference.json")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(configs),
            "--bundle_root",
            str(BUNDLE),
            "--dataset_dir",
            str(data["input"]),
            "--output_dir",
            str(bundle_out),
            "--checkpoint",
            str(data["ckpt"]),
            "--filters",
            str(TINY_FILTERS),
            "--roi_size",
            "[32,32,32]",
            "--progress",
            "False",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    cli, bundle = _masks(cli_out), _masks(bundle_out)
    assert len(cli) == 3 and cli.keys() == bundle.keys()
    for name in cli:
        assert cli[name] == bundle[name], f"{name} differs between the CLI and monai.bundle"
    assert (cli_out / "volumes.csv").read_text() == (bundle_out / "volumes.csv").read_text()
    # Random weights still give a non-trivial mask, so "identical" compares something.
    mask = np.asanyarray(nib.load(str(cli_out / "SYN2021_000.nii.gz")).dataobj)
    assert len(np.unique(mask)) >= 2 and 0.001 < float((mask > 0).mean()) < 0.99


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_bundle_merged_after_train_json_gives_the_same_masks(
    data: dict[str, Path], tmp_path: Path
) -> None:
    from monai.bundle import run

    reference = tmp_path / "ref"
    Predictor.from_bundle(
        BUNDLE,
        checkpoint=data["ckpt"],
        overrides={"filters": TINY_FILTERS},
        roi_size=(32, 32, 32),
    ).predict_folder(data["input"], reference, progress=False)
    merged = tmp_path / "merged"
    run(
        config_file=[
            str(BUNDLE / "configs" / "train.json"),
            str(BUNDLE / "configs" / "inference.json"),
        ],
        logging_file=False,
        bundle_root=str(BUNDLE),
        dataset_dir=str(data["input"]),
        output_dir=str(merged),
        checkpoint=str(data["ckpt"]),
        filters=TINY_FILTERS,
        roi_size=[32, 32, 32],
        progress=False,
    )
    assert _masks(merged) == _masks(reference) and len(_masks(reference)) == 3


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_bundle_run_fails_after_the_batch_when_a_study_failed(
    data: dict[str, Path], tmp_path: Path
) -> None:
    from monai.bundle import run

    from tumorseg.inference import InferenceFailed

    generate_dataset(tmp_path / "in", num_cases=2, shape=(32, 32, 30), seed=9)
    (tmp_path / "in" / "SYN2021_000" / "SYN2021_000_t2.nii.gz").unlink()
    with pytest.raises(RuntimeError) as err:
        run(
            config_file=[
                str(BUNDLE / "configs" / "train.json"),
                str(BUNDLE / "configs" / "inference.json"),
            ],
            logging_file=False,
            bundle_root=str(BUNDLE),
            dataset_dir=str(tmp_path / "in"),
            output_dir=str(tmp_path / "out"),
            checkpoint=str(data["ckpt"]),
            filters=TINY_FILTERS,
            roi_size=[32, 32, 32],
            progress=False,
        )
    cause = err.value if isinstance(err.value, InferenceFailed) else err.value.__cause__
    assert isinstance(cause, InferenceFailed)
    assert "SYN2021_000_t2.nii.gz: missing t2 image" in str(cause)
    assert (tmp_path / "out" / "SYN2021_001.nii.gz").is_file()


def test_settings_come_from_the_bundle_and_can_be_overridden(data: dict[str, Path]) -> None:
    default = Predictor.from_bundle(BUNDLE, network=torch.nn.Identity())
    assert default.roi_size == (96, 96, 96)  # train.json
    assert default.sw_batch_size == 4 and default.overlap == 0.5
    assert default.inferer.mode == "gaussian"
    custom = Predictor.from_bundle(
        BUNDLE, network=torch.nn.Identity(), roi_size=[48, 40, 32], sw_batch_size=2, overlap=0.25
    )
    assert custom.roi_size == (48, 40, 32)
    assert custom.sw_batch_size == 2 and custom.overlap == 0.25
    via_override = Predictor.from_bundle(
        BUNDLE,
        checkpoint=data["ckpt"],
        overrides={"filters": TINY_FILTERS, "roi_size": [40, 40, 40]},
    )
    assert via_override.roi_size == (40, 40, 40)
    assert via_override.network.filters == TINY_FILTERS


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"roi_size": (0, 32, 32)}, "(0, 32, 32)"),
        ({"roi_size": (32, 32)}, "(32, 32)"),
        ({"overlap": 1.0}, "1.0"),
        ({"sw_batch_size": 0}, "0"),
    ],
)
def test_bad_settings_show_the_value(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=f"got {shown}".replace("(", r"\(").replace(")", r"\)")):
        Predictor.from_bundle(BUNDLE, network=torch.nn.Identity(), **kwargs)


def test_checkpoint_that_does_not_fit_lists_the_keys(data: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(data["ckpt"], weights_only=True)
    renamed = {("decoder." + k if k.startswith("bottleneck") else k): v for k, v in state.items()}
    bad = tmp_path / "renamed.pt"
    torch.save(renamed, bad)
    with pytest.raises(ValueError) as err:
        Predictor.from_bundle(BUNDLE, checkpoint=bad, overrides={"filters": TINY_FILTERS})
    message = str(err.value)
    assert str(bad) in message
    assert "missing key(s): bottleneck." in message
    assert "unexpected key(s): decoder.bottleneck." in message


def test_checkpoint_error_reaches_the_cli_user(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Trained with other filters: every conv is mis-shaped; the CLI says so and exits 2
    # before touching the output folder.
    wide = tiny_checkpoint(tmp_path / "wide.pt", filters=[8, 16, 32, 64, 128])
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(data["input"])]
    args += ["--output", str(tmp_path / "o"), "--checkpoint", str(wide)]
    args += ["--override", f"filters={TINY_FILTERS}"]
    assert main(args) == 2
    assert not (tmp_path / "o").exists()
    err = capsys.readouterr().err
    assert "does not fit the bundle's network" in err and "shape mismatch(es)" in err
    expected = "bottleneck.conv1.conv.weight (checkpoint (128, 64, 3, 3, 3), network (64, 32"
    assert expected in err


def test_training_checkpoint_and_missing_files(data: dict[str, Path], tmp_path: Path) -> None:
    # checkpoint_latest.pt of the bundle's trainer holds the weights under "network".
    state = torch.load(data["ckpt"], weights_only=True)
    latest = tmp_path / "checkpoint_latest.pt"
    torch.save({"network": state, "optimizer": {"state": {}, "param_groups": []}}, latest)
    Predictor.from_bundle(BUNDLE, checkpoint=latest, overrides={"filters": TINY_FILTERS})

    with pytest.raises(FileNotFoundError, match="checkpoint not found.*--checkpoint"):
        Predictor.from_bundle(
            BUNDLE, checkpoint=tmp_path / "nope.pt", overrides={"filters": TINY_FILTERS}
        )
    with pytest.raises(FileNotFoundError, match="configs/train.json"):
        Predictor.from_bundle(tmp_path, network=torch.nn.Identity())
    args = ["infer", "--bundle", str(tmp_path), "--input", str(data["input"])]
    assert main([*args, "--output", str(tmp_path / "o")]) == 2
