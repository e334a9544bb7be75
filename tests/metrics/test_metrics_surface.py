"""HD95 and surface distances: hand-made cases with known answers, and DeepMind agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from tumorseg.metrics.surface import (
    HD95_EMPTY_MM,
    bounding_box,
    hd95,
    robust_hausdorff,
    surface_area_table,
    surface_distances,
)


def _cube(shape=(20, 20, 20), start=(5, 5, 5), size=6) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def _blob(rng: np.random.Generator, shape=(40, 36, 30), level=0.55) -> np.ndarray:
    """A random, irregular, possibly multi-component mask (smoothed noise)."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=2.5)
    return noise > np.quantile(noise, level + 0.4 * rng.random())


# ------------------------------------------------------------------ hand-made known answers


def test_identical_masks_score_zero():
    cube = _cube()
    assert hd95(cube, cube) == 0.0


def test_single_voxel_shift_along_each_axis_scales_with_spacing():
    spacing = (0.5, 1.25, 3.0)
    ref = np.zeros((9, 9, 9), dtype=bool)
    ref[4, 4, 4] = True
    for axis in range(3):
        for shift in (1, 2, 3):
            pred = np.roll(ref, shift, axis=axis)
            # Two unit cubes whose corner grids are `shift` voxels apart along one axis.
            assert hd95(pred, ref, spacing=spacing) == pytest.approx(shift * spacing[axis])


def test_single_voxel_identical_is_zero():
    ref = np.zeros((5, 5, 5), dtype=bool)
    ref[2, 2, 2] = True
    assert hd95(ref, ref.copy(), spacing=(2.0, 2.0, 2.0)) == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9375, 0.9375, 1.5), (2.0, 0.5, 3.0)])
def test_shifted_cube_hd95_is_one_voxel_in_mm(axis, spacing):
    # A cube shifted by one voxel: the face left behind (1/6 of the surface, more than 5%)
    # lies exactly one voxel from the other surface and every other surfel at most that.
    ref = _cube()
    pred = np.roll(ref, 1, axis=axis)
    assert hd95(pred, ref, spacing=spacing) == pytest.approx(spacing[axis])


def test_empty_mask_conventions():
    cube = _cube()
    empty = np.zeros_like(cube)
    assert hd95(empty, empty) == 0.0
    assert hd95(cube, empty) == HD95_EMPTY_MM == 373.13
    assert hd95(empty, cube) == HD95_EMPTY_MM
    assert hd95(empty, cube, empty_value=374.0) == 374.0
    # The raw robust Hausdorff is infinite, as in surface-distance.
    assert math.isinf(robust_hausdorff(surface_distances(cube, empty)))
    sd = surface_distances(empty, empty)
    assert sd.distances_ref_to_pred.size == 0 and sd.distances_pred_to_ref.size == 0


def test_surface_area_of_a_cube():
    # The surfel areas of a solid cube sum to roughly its surface area (marching-cubes corners
    # are cut, so a little less) and scale with the spacing's face areas.
    cube = _cube(size=10)
    iso = surface_distances(cube, cube).areas_ref.sum()
    assert 0.9 * 600 < iso < 600
    aniso = surface_distances(cube, cube, spacing=(2.0, 2.0, 2.0)).areas_ref.sum()
    assert aniso == pytest.approx(4 * iso)


def test_area_table_spacing_scaling():
    iso = surface_area_table((1.0, 1.0, 1.0))
    assert iso[0] == 0 and iso[255] == 0
    assert np.allclose(surface_area_table((2.0, 2.0, 2.0)), 4 * iso)


def test_bounding_box_pad_and_clip():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[0, 4, 9] = True
    assert bounding_box(mask) == (slice(0, 1), slice(4, 5), slice(9, 10))
    assert bounding_box(mask, pad=2) == (slice(0, 3), slice(2, 7), slice(7, 10))
    assert bounding_box(np.zeros((3, 3, 3))) is None
    with pytest.raises(ValueError, match="pad"):
        bounding_box(mask, pad=-1)


def test_bad_inputs_are_reported():
    cube = _cube()
    with pytest.raises(ValueError, match="shapes differ"):
        hd95(cube, cube[:-1])
    with pytest.raises(ValueError, match="spacing"):
        hd95(cube, cube, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(cube, cube, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="variant"):
        hd95(cube, cube, variant="medpy")
    with pytest.raises(ValueError, match="3D"):
        hd95(cube[0], cube[0])


def test_mask_touching_the_image_border():
    ref = np.zeros((8, 8, 8), dtype=bool)
    ref[:3, :3, :3] = True
    pred = np.roll(ref, 1, axis=0)
    assert hd95(pred, ref) == pytest.approx(1.0)


# ------------------------------------------------------- agreement with DeepMind's package


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9375, 0.9375, 1.5), (0.7, 1.3, 2.1)])
def test_surfels_identical_to_surface_distance(surface_distance, spacing):
    rng = np.random.default_rng(0)
    for _ in range(4):
        ref, pred = _blob(rng), _blob(rng)
        ours = surface_distances(ref, pred, spacing=spacing)
        theirs = surface_distance.compute_surface_distances(ref, pred, spacing)
        # Same surfels, distances and areas, in the same order: bit-for-bit agreement.
        assert np.array_equal(ours.distances_ref_to_pred, theirs["distances_gt_to_pred"])
        assert np.array_equal(ours.distances_pred_to_ref, theirs["distances_pred_to_gt"])
        assert np.array_equal(ours.areas_ref, theirs["surfel_areas_gt"])
        assert np.array_equal(ours.areas_pred, theirs["surfel_areas_pred"])
        expected = surface_distance.compute_robust_hausdorff(theirs, 95)
        assert hd95(pred, ref, spacing=spacing) == expected


def test_hand_made_cases_agree_with_surface_distance(sd_hd95):
    ref = _cube()
    for pred in (np.roll(ref, 2, axis=1), _cube(start=(7, 6, 5), size=4), ref):
        for spacing in ((1.0, 1.0, 1.0), (0.5, 2.0, 1.0)):
            assert hd95(pred, ref, spacing=spacing) == pytest.approx(
                sd_hd95(pred, ref, spacing), abs=1e-9
            )


def test_one_empty_mask_is_infinite_in_surface_distance(sd_hd95):
    # BraTS 2023 maps this inf to 374 (legacy BraTS: 373.13); we report 373.13.
    cube = _cube()
    assert math.isinf(sd_hd95(cube, np.zeros_like(cube)))


# ------------------------------------------------------------------- the MONAI variant


def test_monai_variant_matches_monai_on_the_full_image():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(3)
    ref, pred = _blob(rng), _blob(rng)
    spacing = (0.8, 1.0, 1.6)
    expected = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(ref)[None, None],
        include_background=True,
        percentile=95,
        spacing=list(spacing),
    ).item()
    assert hd95(pred, ref, spacing=spacing, variant="monai") == pytest.approx(expected, abs=1e-6)
    assert hd95(np.zeros_like(ref), ref, variant="monai") == HD95_EMPTY_MM
