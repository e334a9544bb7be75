"""The pretrained-weight loader and the fine-tuning helpers, with checkpoints built here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.networks.nets import ResNet, SegResNet, SwinUNETR

from tumorseg.networks import (
    FreezeEncoder,
    PretrainedMismatchError,
    ResEncUNet,
    load_pretrained,
    param_groups,
)
from tumorseg.tracking import pretrained_tags, with_tags

SMALL_RESNET = {"depth": 10, "block_inplanes": (8, 8, 16, 16)}


def resenc(**more: object) -> ResEncUNet:
    return ResEncUNet(**SMALL_RESNET, decoder_channels=(16, 8, 8, 8, 4), **more)  # type: ignore[arg-type]


def medicalnet_checkpoint(path: Path, *, in_channels: int = 1) -> dict[str, torch.Tensor]:
    """A MedicalNet-style file: {"state_dict": {"module.conv1.weight": ...}}, 1-channel input,
    the classification/segmentation head MedicalNet ships (``conv_seg``) included."""
    torch.manual_seed(1)
    net = ResNet(
        "basic",
        [1, 1, 1, 1],
        [8, 8, 16, 16],
        n_input_channels=in_channels,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state["module.conv_seg.1.weight"] = torch.zeros(2, 16, 1, 1, 1)
    torch.save({"state_dict": state, "epoch": 7}, path)
    return net.state_dict()


def test_medicalnet_checkpoint_loads_with_prefix_and_one_channel_conv(tmp_path: Path) -> None:
    src = medicalnet_checkpoint(tmp_path / "resnet_10.pth")
    net = resenc()
    report = load_pretrained(net, tmp_path / "resnet_10.pth", encoder_prefix="encoder.")
    state = net.state_dict()
    assert report.encoder_share == pytest.approx(1.0)
    assert report.missing == [] and report.shape_mismatched == []
    assert report.unexpected == ["conv_seg.1.weight"]
    assert torch.equal(state["encoder.layer3.0.conv1.weight"], src["layer3.0.conv1.weight"])
    assert torch.equal(state["encoder.bn1.running_var"], src["bn1.running_var"])
    # 1 -> 4 channels: replicated and divided by 4.
    w1, w4 = src["conv1.weight"], state["encoder.conv1.weight"]
    assert w4.shape[1] == 4
    assert torch.allclose(w4, w1.repeat(1, 4, 1, 1, 1) / 4)
    assert "tiled x 1/4" in report.adapted["encoder.conv1.weight"]
    # ...so identical input channels give exactly the pretrained first-layer response.
    x = torch.randn(1, 1, 8, 8, 8)
    ref = torch.nn.functional.conv3d(x, w1, padding=3)
    out = torch.nn.functional.conv3d(x.repeat(1, 4, 1, 1, 1), w4, padding=3)
    assert torch.allclose(ref, out, atol=1e-5)
    # The decoder is not part of the encoder and keeps its initialisation.
    assert "stem.conv1.conv.weight" not in report.matched


@pytest.mark.parametrize("strategy", ["copy", "mean", "skip"])
def test_in_channel_strategies(tmp_path: Path, strategy: str) -> None:
    src = medicalnet_checkpoint(tmp_path / "c.pt")
    net = resenc()
    before = net.state_dict()["encoder.conv1.weight"].clone()
    report = load_pretrained(
        net,
        tmp_path / "c.pt",
        encoder_prefix="encoder.",
        in_channels_strategy=strategy,  # type: ignore[arg-type]
    )
    w4 = net.state_dict()["encoder.conv1.weight"]
    if strategy == "copy":
        assert torch.equal(w4, src["conv1.weight"].repeat(1, 4, 1, 1, 1))
    elif strategy == "mean":
        assert torch.allclose(w4, src["conv1.weight"].repeat(1, 4, 1, 1, 1) / 4)
    else:
        assert torch.equal(w4, before)
        assert report.shape_mismatched[0][0] == "encoder.conv1.weight"


def test_channel_order_reorders_first_conv(tmp_path: Path) -> None:
    # A 4-channel network trained with the MONAI model zoo's order T1c, T1, T2, FLAIR.
    torch.manual_seed(2)
    src = resenc()
    torch.save(src.state_dict(), tmp_path / "zoo.pt")
    net = resenc()
    report = load_pretrained(
        net, tmp_path / "zoo.pt", channel_order=["t1c", "t1", "t2", "flair"], encoder_prefix=""
    )
    w = src.state_dict()["encoder.conv1.weight"]
    got = net.state_dict()["encoder.conv1.weight"]
    # tumorseg's FLAIR, T1, T1ce, T2 are the checkpoint's channels 3, 1, 0, 2.
    assert torch.equal(got, w[:, [3, 1, 0, 2]])
    assert "reordered" in report.adapted["encoder.conv1.weight"]
    assert report.encoder_share == pytest.approx(1.0)  # whole network, decoder included
    with pytest.raises(ValueError, match=r"unknown modality 'pd'"):
        load_pretrained(resenc(), tmp_path / "zoo.pt", channel_order=["pd", "t1", "t2", "t1c"])


def test_partial_match_reports_and_loads_what_fits(tmp_path: Path) -> None:
    state = medicalnet_checkpoint(tmp_path / "full.pt")
    # Keep conv1, bn1 and layer1-2 only: about a quarter of the encoder's elements.
    part = {f"module.{k}": v for k, v in state.items() if not k.startswith(("layer3", "layer4"))}
    torch.save({"state_dict": part}, tmp_path / "part.pt")
    net = resenc()
    report = load_pretrained(net, tmp_path / "part.pt", encoder_prefix="encoder.", min_matched=0.1)
    assert 0.1 < report.encoder_share < 0.5
    assert any(k.startswith("encoder.layer4.") for k in report.missing)
    assert not any(k.startswith("encoder.layer1.") for k in report.missing)
    with pytest.raises(PretrainedMismatchError, match="less than min_matched=50%"):
        load_pretrained(resenc(), tmp_path / "part.pt", encoder_prefix="encoder.")


def test_wrong_architecture_is_refused_with_what_did_not_match(tmp_path: Path) -> None:
    torch.save({"model": SegResNet(init_filters=8, in_channels=4).state_dict()}, tmp_path / "s.pt")
    net = resenc()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PretrainedMismatchError) as info:
        load_pretrained(net, tmp_path / "s.pt", encoder_prefix="encoder.")
    msg = str(info.value)
    assert "0.0% of the encoder matched" in msg
    assert "missing (encoder): encoder.conv1.weight" in msg
    assert "unexpected (checkpoint): convInit.conv.weight" in msg
    assert info.value.report.matched == []
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # untouched


def test_shape_mismatch_of_a_deeper_layer_is_listed(tmp_path: Path) -> None:
    wide = ResEncUNet(depth=10, block_inplanes=(8, 8, 16, 32), decoder_channels=(16, 8, 8, 8, 4))
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(PretrainedMismatchError, match=r"encoder\.layer4\.0\.conv1\.weight \(32,"):
        load_pretrained(resenc(), tmp_path / "wide.pt", encoder_prefix="encoder.", min_matched=0.9)


def test_swinvit_self_supervised_weights_load_into_swinunetr(tmp_path: Path) -> None:
    # model_swinvit.pt layout: module.-prefixed encoder keys, MLP named fc1/fc2, 1 channel.
    kwargs = {"in_channels": 1, "out_channels": 2, "feature_size": 12, "depths": (1, 1, 1, 1)}
    ssl = SwinUNETR(**kwargs).swinViT  # type: ignore[arg-type]
    state = {
        "module." + k.replace("mlp.linear1", "mlp.fc1").replace("mlp.linear2", "mlp.fc2"): v
        for k, v in ssl.state_dict().items()
    }
    state["module.rotation_head.weight"] = torch.zeros(4, 8)
    torch.save({"state_dict": state, "epoch": 100}, tmp_path / "model_swinvit.pt")
    net = SwinUNETR(**{**kwargs, "in_channels": 4, "out_channels": 3})  # type: ignore[arg-type]
    report = load_pretrained(
        net, tmp_path / "model_swinvit.pt", encoder_prefix="swinViT.", name_map="swinvit"
    )
    assert report.encoder_share == pytest.approx(1.0)
    assert report.unexpected == ["rotation_head.weight"]
    got = net.state_dict()
    assert torch.equal(
        got["swinViT.layers1.0.blocks.0.mlp.linear1.weight"],
        ssl.state_dict()["layers1.0.blocks.0.mlp.linear1.weight"],
    )
    assert got["swinViT.patch_embed.proj.weight"].shape[1] == 4


def test_bad_inputs_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained(resenc(), tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot load pretrained checkpoint"):
        load_pretrained(resenc(), tmp_path / "junk.pt")
    medicalnet_checkpoint(tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"min_matched must be within \[0, 1\], got 2"):
        load_pretrained(resenc(), tmp_path / "m.pt", min_matched=2)
    with pytest.raises(ValueError, match="no network key starts with encoder_prefix"):
        load_pretrained(resenc(), tmp_path / "m.pt", encoder_prefix="backbone.")


def test_param_groups_and_freeze_encoder_schedule() -> None:
    net = resenc()
    groups = param_groups(net, encoder_prefix="encoder.", lr=1e-3, encoder_lr=1e-4)
    n_enc = sum(1 for n, _ in net.named_parameters() if n.startswith("encoder."))
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert len(groups[0]["params"]) == n_enc
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))

    seen: list[tuple[int, bool, bool]] = []
    enc = net.encoder.conv1.weight
    dec = net.head.conv.conv.weight

    def step(engine: Engine, _: object) -> None:
        seen.append((engine.state.epoch, enc.requires_grad, dec.requires_grad))

    engine = Engine(step)
    FreezeEncoder(net, encoder_prefix="encoder.", epochs=2).attach(engine)
    engine.run([0], max_epochs=4)
    assert seen == [(1, False, True), (2, False, True), (3, True, True), (4, True, True)]
    with pytest.raises(ValueError, match="no parameter name starts with"):
        FreezeEncoder(net, encoder_prefix="enc0.", epochs=1)


def test_pretrained_tags_and_tracker_tagging(tmp_path: Path) -> None:
    medicalnet_checkpoint(tmp_path / "model.pt")
    (tmp_path / "mlflow_run.json").write_text('{"run_id": "abc123", "tracking_uri": "x"}')
    tags = pretrained_tags(tmp_path / "model.pt")
    assert tags["tumorseg.pretrained.run_id"] == "abc123"
    assert len(tags["tumorseg.pretrained.sha256"]) == 64

    class Tracker:
        tags: dict[str, str] = {}

    tracker = Tracker()
    tracker.tags = {"a": "1"}
    assert with_tags([object(), tracker], tags)[1] is tracker
    assert tracker.tags["tumorseg.pretrained"] == tags["tumorseg.pretrained"]
    assert pretrained_tags("") == {"tumorseg.pretrained": "none"}
