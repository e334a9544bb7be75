"""Transforms MONAI lacks: label maps <-> region channels for every convention, the tumour
and brain masks that MONAI's label-driven crops need (positive centres on any tumour,
negative centres anywhere in the brain), a missing-sequence augmentation, the intensity
normalisation of 8-bit slices, and the 3D clean-up of slice-wise predictions."""

from tumorseg.transforms.channels import RandCopyChanneld, copy_channel
from tumorseg.transforms.intensity import (
    INTENSITY_MODES,
    SliceIntensityd,
    check_intensity_mode,
    slice_intensity,
)
from tumorseg.transforms.labels import (
    LabelsToRegions,
    LabelsToRegionsd,
    RegionsToLabels,
    RegionsToLabelsd,
    labels_to_regions,
    regions_to_labels,
)
from tumorseg.transforms.masks import BrainMaskd, TumourMaskd, brain_mask, tumour_mask
from tumorseg.transforms.post import remove_isolated_false_positives

__all__ = [
    "INTENSITY_MODES",
    "BrainMaskd",
    "LabelsToRegions",
    "LabelsToRegionsd",
    "RandCopyChanneld",
    "RegionsToLabels",
    "RegionsToLabelsd",
    "SliceIntensityd",
    "TumourMaskd",
    "brain_mask",
    "check_intensity_mode",
    "copy_channel",
    "labels_to_regions",
    "regions_to_labels",
    "remove_isolated_false_positives",
    "slice_intensity",
    "tumour_mask",
]
