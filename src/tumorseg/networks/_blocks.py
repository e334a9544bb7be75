"""Decoder building blocks shared by :mod:`.transunet` and :mod:`.resenc_unet`."""

from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["UpBlock"]


class UpBlock(nn.Module):
    """Up-sample, concatenate a skip connection, refine with a residual conv block.

    Unlike MONAI's ``UnetUpBlock`` the skip may have any width, so encoders whose widths are
    fixed by pretrained weights (ResNet-50: 256..2048) get a narrow decoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the coarser input.
        skip_channels: channels of the skip connection.
        out_channels: channels out.
        stride: up-sampling factor (1 keeps the size: a 1x1 convolution).
        norm_name: MONAI norm name for the conv block.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        stride: int,
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        if stride > 1:
            self.up: nn.Module = Conv[Conv.CONVTRANS, spatial_dims](
                in_channels, out_channels, kernel_size=stride, stride=stride, bias=False
            )
        else:
            self.up = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 1, bias=False)
        self.conv = UnetResBlock(
            spatial_dims,
            out_channels + skip_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            norm_name=norm_name,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([x, skip], dim=1))
