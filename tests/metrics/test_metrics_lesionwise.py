"""BraTS 2023 lesion-wise Dice and HD95: hand-made cases and a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg.metrics.lesionwise import (
    LESION_HD95_PENALTY_MM,
    LESIONWISE_TASKS,
    LesionwiseParams,
    get_lesionwise_params,
    lesionwise_metrics,
)
from tumorseg.metrics.surface import hd95

SHAPE = (40, 40, 40)


def _box(mask: np.ndarray, start, size) -> np.ndarray:
    if isinstance(size, int):
        size = (size, size, size)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def _empty() -> np.ndarray:
    return np.zeros(SHAPE, dtype=bool)


def test_task_parameters_match_the_challenge():
    assert get_lesionwise_params("BraTS-GLI") == LesionwiseParams("BraTS-GLI", 3, 50.0)
    assert get_lesionwise_params("brats-met").dilation_factor == 1
    assert get_lesionwise_params("BraTS-MET").volume_threshold_mm3 == 2.0
    assert get_lesionwise_params("BraTS-MEN").dilation_factor == 1
    assert {t.dilation_factor for t in LESIONWISE_TASKS.values()} == {1, 3}
    with pytest.raises(ValueError, match="BraTS-XYZ"):
        get_lesionwise_params("BraTS-XYZ")


def test_perfect_single_lesion():
    ref = _box(_empty(), (5, 5, 5), 5)
    res = lesionwise_metrics(ref.copy(), ref)
    assert (res.dice, res.hd95, res.n_tp, res.n_fn, res.n_fp) == (1.0, 0.0, 1, 0, 0)


def test_two_lesions_one_missed():
    ref = _box(_box(_empty(), (5, 5, 5), 5), (25, 25, 25), 5)
    pred = _box(_empty(), (5, 5, 5), 5)
    res = lesionwise_metrics(pred, ref)
    # Lesion 1: Dice 1 / HD95 0; lesion 2 missed: Dice 0 / HD95 374.
    assert res.dice == pytest.approx(0.5)
    assert res.hd95 == pytest.approx(LESION_HD95_PENALTY_MM / 2)
    assert (res.n_tp, res.n_fn, res.n_fp) == (1, 1, 0)
    assert len(res.lesions) == 2


def test_false_positive_lesion_is_penalised():
    ref = _box(_empty(), (5, 5, 5), 5)
    pred = _box(ref.copy(), (25, 25, 25), 4)
    res = lesionwise_metrics(pred, ref)
    assert res.dice == pytest.approx(0.5)
    assert res.hd95 == pytest.approx(187.0)
    assert (res.n_tp, res.n_fn, res.n_fp) == (1, 0, 1)


def test_small_lesion_below_threshold_is_left_out():
    ref = _box(_box(_empty(), (5, 5, 5), 5), (25, 25, 25), 3)  # 27 voxels = 27 mm^3 <= 50
    pred = _box(_empty(), (5, 5, 5), 5)
    res = lesionwise_metrics(pred, ref)
    assert (res.dice, res.hd95, res.n_tp, res.n_fn) == (1.0, 0.0, 1, 0)
    assert [les.counted for les in res.lesions] == [True, False]
    # With 2 mm voxels the same lesion is 216 mm^3: counted, and missed.
    res2 = lesionwise_metrics(pred, ref, spacing=(2.0, 2.0, 2.0))
    assert res2.dice == pytest.approx(0.5)
    assert res2.hd95 == pytest.approx(187.0)
    assert res2.n_fn == 1


def test_threshold_is_inclusive():
    # Exactly 50 mm^3 is left out ("<= threshold"), 52 is counted.
    ref50 = _box(_empty(), (5, 5, 5), (5, 5, 2))
    ref52 = _box(_empty(), (5, 5, 5), (2, 2, 13))
    assert lesionwise_metrics(_empty(), ref50).dice == 1.0
    assert lesionwise_metrics(_empty(), ref52).dice == 0.0


def test_prediction_matched_to_a_small_lesion_is_not_a_false_positive():
    ref = _box(_empty(), (25, 25, 25), 3)
    pred = ref.copy()
    res = lesionwise_metrics(pred, ref)
    assert (res.dice, res.hd95, res.n_fp, res.n_tp) == (1.0, 0.0, 0, 0)


@pytest.mark.parametrize(("gap", "merged"), [(6, True), (7, False)])
def test_lesions_merge_through_the_dilation(gap, merged):
    # Two 5-voxel cubes `gap` voxels apart along axis 0; the 3-iteration dilation covers 3
    # voxels from each, so they merge when the gap is at most 6.
    ref = _box(_box(_empty(), (5, 5, 5), 5), (10 + gap, 5, 5), 5)
    pred = _box(_empty(), (5, 5, 5), 5)
    res = lesionwise_metrics(pred, ref)
    if merged:
        assert len(res.lesions) == 1
        assert res.dice == pytest.approx(2 * 125 / (125 + 250))
        assert res.hd95 == pytest.approx(hd95(pred, ref))
        assert (res.n_tp, res.n_fn) == (1, 0)
    else:
        assert len(res.lesions) == 2
        assert res.dice == pytest.approx(0.5)
        assert (res.n_tp, res.n_fn) == (1, 1)


def test_nearby_prediction_matches_through_the_dilation():
    # No overlap, but within 3 voxels: a true positive with Dice 0 and a finite HD95.
    ref = _box(_empty(), (5, 5, 5), 5)
    pred = _box(_empty(), (12, 5, 5), 5)  # 2 empty voxels between
    res = lesionwise_metrics(pred, ref)
    assert (res.n_tp, res.n_fp) == (1, 0)
    assert res.dice == 0.0
    assert res.hd95 == pytest.approx(hd95(pred, ref))
    assert res.hd95 < LESION_HD95_PENALTY_MM
    # Farther away it is both a miss and a false positive.
    far = lesionwise_metrics(_box(_empty(), (15, 5, 5), 5), ref)
    assert (far.n_tp, far.n_fn, far.n_fp) == (0, 1, 1)
    assert far.hd95 == LESION_HD95_PENALTY_MM


def test_one_component_matching_two_lesions():
    ref = _box(_box(_empty(), (5, 5, 5), 5), (5, 25, 5), 5)
    pred = _box(_empty(), (5, 5, 5), (5, 25, 5))  # a bar over both
    res = lesionwise_metrics(pred, ref)
    assert (res.n_tp, res.n_fn, res.n_fp) == (2, 0, 0)
    assert all(les.n_matched == 1 for les in res.lesions)


def test_empty_masks():
    empty = _empty()
    lesion = _box(_empty(), (5, 5, 5), 5)
    both = lesionwise_metrics(empty, empty)
    assert (both.dice, both.hd95) == (1.0, 0.0)
    only_pred = lesionwise_metrics(lesion, empty)
    assert (only_pred.dice, only_pred.hd95, only_pred.n_fp) == (0.0, LESION_HD95_PENALTY_MM, 1)
    only_ref = lesionwise_metrics(empty, lesion)
    assert (only_ref.dice, only_ref.hd95, only_ref.n_fn) == (0.0, LESION_HD95_PENALTY_MM, 1)


def test_met_task_uses_its_own_dilation():
    # Gap of 4: merged with the glioma dilation (3), separate with the metastasis one (1).
    ref = _box(_box(_empty(), (5, 5, 5), 5), (14, 5, 5), 5)
    assert len(lesionwise_metrics(ref, ref, task="BraTS-GLI").lesions) == 1
    assert len(lesionwise_metrics(ref, ref, task="BraTS-MET").lesions) == 2


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        lesionwise_metrics(_empty(), _empty()[:-1])


# ---------------------------------------------------------------- brute-force oracle


def _speckles(rng, shape, n, max_size):
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        size = rng.integers(1, max_size + 1, size=3)
        start = [rng.integers(0, s - m) for s, m in zip(shape, size, strict=True)]
        _box(mask, start, tuple(int(v) for v in size))
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_a_brute_force_oracle(seed, lesionwise_oracle):
    rng = np.random.default_rng(seed)
    shape = (36, 32, 28)
    ref = _speckles(rng, shape, 6, 7)
    # Prediction: the reference with some lesions removed, some shifted and some noise added.
    pred = np.roll(ref, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 3)))
    pred &= ~_speckles(rng, shape, 2, 8)
    pred |= _speckles(rng, shape, 3, 4)
    spacing = [(1.0, 1.0, 1.0), (0.9, 1.1, 2.0), (1.5, 1.5, 1.5)][seed % 3]
    task = ["BraTS-GLI", "BraTS-MET", "BraTS-MEN"][seed % 3]
    params = get_lesionwise_params(task)
    res = lesionwise_metrics(pred, ref, spacing=spacing, task=task)
    want_dice, want_hd = lesionwise_oracle(pred, ref, spacing, params)
    assert res.dice == pytest.approx(want_dice, abs=1e-12)
    assert res.hd95 == pytest.approx(want_hd, abs=1e-9)
