"""TransUNet: a CNN encoder, a transformer over the deepest feature map, a U-Net decoder.

After Chen et al., *TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation* (arXiv 2102.04306), in 2D and 3D. The CNN encoder (residual blocks, strided
convolutions) keeps the high-resolution detail that a pure transformer loses; its deepest map
(``1 / 2**(len(channels) - 1)`` of the input size) is projected to ``hidden_size`` and each
voxel becomes one token for ``num_layers`` pre-norm transformer blocks, so global context is
mixed in where tokens are few (8^3 = 512 for a 128^3 patch). The U-Net decoder up-samples
with skip connections from every encoder level.

Position embeddings are learnt on a ``pos_grid`` token grid and interpolated to the token grid
of the actual input, so one network accepts every patch size that is a multiple of the
encoder's total stride (``16`` with the default five levels).

Default width (3D, ``channels=(32, 64, 128, 256, 320)``, 6 layers of 384 wide / 6 heads):
about 27.9 M parameters; 0.98 TFLOP (multiply-adds counted as 2) per 128^3 x 4 patch forward
(``benchmarks/bench_networks.py``, ``torch.utils.flop_counter``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from monai.networks.layers.factories import Conv
from torch import nn

from tumorseg.networks._blocks import UpBlock

__all__ = ["TransUNet"]


class TransUNet(nn.Module):
    """TransUNet for 2D or 3D segmentation.

    Module names: ``encoder`` (the CNN levels), ``bottleneck`` (projection, position
    embedding, transformer), ``decoder`` and ``head``; ``("encoder.", "bottleneck.")`` is the
    encoder for :func:`tumorseg.networks.load_pretrained` and the fine-tuning helpers.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (4 MRI modalities in the bundle).
        out_channels: output channels (3 region logits in the bundle).
        channels: widths of the CNN encoder levels; every level after the first halves the
            size, so inputs must be multiples of ``2 ** (len(channels) - 1)``.
        hidden_size: token width of the transformer.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_dim: hidden width of the transformer MLP; default ``4 * hidden_size``.
        pos_grid: token grid the position embedding is learnt on (``(8, 8, 8)`` fits a 128^3
            patch); other grids are interpolated.
        dropout: dropout in the transformer.
        norm_name: MONAI norm of the CNN blocks.

    Raises:
        ValueError: bad sizes (the value received is shown).
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256, 320),
        hidden_size: int = 384,
        num_layers: int = 6,
        num_heads: int = 6,
        mlp_dim: int | None = None,
        pos_grid: Sequence[int] | None = None,
        dropout: float = 0.0,
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}")
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        grid = tuple(pos_grid) if pos_grid is not None else (8,) * spatial_dims
        if len(grid) != spatial_dims:
            raise ValueError(f"pos_grid must have {spatial_dims} sizes, got {tuple(grid)}")
        self.spatial_dims = spatial_dims
        self.divisor = 2 ** (len(channels) - 1)
        self.encoder = nn.ModuleList(
            UnetResBlock(
                spatial_dims,
                in_channels if i == 0 else channels[i - 1],
                c,
                kernel_size=3,
                stride=1 if i == 0 else 2,
                norm_name=norm_name,
            )
            for i, c in enumerate(channels)
        )
        self.bottleneck = _TokenTransformer(
            spatial_dims=spatial_dims,
            channels=channels[-1],
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_dim=mlp_dim or 4 * hidden_size,
            pos_grid=grid,
            dropout=dropout,
        )
        self.decoder = nn.ModuleList(
            UpBlock(
                spatial_dims=spatial_dims,
                in_channels=channels[i + 1],
                skip_channels=channels[i],
                out_channels=channels[i],
                stride=2,
                norm_name=norm_name,
            )
            for i in reversed(range(len(channels) - 1))
        )
        self.head = UnetOutBlock(spatial_dims, channels[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(
                f"TransUNet needs spatial sizes that are multiples of {self.divisor}, "
                f"got {tuple(x.shape[2:])}"
            )
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)


class _TokenTransformer(nn.Module):
    """Project a feature map to tokens, add position embeddings, transformer, project back."""

    def __init__(
        self,
        *,
        spatial_dims: int,
        channels: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        pos_grid: tuple[int, ...],
        dropout: float,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.proj_in = conv(channels, hidden_size, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden_size, *pos_grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            _Block(hidden_size, mlp_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.proj_out = conv(hidden_size, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.proj_in(x)
        grid = feat.shape[2:]
        pos: torch.Tensor = self.pos_embed
        if pos.shape[2:] != grid:
            mode = "trilinear" if len(grid) == 3 else "bilinear"
            pos = F.interpolate(pos, size=tuple(grid), mode=mode, align_corners=False)
        tokens = (feat + pos).flatten(2).transpose(1, 2)  # (B, N, hidden)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        feat = tokens.transpose(1, 2).reshape(feat.shape)
        # Residual around the transformer: the CNN features pass through unchanged at init.
        return x + self.proj_out(feat)


class _Block(nn.Module):
    """Pre-norm transformer block (ViT). Written out rather than MONAI's ``TransformerBlock``,
    which always creates cross-attention norm parameters that get no gradient (DDP would need
    ``find_unused_parameters`` for them)."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, hidden_size),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))
