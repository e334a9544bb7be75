"""The resection cavity as a fourth region channel (``regions=("WT", "TC", "ET", "RC")``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from tumorseg.conventions import (
    check_regions,
    conventions_with,
    convert_labels,
    region_output_conventions,
)
from tumorseg.transforms import (
    LabelsToRegions,
    LabelsToRegionsd,
    RegionsToLabels,
    RegionsToLabelsd,
    labels_to_regions,
    regions_to_labels,
)

RC4 = ("WT", "TC", "ET", "RC")
# brats2024: 1 NETC, 2 SNFH, 3 ET, 4 RC; one voxel each, then background.
LABELS = np.array([1, 2, 3, 4, 0, 0], dtype=np.uint8).reshape(1, 2, 3)
HAND = {
    "WT": [1, 1, 1, 0, 0, 0],
    "TC": [1, 0, 1, 0, 0, 0],
    "ET": [0, 0, 1, 0, 0, 0],
    "RC": [0, 0, 0, 1, 0, 0],
}


def test_rc_channel_matches_hand_made_and_round_trips() -> None:
    regions = labels_to_regions(LABELS, "brats2024", regions=RC4)
    assert regions.shape == (4, 1, 2, 3)
    for c, name in enumerate(RC4):
        assert regions[c].ravel().tolist() == HAND[name], name
    assert np.array_equal(regions_to_labels(regions, "brats2024", region_names=RC4), LABELS)
    # Four channels without names are read as WT, TC, ET, RC.
    assert np.array_equal(regions_to_labels(regions, "brats2024"), LABELS)


def test_three_channels_leave_the_cavity_out_as_before() -> None:
    regions = labels_to_regions(LABELS, "brats2024")
    assert regions.shape == (3, 1, 2, 3)
    back = regions_to_labels(regions, "brats2024")
    assert back.ravel().tolist() == [1, 2, 3, 0, 0, 0]  # RC is in no tumour region


def test_tumour_wins_over_the_cavity() -> None:
    masks = np.zeros((4, 1, 1, 4), np.uint8)
    masks[3] = 1  # RC everywhere
    masks[0, 0, 0, 1:] = 1  # WT on voxels 1-3
    masks[1, 0, 0, 2:] = 1  # TC on 2-3
    masks[2, 0, 0, 3] = 1  # ET on 3
    assert regions_to_labels(masks, "brats2024").ravel().tolist() == [4, 2, 1, 3]


@pytest.mark.parametrize("target", ["brats2021", "brats2023", "msd"])
def test_writing_rc_into_an_older_convention_drops_it_as_convert_labels_does(target: str) -> None:
    regions = labels_to_regions(LABELS, "brats2024", regions=RC4)
    direct = regions_to_labels(regions, target, region_names=RC4)
    assert np.array_equal(direct, convert_labels(LABELS, "brats2024", target))
    assert direct.ravel()[3] == 0  # the cavity became background


@pytest.mark.parametrize("convention", ["brats2021", "brats2023", "msd", "brats2024ped"])
def test_an_rc_channel_is_refused_for_labels_without_a_cavity(convention: str) -> None:
    label = np.zeros((1, 2, 3), np.uint8)
    with pytest.raises(ValueError, match=f"convention {convention!r}.*'brats2024'"):
        labels_to_regions(label, convention, regions=RC4)
    with pytest.raises(ValueError, match=f"convention {convention!r}"):
        check_regions(RC4, convention)


def test_dict_transform_names_the_file_when_refusing() -> None:
    label = MetaTensor(torch.zeros(1, 1, 2, 3), meta={"filename_or_obj": "case_seg.nii.gz"})
    transform = LabelsToRegionsd("label", "brats2021", regions=RC4)  # names checked, not labels
    with pytest.raises(ValueError, match=r"^case_seg.nii.gz: region RC .*'brats2021'"):
        transform({"label": label})


def test_tensor_transforms_keep_metadata_and_round_trip() -> None:
    label = MetaTensor(torch.as_tensor(LABELS[None]), meta={"filename_or_obj": "x.nii.gz"})
    regions = LabelsToRegions("brats2024", regions=RC4)(label)
    assert isinstance(regions, MetaTensor) and regions.shape == (4, 1, 2, 3)
    assert regions.meta["filename_or_obj"] == "x.nii.gz"
    back = RegionsToLabelsd("pred", "brats2024", regions=RC4)({"pred": regions})["pred"]
    assert back.shape == (1, 1, 2, 3)
    assert back.ravel().tolist() == LABELS.ravel().tolist()
    assert RegionsToLabels("brats2024", regions=RC4)(regions).ravel().tolist()[3] == 4


@pytest.mark.parametrize(
    "regions",
    [["WT", "TC"], ["TC", "WT", "ET"], ["WT", "TC", "ET", "CC"], [*RC4, "RC"], ["WT", "ET", "TC"]],
)
def test_unknown_or_misordered_regions_are_refused_with_the_value(regions: list[str]) -> None:
    with pytest.raises(ValueError, match=r"regions \[.*\] are not region channels.*'RC'\]"):
        LabelsToRegionsd("label", "brats2024", regions=regions)


def test_region_names_are_case_insensitive_and_may_be_one_string() -> None:
    assert check_regions(["wt", "tc", "et", "rc"]) == RC4
    assert check_regions("WT,TC,ET,RC", "brats2024") == RC4
    assert check_regions(None) == RC4[:3]


def test_channel_count_must_match_the_names() -> None:
    with pytest.raises(ValueError, match=r"expected 4 region channels .* got shape \(3, 2\)"):
        regions_to_labels(np.zeros((3, 2)), "brats2024", region_names=RC4)


def test_conventions_are_found_by_their_classes() -> None:
    assert conventions_with(["RC"]) == ("brats2024",)
    assert "brats2024menrt" not in region_output_conventions()
    assert {"brats2021", "brats2023", "msd", "brats2024"} <= set(region_output_conventions())
    assert conventions_with(["NCR", "RC", "GTV"]) == ()
