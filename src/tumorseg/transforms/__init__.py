"""Transforms MONAI lacks: label maps <-> region channels for every convention."""

from tumorseg.transforms.labels import (
    LabelsToRegions,
    LabelsToRegionsd,
    RegionsToLabels,
    RegionsToLabelsd,
    labels_to_regions,
    regions_to_labels,
)

__all__ = [
    "LabelsToRegions",
    "LabelsToRegionsd",
    "RegionsToLabels",
    "RegionsToLabelsd",
    "labels_to_regions",
    "regions_to_labels",
]
