"""MONAI FlexibleUNet with the MobileNetV2 backbones of tumorseg and MONAI's EfficientNet-B0:
torchvision-compatible names, feature maps, forward/backward, pretrained loading from a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import EfficientNetBN, EfficientNetBNFeatures, FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from tumorseg.networks import (
    MOBILENETV2_WIDTHS,
    MobileNetV2Encoder,
    PretrainedMismatchError,
    encoder_prefix_for,
    load_pretrained,
    param_groups,
    register_flexible_unet_backbones,
)

MOBILENET_STEM = "encoder.features.0.0.weight"
EFFICIENTNET_STEM = "encoder._conv_stem.weight"


def flexible(backbone: str, **more: object) -> FlexibleUNet:
    args: dict[str, object] = {"in_channels": 4, "out_channels": 3, "spatial_dims": 2}
    return FlexibleUNet(backbone=backbone, pretrained=False, **{**args, **more})  # type: ignore[arg-type]


def randomise_norm_statistics(module: nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode outputs depend on them being loaded."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.1)


def test_width_one_encoder_has_torchvision_names_shapes_and_parameter_count() -> None:
    encoder = MobileNetV2Encoder(in_channels=3)
    state = encoder.state_dict()
    # torchvision's mobilenet_v2 has 3,504,872 parameters: these plus the 1280 x 1000 + 1000
    # classifier.
    assert sum(p.numel() for p in encoder.features.parameters()) == 2_223_872
    assert 3_504_872 - 2_223_872 == 1280 * 1000 + 1000
    assert len(encoder.features) == 19
    expected = {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.running_var": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),  # t = 1: no expansion, depthwise first
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.weight": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.running_mean": (24,),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.bias": (1280,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 52 and all(c.bias is None for c in convs)
    assert all(k.startswith("features.") for k in state)


@pytest.mark.parametrize("name", sorted(MOBILENETV2_WIDTHS))
def test_encoder_outputs_match_the_registered_channels_and_strides(name: str) -> None:
    entry = FLEXUNET_BACKBONE.register_dict[name]
    assert entry["type"] is MobileNetV2Encoder and entry["feature_number"] == 5
    encoder = MobileNetV2Encoder(in_channels=4, width_mult=MOBILENETV2_WIDTHS[name]).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 4, 64, 64))
    assert len(features) == 5
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]  # strides 2, 4, ..., 32
    assert tuple(f.shape[1] for f in features) == entry["feature_channel"]


def test_registered_channels_of_the_family() -> None:
    channels = {
        n: FLEXUNET_BACKBONE.register_dict[n]["feature_channel"] for n in MOBILENETV2_WIDTHS
    }
    assert channels == {
        "mobilenetv2_035": (8, 8, 16, 32, 1280),
        "mobilenetv2_050": (8, 16, 16, 48, 1280),
        "mobilenetv2_075": (16, 24, 24, 72, 1280),
        "mobilenetv2_100": (16, 24, 32, 96, 1280),
        "mobilenetv2_140": (24, 32, 48, 136, 1792),
    }
    names = set(FLEXUNET_BACKBONE.register_dict)
    register_flexible_unet_backbones()  # again: idempotent
    assert set(FLEXUNET_BACKBONE.register_dict) == names
    assert (
        FLEXUNET_BACKBONE.register_dict["mobilenetv2_100"]["feature_channel"]
        == channels["mobilenetv2_100"]
    )
    assert "efficientnet-b0" in FLEXUNET_BACKBONE.register_dict  # MONAI's own entries kept


def test_bundle_config_declares_the_network() -> None:
    parser = ConfigParser(
        {
            "imports": ["$import tumorseg.networks"],
            "network_def": {
                "_target_": "FlexibleUNet",
                "backbone": "mobilenetv2_100",
                "spatial_dims": 2,
                "in_channels": 4,
                "out_channels": 3,
                "pretrained": False,
            },
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, FlexibleUNet) and isinstance(net.encoder, MobileNetV2Encoder)
    assert net.encoder.features[0][0].in_channels == 4


@pytest.mark.parametrize("backbone", ["mobilenetv2_100", "efficientnet-b0"])
def test_flexible_unet_2d_forward_backward(backbone: str) -> None:
    torch.manual_seed(0)
    net = flexible(backbone)
    out = net(torch.randn(1, 4, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    out.square().mean().backward()
    no_grad = {n.split(".")[1] for n, p in net.named_parameters() if p.grad is None}
    # MONAI's EfficientNet encoder keeps the classification head (unused by the U-Net) so
    # that full ImageNet checkpoints load without unexpected keys.
    assert no_grad == (set() if backbone.startswith("mobilenet") else {"_conv_head", "_bn1", "_fc"})
    stem = (
        net.encoder.features[0][0] if backbone.startswith("mobilenet") else net.encoder._conv_stem
    )
    assert stem.weight.grad is not None and float(stem.weight.grad.abs().sum()) > 0


def test_flexible_unet_3d_mobilenet_forward() -> None:
    net = flexible("mobilenetv2_100", spatial_dims=3).eval()
    assert isinstance(net.encoder.features[0][0], nn.Conv3d)
    with torch.no_grad():
        out = net(torch.randn(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32) and torch.isfinite(out).all()


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def mobilenet_source(path: Path) -> tuple[nn.Module, Path]:
    """A 3-channel MobileNetV2 saved as torchvision saves ``mobilenet_v2().state_dict()``."""
    torch.manual_seed(3)
    src = MobileNetV2Encoder(in_channels=3)
    randomise_norm_statistics(src)
    state = dict(src.state_dict())
    state["classifier.1.weight"] = torch.randn(1000, 1280)
    state["classifier.1.bias"] = torch.randn(1000)
    return src.eval(), _save(state, path)


def efficientnet_source(path: Path) -> tuple[nn.Module, Path]:
    """A 3-channel EfficientNet-B0 in the layout of the public ``efficientnet-b0`` .pth files."""
    torch.manual_seed(4)
    full = EfficientNetBN("efficientnet-b0", pretrained=False, in_channels=3, spatial_dims=2)
    randomise_norm_statistics(full)
    path = _save(full.state_dict(), path)
    # The same weights with a feature-map forward, the reference for the encoder's outputs.
    ref = EfficientNetBNFeatures("efficientnet-b0", pretrained=False, in_channels=3)
    ref.load_state_dict(full.state_dict())
    return ref.eval(), path


SOURCES = {
    "mobilenetv2_100": (
        mobilenet_source,
        MOBILENET_STEM,
        ["classifier.1.weight", "classifier.1.bias"],
    ),
    "efficientnet-b0": (efficientnet_source, EFFICIENTNET_STEM, []),
}


@pytest.mark.parametrize("backbone", sorted(SOURCES))
def test_three_channel_checkpoint_loads_into_four_channel_encoder(
    tmp_path: Path, backbone: str
) -> None:
    make, stem, unexpected = SOURCES[backbone]
    src, path = make(tmp_path / "src.pth")
    net = flexible(backbone).eval()
    decoder_before = {k: v.clone() for k, v in net.state_dict().items() if "encoder." not in k}
    report = load_pretrained(net, path, encoder_prefix="encoder.", in_channels_strategy="mean")

    assert report.missing == [] and report.shape_mismatched == []
    assert sorted(report.unexpected) == sorted(unexpected)
    assert report.encoder_share == pytest.approx(1.0)
    assert list(report.adapted) == [stem]
    state, source = net.state_dict(), src.state_dict()
    for key, value in source.items():
        if "encoder." + key != stem:
            assert torch.equal(state["encoder." + key], value), key
    assert all(torch.equal(state[k], v) for k, v in decoder_before.items())  # decoder untouched

    # First convolution, 3 -> 4 input channels: the four slices are one filter, the source's
    # channel mean scaled by 3/4, so their sum is the sum of the source's three slices.
    w3, w4 = source[stem[len("encoder.") :]], state[stem]
    assert w4.shape == (w3.shape[0], 4, *w3.shape[2:])
    assert all(torch.equal(w4[:, i], w4[:, 0]) for i in range(4))
    torch.testing.assert_close(w4.sum(1), w3.sum(1))
    # So the encoder responds to a grey image repeated over 4 channels exactly as the source
    # to it repeated over 3 channels.
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        got = net.encoder(x.repeat(1, 4, 1, 1))
        want = src(x.repeat(1, 3, 1, 1))
    assert len(got) == len(want) == 5
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-4, rtol=1e-4)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    _, path = efficientnet_source(tmp_path / "effnet.pth")
    net = flexible("mobilenetv2_100")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PretrainedMismatchError, match="0.0% of the encoder matched") as info:
        load_pretrained(net, path, encoder_prefix="encoder.", in_channels_strategy="mean")
    assert MOBILENET_STEM in info.value.report.missing
    assert "_conv_stem.weight" in info.value.report.unexpected
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_arguments_say_what_was_received() -> None:
    with pytest.raises(ValueError, match=r"width_mult must be one of .* got 0\.6"):
        MobileNetV2Encoder(width_mult=0.6)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        MobileNetV2Encoder(spatial_dims=1)
    with pytest.raises(ValueError, match=r"pretrained=True.*never downloaded.*load_pretrained"):
        MobileNetV2Encoder(pretrained=True)
    with pytest.raises(ValueError, match=r"pretrained=True.*never downloaded"):
        FlexibleUNet(4, 3, backbone="mobilenetv2_050", pretrained=True)


def test_finetune_helpers_know_the_flexible_unet_encoder() -> None:
    net = flexible("mobilenetv2_035")
    assert encoder_prefix_for(net) == ("encoder.",)
    groups = param_groups(net, encoder_prefix=encoder_prefix_for(net), lr=1e-3, encoder_lr=1e-4)
    encoder_ids = {id(p) for p in net.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == encoder_ids
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    rest = groups[1]["params"]
    assert rest and not any(id(p) in encoder_ids for p in rest)
    assert len(groups[0]["params"]) + len(rest) == len(list(net.parameters()))
