"""A U-Net whose encoder is a 3D ResNet named exactly like MedicalNet's, for pretrained starts.

The encoder is MONAI's :class:`~monai.networks.nets.ResNet` (``conv1``, ``bn1``, ``layer1``
... ``layer4``, ``downsample.0/1``: the module names of MedicalNet, Chen et al. 2019,
``Tencent/MedicalNet``) under the attribute ``encoder``, so a MedicalNet checkpoint's
``module.layer1.0.conv1.weight`` is this network's ``encoder.layer1.0.conv1.weight`` after
:func:`tumorseg.networks.load_pretrained` strips ``module.``. Shortcut type and down-sampling
bias follow MONAI's ``get_medicalnet_pretrained_resnet_args`` per depth, so the published
weights fit. (MedicalNet dilates ``layer3``/``layer4`` instead of striding them; the weights
do not depend on that, and a U-Net needs the strides.)

The decoder up-samples from ``layer4`` (1/32 of the input) through skips from ``layer3``,
``layer2``, ``layer1``, ``conv1`` and a full-resolution stem (a decoder-side conv block on
the input, so the finest detail does not depend on the 7^3 strided first convolution). Inputs
must be multiples of 32 (16 with ``no_max_pool``).

ResNet-18 encoder, default decoder: about 41.7 M parameters, 0.33 TFLOP per 128^3 x 4 patch
forward (``benchmarks/bench_networks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from monai.networks.nets.resnet import ResNet, get_medicalnet_pretrained_resnet_args
from torch import nn

from tumorseg.networks._blocks import UpBlock

__all__ = ["RESNET_LAYERS", "ResEncUNet"]

#: depth -> (block, blocks per stage), the MedicalNet / torchvision family.
RESNET_LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class ResEncUNet(nn.Module):
    """U-Net with a (MedicalNet-compatible) ResNet encoder.

    Args:
        spatial_dims: 2 or 3 (MedicalNet weights are 3D).
        in_channels: input channels.
        out_channels: output channels.
        depth: ResNet depth, one of :data:`RESNET_LAYERS` (10, 18, 34, 50, 101).
        block_inplanes: stage widths before the block expansion; MedicalNet uses
            ``(64, 128, 256, 512)`` (narrower values only for tests, no weights exist).
        decoder_channels: widths of the five decoder levels, coarsest first.
        norm: encoder norm (``"batch"`` as in MedicalNet, whose weights include it).
        decoder_norm: decoder norm (instance norm suits small batches of patches).
        no_max_pool: skip the stem's max pooling (total stride 16 instead of 32).

    Raises:
        ValueError: an unknown depth or wrong number of widths (the value is shown).
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        depth: int = 18,
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str | tuple = "batch",
        decoder_norm: str | tuple = "instance",
        no_max_pool: bool = False,
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        if len(block_inplanes) != 4:
            raise ValueError(f"block_inplanes needs 4 widths, got {tuple(block_inplanes)}")
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 widths, got {tuple(decoder_channels)}")
        block, layers = RESNET_LAYERS[depth]
        bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
        self.encoder = ResNet(
            block,
            list(layers),
            list(block_inplanes),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            no_max_pool=no_max_pool,
            shortcut_type=shortcut,
            bias_downsample=bias_downsample,
            feed_forward=False,
            norm=norm,
        )
        expansion = 4 if block == "bottleneck" else 1
        # Widths of the skips, finest first: stem, conv1, layer1..layer4.
        stem = decoder_channels[-1]
        skips = [stem, int(block_inplanes[0])] + [int(c) * expansion for c in block_inplanes]
        # Up-sampling factor into each skip's resolution, coarsest first.
        strides = [2, 2, 2, 1 if no_max_pool else 2, 2]
        self.divisor = 16 if no_max_pool else 32
        self.stem = UnetResBlock(
            spatial_dims, in_channels, stem, kernel_size=3, stride=1, norm_name=decoder_norm
        )
        ups = []
        prev = skips[-1]
        for i, out in enumerate(decoder_channels):
            ups.append(
                UpBlock(
                    spatial_dims=spatial_dims,
                    in_channels=prev,
                    skip_channels=skips[-2 - i],
                    out_channels=int(out),
                    stride=strides[i],
                    norm_name=decoder_norm,
                )
            )
            prev = int(out)
        self.decoder = nn.ModuleList(ups)
        self.head = UnetOutBlock(spatial_dims, prev, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(
                f"ResEncUNet needs spatial sizes that are multiples of {self.divisor}, "
                f"got {tuple(x.shape[2:])}"
            )
        enc = self.encoder
        feats = [self.stem(x)]
        y = enc.act(enc.bn1(enc.conv1(x)))
        feats.append(y)
        if not enc.no_max_pool:
            y = enc.maxpool(y)
        for stage in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
            y = stage(y)
            feats.append(y)
        y = feats.pop()
        for up in self.decoder:
            y = up(y, feats.pop())
        return self.head(y)
