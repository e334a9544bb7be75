"""BraTS 2023 lesion-wise Dice and HD95.

Same definitions as the BraTS 2023 official metric code (``rachitsaluja/BraTS-2023-Metrics``,
``get_lesion_wise_results``), re-implemented on a cropped volume:

1. Reference lesions: 26-connected components of the reference mask, *merged* when they touch
   after a binary dilation of the whole mask (18-connected structuring element,
   ``dilation_factor`` iterations): every reference voxel takes the id of the dilated
   component it lies in.
2. Matching: a predicted 26-connected component is matched to a reference lesion when it
   intersects that lesion dilated again (same structure and iterations). A reference lesion is
   scored against the union of all components matched to it (a component may match several
   lesions); its Dice and HD95 (DeepMind surfels, see :mod:`tumorseg.metrics.surface`) are
   computed against that union. A lesion with no match scores Dice 0 and HD95 374 mm.
3. False positives: predicted components matched to no reference lesion (small lesions
   included) each count as one lesion with Dice 0 and HD95 374 mm.
4. Small lesions: reference lesions of volume ``<= volume_threshold_mm3`` (voxel count times
   voxel volume) are left out of the averages; a component matched to one is not an FP.
5. Score: ``sum(lesion scores) / (kept lesions + FP lesions)``. With no kept lesion and no FP
   (e.g. both masks empty) the score is Dice 1 and HD95 0.

Parameters per BraTS 2023 task (``dilation_factor``, ``volume_threshold_mm3``): gliomas
``BraTS-GLI`` (3, 50), ``BraTS-SSA`` (3, 50), ``BraTS-PED`` (3, 50), meningiomas
``BraTS-MEN`` (1, 50), metastases ``BraTS-MET`` (1, 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from tumorseg.metrics.surface import bounding_box, robust_hausdorff, surface_distances

__all__ = [
    "LESION_HD95_PENALTY_MM",
    "LESIONWISE_TASKS",
    "Lesion",
    "LesionwiseParams",
    "LesionwiseResult",
    "get_lesionwise_params",
    "lesionwise_metrics",
]

#: HD95 (mm) of a missed or a false-positive lesion in the BraTS 2023 lesion-wise score.
LESION_HD95_PENALTY_MM = 374.0


@dataclass(frozen=True)
class LesionwiseParams:
    """Lesion-wise parameters of one BraTS 2023 task.

    Attributes:
        task: challenge name, e.g. ``BraTS-GLI``.
        dilation_factor: iterations of the 18-connected binary dilation used to merge and
            match lesions.
        volume_threshold_mm3: reference lesions of at most this volume are left out.
    """

    task: str
    dilation_factor: int
    volume_threshold_mm3: float


#: Parameters of the BraTS 2023 tasks, as in the official metric code.
LESIONWISE_TASKS: dict[str, LesionwiseParams] = {
    "BraTS-GLI": LesionwiseParams("BraTS-GLI", 3, 50.0),
    "BraTS-SSA": LesionwiseParams("BraTS-SSA", 3, 50.0),
    "BraTS-MEN": LesionwiseParams("BraTS-MEN", 1, 50.0),
    "BraTS-PED": LesionwiseParams("BraTS-PED", 3, 50.0),
    "BraTS-MET": LesionwiseParams("BraTS-MET", 1, 2.0),
}

_CC26 = np.ones((3, 3, 3), dtype=bool)
_DILATION18 = ndimage.generate_binary_structure(3, 2)


def get_lesionwise_params(task: str | LesionwiseParams) -> LesionwiseParams:
    """Look up the lesion-wise parameters of a task (case-insensitive name).

    Raises:
        ValueError: for an unknown task, listing the known ones.
    """
    if isinstance(task, LesionwiseParams):
        return task
    by_lower = {k.lower(): v for k, v in LESIONWISE_TASKS.items()}
    key = str(task).strip().lower()
    if key not in by_lower:
        raise ValueError(
            f"unknown lesion-wise task {task!r}; expected one of {sorted(LESIONWISE_TASKS)}"
        )
    return by_lower[key]


@dataclass(frozen=True)
class Lesion:
    """Score of one (merged) reference lesion.

    Attributes:
        volume_mm3: lesion volume.
        n_matched: predicted components matched to it.
        dice: Dice of the lesion against the union of its matched components.
        hd95: HD95 (mm) against that union; 374 when nothing matched.
        counted: False for lesions at or below the volume threshold.
    """

    volume_mm3: float
    n_matched: int
    dice: float
    hd95: float
    counted: bool


@dataclass(frozen=True)
class LesionwiseResult:
    """Lesion-wise scores of one mask pair.

    Attributes:
        dice: lesion-wise Dice.
        hd95: lesion-wise HD95 in mm.
        n_tp: counted reference lesions with at least one matched component.
        n_fn: counted reference lesions with none.
        n_fp: predicted components matched to no reference lesion.
        lesions: per reference lesion details, small ones included.
    """

    dice: float
    hd95: float
    n_tp: int
    n_fn: int
    n_fp: int
    lesions: list[Lesion] = field(default_factory=list)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0


def lesionwise_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    task: str | LesionwiseParams = "BraTS-GLI",
) -> LesionwiseResult:
    """BraTS 2023 lesion-wise Dice and HD95 of one binary mask pair.

    Args:
        pred: predicted mask (non-zero is foreground), 3D.
        ref: reference mask, same shape.
        spacing: voxel size in mm along the three array axes.
        task: BraTS 2023 task name (see :data:`LESIONWISE_TASKS`) or explicit parameters.

    Returns:
        The lesion-wise scores, lesion counts and per-lesion details.

    Raises:
        ValueError: on a shape mismatch, non-3D masks or an unknown task.
    """
    params = get_lesionwise_params(task)
    pred_b = np.asarray(pred).astype(bool, copy=False)
    ref_b = np.asarray(ref).astype(bool, copy=False)
    if pred_b.shape != ref_b.shape or ref_b.ndim != 3:
        raise ValueError(f"masks must be 3D and of one shape, got {pred_b.shape} and {ref_b.shape}")
    sp = tuple(float(s) for s in spacing)
    voxel_mm3 = sp[0] * sp[1] * sp[2]
    k = params.dilation_factor

    # Crop to the union plus the dilation reach: dilation and labelling give the same result
    # inside the crop as on the full image, since all foreground lies inside it.
    box = bounding_box(pred_b | ref_b, pad=k + 1)
    if box is None:
        return LesionwiseResult(dice=1.0, hd95=0.0, n_tp=0, n_fn=0, n_fp=0)
    pred_c, ref_c = pred_b[box], ref_b[box]

    pred_cc, n_pred = ndimage.label(pred_c, structure=_CC26)
    merged_ids = np.zeros(ref_c.shape, dtype=np.int32)
    n_lesions = 0
    if ref_c.any():
        dilated = ndimage.binary_dilation(ref_c, structure=_DILATION18, iterations=k)
        dilated_cc, n_lesions = ndimage.label(dilated, structure=_CC26)
        merged_ids[ref_c] = dilated_cc[ref_c]

    lesions: list[Lesion] = []
    matched_ids: set[int] = set()
    shape: tuple[int, ...] = tuple(merged_ids.shape)
    lesion_boxes = ndimage.find_objects(merged_ids) if n_lesions else []
    for lesion_id, lesion_box in enumerate(lesion_boxes, start=1):
        if lesion_box is None:  # pragma: no cover - every dilated component holds a lesion
            continue
        # Dilate only around this lesion: k iterations reach at most k voxels per axis.
        grown = tuple(
            slice(max(sl.start - k - 1, 0), min(sl.stop + k + 1, shape[axis]))
            for axis, sl in enumerate(lesion_box)
        )
        lesion_local = merged_ids[grown] == lesion_id
        reach = ndimage.binary_dilation(lesion_local, structure=_DILATION18, iterations=k)
        hits = np.unique(pred_cc[grown][reach])
        hits = hits[hits != 0]
        matched_ids.update(int(h) for h in hits)

        lesion_mask = merged_ids == lesion_id
        volume = float(lesion_mask.sum()) * voxel_mm3
        if hits.size:
            pred_sel = np.isin(pred_cc, hits)
            dice = _dice(pred_sel, lesion_mask)
            hd = robust_hausdorff(surface_distances(lesion_mask, pred_sel, spacing=sp), 95.0)
        else:
            dice, hd = 0.0, math.inf
        if math.isinf(hd):
            hd = LESION_HD95_PENALTY_MM
        lesions.append(
            Lesion(
                volume_mm3=volume,
                n_matched=int(hits.size),
                dice=dice,
                hd95=hd,
                counted=volume > params.volume_threshold_mm3,
            )
        )

    n_fp = n_pred - len(matched_ids)
    counted = [les for les in lesions if les.counted]
    denominator = len(counted) + n_fp
    if denominator == 0:
        dice, hd = 1.0, 0.0
    else:
        dice = sum(les.dice for les in counted) / denominator
        hd = (sum(les.hd95 for les in counted) + n_fp * LESION_HD95_PENALTY_MM) / denominator
    return LesionwiseResult(
        dice=float(dice),
        hd95=float(hd),
        n_tp=sum(1 for les in counted if les.n_matched),
        n_fn=sum(1 for les in counted if not les.n_matched),
        n_fp=int(n_fp),
        lesions=lesions,
    )
