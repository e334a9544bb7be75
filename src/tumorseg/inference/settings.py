"""Checks of a :class:`~tumorseg.inference.Predictor`'s settings and of its bundle's pieces.

Sliding-window size, batch size and overlap asked for explicitly, the device, the bundle's
preprocessing (split where the voxels are checked) and its inferer (did it take the settings
asked for?); each refuses a bad value with a ``ValueError`` that shows it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged

from tumorseg.inference.tiling import TILINGS
from tumorseg.networks import INFERENCE_PRECISIONS

__all__ = [
    "check_inferer_settings",
    "check_overlap",
    "check_roi_size",
    "check_sw_batch_size",
    "check_tiled_settings",
    "resolve_device",
    "root_cause",
    "split_after_loading",
    "use_all_cores",
]

logger = logging.getLogger(__name__)


def check_roi_size(value: Any, ndim: int) -> list[int]:
    """``ndim`` positive sizes: 3 for a 3D bundle, 2 for a slice-wise bundle's in-plane window."""
    try:
        sizes = [int(v) for v in value]
        ok = len(sizes) == ndim and all(s > 0 and s == v for s, v in zip(sizes, value, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"roi_size must be {ndim} positive integers for this bundle, got {value!r}"
        )
    return sizes


def check_sw_batch_size(value: Any, name: str = "sw_batch_size") -> int:
    """An integer >= 1 (``name`` is the setting, for the message)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def split_after_loading(preprocessing: Any) -> tuple[Compose, Compose]:
    """The preprocessing as (loading, the rest): the voxels are checked in between."""
    transforms = list(getattr(preprocessing, "transforms", ()))
    n_load = 0
    while n_load < len(transforms) and isinstance(
        transforms[n_load], LoadImaged | EnsureChannelFirstd
    ):
        n_load += 1
    if n_load == 0:
        raise ValueError(
            "the bundle's preprocessing must be a Compose that starts with LoadImaged; got "
            f"{type(transforms[0]).__name__ if transforms else repr(preprocessing)}"
        )
    if not any(isinstance(t, CropForegroundd) for t in transforms):
        logger.warning(
            "the bundle's preprocessing has no CropForegroundd: the sliding window will "
            "also run over the background around the brain"
        )
    return Compose(transforms[:n_load]), Compose(transforms[n_load:])


def check_inferer_settings(inferer: Any, explicit: Mapping[str, Any]) -> None:
    """Settings asked for explicitly must have reached the inferer (it reads them by id)."""
    for key, value in explicit.items():
        got: Any = getattr(inferer, key, None)
        same = list(got) == list(value) if key == "roi_size" else got == value
        if not same:
            raise ValueError(
                f"the bundle's inferer does not take {key} from @{key} (it has {got!r}, "
                f"asked for {value!r}); set it in the bundle config instead"
            )


def root_cause(err: BaseException) -> BaseException | None:
    """The innermost cause of MONAI's nested 'Failed to instantiate component' errors."""
    cause = err.__cause__
    while cause is not None and isinstance(cause, RuntimeError) and cause.__cause__ is not None:
        cause = cause.__cause__
    return cause


def check_overlap(value: Any) -> float:
    """A sliding-window overlap in [0, 1)."""
    try:
        overlap = float(value)
    except (TypeError, ValueError):
        overlap = -1.0
    if isinstance(value, bool) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be a number in [0, 1), got {value!r}")
    return overlap


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for; None or ``""`` means CUDA when available, else the CPU."""
    if device is None or str(device) == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here")
    return dev


def check_tiled_settings(*, precision: str | None, tiling: str | None) -> dict[str, str]:
    """The ``precision`` and ``tiling`` asked for (None: the bundle's), checked by name."""
    out: dict[str, str] = {}
    for key, value, allowed in (
        ("precision", precision, INFERENCE_PRECISIONS),
        ("tiling", tiling, TILINGS),
    ):
        if value is None:
            continue
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
        out[key] = value
    return out


def use_all_cores() -> int:
    """Give torch one intra-op thread per core this process may run on; returns the count.

    torch starts with one thread per physical core; where it was started with fewer (a
    ``torch.set_num_threads`` elsewhere, a container's default) inference uses them all again.
    """
    if hasattr(os, "sched_getaffinity"):
        available = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        available = os.cpu_count() or 1
    if torch.get_num_threads() < available:
        torch.set_num_threads(available)
    return torch.get_num_threads()
