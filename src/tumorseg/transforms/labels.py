"""Label maps <-> region channels, for every convention in :mod:`tumorseg.conventions`.

MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` hard-codes ET = 4 and so gives an empty
ET on BraTS 2023 data (ET = 3), and reading MSD Task01 with the BraTS numbers swaps edema and
the non-enhancing core. These transforms take the convention explicitly instead.

The channels are ``WT, TC, ET`` by default; ``regions=("WT", "TC", "ET", "RC")`` adds the
resection cavity of ``brats2024`` labels as a fourth channel
(:func:`tumorseg.conventions.check_regions`). Making that channel from a label map of a
convention without a cavity is refused; writing it back into such a convention drops it (the
cavity becomes background, as :func:`tumorseg.conventions.convert_labels` does).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from tumorseg.conventions import (
    OPTIONAL_REGIONS,
    REGIONS,
    LabelConvention,
    check_regions,
    get_convention,
    region_output_conventions,
)

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
    label: ArrayLike,
    convention: str | LabelConvention,
    *,
    check: bool = True,
    regions: Sequence[str] = REGIONS,
) -> ArrayLike:
    """Turn an integer label map into binary region channels ``WT, TC, ET`` (and ``RC``).

    Args:
        label: spatial label map (``H,W[,D]``, no channel axis; the transform classes take
            MONAI's channel-first ``(1, *spatial)``).
        convention: label convention name or object.
        check: raise when the map holds values the convention does not define.
        regions: the channels, :data:`~tumorseg.conventions.REGIONS` optionally followed by
            ``RC`` (see :func:`~tumorseg.conventions.check_regions`).

    Returns:
        An array of the input's type, shape ``(len(regions), *spatial)``, dtype float32 for
        tensors and uint8 for numpy arrays. MetaTensor metadata is kept.

    Raises:
        ValueError: when ``check`` and the map holds illegal values (the values are listed),
            for unknown ``regions``, and for an ``RC`` channel asked of a convention without a
            resection cavity (the convention is named).
    """
    conv = get_convention(convention)
    names = check_regions(regions, conv)
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
        channels = [torch.isin(lab, torch.tensor(conv.region_values(r))) for r in names]
        out = torch.stack(channels).to(torch.float32)
        if hasattr(label, "meta"):
            from monai.data import MetaTensor

            out = MetaTensor(
                out, meta=dict(label.meta), applied_operations=label.applied_operations
            )
        return out
    return np.stack([np.isin(lab, conv.region_values(r)) for r in names]).astype(np.uint8)


def regions_to_labels(
    regions: ArrayLike,
    convention: str | LabelConvention,
    *,
    threshold: float | None = None,
    region_names: Sequence[str] | None = None,
) -> ArrayLike:
    """Turn region channels ``WT, TC, ET`` (and ``RC``) back into a label map in ``convention``.

    Regions are nested (ET inside TC inside WT); where a prediction is not, the innermost
    region wins: an ET voxel is ET even if TC missed it, a TC voxel outside ET is NCR, and a
    WT voxel outside TC is edema. An ``RC`` channel is written only where no tumour region is
    (tumour wins: a voxel both RC and WT is tumour), and only into a convention that has a
    resection cavity; in any other it is dropped, the cavity becoming background as
    :func:`tumorseg.conventions.convert_labels` does.

    Args:
        regions: ``(C, *spatial)`` binary masks or probabilities.
        convention: label convention name or object.
        threshold: when given, ``regions > threshold`` is applied first (for probabilities).
        region_names: the channels (:func:`~tumorseg.conventions.check_regions`); default
            ``WT, TC, ET``, and ``WT, TC, ET, RC`` when there are four.

    Returns:
        ``(*spatial)`` uint8 label map of the input's array type.

    Raises:
        ValueError: when the number of channels does not match ``region_names``, or for a
            convention without NCR, ED and ET (``brats2024menrt``).
    """
    conv = get_convention(convention)
    if conv.name not in region_output_conventions():
        raise ValueError(
            f"region channels cannot be written in label convention {conv.name!r} (classes "
            f"{sorted(conv.classes)}); choose one of {list(region_output_conventions())}"
        )
    every = (*REGIONS, *OPTIONAL_REGIONS)
    channels = check_regions(
        every if region_names is None and regions.shape[0] == len(every) else region_names
    )
    if regions.shape[0] != len(channels):
        raise ValueError(
            f"expected {len(channels)} region channels {channels}, got shape {tuple(regions.shape)}"
        )
    masks = regions > threshold if threshold is not None else regions > 0
    wt, tc, et = masks[0], masks[1], masks[2]
    is_tensor = torch.is_tensor(regions)
    label = torch.zeros(wt.shape, dtype=torch.uint8) if is_tensor else np.zeros(wt.shape, np.uint8)
    for index, region in enumerate(channels[len(REGIONS) :], start=len(REGIONS)):
        if all(c in conv.classes for c in OPTIONAL_REGIONS[region]):
            label[masks[index]] = conv.classes[OPTIONAL_REGIONS[region][0]]
    label[wt] = conv.classes["ED"]
    label[tc] = conv.classes["NCR"]
    label[et] = conv.classes["ET"]
    return label


class LabelsToRegions(Transform):
    """Array transform form of :func:`labels_to_regions`.

    Args:
        convention: label convention name or object.
        check: raise on values the convention does not define.
        regions: the output channels (``WT, TC, ET``, optionally ``RC``); the names are checked
            here, the convention when a label is converted (an inference's preprocessing holds
            this transform with the *output* convention and never gives it a label).
    """

    def __init__(
        self,
        convention: str | LabelConvention,
        *,
        check: bool = True,
        regions: Sequence[str] = REGIONS,
    ) -> None:
        self.convention = get_convention(convention)
        self.check = check
        self.regions = check_regions(regions)

    def __call__(self, label: ArrayLike) -> ArrayLike:
        """Channel-first ``(1, *spatial)`` label -> ``(len(regions), *spatial)`` regions."""
        return labels_to_regions(
            _strip_channel(label), self.convention, check=self.check, regions=self.regions
        )


class LabelsToRegionsd(MapTransform):
    """Dictionary transform form of :func:`labels_to_regions`.

    Args:
        keys: keys of the label maps.
        convention: label convention name (``brats2021``, ``brats2023``, ``msd``, ...).
        check: raise on values the convention does not define, naming the file.
        regions: the output channels (see :class:`LabelsToRegions`).
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: str | LabelConvention,
        *,
        check: bool = True,
        regions: Sequence[str] = REGIONS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelsToRegions(convention, check=check, regions=regions)

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
    """Array transform form of :func:`regions_to_labels`; keeps the leading channel.

    Args:
        convention: output label convention.
        threshold: threshold applied to probabilities first, if given.
        regions: the input channels; None reads three as ``WT, TC, ET`` and four as those
            and ``RC``.
    """

    def __init__(
        self,
        convention: str | LabelConvention,
        *,
        threshold: float | None = None,
        regions: Sequence[str] | None = None,
    ) -> None:
        self.convention = get_convention(convention)
        self.threshold = threshold
        self.regions = None if regions is None else check_regions(regions)

    def __call__(self, regions: ArrayLike) -> ArrayLike:
        label = regions_to_labels(
            regions, self.convention, threshold=self.threshold, region_names=self.regions
        )
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
        regions: the input channels (see :class:`RegionsToLabels`).
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: str | LabelConvention,
        *,
        threshold: float | None = None,
        regions: Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToLabels(convention, threshold=threshold, regions=regions)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
