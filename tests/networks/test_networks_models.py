"""Every network of ``configs/networks/``: forward/backward at small sizes, and MONAI's
``verify_net_in_out`` on each network file (in-process: one Python start-up for all five)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigParser

from tumorseg.networks import ResEncUNet, TransUNet

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_segmentation" / "configs"

#: Narrow widths per network file (config ids -> values) and the ``--n`` of the check.
SMALL: dict[str, tuple[dict[str, Any], int]] = {
    "unet": ({"filters": [4, 8, 16, 32, 32]}, 2),
    "segresnet": ({"network_def#init_filters": 8}, 2),
    # SwinUNETR halves 5 times and instance-normalises the 1/32 map: it needs >= 64^3.
    "swinunetr": ({"network_def#feature_size": 12, "network_def#depths": [1, 1, 1, 1]}, 4),
    "transunet": (
        {
            "network_def#channels": [4, 8, 16, 32, 32],
            "network_def#hidden_size": 32,
            "network_def#num_heads": 4,
            "network_def#num_layers": 1,
        },
        2,
    ),
    "resenc_unet": (
        {
            "network_def#depth": 10,
            "network_def#block_inplanes": [8, 8, 16, 16],
            "network_def#decoder_channels": [16, 8, 8, 8, 4],
        },
        2,
    ),
}


def build(name: str, **more: Any) -> torch.nn.Module:
    """The network of ``networks/<name>.json`` merged after train.json, at the small width."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "networks" / f"{name}.json")])
    for key, value in {**SMALL[name][0], **more}.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def test_every_network_file_is_covered() -> None:
    assert {p.stem for p in (CONFIGS / "networks").glob("*.json")} == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_backward_every_network(name: str) -> None:
    torch.manual_seed(0)
    net = build(name)
    size = 16 * SMALL[name][1]
    # Batch 2 for the batch-norm encoder of resenc_unet; 1 keeps SwinUNETR's 64^3 cheap.
    batch = 1 if name == "swinunetr" else 2
    x = torch.randn(batch, 4, size, size, size)
    out = net(x)
    assert out.shape == (batch, 3, size, size, size)
    out.float().square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_verify_net_in_out_passes_for_every_network_file(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from monai.bundle import verify_net_in_out

    files = [str(CONFIGS / "train.json"), str(CONFIGS / "networks" / f"{name}.json")]
    overrides, n = SMALL[name]
    with caplog.at_level("INFO"):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(CONFIGS / "metadata.json"),
            config_file=files,
            device="cpu",
            n=n,
            **overrides,
        )
    assert "verified with no error" in caplog.text


def test_network_names_reach_mlflow_params() -> None:
    for name in SMALL:
        parser = ConfigParser()
        parser.read_config(
            [str(CONFIGS / "train.json"), str(CONFIGS / "networks" / f"{name}.json")]
        )
        expected = "dynunet" if name == "unet" else name
        assert parser.get_parsed_content("network_name") == expected


def test_transunet_2d_and_position_embedding_interpolation() -> None:
    net = TransUNet(
        spatial_dims=2,
        channels=(4, 8, 16),
        hidden_size=16,
        num_heads=2,
        num_layers=1,
        pos_grid=(4, 4),
    )
    # 32x48 gives an 8x12 token grid: the 4x4 embedding is interpolated to it.
    assert net(torch.randn(1, 4, 32, 48)).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match=r"multiples of 4, got \(30, 48\)"):
        net(torch.randn(1, 4, 30, 48))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TransUNet(hidden_size=30, num_heads=4)


def test_resenc_unet_uses_medicalnet_names_and_2d() -> None:
    net = ResEncUNet(depth=18, block_inplanes=(8, 8, 16, 16), decoder_channels=(8, 8, 8, 8, 4))
    keys = set(net.state_dict())
    # MedicalNet names (module. stripped) under "encoder."; resnet18 uses shortcut "A".
    assert {"encoder.conv1.weight", "encoder.bn1.running_mean"} <= keys
    assert "encoder.layer4.1.conv2.weight" in keys
    assert not any(".fc." in k for k in keys)
    net50 = ResEncUNet(depth=50, block_inplanes=(4, 4, 8, 8), decoder_channels=(8, 8, 8, 8, 4))
    assert "encoder.layer1.0.downsample.0.weight" in net50.state_dict()
    net2d = ResEncUNet(
        spatial_dims=2, depth=10, block_inplanes=(4, 4, 8, 8), decoder_channels=(8, 8, 8, 8, 4)
    )
    assert net2d(torch.randn(2, 4, 32, 64)).shape == (2, 3, 32, 64)
    with pytest.raises(ValueError, match="depth must be one of"):
        ResEncUNet(depth=12)
