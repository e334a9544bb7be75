"""Per-case region/label metrics: known answers, every convention, independent Dice."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg.conventions import CONVENTIONS
from tumorseg.metrics import (
    HD95_EMPTY_MM,
    LESION_HD95_PENALTY_MM,
    STRUCTURES,
    case_metrics,
    dice,
    generalised_dice,
    missing_case_metrics,
    region_metrics,
)
from tumorseg.metrics.regions import as_label_map, metric_key, structure_masks

SHAPE = (24, 24, 24)


def _tumour(conv: str, shift: int = 0) -> np.ndarray:
    """Nested toy tumour: edema shell, necrotic core, enhancing rim inside, in ``conv``."""
    c = CONVENTIONS[conv].classes
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[4:18, 4:18, 4:18] = c["ED"]
    lab[7:15, 7:15, 7:15] = c["ET"]
    lab[9:13, 9:13, 9:13] = c["NCR"]
    return np.roll(lab, shift, axis=0)


# --------------------------------------------------------------------- region_metrics


def test_shifted_cube_known_answers():
    ref = np.zeros((20, 20, 20), dtype=bool)
    ref[5:11, 5:11, 5:11] = True  # 216 voxels
    pred = np.roll(ref, 1, axis=2)
    spacing = (1.0, 2.0, 0.5)
    m = region_metrics(pred, ref, spacing=spacing)
    assert m["dice"] == pytest.approx(5 / 6)  # overlap 180 of 216
    assert m["hd95"] == pytest.approx(0.5)  # one voxel along axis 2
    assert m["sensitivity"] == pytest.approx(180 / 216)
    assert m["precision"] == pytest.approx(180 / 216)
    assert m["specificity"] == pytest.approx(1 - 36 / (8000 - 216))
    assert m["volume_ref_ml"] == pytest.approx(216 * 1.0 / 1000)
    assert m["volume_pred_ml"] == pytest.approx(216 * 1.0 / 1000)


def test_single_voxel_known_answers():
    ref = np.zeros((5, 5, 5), dtype=bool)
    ref[2, 2, 2] = True
    same = region_metrics(ref, ref, spacing=(3.0, 3.0, 3.0))
    assert (same["dice"], same["hd95"], same["volume_ref_ml"]) == (1.0, 0.0, 0.027)
    moved = region_metrics(np.roll(ref, 1, axis=1), ref, spacing=(3.0, 3.0, 3.0))
    assert (moved["dice"], moved["sensitivity"], moved["precision"]) == (0.0, 0.0, 0.0)
    assert moved["hd95"] == pytest.approx(3.0)


def test_empty_mask_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    both = region_metrics(empty, empty, lesionwise=True)
    assert (both["dice"], both["hd95"], both["sensitivity"], both["precision"]) == (1, 0, 1, 1)
    assert (both["lesion_dice"], both["lesion_hd95"], both["specificity"]) == (1, 0, 1)
    fp = region_metrics(full, empty, lesionwise=True)  # reference empty, prediction not
    assert (fp["dice"], fp["hd95"], fp["sensitivity"], fp["precision"]) == (
        0.0,
        HD95_EMPTY_MM,
        0.0,
        0.0,
    )
    assert (fp["lesion_dice"], fp["lesion_hd95"]) == (0.0, LESION_HD95_PENALTY_MM)
    fn = region_metrics(empty, full)  # prediction empty, reference not
    assert (fn["dice"], fn["hd95"], fn["sensitivity"], fn["precision"]) == (
        0.0,
        HD95_EMPTY_MM,
        0.0,
        0.0,
    )
    assert fn["specificity"] == 1.0


def test_hd_variant_is_named_in_the_keys():
    ref = np.zeros((10, 10, 10), dtype=bool)
    ref[3:7, 3:7, 3:7] = True
    m = region_metrics(np.roll(ref, 1, 0), ref, hd_variant="monai")
    assert "hd95_monai" in m and "hd95" not in m
    with pytest.raises(ValueError, match="variant"):
        region_metrics(ref, ref, hd_variant="nope")


def test_dice_agrees_with_medpy():
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.random((16, 16, 16)) > 0.6
        b = rng.random((16, 16, 16)) > 0.5
        assert dice(a, b) == pytest.approx(binary.dc(a, b), abs=1e-12)
        assert region_metrics(a, b)["sensitivity"] == pytest.approx(
            binary.sensitivity(a, b), abs=1e-12
        )
        assert region_metrics(a, b)["precision"] == pytest.approx(binary.precision(a, b), abs=1e-12)
        assert region_metrics(a, b)["specificity"] == pytest.approx(
            binary.specificity(a, b), abs=1e-12
        )


# ----------------------------------------------------------------------- case_metrics


def test_case_metrics_keys_cover_every_structure():
    lab = _tumour("brats2021")
    m = case_metrics(lab, lab)
    for s in STRUCTURES:
        for metric in ("dice", "hd95", "sensitivity", "specificity", "precision", "lesion_dice"):
            assert m[f"{metric}_{s}"] == pytest.approx(0.0 if metric == "hd95" else 1.0), (
                f"{metric}_{s}"
            )
        assert f"volume_ref_{s}_ml" in m and f"lesion_hd95_{s}" in m
    assert m["generalised_dice"] == 1.0
    assert m["volume_ref_WT_ml"] == pytest.approx(14**3 / 1000)
    assert m["volume_ref_TC_ml"] == pytest.approx(8**3 / 1000)
    assert m["volume_ref_ET_ml"] == pytest.approx((8**3 - 4**3) / 1000)
    assert m["volume_ref_NCR_ml"] == pytest.approx(4**3 / 1000)
    assert m["volume_ref_ED_ml"] == pytest.approx((14**3 - 8**3) / 1000)
    assert "lesion_dice_WT" not in case_metrics(lab, lab, lesionwise=False)


@pytest.mark.parametrize("conv", ["brats2021", "brats2023", "msd"])
def test_every_convention_gives_the_same_numbers(conv):
    expected = case_metrics(_tumour("brats2021", 2), _tumour("brats2021"), spacing=(1, 1, 2))
    got = case_metrics(_tumour(conv, 2), _tumour(conv), spacing=(1, 1, 2), convention=conv)
    assert got == pytest.approx(expected)


def test_structures_are_built_per_convention():
    # In MSD 1 is edema and 2 the non-enhancing core: the inverse of BraTS.
    lab = np.array([0, 1, 2, 3]).reshape(1, 1, 4)
    msd = structure_masks(lab, "msd")
    assert msd["ED"].ravel().tolist() == [False, True, False, False]
    assert msd["TC"].ravel().tolist() == [False, False, True, True]
    b23 = structure_masks(lab, "brats2023")
    assert b23["ET"].ravel().tolist() == [False, False, False, True]
    assert b23["WT"].ravel().tolist() == [False, True, True, True]


def test_convention_aliases_are_accepted():
    lab = _tumour("brats2021")
    assert case_metrics(lab, lab, convention="brats2020")["dice_ET"] == 1.0


def test_illegal_values_name_the_values_and_convention():
    lab = _tumour("brats2021")  # holds 4
    with pytest.raises(ValueError, match=r"\[4\].*brats2023"):
        case_metrics(lab, lab, convention="brats2023")
    with pytest.raises(ValueError, match="unknown label convention"):
        case_metrics(lab, lab, convention="brats1999")


def test_label_maps_are_validated():
    lab = _tumour("brats2021")
    assert as_label_map(lab[None], "brats2021").shape == SHAPE  # channel dropped
    assert as_label_map(lab.astype(np.float32), "brats2021").dtype.kind == "i"
    with pytest.raises(ValueError, match="non-integer"):
        as_label_map(lab + 0.5, "brats2021")
    with pytest.raises(ValueError, match="3D"):
        as_label_map(lab[0], "brats2021")
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(lab, lab[:-1])


def test_region_empty_in_reference_but_not_in_prediction():
    ref = _tumour("brats2021")
    ref[ref == 4] = 1  # no enhancing tumour in the reference
    pred = _tumour("brats2021")
    m = case_metrics(pred, ref)
    assert (m["dice_ET"], m["hd95_ET"], m["sensitivity_ET"]) == (0.0, HD95_EMPTY_MM, 0.0)
    assert (m["lesion_dice_ET"], m["lesion_hd95_ET"], m["lesion_fp_ET"]) == (0.0, 374.0, 1.0)
    assert m["dice_TC"] == 1.0  # TC is unchanged by relabelling ET as NCR


def test_empty_case_is_perfect():
    empty = np.zeros(SHAPE, dtype=np.uint8)
    m = case_metrics(empty, empty)
    assert all(m[metric_key("dice", s)] == 1.0 for s in STRUCTURES)
    assert all(m[metric_key("hd95", s)] == 0.0 for s in STRUCTURES)
    assert all(m[metric_key("specificity", s)] == 1.0 for s in STRUCTURES)


def test_cropping_does_not_change_specificity():
    # Specificity counts true negatives over the whole image, not the cropped box.
    ref = _tumour("brats2021")
    pred = _tumour("brats2021", 1)
    m = case_metrics(pred, ref, lesionwise=False)
    p, r = pred > 0, ref > 0
    tn = np.sum(~p & ~r)
    assert m["specificity_WT"] == pytest.approx(tn / (tn + np.sum(p & ~r)))


def test_missing_prediction_scores_like_brats():
    ref = _tumour("brats2021")
    ref[ref == 4] = 1  # ET empty: a missing prediction still scores 0 / 373.13 there
    m = missing_case_metrics(ref)
    assert all(m[metric_key("dice", s)] == 0.0 for s in STRUCTURES)
    assert all(m[metric_key("hd95", s)] == HD95_EMPTY_MM for s in STRUCTURES)
    assert all(m[metric_key("lesion_hd95", s)] == LESION_HD95_PENALTY_MM for s in STRUCTURES)
    assert m["volume_pred_WT_ml"] == 0.0 and m["volume_ref_WT_ml"] > 0


# -------------------------------------------------------------------- generalised Dice


def _monai_gdice(pred, ref, conv):
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_generalized_dice

    c = CONVENTIONS[conv].classes
    values = [0, c["NCR"], c["ED"], c["ET"]]

    def onehot(x):
        return torch.from_numpy(np.stack([x == v for v in values]).astype(np.float32))[None]

    score = compute_generalized_dice(
        onehot(pred), onehot(ref), include_background=False, sum_over_classes=True
    )
    return float(score.reshape(-1)[0])


@pytest.mark.parametrize("conv", ["brats2021", "msd"])
def test_generalised_dice_agrees_with_monai(conv):
    ref = _tumour(conv)
    for pred in (_tumour(conv, 1), _tumour(conv, 3), np.zeros_like(ref)):
        assert generalised_dice(pred, ref, convention=conv) == pytest.approx(
            _monai_gdice(pred, ref, conv), abs=1e-6
        )
    # A class absent from the reference takes the largest present weight.
    no_et = ref.copy()
    no_et[no_et == CONVENTIONS[conv].classes["ET"]] = 0
    assert generalised_dice(_tumour(conv, 1), no_et, convention=conv) == pytest.approx(
        _monai_gdice(_tumour(conv, 1), no_et, conv), abs=1e-6
    )


def test_generalised_dice_known_answer():
    # One class only, half overlap: GD reduces to Dice.
    ref = np.zeros((4, 4, 4), dtype=np.uint8)
    ref[:2] = 2
    pred = np.zeros_like(ref)
    pred[1:3] = 2
    assert generalised_dice(pred, ref, convention="brats2021") == pytest.approx(0.5)
    empty = np.zeros_like(ref)
    assert generalised_dice(empty, empty, convention="brats2021") == 1.0
    assert generalised_dice(ref, empty, convention="brats2021") == 0.0
