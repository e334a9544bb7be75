"""Per-case metrics of tumour regions (WT, TC, ET) and labels (NCR, ED), functional form.

``case_metrics`` takes two integer label maps in any supported convention and returns a flat
``dict[str, float]``: for every structure ``S`` of :data:`STRUCTURES` the keys
``dice_S, hd95_S, nsd_S, sensitivity_S, specificity_S, precision_S, volume_ref_S_ml,
volume_pred_S_ml`` and, with ``lesionwise=True``, ``lesion_dice_S, lesion_hd95_S,
lesion_tp_S, lesion_fn_S, lesion_fp_S``; plus ``generalised_dice``. See
:mod:`tumorseg.metrics` for the definitions and empty-mask conventions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tumorseg.conventions import REGION_CLASSES, LabelConvention, get_convention
from tumorseg.metrics.lesionwise import (
    LESION_HD95_PENALTY_MM,
    LesionwiseParams,
    get_lesionwise_params,
    lesionwise_metrics,
)
from tumorseg.metrics.surface import (
    HD95_EMPTY_MM,
    HD_VARIANTS,
    bounding_box,
    hd95,
    normalised_surface_dice,
)

__all__ = [
    "LABEL_STRUCTURES",
    "REGION_STRUCTURES",
    "STRUCTURES",
    "as_label_map",
    "case_metrics",
    "dice",
    "generalised_dice",
    "hd95_key",
    "metric_key",
    "missing_case_metrics",
    "region_metrics",
    "structure_masks",
]

#: Nested tumour regions, as trained and reported by BraTS.
REGION_STRUCTURES: tuple[str, ...] = ("WT", "TC", "ET")
#: Single labels not already a region (the ET label *is* the ET region, reported once).
LABEL_STRUCTURES: tuple[str, ...] = ("NCR", "ED")
#: Everything ``case_metrics`` reports on, in output order.
STRUCTURES: tuple[str, ...] = REGION_STRUCTURES + LABEL_STRUCTURES

_STRUCTURE_CLASSES: dict[str, tuple[str, ...]] = {
    **REGION_CLASSES,
    "NCR": ("NCR",),
    "ED": ("ED",),
}


def hd95_key(variant: str = "surface-distance") -> str:
    """Metric name of an HD95 variant: ``hd95`` for the BraTS one, ``hd95_monai`` otherwise.

    Raises:
        ValueError: for an unknown variant.
    """
    if variant not in HD_VARIANTS:
        raise ValueError(f"unknown HD95 variant {variant!r}; expected one of {list(HD_VARIANTS)}")
    return "hd95" if variant == "surface-distance" else "hd95_" + variant


def metric_key(metric: str, structure: str) -> str:
    """Flat key of a metric for a structure: ``dice_WT``, ``volume_ref_WT_ml``."""
    if metric.endswith("_ml"):
        return f"{metric[:-3]}_{structure}_ml"
    return f"{metric}_{structure}"


def as_label_map(
    label: np.ndarray, convention: str | LabelConvention, *, name: str = "label"
) -> np.ndarray:
    """Validate a label map and return it as an integer array.

    Args:
        label: 3D label map (a leading singleton channel is dropped). Float maps must hold
            integral values.
        convention: label convention the values must belong to.
        name: how to refer to the map in error messages.

    Returns:
        An integer numpy array of the same spatial shape.

    Raises:
        ValueError: for non-3D maps, non-integral values or values outside the convention.
    """
    conv = get_convention(convention)
    arr = np.asarray(label)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D label map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ValueError(f"{name} holds non-integer values (dtype {arr.dtype})")
        arr = rounded.astype(np.int32)
    # Counting each legal value is several times faster than np.unique / np.isin on a
    # 240x240x155 map; the slow path only runs to name the offending values.
    n_legal = sum(int(np.count_nonzero(arr == v)) for v in conv.legal_values)
    if n_legal != arr.size:
        illegal = sorted({int(v) for v in np.unique(arr)} - conv.legal_values)
        raise ValueError(
            f"{name} holds values {illegal} that are not legal in convention {conv.name!r} "
            f"(legal: {sorted(conv.legal_values)}); is --convention right?"
        )
    return arr


def _tumour_convention(convention: str | LabelConvention) -> LabelConvention:
    conv = get_convention(convention)
    lacking = [c for c in ("NCR", "ED", "ET") if c not in conv.classes]
    if lacking:
        raise ValueError(
            f"convention {conv.name!r} has no {'/'.join(lacking)} label, so the WT/TC/ET "
            "metrics do not apply; score it with its challenge configuration instead "
            "(tumorseg evaluate --challenge)"
        )
    return conv


def structure_masks(label: np.ndarray, convention: str | LabelConvention) -> dict[str, np.ndarray]:
    """Boolean masks of every structure in :data:`STRUCTURES` from an integer label map.

    The regions follow the convention's own definitions (the paediatric cystic component is
    part of TC and WT); a resection cavity is part of none.
    """
    conv = _tumour_convention(convention)
    values = {s: list(conv.region_values(s)) for s in REGION_STRUCTURES}
    values.update({s: [conv.classes[c] for c in _STRUCTURE_CLASSES[s]] for s in LABEL_STRUCTURES})
    if label.size == 0 or int(label.min()) < 0 or int(label.max()) >= 1 << 16:
        return {s: np.isin(label, v) for s, v in values.items()}
    # A look-up table per structure: one gather instead of np.isin's sort-based search.
    size = max(int(label.max()), *conv.classes.values()) + 1
    out = {}
    for s, v in values.items():
        lut = np.zeros(size, dtype=bool)
        lut[v] = True
        out[s] = lut[label]
    return out


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice ``2|P & R| / (|P| + |R|)``; 1 when both masks are empty."""
    p = np.asarray(pred).astype(bool, copy=False)
    r = np.asarray(ref).astype(bool, copy=False)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def _ratio(num: int, den: int, *, undefined: float) -> float:
    return num / den if den else undefined


def region_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    hd_variant: str = "surface-distance",
    lesionwise: bool = False,
    lesion_task: str | LesionwiseParams = "BraTS-GLI",
    n_voxels: int | None = None,
) -> dict[str, float]:
    """All metrics of one binary mask pair.

    Args:
        pred: predicted mask (non-zero is foreground), 3D.
        ref: reference mask, same shape.
        spacing: voxel size in mm along the three array axes.
        hd_variant: ``"surface-distance"`` (BraTS, key ``hd95``) or ``"monai"`` (key
            ``hd95_monai``).
        lesionwise: also compute the BraTS 2023 lesion-wise scores.
        lesion_task: BraTS 2023 task whose lesion-wise parameters apply.
        n_voxels: voxels of the whole image when ``pred``/``ref`` are a crop of it (only the
            true-negative count, i.e. specificity, depends on it).

    Returns:
        ``dice, <hd95 key>, nsd, sensitivity, specificity, precision, volume_ref_ml,
        volume_pred_ml`` (``nsd``: the BraTS 2024+ global NSD, see
        :func:`~tumorseg.metrics.surface.normalised_surface_dice`) and, with ``lesionwise``,
        ``lesion_dice, lesion_hd95, lesion_tp, lesion_fn, lesion_fp``.

    Raises:
        ValueError: on a shape mismatch, a bad spacing or an unknown variant/task.
    """
    p = np.asarray(pred).astype(bool, copy=False)
    r = np.asarray(ref).astype(bool, copy=False)
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    sp = tuple(float(s) for s in spacing)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    total = int(p.size if n_voxels is None else n_voxels)
    n_pred, n_ref = int(p.sum()), int(r.sum())
    tp = int(np.logical_and(p, r).sum())
    fp, fn = n_pred - tp, n_ref - tp
    tn = total - tp - fp - fn
    out = {
        "dice": 2.0 * tp / (n_pred + n_ref) if n_pred + n_ref else 1.0,
        hd95_key(hd_variant): hd95(p, r, spacing=sp, variant=hd_variant),
        # In voxels with a 0.5-voxel tolerance, as the challenge's global NSD (no spacing).
        "nsd": normalised_surface_dice(p, r),
        # BraTS 2023: sensitivity 1 when both masks are empty, 0 when only the reference is.
        "sensitivity": _ratio(tp, tp + fn, undefined=1.0 if n_pred == 0 else 0.0),
        "specificity": _ratio(tn, tn + fp, undefined=1.0),
        "precision": _ratio(tp, tp + fp, undefined=1.0 if n_ref == 0 else 0.0),
        "volume_ref_ml": n_ref * voxel_ml,
        "volume_pred_ml": n_pred * voxel_ml,
    }
    if lesionwise:
        res = lesionwise_metrics(p, r, spacing=sp, task=lesion_task)
        out.update(
            lesion_dice=res.dice,
            lesion_hd95=res.hd95,
            lesion_tp=float(res.n_tp),
            lesion_fn=float(res.n_fn),
            lesion_fp=float(res.n_fp),
        )
    return out


def generalised_dice(
    pred_label: np.ndarray, ref_label: np.ndarray, *, convention: str | LabelConvention
) -> float:
    """Generalised Dice (Sudre et al. 2017) over the label classes NCR, ED, ET.

    ``GD = 2 sum_l w_l |P_l & R_l| / sum_l w_l (|P_l| + |R_l|)`` with ``w_l = 1 / |R_l|^2``.
    A class absent from the reference gets the largest weight of the present classes (all
    weights 1 when none is present), as in MONAI's ``GeneralizedDiceScore``; both maps free
    of tumour gives 1.
    """
    conv = _tumour_convention(convention)
    inter, ref_n, pred_n = [], [], []
    for cls in ("NCR", "ED", "ET"):
        v = conv.classes[cls]
        p, r = pred_label == v, ref_label == v
        inter.append(float(np.logical_and(p, r).sum()))
        ref_n.append(float(r.sum()))
        pred_n.append(float(p.sum()))
    ref_a = np.asarray(ref_n)
    weights = np.zeros_like(ref_a)
    present = ref_a > 0
    weights[present] = 1.0 / ref_a[present] ** 2
    weights[~present] = weights[present].max() if present.any() else 1.0
    den = float(np.sum(weights * (ref_a + np.asarray(pred_n))))
    if den == 0.0:
        return 1.0
    return float(2.0 * np.sum(weights * np.asarray(inter)) / den)


def case_metrics(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    convention: str | LabelConvention = "brats2021",
    lesionwise: bool = True,
    hd_variant: str = "surface-distance",
    lesion_task: str | LesionwiseParams = "BraTS-GLI",
) -> dict[str, float]:
    """Every metric of one case, for every structure in :data:`STRUCTURES`.

    Args:
        pred_label: predicted integer label map, 3D.
        ref_label: reference label map, same shape and convention.
        spacing: voxel size in mm along the three array axes.
        convention: label convention of both maps (``brats2021``, ``brats2023``, ``msd`` or
            an alias).
        lesionwise: also compute the BraTS 2023 lesion-wise scores (slower).
        hd_variant: HD95 definition, see :func:`region_metrics`.
        lesion_task: BraTS 2023 task whose lesion-wise parameters apply.

    Returns:
        Flat ``{metric_structure: value}``, e.g. ``dice_WT``, ``hd95_ET``,
        ``volume_ref_TC_ml``, ``lesion_dice_WT``, plus ``generalised_dice``.

    Raises:
        ValueError: on a shape mismatch, illegal label values or bad options.
    """
    conv = _tumour_convention(convention)
    pred = as_label_map(pred_label, conv, name="prediction")
    ref = as_label_map(ref_label, conv, name="reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    params = get_lesionwise_params(lesion_task)
    hd95_key(hd_variant)  # validate before the work

    # Every metric but specificity is unchanged by cropping to the tumour's bounding box
    # (with room for the lesion-wise dilation); specificity gets the full voxel count.
    n_voxels = int(ref.size)
    box = bounding_box((pred != 0) | (ref != 0), pad=params.dilation_factor + 2)
    if box is not None:
        pred, ref = np.ascontiguousarray(pred[box]), np.ascontiguousarray(ref[box])
    else:
        pred, ref = pred[:1, :1, :1], ref[:1, :1, :1]

    pred_masks = structure_masks(pred, conv)
    ref_masks = structure_masks(ref, conv)
    out: dict[str, float] = {}
    for s in STRUCTURES:
        values = region_metrics(
            pred_masks[s],
            ref_masks[s],
            spacing=spacing,
            hd_variant=hd_variant,
            lesionwise=lesionwise,
            lesion_task=params,
            n_voxels=n_voxels,
        )
        for metric, value in values.items():
            out[metric_key(metric, s)] = float(value)
    out["generalised_dice"] = generalised_dice(pred, ref, convention=conv)
    return out


def missing_case_metrics(
    ref_label: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    convention: str | LabelConvention = "brats2021",
    lesionwise: bool = True,
    hd_variant: str = "surface-distance",
    lesion_task: str | LesionwiseParams = "BraTS-GLI",
) -> dict[str, float]:
    """Metrics of a case whose prediction is missing, scored the BraTS way.

    Every structure gets Dice 0, NSD 0 and HD95 373.13 mm (lesion-wise: Dice 0, HD95 374 mm), even
    where the reference is empty; the other metrics are those of an empty prediction.
    """
    ref = as_label_map(ref_label, convention, name="reference")
    out = case_metrics(
        np.zeros_like(ref),
        ref,
        spacing=spacing,
        convention=convention,
        lesionwise=lesionwise,
        hd_variant=hd_variant,
        lesion_task=lesion_task,
    )
    hd = hd95_key(hd_variant)
    for s in STRUCTURES:
        out[metric_key("dice", s)] = 0.0
        out[metric_key("nsd", s)] = 0.0
        out[metric_key(hd, s)] = HD95_EMPTY_MM
        if lesionwise:
            out[metric_key("lesion_dice", s)] = 0.0
            out[metric_key("lesion_hd95", s)] = LESION_HD95_PENALTY_MM
    out["generalised_dice"] = 0.0
    return out
