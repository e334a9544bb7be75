"""The brain mask of a skull-stripped study, for the patch sampler's negative centres.

MONAI's ``RandCropByPosNegLabeld`` draws negative (tumour-free) patch centres from the voxels
where ``image > image_threshold`` in any channel. The bundles normalise intensities first
(``NormalizeIntensityd(nonzero=True)``), so ``image_threshold: 0`` on the image keeps only the
brain voxels brighter than their channel's mean in some channel: on the real study
TCGA-DU-7294 about 83 % of the tumour-free brain, with the darkest tissue never the centre of a
negative patch. Skull-stripped BraTS studies are exactly 0 outside the brain and the
normalisation leaves zeros at 0, so "any channel non-zero" is the brain, before or after it;
the sampler gets that mask as its ``image_key`` (with ``image_threshold: 0``) instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["BrainMaskd", "brain_mask"]

ArrayLike = Any  # np.ndarray | torch.Tensor (MetaTensor included)


def brain_mask(image: ArrayLike) -> ArrayLike:
    """``(1, *spatial)`` uint8 mask, 1 where any channel of ``image`` is non-zero.

    Args:
        image: channel-first ``(C, *spatial)`` image of a skull-stripped study (numpy or
            torch); 0 outside the brain, as BraTS files are, also after
            ``NormalizeIntensity(nonzero=True)``.

    Raises:
        ValueError: ``image`` has no channel axis (the shape is shown).
    """
    if image.ndim < 2:
        raise ValueError(f"expected a channel-first image (C, ...), got {tuple(image.shape)}")
    if isinstance(image, torch.Tensor):
        return (image != 0).any(dim=0, keepdim=True).to(torch.uint8)
    return np.any(np.asarray(image) != 0, axis=0, keepdims=True).astype(np.uint8)


class BrainMaskd(MapTransform):
    """Dictionary form of :func:`brain_mask`, written to ``output_key`` (the image is kept).

    Args:
        keys: the key of the image (one key).
        output_key: where the mask goes.
        allow_missing_keys: skip a missing key instead of raising.
    """

    def __init__(
        self, keys: KeysCollection, *, output_key: str, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"BrainMaskd takes one key, got {list(self.keys)}")
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = brain_mask(d[key])
        return d
