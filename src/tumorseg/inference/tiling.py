"""Window placement for 3D inference, and the inferer that runs it at reduced precision.

A fully convolutional network does not need the windows it was trained on at inference: it
needs enough context around each voxel. Two ways to spend less compute than MONAI's
``SlidingWindowInferer`` with its fixed stride:

* ``windows``: per axis the fewest windows whose overlap is at least ``overlap`` of the window,
  placed exactly where MONAI's ``SlidingWindowInferer`` places them (:func:`axis_starts`),
  blended with a Gaussian (or constant) importance map: in float32 the same logits as MONAI's
  inferer, so a lower ``overlap`` or ``precision`` is the only change. (Spreading the windows
  evenly instead changed every window's instance-norm statistics and, on real studies, a
  synthetic-trained model's masks: ``docs/benchmarks.md``.)
* ``whole``: the whole crop in one forward pass, zero-padded (as background is after
  normalisation) to a size the network's downsampling divides (:func:`size_multiple`). No
  voxel is computed twice. The network's instance normalisation then takes its statistics
  over the whole crop instead of one window, which moves a trained model's masks: with the
  demo's synthetic-trained model, to Dice 0.38-0.58 of the windowed reference on a ~7-window
  real block, and still to 0.92-0.96 on average (0.58 at worst) on crops of at most 2 windows,
  the ones ``auto`` runs whole; Dice against the labels moved by at most 0.0034 there
  (``docs/benchmarks.md``).
* ``auto``: ``whole`` when the padded crop has at most ``max_whole_voxels`` voxels (memory grows
  with it) *and* at most ``max_whole_ratio`` (2) times a window's, else ``windows``. The ratio
  keeps a whole pass to crops a window already nearly covers: a model trained on windows much
  smaller than the crop sees other instance-norm statistics in one pass over it, and its masks
  change (the demo's 32-voxel model on 48-voxel studies: Dice 0.89 to its windowed masks,
  ``docs/benchmarks.md``).

:class:`TiledInferer` accumulates the blended probabilities' logits in float32 whatever the
network's autocast dtype (:func:`tumorseg.networks.inference_dtype`); under autocast the
normalisation layers of windows still run in float32 (:func:`tumorseg.networks.float32_norms`),
those of a whole pass in the low precision (memory).
Channels-last-3d memory format is not offered: on this project's CPU (oneDNN, AVX-512 BF16)
it made a bfloat16 window of the nnU-Net-sized DynUNet 8.7x slower (``docs/benchmarks.md``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map
from monai.inferers import SlidingWindowInferer
from monai.utils import ensure_tuple, ensure_tuple_rep

from tumorseg.networks import float32_norms, inference_dtype

__all__ = [
    "TILINGS",
    "TiledInferer",
    "axis_starts",
    "padded_size",
    "size_multiple",
    "window_starts",
]

#: Values of the inference ``tiling`` key and of ``tumorseg infer --tiling``.
TILINGS: tuple[str, ...] = ("auto", "windows", "whole")

#: Default for ``auto``: the padded crop of a BraTS study (160x192x144) fits, with room.
DEFAULT_MAX_WHOLE_VOXELS = 160 * 192 * 160
#: Default for ``auto``: a whole pass over at most twice a window's voxels.
DEFAULT_MAX_WHOLE_RATIO = 2.0


def axis_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the fewest windows of ``roi`` covering ``size`` with ``overlap`` or more.

    The windows step by ``int(roi * (1 - overlap))`` (at least 1) and the last one is moved
    back to end flush with the axis: exactly the placement of MONAI's
    :class:`~monai.inferers.SlidingWindowInferer` (``dense_patch_slices``), so in float32 the
    windows reproduce its logits. (Spreading the same number of windows evenly instead moved the
    masks of a synthetic-trained model on a real study to Dice 0.76-0.93 of the reference's,
    each window normalising over other voxels: ``docs/benchmarks.md``.)

    Args:
        size: length of the axis (at least ``roi``: pad shorter axes first).
        roi: window length.
        overlap: minimum overlap of neighbouring windows, a fraction of ``roi`` in [0, 1).

    Raises:
        ValueError: ``size < roi``, ``roi < 1`` or ``overlap`` outside [0, 1).
    """
    if roi < 1 or size < roi or not 0.0 <= overlap < 1.0:
        raise ValueError(
            f"need 1 <= roi <= size and overlap in [0, 1), got size={size}, roi={roi}, "
            f"overlap={overlap}"
        )
    stride = max(int(roi * (1.0 - overlap)), 1)
    count = math.ceil((size - roi) / stride) + 1
    return [min(i * stride, size - roi) for i in range(count)]


def window_starts(
    spatial: Sequence[int], roi: Sequence[int], overlap: float
) -> list[tuple[int, ...]]:
    """All window corners of :func:`axis_starts` per axis, in C order."""
    per_axis = [axis_starts(s, r, overlap) for s, r in zip(spatial, roi, strict=True)]
    return list(itertools.product(*per_axis))


def size_multiple(network: torch.nn.Module, ndim: int = 3) -> tuple[int, ...]:
    """What every input side of ``network`` must be a multiple of (its total downsampling).

    Read from the ``strides`` of a MONAI ``DynUNet``; other networks get 32 per axis (five
    halvings, enough for every network of the bundle).
    """
    strides = getattr(network, "strides", None)
    if strides is None:
        return (32,) * ndim
    out = [1] * ndim
    for stride in strides:
        per_axis = [int(stride)] * ndim if isinstance(stride, int) else [int(s) for s in stride]
        out = [a * b for a, b in zip(out, per_axis, strict=True)]
    return tuple(out)


def padded_size(spatial: Sequence[int], multiple: Sequence[int]) -> tuple[int, ...]:
    """``spatial`` rounded up, per axis, to a multiple of ``multiple``."""
    return tuple(math.ceil(s / m) * m for s, m in zip(spatial, multiple, strict=True))


def _at(slices: Sequence[slice]) -> tuple[Any, ...]:
    """The index of ``slices`` over the last axes of a tensor."""
    return (Ellipsis, *slices)


def _pad_to(x: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, list[slice]]:
    """Zero-pad the spatial axes of ``x`` symmetrically to ``size``; the slices undo it."""
    before = [(t - s) // 2 for s, t in zip(x.shape[2:], size, strict=True)]
    pads: list[int] = []
    for s, t, b in reversed(list(zip(x.shape[2:], size, before, strict=True))):
        pads += [b, t - s - b]
    crop = [slice(b, b + s) for s, b in zip(x.shape[2:], before, strict=True)]
    return (F.pad(x, pads) if any(pads) else x), crop


class TiledInferer(SlidingWindowInferer):
    """Sliding-window (or whole-crop) inference with MONAI's windows, autocast, fp32 blending.

    A :class:`monai.inferers.SlidingWindowInferer` (same ``roi_size``, ``sw_batch_size``,
    ``overlap``, ``mode``, ``sigma_scale``), so code that reads those keeps working.

    Args:
        roi_size: window size.
        sw_batch_size: windows per network call.
        overlap: minimum overlap of neighbouring windows, a fraction of the window, in [0, 1).
        mode: ``gaussian`` or ``constant`` blending.
        sigma_scale: the Gaussian's sigma as a fraction of the window.
        tiling: one of :data:`TILINGS` (see the module docstring).
        max_whole_voxels: the largest padded crop ``auto`` runs in one pass.
        max_whole_ratio: the largest padded crop ``auto`` runs in one pass, in windows.
        precision: one of :data:`tumorseg.networks.INFERENCE_PRECISIONS`.
        device: where the network runs (picks the autocast dtype).
        fp32_norms: under autocast, feed the norm layers of windows float32
            (:func:`tumorseg.networks.float32_norms`); a whole pass never does (memory).

    Raises:
        ValueError: an unknown ``tiling`` or ``precision``, ``max_whole_voxels < 1`` or
            ``max_whole_ratio <= 0``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        *,
        tiling: str = "windows",
        max_whole_voxels: int = DEFAULT_MAX_WHOLE_VOXELS,
        max_whole_ratio: float = DEFAULT_MAX_WHOLE_RATIO,
        precision: str = "fp32",
        device: torch.device | str = "cpu",
        fp32_norms: bool = True,
    ) -> None:
        super().__init__(
            roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            sigma_scale=sigma_scale,
        )
        if tiling not in TILINGS:
            raise ValueError(f"tiling must be one of {TILINGS}, got {tiling!r}")
        if isinstance(max_whole_voxels, bool) or int(max_whole_voxels) < 1:
            raise ValueError(f"max_whole_voxels must be an integer >= 1, got {max_whole_voxels!r}")
        if isinstance(max_whole_ratio, bool) or not float(max_whole_ratio) > 0:
            raise ValueError(f"max_whole_ratio must be a number > 0, got {max_whole_ratio!r}")
        self.tiling = tiling
        self.max_whole_ratio = float(max_whole_ratio)
        self.max_whole_voxels = int(max_whole_voxels)
        self.precision = precision
        self.dtype = inference_dtype(device, precision)
        self.device_type = torch.device(device).type
        self.fp32_norms = bool(fp32_norms)

    def uses_whole(self, spatial: Sequence[int], network: torch.nn.Module) -> bool:
        """Whether a crop of ``spatial`` runs in one pass."""
        if self.tiling != "auto":
            return self.tiling == "whole"
        padded = math.prod(padded_size(spatial, size_multiple(network, len(spatial))))
        window = math.prod(ensure_tuple_rep(self.roi_size, len(spatial)))
        return padded <= self.max_whole_voxels and padded <= self.max_whole_ratio * window

    def _forward(self, x: torch.Tensor, network: Any) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            out = network(x)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.float().contiguous()

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """Float32 logits of ``network`` over ``inputs`` ``(batch, channels, *spatial)``."""
        spatial = tuple(int(s) for s in inputs.shape[2:])
        if self.uses_whole(spatial, network):
            multiple = size_multiple(network, len(spatial))
            x, crop = _pad_to(inputs, padded_size(spatial, multiple))
            # Norms stay in the low precision here: float32 norm outputs over a whole crop took
            # the equal network's peak RSS from 3.0 to 4.4 GB, and a whole pass moves the masks
            # through its instance-norm statistics far more than precision does.
            return self._forward(x, network)[_at(crop)]
        roi = [int(r) for r in ensure_tuple_rep(self.roi_size, len(spatial))]
        x, crop = _pad_to(inputs, [max(s, r) for s, r in zip(spatial, roi, strict=True)])
        overlap = min(float(o) for o in ensure_tuple(self.overlap))
        starts = window_starts(x.shape[2:], roi, overlap)
        importance = compute_importance_map(
            tuple(roi), mode=self.mode, sigma_scale=self.sigma_scale, device=inputs.device
        ).float()
        batch = x.shape[0]
        output: torch.Tensor | None = None
        weight = torch.zeros(x.shape[2:], dtype=torch.float32, device=inputs.device)
        low = self.fp32_norms and self.dtype is not None
        with float32_norms(network) if low else nullcontext():  # hooks set once per study
            for first in range(0, len(starts), self.sw_batch_size):
                group = starts[first : first + self.sw_batch_size]
                windows = [
                    tuple(slice(s, s + r) for s, r in zip(c, roi, strict=True)) for c in group
                ]
                logits = self._forward(torch.cat([x[_at(w)] for w in windows]), network)
                if output is None:
                    output = torch.zeros(
                        (batch, logits.shape[1], *x.shape[2:]), dtype=torch.float32, device=x.device
                    )
                for i, window in enumerate(windows):
                    output[_at(window)] += logits[i * batch : (i + 1) * batch] * importance
                    weight[window] += importance
        assert output is not None
        return (output / weight)[_at(crop)]
