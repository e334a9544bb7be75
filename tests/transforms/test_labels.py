"""Label maps <-> regions for every convention, against hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from tumorseg.transforms import (
    LabelsToRegionsd,
    RegionsToLabelsd,
    labels_to_regions,
    regions_to_labels,
)

# One voxel per class; regions written out by hand from each dataset's definition.
# brats2021: 1 NCR, 2 ED, 4 ET; brats2023: 1 NCR, 2 ED, 3 ET; msd: 1 ED, 2 NCR, 3 ET.
HAND = {
    "brats2021": {
        "labels": [0, 1, 2, 4],
        "WT": [0, 1, 1, 1],
        "TC": [0, 1, 0, 1],
        "ET": [0, 0, 0, 1],
    },
    "brats2023": {
        "labels": [0, 1, 2, 3],
        "WT": [0, 1, 1, 1],
        "TC": [0, 1, 0, 1],
        "ET": [0, 0, 0, 1],
    },
    "msd": {"labels": [0, 1, 2, 3], "WT": [0, 1, 1, 1], "TC": [0, 0, 1, 1], "ET": [0, 0, 0, 1]},
}


def _label_map(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint8).reshape(1, 2, 2)  # spatial 1x2x2


@pytest.mark.parametrize("convention", sorted(HAND))
def test_labels_to_regions_matches_hand_made(convention: str) -> None:
    case = HAND[convention]
    regions = labels_to_regions(_label_map(case["labels"]), convention)
    assert regions.shape == (3, 1, 2, 2)
    assert regions[0].ravel().tolist() == case["WT"]
    assert regions[1].ravel().tolist() == case["TC"]
    assert regions[2].ravel().tolist() == case["ET"]


def test_monai_brats_converter_misses_brats2023_et_but_ours_does_not() -> None:
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

    label = _label_map(HAND["brats2023"]["labels"])
    monai_regions = ConvertToMultiChannelBasedOnBratsClasses()(label[None])
    assert monai_regions[2].sum() == 0  # the trap this module exists for
    assert labels_to_regions(label, "brats2023")[2].sum() == 1


@pytest.mark.parametrize("convention", sorted(HAND))
def test_round_trip_restores_every_label(convention: str) -> None:
    label = _label_map(HAND[convention]["labels"])
    back = regions_to_labels(labels_to_regions(label, convention), convention)
    np.testing.assert_array_equal(back, label)


def test_torch_and_metatensor_keep_type_and_meta() -> None:
    label = MetaTensor(torch.tensor([[[[0, 1], [2, 4]]]]), meta={"filename_or_obj": "x_seg.nii.gz"})
    regions = LabelsToRegionsd("label", "brats2021")({"label": label})["label"]
    assert isinstance(regions, MetaTensor)
    assert regions.dtype == torch.float32
    assert regions.meta["filename_or_obj"] == "x_seg.nii.gz"
    assert regions[:, 0, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_illegal_values_name_the_file_and_values() -> None:
    label = MetaTensor(
        torch.tensor([[[[0, 4], [3, 7]]]]), meta={"filename_or_obj": "/d/c_seg.nii.gz"}
    )
    with pytest.raises(ValueError, match=r"c_seg\.nii\.gz.*\[3, 7\].*brats2021"):
        LabelsToRegionsd("label", "brats2021")({"label": label})


def test_unknown_convention_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="brats2023"):
        labels_to_regions(np.zeros((2, 2, 2), np.uint8), "brats2017x")


def test_regions_to_labels_innermost_wins_and_thresholds() -> None:
    probs = np.zeros((3, 1, 1, 4), np.float32)
    probs[0, 0, 0, 1] = 0.9  # WT only -> edema
    probs[:2, 0, 0, 2] = 0.9  # WT + TC -> NCR
    probs[2, 0, 0, 3] = 0.9  # ET without WT/TC -> still ET
    out = regions_to_labels(probs, "brats2023", threshold=0.5)
    assert out.ravel().tolist() == [0, 2, 1, 3]
    out_msd = RegionsToLabelsd("pred", "msd", threshold=0.5)({"pred": torch.from_numpy(probs)})
    assert out_msd["pred"].shape == (1, 1, 1, 4)
    assert out_msd["pred"].ravel().tolist() == [0, 1, 2, 3]


def test_regions_to_labels_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        regions_to_labels(np.zeros((2, 4, 4)), "brats2021")


def test_tumour_mask_is_the_union_of_the_regions_where_monai_would_drop_wt() -> None:
    from monai.data import MetaTensor
    from monai.transforms.utils import map_binary_to_indices

    from tumorseg.transforms import TumourMaskd, tumour_mask

    regions = np.zeros((3, 6, 6, 4), np.float32)
    regions[0, 1:3, 1:3, 0] = 1  # edema only on slice 0: WT without TC or ET
    regions[:2, 3:5, 3:5, 2] = 1  # core on slice 2: WT and TC
    # MONAI reads a multi-channel label as one-hot and drops channel 0, i.e. WT: the
    # edema-only slice would never count as foreground for RandCropByPosNegLabeld.
    fg, _ = map_binary_to_indices(regions)
    assert len(fg) == 4
    mask = tumour_mask(regions)
    assert mask.shape == (1, 6, 6, 4) and mask.dtype == np.uint8
    assert int(mask.sum()) == 8 and mask[0, :, :, 0].sum() == 4
    fg, _ = map_binary_to_indices(mask)
    assert len(fg) == 8

    data = {"label": MetaTensor(torch.as_tensor(regions)), "image": 1}
    out = TumourMaskd("label", output_key="tumour")(data)
    assert out["image"] == 1 and out["label"] is data["label"]
    assert torch.equal(torch.as_tensor(out["tumour"]), torch.as_tensor(mask))
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        tumour_mask(np.zeros(5))
    with pytest.raises(ValueError, match="one key"):
        TumourMaskd(["label", "image"], output_key="tumour")
