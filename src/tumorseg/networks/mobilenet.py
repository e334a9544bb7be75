"""MobileNetV2 encoders for MONAI's :class:`~monai.networks.nets.FlexibleUNet` (2D and 3D).

MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"):
a 3x3 stride-2 stem of 32 channels, 17 inverted residual blocks (1x1 expansion by ``t``,
3x3 depthwise, linear 1x1 projection; a residual connection where stride is 1 and the width
is kept), then a 1x1 convolution to 1280 channels; batch norm and ReLU6 throughout. The
``(t, c, n, s)`` stages are :data:`INVERTED_RESIDUAL_SETTINGS`; widths are multiplied by
``width_mult`` and rounded to multiples of 8.

The module names are those of torchvision's ``mobilenet_v2().features`` (``features.0.0``
stem convolution, ``features.{i}.conv.*`` blocks, ``features.18`` last convolution), so a
locally saved torchvision state dict loads into ``FlexibleUNet(...).encoder`` with
:func:`tumorseg.networks.load_pretrained` (``encoder_prefix="encoder."``; the
``classifier.*`` keys are reported as unexpected). Weights are never downloaded.

Importing :mod:`tumorseg.networks` registers the family as FlexibleUNet backbones
``mobilenetv2_035``, ``mobilenetv2_050``, ``mobilenetv2_075``, ``mobilenetv2_100`` and
``mobilenetv2_140`` (see :data:`MOBILENETV2_WIDTHS`), so a bundle config can declare
``{"_target_": "FlexibleUNet", "backbone": "mobilenetv2_100", "spatial_dims": 2, ...}``
after ``"$import tumorseg.networks"``.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.layers.factories import Conv, Norm
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

__all__ = [
    "INVERTED_RESIDUAL_SETTINGS",
    "MOBILENETV2_WIDTHS",
    "MobileNetV2Encoder",
    "register_flexible_unet_backbones",
]

#: Backbone name -> width multiplier of the registered MobileNetV2 family.
MOBILENETV2_WIDTHS: dict[str, float] = {
    "mobilenetv2_035": 0.35,
    "mobilenetv2_050": 0.5,
    "mobilenetv2_075": 0.75,
    "mobilenetv2_100": 1.0,
    "mobilenetv2_140": 1.4,
}

#: ``(expansion t, output channels c, repeats n, first stride s)`` of each stage (Table 2).
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280
#: ``features`` indices whose outputs are the feature maps at strides 2, 4, 8, 16 and 32.
_FEATURE_INDICES = (1, 3, 6, 13, 18)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, never more than 10% below it.

    The rounding of the reference implementation: published widths for every multiplier
    (e.g. 0.75 x 24 = 18 -> 24, not 16) follow from it.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_width(width_mult: float) -> float:
    widths = sorted(set(MOBILENETV2_WIDTHS.values()))
    if width_mult not in widths:
        raise ValueError(
            f"MobileNetV2 width_mult must be one of {widths} (backbones "
            f"{sorted(MOBILENETV2_WIDTHS)}), got {width_mult!r}"
        )
    return float(width_mult)


def _feature_channels(width_mult: float) -> tuple[int, ...]:
    """Channels of the five feature maps (strides 2..32) for ``width_mult``."""
    stage = {c: _make_divisible(c * width_mult) for _, c, _, _ in INVERTED_RESIDUAL_SETTINGS}
    last = _make_divisible(_LAST_CHANNELS * max(1.0, width_mult))
    return (stage[16], stage[24], stage[32], stage[96], last)


class _ConvNormAct(nn.Sequential):
    """Convolution (no bias), batch norm, ReLU6: children ``0``, ``1``, ``2`` as torchvision."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            Conv[Conv.CONV, spatial_dims](
                in_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            Norm[Norm.BATCH, spatial_dims](out_channels),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    """Expansion 1x1 (absent for ``expand_ratio`` 1), depthwise 3x3, linear 1x1 projection."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvNormAct(spatial_dims, in_channels, hidden, kernel_size=1))
        layers += [
            _ConvNormAct(spatial_dims, hidden, hidden, stride=stride, groups=hidden),
            Conv[Conv.CONV, spatial_dims](hidden, out_channels, kernel_size=1, bias=False),
            Norm[Norm.BATCH, spatial_dims](out_channels),
        ]
        # The attribute name ``conv`` gives the torchvision keys ``features.{i}.conv.*``.
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Encoder(nn.Module, BaseEncoder):
    """MobileNetV2 feature extractor: five feature maps at strides 2, 4, 8, 16 and 32.

    For ``width_mult=1.0`` their channels are ``(16, 24, 32, 96, 1280)``: the outputs of
    ``features[1]``, ``features[3]``, ``features[6]``, ``features[13]`` and ``features[18]``.
    With 3 input channels and width 1.0 it has 2,223,872 parameters, those of torchvision's
    ``mobilenet_v2().features`` under the same names.

    Args:
        spatial_dims: 2 or 3 (ImageNet weights exist for 2D only; 3D runs from scratch).
        in_channels: input channels.
        pretrained: must be False: weights are loaded from a local file with
            :func:`tumorseg.networks.load_pretrained`, never downloaded. The argument exists
            because FlexibleUNet passes its own ``pretrained`` to every backbone.
        width_mult: width multiplier, one of the values of :data:`MOBILENETV2_WIDTHS`.

    Raises:
        ValueError: ``pretrained=True``, an unknown ``width_mult`` or ``spatial_dims`` (the
            value received is shown).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        pretrained: bool = False,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if pretrained:
            raise ValueError(
                "MobileNetV2Encoder got pretrained=True, but its weights are never downloaded: "
                "build it with pretrained=False and load a local file with "
                "tumorseg.networks.load_pretrained(network, path, encoder_prefix='encoder.')"
            )
        if spatial_dims not in (2, 3):
            raise ValueError(
                f"MobileNetV2Encoder spatial_dims must be 2 or 3, got {spatial_dims!r}"
            )
        if in_channels < 1:
            raise ValueError(f"MobileNetV2Encoder in_channels must be >= 1, got {in_channels!r}")
        self.width_mult = _check_width(width_mult)
        self.spatial_dims = spatial_dims

        channels = _make_divisible(_STEM_CHANNELS * self.width_mult)
        layers: list[nn.Module] = [_ConvNormAct(spatial_dims, in_channels, channels, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
            out_channels = _make_divisible(c * self.width_mult)
            for i in range(n):
                layers.append(
                    _InvertedResidual(
                        spatial_dims, channels, out_channels, s if i == 0 else 1, expand_ratio=t
                    )
                )
                channels = out_channels
        last = _make_divisible(_LAST_CHANNELS * max(1.0, self.width_mult))
        layers.append(_ConvNormAct(spatial_dims, channels, last, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialisation; from-scratch 3D training depends on it.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five feature maps of ``x`` (``(B, in_channels, *spatial)``), finest first."""
        features = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _FEATURE_INDICES:
                features.append(x)
        return features

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        """The FlexibleUNet backbone names, in the order of the other class methods."""
        return list(MOBILENETV2_WIDTHS)

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        """Constructor arguments per backbone (FlexibleUNet overrides the first three)."""
        return [
            {"spatial_dims": 2, "in_channels": 3, "pretrained": False, "width_mult": w}
            for w in MOBILENETV2_WIDTHS.values()
        ]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        """Channels of the five feature maps per backbone."""
        return [_feature_channels(w) for w in MOBILENETV2_WIDTHS.values()]

    @classmethod
    def num_outputs(cls) -> list[int]:
        """Five feature maps for every backbone."""
        return [len(_FEATURE_INDICES)] * len(MOBILENETV2_WIDTHS)


def register_flexible_unet_backbones() -> None:
    """Register the MobileNetV2 family in FlexibleUNet's backbone registry.

    Idempotent (the registry is a dict keyed by name); :mod:`tumorseg.networks` calls it on
    import.
    """
    FLEXUNET_BACKBONE.register_class(MobileNetV2Encoder)


# At import, so that "$import tumorseg.networks" in a bundle config makes the names known
# to FlexibleUNet before any network is built.
register_flexible_unet_backbones()
