"""Self-describing checkpoints: written by the Checkpointer, read by inference and fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from monai.networks.nets import DynUNet

from tumorseg.checkpoint_meta import (
    META_KEY,
    CheckpointMeta,
    checkpoint_with_meta,
    read_meta,
    resolve_settings,
)
from tumorseg.inference import Predictor, load_bundle
from tumorseg.inference.bundle import apply_checkpoint_meta
from tumorseg.networks import read_state_dict
from tumorseg.training import Checkpointer, load_checkpoint, load_network_weights
from tumorseg.training.finetune_args import finetune_command, parse_overrides

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_segmentation"
TINY = [4, 8, 16, 32, 64]


def _dynunet(filters: list[int]) -> DynUNet:
    return DynUNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        kernel_size=[3] * 5,
        strides=[1, 2, 2, 2, 2],
        upsample_kernel_size=[2] * 4,
        filters=filters,
        norm_name="instance",
        res_block=True,
    )


def _meta(**changes: object) -> CheckpointMeta:
    base = CheckpointMeta(
        network_name="dynunet",
        network_settings={"filters": TINY},
        pixdim=[1.0, 1.0, 1.0],
        roi_size=[32, 32, 32],
        channel_order=["flair", "t1", "t1ce", "t2"],
        label_convention="brats2021",
        regions=["WT", "TC", "ET"],
        bundle_name="brats_mri_segmentation",
        bundle_version="0.3.0",
    )
    return CheckpointMeta(**{**base.to_dict(), **changes})  # type: ignore[arg-type]


def _save_described(path: Path, filters: list[int] = TINY, **changes: object) -> Path:
    net = _dynunet(filters)
    meta = _meta(network_settings={"filters": filters}, **changes)
    torch.save(checkpoint_with_meta({"network": net.state_dict()}, meta), path)
    return path


# ------------------------------------------------------------------ writing (Checkpointer)


def test_checkpointer_writes_the_description_into_both_files(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    validator = Engine(lambda e, b: None)
    validator.state.metrics = {"val_mean_dice": 0.5}
    saver = Checkpointer(
        tmp_path,
        {"network": net, "optimizer": opt},
        validator=validator,
        meta=_meta().to_dict(),
        run_record=lambda: {"run_id": "abc123"},
    )
    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine: Engine) -> None:
        validator.state.epoch = engine.state.epoch

    saver.attach(trainer)
    trainer.run([0], max_epochs=2)

    best = load_checkpoint(tmp_path / "model.pt")
    assert set(best) == {"network", META_KEY}
    assert set(best["network"]) == {"weight", "bias"}
    meta = read_meta(tmp_path / "model.pt")
    assert meta is not None and meta.run_id == "abc123"
    assert meta.network_class == "torch.nn.modules.linear.Linear"
    assert meta.network_settings == {"filters": TINY} and meta.roi_size == [32, 32, 32]
    assert read_meta(tmp_path / "checkpoint_latest.pt") == meta
    # Both still load as this project's weights, and resume ignores the extra entry.
    load_network_weights(torch.nn.Linear(2, 1), tmp_path / "model.pt")
    assert set(read_state_dict(tmp_path / "model.pt")) == {"weight", "bias"}
    again = Checkpointer(tmp_path, {"network": net, "optimizer": opt}, meta=_meta())
    trainer2 = Engine(lambda e, b: None)
    again.attach(trainer2)
    trainer2.run([0], max_epochs=3)
    assert again.resumed_from == tmp_path / "checkpoint_latest.pt"


def test_resume_refuses_the_latest_state_of_another_network(tmp_path: Path) -> None:
    """Training another network file into the same folder must not resume the first one's
    state (it stopped deep in load_state_dict, found by the README test's TransUNet block)."""
    net = torch.nn.Linear(2, 1)
    first = Checkpointer(tmp_path, {"network": net}, meta=_meta(network_name="unet2d"))
    trainer = Engine(lambda e, b: None)
    first.attach(trainer)
    trainer.run([0], max_epochs=1)
    other = Checkpointer(
        tmp_path, {"network": torch.nn.Linear(2, 1)}, meta=_meta(network_name="transunet2d")
    )
    trainer2 = Engine(lambda e, b: None)
    other.attach(trainer2)
    with pytest.raises(ValueError) as err:
        trainer2.run([0], max_epochs=2)
    message = str(err.value)
    assert "unet2d" in message and "transunet2d" in message and "--ckpt_dir" in message
    assert str(tmp_path / "checkpoint_latest.pt") in message


def test_monai_checkpoint_loader_reads_described_and_plain_files(tmp_path: Path) -> None:
    """evaluate.json loads model.pt with CheckpointLoader(load_dict={"network": ...})."""
    source = torch.nn.Linear(3, 2)
    described = tmp_path / "described.pt"
    torch.save(checkpoint_with_meta({"network": source.state_dict()}, _meta()), described)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    for path in (described, plain):
        target = torch.nn.Linear(3, 2)
        CheckpointLoader(str(path), {"network": target})(Engine(lambda e, b: None))
        assert torch.equal(target.weight, source.weight)


def test_plain_state_dicts_have_no_description_and_still_load(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(_dynunet(TINY).state_dict(), path)
    assert read_meta(path) is None
    load_network_weights(_dynunet(TINY), path)
    config = load_bundle(BUNDLE, overrides={"filters": TINY})
    assert apply_checkpoint_meta(config, path) is None
    assert config["filters"] == TINY


def test_a_malformed_description_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"network": {"w": torch.zeros(1)}, META_KEY: {"filters": [1]}}, path)
    with pytest.raises(ValueError, match=r"model\.pt.*not a tumorseg checkpoint description"):
        read_meta(path)


# ------------------------------------------------------------------ settings and conflicts


def test_resolve_settings_fills_agrees_and_refuses_naming_both_values() -> None:
    meta = _meta()
    assert resolve_settings(meta, {}) == {
        "filters": TINY,
        "pixdim": [1.0, 1.0, 1.0],
        "roi_size": [32, 32, 32],
    }
    # The same values written differently agree; the sliding window may differ.
    same = resolve_settings(meta, {"filters": (4, 8, 16, 32, 64), "pixdim": [1, 1, 1]})
    assert same == {"roi_size": [32, 32, 32]}
    assert resolve_settings(meta, {"roi_size": [64, 64, 64]}) == {
        "filters": TINY,
        "pixdim": [1.0, 1.0, 1.0],
    }
    with pytest.raises(ValueError) as err:
        resolve_settings(meta, {"filters": [32, 64, 128, 256, 320]}, checkpoint="m.pt")
    text = str(err.value)
    assert "filters=[32,64,128,256,320]" in text and "filters=[4,8,16,32,64]" in text
    assert "m.pt" in text and "Drop the override" in text


def test_inference_takes_the_network_and_window_from_the_checkpoint(tmp_path: Path) -> None:
    path = _save_described(tmp_path / "model.pt")
    predictor = Predictor.from_bundle(BUNDLE, checkpoint=path, device="cpu")
    assert predictor.roi_size == (32, 32, 32)
    first = predictor.network.state_dict()["input_block.conv1.conv.weight"]
    assert first.shape[0] == TINY[0]
    # An explicit window is an inference choice: kept.
    wide = Predictor.from_bundle(BUNDLE, checkpoint=path, device="cpu", roi_size=[48, 48, 48])
    assert wide.roi_size == (48, 48, 48)


def test_inference_refuses_an_override_that_contradicts_the_checkpoint(tmp_path: Path) -> None:
    path = _save_described(tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"filters=\[8,16,32,64,128\] \(the checkpoint has "):
        Predictor.from_bundle(
            BUNDLE, checkpoint=path, device="cpu", overrides={"filters": [8, 16, 32, 64, 128]}
        )
    with pytest.raises(ValueError, match=r"pixdim=\[2,2,2\]"):
        Predictor.from_bundle(BUNDLE, checkpoint=path, overrides={"pixdim": [2, 2, 2]})


def test_inference_picks_the_network_file_of_the_checkpoint(tmp_path: Path) -> None:
    path = _save_described(tmp_path / "model.pt", network_name="segresnet")
    config = load_bundle(BUNDLE)
    apply_checkpoint_meta(config, path)
    assert config["network_name"] == "segresnet"
    assert config["network_def"]["_target_"] == "SegResNet"
    # With another network file chosen explicitly, both networks are named.
    config = load_bundle(BUNDLE, config_files=["networks/swinunetr.json"])
    with pytest.raises(ValueError, match=r"holds a segresnet network but the config builds"):
        apply_checkpoint_meta(config, path)


# ------------------------------------------------------------------ fine-tuning


def test_finetune_command_takes_the_checkpoint_settings(tmp_path: Path) -> None:
    path = _save_described(tmp_path / "model.pt")
    cmd = finetune_command(BUNDLE, path, dataset=tmp_path / "manifest.json")
    text = " ".join(cmd)
    assert "networks/unet.json" in text and "finetune.json" in text
    assert cmd[cmd.index("--filters") + 1] == "[4,8,16,32,64]"
    assert cmd[cmd.index("--roi_size") + 1] == "[32,32,32]"
    assert cmd[cmd.index("--datalist") + 1] == str(tmp_path / "manifest.json")
    assert cmd[cmd.index("--pretrained") + 1] == str(path)
    assert cmd[:5][1:] == ["-m", "tumorseg.bundle_run", "run", "training"]
    # The user's own values come last and replace the checkpoint's window, not its network.
    mine = finetune_command(BUNDLE, path, args=["--roi_size", "[48,48,48]", "--epochs", "2"])
    assert mine.count("--roi_size") == 1 and mine[-4:] == [
        "--roi_size",
        "[48,48,48]",
        "--epochs",
        "2",
    ]
    with pytest.raises(
        ValueError, match=r"filters=\[32,64,128,256,320\].*filters=\[4,8,16,32,64\]"
    ):
        finetune_command(BUNDLE, path, args=["--filters", "[32,64,128,256,320]"])
    with pytest.raises(ValueError, match="NETWORK=segresnet builds segresnet but .* dynunet"):
        finetune_command(BUNDLE, path, network="segresnet")


def test_finetune_command_from_plain_weights_keeps_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(_dynunet(TINY).state_dict(), path)
    cmd = finetune_command(BUNDLE, path, dataset=tmp_path, network="resenc_unet")
    assert "--filters" not in cmd and "networks/resenc_unet.json" in " ".join(cmd)
    assert cmd[cmd.index("--dataset_dir") + 1] == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="unknown NETWORK=nope; one of: .*unet"):
        finetune_command(BUNDLE, path, network="nope")
    with pytest.raises(FileNotFoundError, match="pretrained checkpoint not found"):
        finetune_command(BUNDLE, tmp_path / "missing.pt")


def test_parse_overrides_reads_monai_command_lines() -> None:
    parsed = parse_overrides(["--epochs", "3", "--roi_size=[8,8,8]", "--device", "cpu"])
    assert parsed == {"epochs": 3, "roi_size": [8, 8, 8], "device": "cpu"}
    with pytest.raises(ValueError, match="--epochs in ARGS has no value"):
        parse_overrides(["--epochs"])
    with pytest.raises(ValueError, match="got 'epochs'"):
        parse_overrides(["epochs", "3"])


def test_bundle_declares_the_description_of_its_checkpoints() -> None:
    """train.json's checkpoint_meta resolves to what the Checkpointer stores."""
    config = load_bundle(BUNDLE, overrides={"filters": TINY, "dataset_dir": str(BUNDLE)})
    config["data"] = {"_target_": "tumorseg.inference.InferenceData"}  # no training data read
    meta = config.get_parsed_content("checkpoint_meta")
    assert isinstance(meta, CheckpointMeta)
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert (meta.bundle_name, meta.bundle_version) == ("brats_mri_segmentation", version)
    assert meta.network_settings == {"filters": TINY}
    assert meta.channel_order == ["flair", "t1", "t1ce", "t2"] and meta.regions == [
        "WT",
        "TC",
        "ET",
    ]
    assert meta.roi_size == [96, 96, 96] and meta.pixdim == [1.0, 1.0, 1.0]


def test_the_viewer_builds_the_checkpoint_network(tmp_path: Path) -> None:
    """`tumorseg view --checkpoint` builds its upload predictor the same way."""
    from tumorseg.cli.view import _predictor

    path = _save_described(tmp_path / "model.pt")
    predictor = _predictor(str(BUNDLE), str(path), "cpu")
    assert predictor.roi_size == (32, 32, 32)
    assert predictor.network.state_dict()["input_block.conv1.conv.weight"].shape[0] == TINY[0]
