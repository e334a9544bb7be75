"""Bundle settings from the command line, checked before anything is created (issue 18).

``python -m monai.bundle run training --device cpu --roi_size "[64,64,64]"`` overrides config
values with whatever the command line parsed: ``cpu`` arrives as a string, ``0`` as an int, and
a window that the network cannot take shows up only at the first iteration, after the MLflow
run was created. :func:`check_settings` runs first in each bundle's ``initialize`` list and
turns such values into one clear error naming the setting.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from tumorseg.conventions import check_regions
from tumorseg.transforms.intensity import check_intensity_mode

__all__ = ["check_device", "check_roi_size", "check_settings"]

logger = logging.getLogger(__name__)

_DEVICE_HINT = "use cpu, cuda or cuda:<index> (e.g. --device cpu)"


def check_device(device: Any) -> torch.device:
    """The device a ``device`` setting names, checked against this machine.

    Args:
        device: a :class:`torch.device` or a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``.

    Raises:
        ValueError: for anything else (an int, an unknown name), or a CUDA device this
            machine does not have.
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) and device.strip():
        try:
            dev = torch.device(device.strip())
        except (RuntimeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [""])[0]
            raise ValueError(
                f"device {device!r} is not a device ({first}); {_DEVICE_HINT}"
            ) from None
    else:
        raise ValueError(
            f"device must be a device name, got {device!r} ({type(device).__name__}); "
            f"{_DEVICE_HINT}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: CUDA is not available here; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; {_DEVICE_HINT}")
    return dev


def _sizes(roi_size: Any) -> list[int]:
    try:
        sizes = [int(s) for s in roi_size]
        ok = all(
            not isinstance(v, bool) and s == v and s > 0
            for s, v in zip(sizes, roi_size, strict=True)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok or not sizes:
        raise ValueError(
            f'roi_size must be a list of positive integers, e.g. --roi_size "[96,96,96]"; got '
            f"{roi_size!r}"
        )
    return sizes


def _in_channels(network: torch.nn.Module) -> int | None:
    value = getattr(network, "in_channels", None)
    if isinstance(value, int):
        return value
    for module in network.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return None


def _downsampling(network: torch.nn.Module, ndim: int) -> list[int] | None:
    """Total downsampling per axis, where the network says (DynUNet, UNet ``strides``)."""
    strides = getattr(network, "strides", None)
    if not isinstance(strides, Sequence) or not strides:
        return None
    total = [1] * ndim
    try:
        for stride in strides:
            per_axis = [int(stride)] * ndim if isinstance(stride, int) else [int(s) for s in stride]
            if len(per_axis) != ndim:
                return None
            total = [t * s for t, s in zip(total, per_axis, strict=True)]
    except (TypeError, ValueError):
        return None
    return total


def _meta_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` whose parameters and buffers are on the meta device.

    The weights are never copied: the deep copy finds a meta stand-in for each of them in its
    memo. The network itself is not touched.
    """
    memo: dict[int, Any] = {}
    for param in network.parameters():
        memo[id(param)] = torch.nn.Parameter(
            torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
        )
    for buffer in network.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(network, memo)


def check_roi_size(
    network: torch.nn.Module, roi_size: Any, *, in_channels: int | None = None, batch: int = 2
) -> list[int]:
    """Check that ``network`` trains on patches of ``roi_size``: a forward pass on shapes only.

    The network runs on the ``meta`` device (no memory, no arithmetic) in training mode, so
    sizes its downsampling cannot take, a bottleneck of one voxel under instance norm, or an
    output of another size are found before training starts.

    Args:
        network: the bundle's network (its weights are not touched).
        roi_size: the patch size, one value per spatial axis.
        in_channels: input channels; default the network's first convolution's.
        batch: patches per step in the check.

    Returns:
        The sizes as integers.

    Raises:
        ValueError: the sizes are not positive integers, or the network cannot take them
            (the network's own message and the downsampling it needs are shown).
    """
    sizes = _sizes(roi_size)
    channels = in_channels or _in_channels(network)
    if channels is None:
        logger.debug("roi_size not checked: the network's input channels are unknown")
        return sizes
    x = torch.empty((batch, channels, *sizes), device="meta")
    try:
        with torch.no_grad():
            out = _meta_copy(network).train()(x)
    except NotImplementedError as err:  # an operation without a meta kernel: cannot tell
        logger.debug("roi_size not checked on the meta device: %s", err)
        return sizes
    except Exception as err:  # noqa: BLE001 (the network's own error, whatever its type)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "meta" in first.lower():  # e.g. .item() on a meta tensor: the data decide, not sizes
            logger.debug("roi_size not checked on the meta device: %s", first)
            return sizes
        factor = _downsampling(network, len(sizes))
        need = (
            f"; {type(network).__name__} downsamples by {factor}: use multiples of "
            f"{factor} with at least 2 voxels left at the bottom (e.g. "
            f"{[2 * f for f in factor]} or more)"
            if factor
            else ""
        )
        raise ValueError(
            f"roi_size {sizes} does not fit the network ({type(network).__name__}: {first}){need}"
        ) from None
    if isinstance(out, tuple | list):
        out = out[0]
    if (
        isinstance(out, torch.Tensor)
        and list(out.shape[2:]) != sizes
        and out.ndim == len(sizes) + 2
    ):
        raise ValueError(
            f"roi_size {sizes} does not fit the network ({type(network).__name__}): its output is "
            f"{list(out.shape[2:])}; use sizes its downsampling divides"
        )
    return sizes


def check_settings(
    *,
    device: Any = None,
    roi_size: Any = None,
    network: torch.nn.Module | None = None,
    in_channels: int | None = None,
    regions: Sequence[str] | str | None = None,
    label_convention: str | None = None,
    intensity_mode: str | None = None,
) -> bool:
    """Check a bundle's command-line settings before a run is created (``initialize``).

    Args:
        device: the ``device`` setting (a string from the command line, or a torch.device).
        roi_size: the training patch size.
        network: the network to check ``roi_size`` against (``@network_def``).
        in_channels: input channels of the network (default: its first convolution's).
        regions: the network's output channels (``["WT", "TC", "ET"]``, optionally ``"RC"``),
            checked against ``label_convention`` (:func:`tumorseg.conventions.check_regions`):
            a resection-cavity channel needs labels that have one.
        label_convention: the training labels' convention.
        intensity_mode: the 8-bit slice normalisation
            (:func:`tumorseg.transforms.check_intensity_mode`).

    Returns:
        True (for use in a config expression).

    Raises:
        ValueError: naming the setting, the value and what would be accepted.
    """
    if device is not None:
        check_device(device)
    if regions is not None:
        check_regions(regions, label_convention or None)
    if intensity_mode is not None:
        check_intensity_mode(intensity_mode)
    if roi_size is not None:
        if network is not None:
            check_roi_size(network, roi_size, in_channels=in_channels)
        else:
            _sizes(roi_size)
    if roi_size is not None and math.prod(_sizes(roi_size)) > 2**31:
        raise ValueError(f"roi_size {roi_size!r} is far too large")
    return True
