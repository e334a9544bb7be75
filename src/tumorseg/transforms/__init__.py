"""Transforms MONAI lacks: label maps <-> region channels for every convention, and the
tumour mask that MONAI's label-driven crops need for region channels."""

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

__all__ = [
    "LabelsToRegions",
    "LabelsToRegionsd",
    "RegionsToLabels",
    "RegionsToLabelsd",
    "TumourMaskd",
    "labels_to_regions",
    "regions_to_labels",
    "tumour_mask",
]
