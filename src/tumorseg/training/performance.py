"""CUDA speed settings of a bundle: mixed precision, cuDNN autotuning, channels-last, compile.

Every function here is a no-op (returns "off" / changes nothing) on a CPU device, so one
config serves both: MONAI's trainers autocast with ``torch.autocast("cuda")`` whatever the
device, and channels-last-3d or ``torch.compile`` on a CPU run would only cost time.

None of the CUDA paths has been measured by this project yet (no GPU was available when
they were written): the defaults follow common practice (nnU-Net trains with AMP and
``cudnn.benchmark``); channels-last and compile stay off until measured.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = [
    "AMP_DTYPES",
    "amp_enabled",
    "amp_kwargs",
    "compile_enabled",
    "configure_performance",
]

logger = logging.getLogger(__name__)

#: Accepted values of ``dtype`` in :func:`amp_kwargs`.
AMP_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16")


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def amp_enabled(amp: bool, device: torch.device | str) -> bool:
    """Whether the trainer should autocast: ``amp`` asked for and the device is CUDA."""
    return bool(amp) and _device(device).type == "cuda"


def amp_kwargs(device: torch.device | str, *, dtype: str = "auto") -> dict[str, Any]:
    """``torch.autocast`` arguments for MONAI's trainers and evaluators (``amp_kwargs``).

    Args:
        device: the training device; CPU gives ``{}`` (AMP is off there).
        dtype: ``auto`` picks bfloat16 where the GPU supports it (Ampere and newer: float32's
            range, so no overflow and no loss-scaling trouble) and float16 elsewhere;
            ``bfloat16`` or ``float16`` force one.

    Raises:
        ValueError: for another ``dtype``.
    """
    if dtype not in AMP_DTYPES:
        raise ValueError(f"amp dtype must be one of {AMP_DTYPES}, got {dtype!r}")
    if _device(device).type != "cuda":
        return {}
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return {"dtype": getattr(torch, dtype)}


def compile_enabled(compile: bool, device: torch.device | str) -> bool:
    """Whether to ``torch.compile`` the network: asked for and the device is CUDA."""
    return bool(compile) and _device(device).type == "cuda"


def configure_performance(
    device: torch.device | str,
    *,
    network: torch.nn.Module | None = None,
    cudnn_benchmark: bool = True,
    channels_last: bool = False,
) -> dict[str, bool]:
    """Apply the process-wide CUDA settings; run after ``set_determinism`` (which resets them).

    Args:
        device: the training device; on CPU nothing is changed.
        network: converted in place to channels-last-3d memory format when ``channels_last``.
        cudnn_benchmark: let cuDNN time its algorithms for the fixed patch size once and keep
            the fastest (results are then not bit-for-bit reproducible between runs).
        channels_last: store the network's 5D weights channels-last (NDHWC), which tensor
            cores prefer for 3D convolutions on recent GPUs.

    Returns:
        What is in effect: ``{"cudnn_benchmark": ..., "channels_last": ...}``.
    """
    cuda = _device(device).type == "cuda"
    applied = {"cudnn_benchmark": cuda and cudnn_benchmark, "channels_last": False}
    if cuda:
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
        if channels_last and network is not None:
            network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            applied["channels_last"] = True
    logger.info("performance settings on %s: %s", device, applied)
    return applied
