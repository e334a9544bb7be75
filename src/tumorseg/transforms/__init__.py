"""Transforms MONAI lacks: label maps <-> region channels for every convention, the
tumour mask that MONAI's label-driven crops need for region channels, and the 3D clean-up of
slice-wise predictions."""

from tumorseg.transforms.labels import (
    LabelsToRegions,
    LabelsToRegionsd,
    RegionsToLabels,
    RegionsToLabelsd,
    TumourMaskd,
    labels_to_regions,
    regions_to_labels,
    tumour_mask,
)
from tumorseg.transforms.post import remove_isolated_false_positives

__all__ = [
    "LabelsToRegions",
    "LabelsToRegionsd",
    "RegionsToLabels",
    "RegionsToLabelsd",
    "TumourMaskd",
    "labels_to_regions",
    "regions_to_labels",
    "remove_isolated_false_positives",
    "tumour_mask",
]
