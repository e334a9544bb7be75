"""Label maps <-> region channels, for every convention in :mod:`tumorseg.conventions`.

MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` hard-codes ET = 4 and so gives an empty
ET on BraTS 2023 data (ET = 3), and reading MSD Task01 with the BraTS numbers swaps edema and
the non-enhancing core. These transforms take the convention explicitly instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from tumorseg.conventions import REGIONS, LabelConvention, get_convention

__all__ = [
    "labels_to_regions",
    "regions_to_labels",
    "LabelsToRegions",
    "LabelsToRegionsd",
    "RegionsToLabels",
    "RegionsToLabelsd",
]

ArrayLike = Any  # np.ndarray | torch.Tensor (MetaTensor included)


def _strip_channel(label: ArrayLike) -> ArrayLike:
    """The spatial map of a channel-first ``(1, *spatial)`` label (MONAI's layout)."""
    if label.ndim < 2 or label.shape[0] != 1:
        raise ValueError(
            f"expected a channel-first label of shape (1, ...), got {tuple(label.shape)}"
        )
    return label[0]


def labels_to_regions(
    label: ArrayLike, convention: str | LabelConvention, *, check: bool = True
) -> ArrayLike:
    """Turn an integer label map into binary region channels ``WT, TC, ET``.

    Args:
        label: spatial label map (``H,W[,D]``, no channel axis; the transform classes take
            MONAI's channel-first ``(1, *spatial)``).
        convention: label convention name or object.
        check: raise when the map holds values the convention does not define.

    Returns:
        An array of the input's type, shape ``(3, *spatial)``, dtype float32 for tensors and
        uint8 for numpy arrays. MetaTensor metadata is kept.

    Raises:
        ValueError: when ``check`` and the map holds illegal values (the values are listed).
    """
    conv = get_convention(convention)
    lab = label
    if check:
        present = {int(v) for v in (torch.unique(lab) if torch.is_tensor(lab) else np.unique(lab))}
        illegal = sorted(present - conv.legal_values)
        if illegal:
            raise ValueError(
                f"label values {illegal} are not legal in convention {conv.name!r} "
                f"(legal: {sorted(conv.legal_values)}); is the label convention right?"
            )
    if torch.is_tensor(lab):
        channels = [torch.isin(lab, torch.tensor(conv.region_values(r))) for r in REGIONS]
        out = torch.stack(channels).to(torch.float32)
        if hasattr(label, "meta"):
            from monai.data import MetaTensor

            out = MetaTensor(
                out, meta=dict(label.meta), applied_operations=label.applied_operations
            )
        return out
    return np.stack([np.isin(lab, conv.region_values(r)) for r in REGIONS]).astype(np.uint8)


def regions_to_labels(
    regions: ArrayLike, convention: str | LabelConvention, *, threshold: float | None = None
) -> ArrayLike:
    """Turn region channels ``WT, TC, ET`` back into a label map in ``convention``.

    Regions are nested (ET inside TC inside WT); where a prediction is not, the innermost
    region wins: an ET voxel is ET even if TC missed it, a TC voxel outside ET is NCR, and a
    WT voxel outside TC is edema.

    Args:
        regions: ``(3, *spatial)`` binary masks or probabilities.
        convention: label convention name or object.
        threshold: when given, ``regions > threshold`` is applied first (for probabilities).

    Returns:
        ``(*spatial)`` uint8 label map of the input's array type.

    Raises:
        ValueError: when ``regions`` does not have 3 channels.
    """
    conv = get_convention(convention)
    if regions.shape[0] != len(REGIONS):
        raise ValueError(
            f"expected {len(REGIONS)} region channels {REGIONS}, got shape {tuple(regions.shape)}"
        )
    masks = regions > threshold if threshold is not None else regions > 0
    wt, tc, et = masks[0], masks[1], masks[2]
    is_tensor = torch.is_tensor(regions)
    label = torch.zeros(wt.shape, dtype=torch.uint8) if is_tensor else np.zeros(wt.shape, np.uint8)
    label[wt] = conv.classes["ED"]
    label[tc] = conv.classes["NCR"]
    label[et] = conv.classes["ET"]
    return label


class LabelsToRegions(Transform):
    """Array transform form of :func:`labels_to_regions`."""

    def __init__(self, convention: str | LabelConvention, *, check: bool = True) -> None:
        self.convention = get_convention(convention)
        self.check = check

    def __call__(self, label: ArrayLike) -> ArrayLike:
        """Channel-first ``(1, *spatial)`` label -> ``(3, *spatial)`` regions."""
        return labels_to_regions(_strip_channel(label), self.convention, check=self.check)


class LabelsToRegionsd(MapTransform):
    """Dictionary transform form of :func:`labels_to_regions`.

    Args:
        keys: keys of the label maps.
        convention: label convention name (``brats2021``, ``brats2023``, ``msd``).
        check: raise on values the convention does not define, naming the file.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: str | LabelConvention,
        *,
        check: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelsToRegions(convention, check=check)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.converter(d[key])
            except ValueError as err:
                source = getattr(d[key], "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{source}: {err}") from None
        return d


class RegionsToLabels(Transform):
    """Array transform form of :func:`regions_to_labels`; keeps the leading channel."""

    def __init__(self, convention: str | LabelConvention, *, threshold: float | None = None):
        self.convention = get_convention(convention)
        self.threshold = threshold

    def __call__(self, regions: ArrayLike) -> ArrayLike:
        label = regions_to_labels(regions, self.convention, threshold=self.threshold)
        out = label[None]
        if hasattr(regions, "meta"):
            from monai.data import MetaTensor

            out = MetaTensor(out, meta=dict(regions.meta))
        return out


class RegionsToLabelsd(MapTransform):
    """Dictionary transform form of :func:`regions_to_labels`.

    Args:
        keys: keys of the region maps.
        convention: output label convention.
        threshold: threshold applied to probabilities first, if given.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: str | LabelConvention,
        *,
        threshold: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToLabels(convention, threshold=threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
