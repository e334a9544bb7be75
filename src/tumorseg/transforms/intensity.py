"""Intensity normalisation of 8-bit slices (the LGG kaggle_3m TIFs).

The kaggle_3m TIFs are not raw scanner values: each patient's sequences were already scaled
to 0-255 per patient and per channel (in the real files one slice per channel reaches 255;
the other slices of the patient stay below it). Two ways to feed them to a network:

* ``zscore``: each slice z-scored on its own non-zero voxels, channel by channel (MONAI's
  ``NormalizeIntensity(nonzero=True, channel_wise=True)``). A slice at the top of the head,
  or one mostly filled by the tumour, gets other statistics than its neighbours, so the same
  tissue reaches the network at a different value from slice to slice.
* ``uint8``: the file's values divided by 255, which keeps the scale the patient's files were
  written with, the same for every slice of a patient (Buda et al. normalise per volume).

The mode is part of what a model was trained on: the LGG bundle records it in the
checkpoint (``intensity_mode``), and an inference repeats it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity

__all__ = ["INTENSITY_MODES", "SliceIntensityd", "check_intensity_mode", "slice_intensity"]

#: Accepted ``mode`` values of :class:`SliceIntensityd`.
INTENSITY_MODES = ("zscore", "uint8")

_ZSCORE = NormalizeIntensity(nonzero=True, channel_wise=True)


def check_intensity_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`INTENSITY_MODES`.

    Raises:
        ValueError: naming the value and the choices.
    """
    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity_mode must be one of {INTENSITY_MODES}, got {mode!r}")
    return mode


def slice_intensity(image: Any, mode: str) -> Any:
    """Normalise one channel-first 8-bit slice (or stack of slices).

    Args:
        image: ``(C, *spatial)`` array or tensor of 8-bit values.
        mode: one of :data:`INTENSITY_MODES` (see the module docstring).

    Returns:
        A float array or tensor of the same shape (MetaTensor metadata kept).

    Raises:
        ValueError: an unknown ``mode``, or ``uint8`` on values outside 0-255 (the range found
            is shown: such an image is not an 8-bit slice and needs ``zscore``).
    """
    if check_intensity_mode(mode) == "zscore":
        return _ZSCORE(image)
    data = torch.as_tensor(image)
    low, high = (float(data.min()), float(data.max())) if data.numel() else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ValueError(
            f"intensity mode 'uint8' needs 8-bit slices (values 0-255), got values "
            f"{low:g}..{high:g}; use intensity_mode 'zscore' for other images"
        )
    return image / 255.0 if isinstance(image, torch.Tensor) else (image / 255.0).astype("float32")


class SliceIntensityd(MapTransform):
    """Dictionary version of :func:`slice_intensity`.

    Args:
        keys: the image keys.
        mode: one of :data:`INTENSITY_MODES`.
        allow_missing_keys: MONAI's meaning.

    Raises:
        ValueError: an unknown ``mode`` (at construction, so a bad config fails before data
            is read).
    """

    def __init__(
        self, keys: KeysCollection, mode: str = "zscore", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = check_intensity_mode(mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = slice_intensity(d[key], self.mode)
        return d
