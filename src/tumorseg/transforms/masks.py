"""The masks MONAI's label-driven patch sampler needs: the tumour, and the brain.

Both are "any channel non-zero" of a channel-first array, one channel, uint8:

* :func:`tumour_mask` of the region channels: the positive centres. MONAI's
  ``RandCropByPosNegLabeld`` reads a label with several channels as one-hot and drops channel 0,
  which for nested region channels is the whole tumour (edema-only tumour would count as
  background).
* :func:`brain_mask` of the image: the negative centres. The sampler draws them from the voxels
  where ``image > image_threshold`` in any channel; the bundles normalise intensities first
  (``NormalizeIntensityd(nonzero=True)``), so ``image_threshold: 0`` on the image kept only the
  brain voxels brighter than their channel's mean in some channel (on the real study
  TCGA-DU-7294 about 83 % of the tumour-free brain). Skull-stripped BraTS studies are exactly 0
  outside the brain and the normalisation leaves zeros at 0, so "any channel non-zero" is the
  brain, before or after it; the sampler gets that mask as its ``image_key`` instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["BrainMaskd", "TumourMaskd", "brain_mask", "tumour_mask"]

ArrayLike = Any  # np.ndarray | torch.Tensor (MetaTensor included)


def _any_channel(array: ArrayLike, what: str) -> ArrayLike:
    if array.ndim < 2:
        raise ValueError(f"expected channel-first {what} (C, ...), got {tuple(array.shape)}")
    if isinstance(array, torch.Tensor):
        return (array != 0).any(dim=0, keepdim=True).to(torch.uint8)
    return np.any(np.asarray(array) != 0, axis=0, keepdims=True).astype(np.uint8)


def tumour_mask(regions: ArrayLike) -> ArrayLike:
    """One channel that is 1 wherever any region is: the tumour as a whole.

    Give it to MONAI's label-driven crops (``RandCropByPosNegLabeld``, ``FgBgToIndicesd``) as
    ``label_key`` instead of the region channels.

    Args:
        regions: channel-first ``(C, *spatial)`` region channels (numpy or torch).

    Returns:
        ``(1, *spatial)`` uint8 mask of the same array type.

    Raises:
        ValueError: ``regions`` has no channel axis (the shape is shown).
    """
    return _any_channel(regions, "regions")


def brain_mask(image: ArrayLike) -> ArrayLike:
    """``(1, *spatial)`` uint8 mask, 1 where any channel of ``image`` is non-zero.

    Args:
        image: channel-first ``(C, *spatial)`` image of a skull-stripped study (numpy or
            torch); 0 outside the brain, as BraTS files are, also after
            ``NormalizeIntensity(nonzero=True)``.

    Raises:
        ValueError: ``image`` has no channel axis (the shape is shown).
    """
    return _any_channel(image, "image")


class _MaskOfKeyd(MapTransform):
    """A mask of one key's array written to ``output_key`` (the array is kept).

    Args:
        keys: the key the mask is made from (one key).
        output_key: where the mask goes.
        allow_missing_keys: skip a missing key instead of raising.
    """

    def __init__(
        self, keys: KeysCollection, *, output_key: str, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} takes one key, got {list(self.keys)}")
        self.output_key = output_key

    def mask(self, array: ArrayLike) -> ArrayLike:
        """The mask of ``array``."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.mask(d[key])
        return d


class TumourMaskd(_MaskOfKeyd):
    """Dictionary form of :func:`tumour_mask` (``keys``: the region channels; see the base)."""

    def mask(self, array: ArrayLike) -> ArrayLike:
        return tumour_mask(array)


class BrainMaskd(_MaskOfKeyd):
    """Dictionary form of :func:`brain_mask` (``keys``: the image; see the base)."""

    def mask(self, array: ArrayLike) -> ArrayLike:
        return brain_mask(array)
