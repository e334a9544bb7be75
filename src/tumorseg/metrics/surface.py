"""Surface distances and the 95th-percentile Hausdorff distance (HD95), in millimetres.

The default definition is the one of DeepMind's ``surface-distance`` package, which the
BraTS 2023 official metric code calls as
``compute_robust_hausdorff(compute_surface_distances(gt, pred, spacing), 95)``:

* The surface of a mask is made of *surfels*: the corners of the voxel grid whose 2x2x2
  neighbourhood is neither fully inside nor fully outside the mask. Each surfel carries the
  area (mm^2) of the marching-cubes surface patch of its neighbourhood, scaled by the voxel
  spacing.
* The distance of a surfel to the other mask's surface is the Euclidean distance (with the
  spacing) to the nearest surfel of the other mask.
* The directed 95th percentile is *area weighted*: the smallest distance ``d`` such that
  the surfels at distance ``<= d`` cover at least 95% of the surface area. HD95 is the larger
  of the two directed percentiles.

Everything is computed on the bounding box of the union of the two masks, padded by one
voxel, which is what makes a 240x240x155 case take milliseconds rather than seconds; the
distances are unchanged by the crop because every surfel lies inside it.

The normalised surface Dice (:func:`normalised_surface_dice`, NSD) is the one of the BraTS
2024+ official metrics (``brats-evaluation``, computed by ``panoptica``): surface *voxels*
(a mask minus its 6-connected erosion), the fraction of each surface within a tolerance of
the other surface, ``(f_ref + f_pred) / 2`` in panoptica's arithmetic. The challenge's global
NSD is called without a voxel spacing, so distances are in voxels and the tolerance is
panoptica's default of 0.5 voxel (:data:`NSD_TOLERANCE_VOXELS`): a surface voxel counts only
where the other surface passes through that very voxel.

A second, explicitly named variant, ``"monai"``, is MONAI's ``compute_hausdorff_distance``
with ``percentile=95``: surface *voxels* (mask minus its erosion), unweighted percentiles of
voxel-centre distances. It gives different numbers and is never mixed with the default.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "HD95_EMPTY_MM",
    "HD_VARIANTS",
    "SurfaceDistances",
    "NSD_TOLERANCE_VOXELS",
    "bounding_box",
    "hd95",
    "normalised_surface_dice",
    "robust_hausdorff",
    "seed_normals_table",
    "surface_area_table",
    "surface_distances",
]

#: HD95 (mm) when exactly one of the two masks is empty: the BraTS 2018-2021 convention, the
#: diagonal of the 240x240x155 mm BraTS volume, ``sqrt(240^2 + 240^2 + 155^2) = 373.13``.
HD95_EMPTY_MM = 373.13

#: NSD tolerance of the BraTS 2024+ global NSD, in voxels: panoptica's default when no voxel
#: spacing is passed, which is how it computes its global (whole-region) metrics.
NSD_TOLERANCE_VOXELS = 0.5

#: The HD95 definitions on offer: the BraTS/DeepMind surfel one (default) and MONAI's.
HD_VARIANTS: tuple[str, ...] = ("surface-distance", "monai")

# Weight of the voxel at offset (a, b, c) of a 2x2x2 neighbourhood in the 8-bit neighbourhood
# code: 128 >> (4a + 2b + c). This is the bit order of the surfel-area table below (and of
# DeepMind's and MONAI's kernels), so the codes index that table directly.
_CODE_WEIGHTS = tuple(
    ((a, b, c), np.uint8(128 >> (4 * a + 2 * b + c)))
    for a in (0, 1)
    for b in (0, 1)
    for c in (0, 1)
)


@dataclass(frozen=True)
class SurfaceDistances:
    """Surfel distances between a reference and a predicted mask.

    Attributes:
        distances_ref_to_pred: mm, from each reference surfel to the predicted surface.
        distances_pred_to_ref: mm, from each predicted surfel to the reference surface.
        areas_ref: mm^2, area of each reference surfel (same order).
        areas_pred: mm^2, area of each predicted surfel (same order).

    The arrays are sorted by distance (ties by area). A side whose mask is empty has empty
    arrays, and every distance on the other side is ``inf``.
    """

    distances_ref_to_pred: np.ndarray
    distances_pred_to_ref: np.ndarray
    areas_ref: np.ndarray
    areas_pred: np.ndarray


_NORMALS_CACHE: dict[str, np.ndarray] = {}


def _normals_table() -> np.ndarray:
    """Marching-cubes surface normals, ``(256, 4, 3)``, whose lengths are the patch areas.

    MONAI ships the table (it is the one DeepMind's ``surface-distance`` uses; only the sign
    of two normals differs, which does not change an area). The private accessor is preferred
    because it gives the exact dyadic values; if a MONAI release drops it, the public
    per-spacing table is used instead (float32, agreement to ~1e-7 relative). The table is
    cached as numpy so that worker processes can be seeded with it and never import torch.
    """
    if "normals" not in _NORMALS_CACHE:
        from monai.metrics import utils as monai_utils

        getter = getattr(monai_utils, "_get_neighbour_code_to_normals_table", None)
        if getter is None:  # pragma: no cover - depends on the MONAI release
            raise ImportError("MONAI has no _get_neighbour_code_to_normals_table")
        table = np.asarray(getter(None).cpu().numpy(), dtype=np.float64)
        table.setflags(write=False)
        _NORMALS_CACHE["normals"] = table
    return _NORMALS_CACHE["normals"]


def seed_normals_table(table: np.ndarray | None = None) -> np.ndarray:
    """Load (or install) the surfel normals table; returns it.

    Call with no argument in a parent process and pass the result to worker processes'
    initialiser, which calls it with the table: the workers then skip importing MONAI/torch.
    """
    if table is not None:
        arr = np.asarray(table, dtype=np.float64)
        if arr.shape != (256, 4, 3):
            raise ValueError(f"normals table must have shape (256, 4, 3), got {arr.shape}")
        _NORMALS_CACHE["normals"] = arr
    return _normals_table()


@functools.lru_cache(maxsize=32)
def surface_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surface patch of each of the 256 2x2x2 neighbourhood codes.

    A patch's area vector transforms under the axis scaling ``diag(s0, s1, s2)`` by its
    cofactor ``(s1*s2, s0*s2, s0*s1)``; the area is the sum of the patch's triangle-group
    norms. The products are evaluated in the same order and precision as the reference
    implementation so that surfel areas, and hence the weighted percentile, agree bitwise.

    Args:
        spacing: voxel size in mm along the three array axes.

    Returns:
        float64 array of 256 areas (0 for the all-outside and all-inside codes).
    """
    s0, s1, s2 = (float(s) for s in spacing)
    try:
        normals = _normals_table()
    except ImportError:  # pragma: no cover - depends on the MONAI release
        from monai.metrics.utils import get_code_to_measure_table

        table, _ = get_code_to_measure_table(list(spacing))
        return np.asarray(table.cpu().numpy(), dtype=np.float64)
    table = np.zeros(256, dtype=np.float64)
    for code in range(256):
        total = 0.0
        for normal in normals[code]:
            if not normal.any():
                continue  # padding rows of the table
            scaled = np.array(
                [normal[0] * s1 * s2, normal[1] * s0 * s2, normal[2] * s0 * s1], dtype=np.float64
            )
            total += float(np.linalg.norm(scaled))
        table[code] = total
    table.setflags(write=False)
    return table


def bounding_box(mask: np.ndarray, *, pad: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding all non-zero voxels, grown by ``pad`` voxels.

    The box is clipped to the array, so cropping never invents voxels beyond the image.

    Args:
        mask: array of any dimension; non-zero is foreground.
        pad: voxels added on each side of each axis.

    Returns:
        One slice per axis, or ``None`` when the mask is empty.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    slices = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        nonzero = np.flatnonzero(np.any(mask, axis=other) if other else mask)
        if nonzero.size == 0:
            return None
        lo = max(int(nonzero[0]) - pad, 0)
        hi = min(int(nonzero[-1]) + 1 + pad, mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def _as_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"spacing must be {ndim} positive finite numbers (mm), got {tuple(spacing)!r}"
        )
    return values


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred_b = np.asarray(pred).astype(bool, copy=False)
    ref_b = np.asarray(ref).astype(bool, copy=False)
    if pred_b.shape != ref_b.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred_b.shape} vs {ref_b.shape}")
    if ref_b.ndim != 3:
        raise ValueError(f"masks must be 3D, got shape {ref_b.shape}")
    return pred_b, ref_b


def _neighbour_codes(padded: np.ndarray) -> np.ndarray:
    """8-bit code of every 2x2x2 neighbourhood of a zero-padded uint8 mask."""
    out_shape = tuple(n - 1 for n in padded.shape)
    codes = np.zeros(out_shape, dtype=np.uint8)
    for (a, b, c), weight in _CODE_WEIGHTS:
        view = padded[a : a + out_shape[0], b : b + out_shape[1], c : c + out_shape[2]]
        codes += view * weight
    return codes


def _sorted_pairs(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Sort by distance then area, exactly like sorting (distance, area) tuples: the cumulative
    # area sum then adds in the reference implementation's order.
    order = np.lexsort((areas, distances))
    return distances[order], areas[order]


def surface_distances(
    ref: np.ndarray, pred: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> SurfaceDistances:
    """Surfel-to-surface distances between two 3D masks, on their cropped bounding box.

    Same definition as DeepMind's ``compute_surface_distances(ref, pred, spacing)``.

    Args:
        ref: reference mask (non-zero is foreground).
        pred: predicted mask, same shape.
        spacing: voxel size in mm along the three array axes.

    Returns:
        The sorted distances and surfel areas of both sides.

    Raises:
        ValueError: on a shape mismatch, non-3D masks or a bad spacing.
    """
    pred_b, ref_b = _check_pair(pred, ref)
    sp = _as_spacing(spacing, 3)
    empty = np.zeros(0, dtype=np.float64)
    box = bounding_box(pred_b | ref_b)
    if box is None:
        return SurfaceDistances(empty, empty, empty, empty)

    table = surface_area_table((sp[0], sp[1], sp[2]))

    def side(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One voxel of zeros on every side so that the 2x2x2 codes cover every corner.
        padded = np.pad(mask[box].astype(np.uint8), 1)
        codes = _neighbour_codes(padded)
        border = (codes != 0) & (codes != 255)
        return border, table[codes]

    border_ref, area_map_ref = side(ref_b)
    border_pred, area_map_pred = side(pred_b)

    def distance_map(border: np.ndarray) -> np.ndarray | None:
        if not border.any():
            return None
        return np.asarray(ndimage.distance_transform_edt(~border, sampling=sp))

    dist_to_ref = distance_map(border_ref)
    dist_to_pred = distance_map(border_pred)

    n_ref = int(border_ref.sum())
    n_pred = int(border_pred.sum())
    d_ref = dist_to_pred[border_ref] if dist_to_pred is not None else np.full(n_ref, np.inf)
    d_pred = dist_to_ref[border_pred] if dist_to_ref is not None else np.full(n_pred, np.inf)
    a_ref = area_map_ref[border_ref]
    a_pred = area_map_pred[border_pred]
    if n_ref:
        d_ref, a_ref = _sorted_pairs(d_ref, a_ref)
    if n_pred:
        d_pred, a_pred = _sorted_pairs(d_pred, a_pred)
    return SurfaceDistances(
        distances_ref_to_pred=d_ref.astype(np.float64, copy=False),
        distances_pred_to_ref=d_pred.astype(np.float64, copy=False),
        areas_ref=a_ref.astype(np.float64, copy=False),
        areas_pred=a_pred.astype(np.float64, copy=False),
    )


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if distances.size == 0:
        return math.inf
    cumulative = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(idx, distances.size - 1)])


def robust_hausdorff(distances: SurfaceDistances, percent: float = 95.0) -> float:
    """Area-weighted ``percent``-th percentile Hausdorff distance (mm), symmetric.

    Same as DeepMind's ``compute_robust_hausdorff``: ``inf`` when either surface is empty.

    Args:
        distances: output of :func:`surface_distances`.
        percent: percentile in ``[0, 100]``.

    Raises:
        ValueError: for a percentile outside ``[0, 100]``.
    """
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must be in [0, 100], got {percent!r}")
    return max(
        _directed_percentile(distances.distances_ref_to_pred, distances.areas_ref, percent),
        _directed_percentile(distances.distances_pred_to_ref, distances.areas_pred, percent),
    )


def _hd95_monai(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    import torch
    from monai.metrics import compute_hausdorff_distance

    box = bounding_box(pred | ref, pad=1)
    assert box is not None  # callers handle empty masks first
    value = compute_hausdorff_distance(
        torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None],
        torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None],
        include_background=True,
        percentile=95,
        spacing=list(spacing),
    )
    return float(value.reshape(-1)[0])


def hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    variant: str = "surface-distance",
    empty_value: float = HD95_EMPTY_MM,
) -> float:
    """HD95 in mm between a predicted and a reference mask, with the BraTS empty-mask rules.

    Both masks empty gives 0; exactly one empty gives ``empty_value`` (373.13 mm, BraTS).

    Args:
        pred: predicted mask (non-zero is foreground).
        ref: reference mask, same shape.
        spacing: voxel size in mm along the three array axes.
        variant: ``"surface-distance"`` (BraTS 2023 / DeepMind surfels, the default) or
            ``"monai"`` (MONAI's surface-voxel HD95).
        empty_value: value returned when exactly one mask is empty.

    Raises:
        ValueError: for an unknown variant, a shape mismatch or a bad spacing.
    """
    if variant not in HD_VARIANTS:
        raise ValueError(f"unknown HD95 variant {variant!r}; expected one of {list(HD_VARIANTS)}")
    pred_b, ref_b = _check_pair(pred, ref)
    sp = _as_spacing(spacing, 3)
    has_pred, has_ref = bool(pred_b.any()), bool(ref_b.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return float(empty_value)
    if variant == "monai":
        return _hd95_monai(pred_b, ref_b, sp)
    return robust_hausdorff(surface_distances(ref_b, pred_b, spacing=sp), 95.0)


def _surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` not in its 6-connected erosion (panoptica's border, outside zero)."""
    return mask ^ ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def normalised_surface_dice(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    tolerance: float | None = None,
) -> float:
    """Normalised surface Dice, as the BraTS 2024+ metrics (``panoptica``) compute it.

    ``NSD = (f_ref + f_pred) / 2``, where ``f_ref`` is the fraction of the reference's surface
    voxels within ``tolerance`` of the predicted surface and ``f_pred`` the converse; surface
    voxels are a mask minus its 6-connected erosion, distances Euclidean between voxel
    centres. With the defaults (no spacing, tolerance 0.5 voxel) this is the challenge's
    global NSD, ``global_nsd_<region>``. Both masks empty gives 1 (the project's rule, as for
    Dice; the package reports NaN there), exactly one empty gives 0 (as the package).

    Args:
        pred: predicted mask (non-zero is foreground), 3D.
        ref: reference mask, same shape.
        spacing: voxel size in mm along the three axes; ``None`` measures in voxels, as the
            challenge's global metrics do.
        tolerance: distance (mm, or voxels without ``spacing``) within which a surface voxel
            counts; default :data:`NSD_TOLERANCE_VOXELS` without ``spacing`` and the
            smallest voxel size with it (panoptica's defaults).

    Raises:
        ValueError: on a shape mismatch, a bad spacing or a negative tolerance.
    """
    pred_b, ref_b = _check_pair(pred, ref)
    sp = None if spacing is None else _as_spacing(spacing, 3)
    if tolerance is None:
        tolerance = NSD_TOLERANCE_VOXELS if sp is None else min(sp)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    has_pred, has_ref = bool(pred_b.any()), bool(ref_b.any())
    if not has_pred and not has_ref:
        return 1.0
    if has_pred != has_ref:
        return 0.0
    # Distances to the nearest surface voxel are unchanged by a crop that keeps every
    # surface voxel and one background voxel around them.
    box = bounding_box(pred_b | ref_b, pad=1)
    assert box is not None
    border_pred = _surface_voxels(pred_b[box])
    border_ref = _surface_voxels(ref_b[box])
    d_ref = ndimage.distance_transform_edt(~border_pred, sampling=sp)[border_ref]
    d_pred = ndimage.distance_transform_edt(~border_ref, sampling=sp)[border_pred]
    tp_a = np.sum(d_ref <= tolerance) / d_ref.size
    tp_b = np.sum(d_pred <= tolerance) / d_pred.size
    fp = np.sum(d_ref > tolerance) / d_ref.size
    fn = np.sum(d_pred > tolerance) / d_pred.size
    return float((tp_a + tp_b) / (tp_a + tp_b + fp + fn + sys.float_info.min))
