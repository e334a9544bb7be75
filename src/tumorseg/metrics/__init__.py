"""Segmentation metrics that agree with the BraTS challenges' reference implementations.

Structures
    Regions ``WT = NCR+ED+ET``, ``TC = NCR+ET``, ``ET``, and the single labels ``NCR`` and
    ``ED`` (the ET label is the ET region and is reported once, as ``ET``). Label maps in
    every convention of :mod:`tumorseg.conventions` (``brats2021`` 1/2/4, ``brats2023``
    1/2/3, ``msd`` NCR=2/ED=1/ET=3, and aliases) are accepted; values outside the convention
    are an error, never silently ignored.

Per-structure metrics (:func:`case_metrics`, keys ``<metric>_<structure>``)
    * ``dice``: ``2|P&R| / (|P|+|R|)``.
    * ``hd95`` (mm, voxel spacing applied): DeepMind ``surface-distance``
      ``compute_robust_hausdorff(compute_surface_distances(ref, pred, spacing), 95)``, as
      called by the BraTS 2023 official metric code: area-weighted percentiles over surfels
      (corners of the voxel grid, marching-cubes patch areas), symmetric maximum of the two
      directed 95th percentiles. Re-implemented on the bounding box of the two masks (plus one
      voxel) and tested to agree with the package bit for bit. ``hd_variant="monai"`` instead
      gives MONAI's ``compute_hausdorff_distance(percentile=95)`` (surface voxels, unweighted
      percentiles) under the distinct key ``hd95_monai``.
    * ``nsd``: normalised surface Dice as the BraTS 2024+ official metrics (``panoptica``)
      compute their global NSD: surface voxels (mask minus 6-connected erosion), distances in
      voxels, tolerance 0.5 voxel; equal to the package's ``global_nsd_<region>``
      (:func:`~tumorseg.metrics.surface.normalised_surface_dice`). Both masks empty: 1.
    * ``sensitivity = TP/(TP+FN)``, ``specificity = TN/(TN+FP)`` (over the whole image),
      ``precision = TP/(TP+FP)``.
    * ``volume_ref_<S>_ml``, ``volume_pred_<S>_ml``: voxel count times voxel volume, in mL.
    * ``lesion_dice``, ``lesion_hd95``, ``lesion_tp``, ``lesion_fn``, ``lesion_fp``: the
      BraTS 2023 lesion-wise scores, see below.
    * ``generalised_dice`` (one per case): Sudre et al. 2017 over the classes NCR, ED, ET with
      weights ``1/|R_l|^2``; a class absent from the reference gets the largest weight of the
      present ones (as MONAI's ``GeneralizedDiceScore``).

Empty masks (BraTS conventions)
    * Both empty: Dice 1, HD95 0, sensitivity 1, precision 1.
    * Exactly one empty: Dice 0, HD95 **373.13 mm** (the BraTS 2018-2021 value, the diagonal
      ``sqrt(240^2+240^2+155^2)`` of the BraTS volume; the BraTS 2023 code uses 374 here);
      sensitivity 0 when only the prediction has voxels (as the BraTS 2023 code), precision 0
      when only the reference has.
    * Missing prediction file (:func:`evaluate_folder`): every structure Dice 0 and HD95
      373.13 mm (lesion-wise Dice 0, HD95 374), even where the reference is empty, and the case
      is listed as missing.

Lesion-wise (BraTS 2023, :mod:`tumorseg.metrics.lesionwise`)
    26-connected components; reference lesions that touch after a binary dilation
    (18-connected structure, ``dilation_factor`` iterations) are merged; a predicted component
    matches a reference lesion when it meets that lesion dilated again; each reference lesion
    is scored (Dice, HD95) against the union of its matches, a missed lesion scores Dice 0 /
    HD95 374 mm, and each unmatched predicted component is a false-positive lesion scoring
    Dice 0 / HD95 374 mm. Reference lesions of volume ``<= volume_threshold_mm3`` are left out.
    The score is the mean over kept lesions plus false positives (Dice 1 / HD95 0 when there
    are none). Parameters (dilation, threshold mm^3): ``BraTS-GLI`` (default), ``BraTS-SSA``,
    ``BraTS-PED`` 3, 50; ``BraTS-MEN`` 1, 50; ``BraTS-MET`` 1, 2.

BraTS 2024+ challenge scoring (:mod:`tumorseg.metrics.challenge`)
    :func:`evaluate_challenge` converts predictions and references to the numbering of a
    configuration of the official ``brats-evaluation`` package (``gli``, ``mets``, ``ped``,
    ``MenRT``, ``MenPre``, ``GoAT``) and scores them with it (panoptica: lesions matched by
    maximum bipartite matching; DSC, NSD, HD95 global and lesion-wise), writing the columns
    of its own parser. Optional: ``pip install 'tumorseg[brats]'``.

Training-time validation
    :class:`RegionMetric` (MONAI ``CumulativeIterationMetric``) and
    :class:`RegionMetricHandler` (ignite) report per-region Dice and HD95 of region channels
    with the same functions, all-gathered across ranks under DDP; :class:`ChallengeMetric`
    and :class:`ChallengeMetricHandler` report a challenge configuration's own metrics;
    :func:`validation_metrics` gives the bundles' evaluator one or the other as key metric.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tumorseg.metrics.challenge import ChallengeResult, evaluate_challenge
from tumorseg.metrics.evaluate import (
    CaseMismatchError,
    EvaluationError,
    EvaluationResult,
    evaluate_folder,
)
from tumorseg.metrics.lesionwise import (
    LESION_HD95_PENALTY_MM,
    LESIONWISE_TASKS,
    LesionwiseParams,
    LesionwiseResult,
    lesionwise_metrics,
)
from tumorseg.metrics.regions import (
    STRUCTURES,
    case_metrics,
    dice,
    generalised_dice,
    missing_case_metrics,
    region_metrics,
)
from tumorseg.metrics.surface import (
    HD95_EMPTY_MM,
    hd95,
    normalised_surface_dice,
    robust_hausdorff,
    surface_distances,
)

if TYPE_CHECKING:
    from tumorseg.metrics.handlers import (
        ChallengeMetric,
        ChallengeMetricHandler,
        RegionMetric,
        RegionMetricHandler,
    )
    from tumorseg.metrics.validation import ValidationMetrics, validation_metrics

__all__ = [
    "HD95_EMPTY_MM",
    "LESIONWISE_TASKS",
    "LESION_HD95_PENALTY_MM",
    "STRUCTURES",
    "CaseMismatchError",
    "ChallengeMetric",
    "ChallengeMetricHandler",
    "ChallengeResult",
    "EvaluationError",
    "EvaluationResult",
    "LesionwiseParams",
    "LesionwiseResult",
    "RegionMetric",
    "RegionMetricHandler",
    "ValidationMetrics",
    "case_metrics",
    "dice",
    "evaluate_challenge",
    "evaluate_folder",
    "generalised_dice",
    "hd95",
    "lesionwise_metrics",
    "missing_case_metrics",
    "normalised_surface_dice",
    "region_metrics",
    "robust_hausdorff",
    "surface_distances",
    "validation_metrics",
]

_LAZY = {
    "ChallengeMetric": "handlers",
    "ChallengeMetricHandler": "handlers",
    "RegionMetric": "handlers",
    "RegionMetricHandler": "handlers",
    "ValidationMetrics": "validation",
    "validation_metrics": "validation",
}


def __getattr__(name: str) -> Any:
    # The handlers pull in torch/MONAI/ignite; load them only when asked for, so that the
    # evaluator's worker processes and `tumorseg evaluate --help` stay light.
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
