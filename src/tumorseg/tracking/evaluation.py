"""A scored folder of predictions recorded as one MLflow run, named as the bundles' validation.

Behind ``tumorseg evaluate --log-mlflow``: the per-structure means of
:func:`tumorseg.metrics.evaluate.evaluate_folder` become the metrics a bundle's validation logs
(``val_mean_dice``, ``val_dice_wt/tc/et``, ``val_hd95_wt/tc/et``, ``val_hd95_mean``), so that
``tumorseg compare`` puts any label maps (an nnU-Net baseline on the manifest's folds, a cv
folder's out-of-fold maps) in the same columns as the trainings of the same experiment. The run
is tagged ``tumorseg.kind = evaluation`` (``tumorseg compare --kind evaluation``), carries the
caller's params (``fold``, ``datalist``, ...) and tags, and the report files as artifacts.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tumorseg.metrics.regions import REGION_STRUCTURES, metric_key
from tumorseg.tracking.store import create_run

__all__ = ["log_evaluation_run", "validation_metrics"]


def validation_metrics(
    summary: Mapping[str, Mapping[str, Any]], *, hd95: str = "hd95", prefix: str = "val_"
) -> dict[str, float]:
    """The bundles' validation metric names from an evaluation summary.

    Args:
        summary: ``EvaluationResult.summary`` (key ``dice_WT`` -> ``{"mean": ...}``).
        hd95: the summary's HD95 metric (``EvaluationResult.info["hd95_key"]``).
        prefix: prepended to every name (``val_`` as the bundles' validators).

    Returns:
        ``<prefix>dice_wt/tc/et`` and ``<prefix>hd95_wt/tc/et`` (case means), and their means
        ``<prefix>mean_dice`` and ``<prefix>hd95_mean``; a structure without a finite mean is
        left out, and so is a mean over regions that misses one.

    Raises:
        ValueError: the summary has no Dice of any region (not an evaluation summary).
    """
    out: dict[str, float] = {}
    for metric, mean_name in (("dice", f"{prefix}mean_dice"), (hd95, f"{prefix}hd95_mean")):
        values = []
        for region in REGION_STRUCTURES:
            stats = summary.get(metric_key(metric, region))
            value = float(stats["mean"]) if stats is not None else math.nan
            if math.isfinite(value):
                out[f"{prefix}{'dice' if metric == 'dice' else 'hd95'}_{region.lower()}"] = value
                values.append(value)
        if len(values) == len(REGION_STRUCTURES):
            out[mean_name] = statistics.fmean(values)
    if f"{prefix}dice_wt" not in out and f"{prefix}mean_dice" not in out:
        keys = sorted(summary)[:6]
        raise ValueError(
            f"not an evaluation summary: no finite {metric_key('dice', 'WT')!r} mean among its "
            f"keys {keys}...; pass EvaluationResult.summary of tumorseg.metrics.evaluate"
        )
    return out


def log_evaluation_run(
    metrics: Mapping[str, float],
    *,
    experiment_name: str,
    run_name: str = "",
    tracking_uri: str = "",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    artifacts: Sequence[str | os.PathLike[str]] = (),
) -> str:
    """Record one finished evaluation as an MLflow run; returns its id.

    The run gets ``metrics`` (step 0), ``params`` with the software versions of this process
    (as every tumorseg run), the tags of a tumorseg evaluation plus ``tags``, and the
    ``artifacts`` files. It ends ``FINISHED``, or ``FAILED`` when logging broke half-way.

    Args:
        metrics: name -> value (:func:`validation_metrics`).
        experiment_name: the experiment (created when new), e.g. the cross-validation's.
        run_name: the run's name; empty: ``eval-<timestamp>``.
        tracking_uri: the store; empty: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        params: what was scored (``fold``, ``datalist``, ``predictions`` ...).
        tags: more tags (``source=nnunet``); they may not replace ``tumorseg.kind``.
        artifacts: report files to attach (``per_case.csv``, ``summary.json``).

    Raises:
        ValueError: an empty experiment name, a non-finite metric, a missing artifact file or
            a tag that replaces ``tumorseg.kind``.
        TrackingUnavailableError: the store cannot be reached (nothing was logged).
    """
    from mlflow.entities import Metric

    if not experiment_name:
        raise ValueError("an evaluation run needs an experiment name, got ''")
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"metrics must be finite, got {bad}")
    missing = [str(p) for p in artifacts if not Path(p).is_file()]
    if missing:
        raise ValueError(f"artifact file(s) not found: {missing}")
    if tags and "tumorseg.kind" in tags:
        raise ValueError(
            f"tag tumorseg.kind is set by tumorseg (evaluation), got {tags['tumorseg.kind']!r}"
        )
    client, run = create_run(
        tracking_uri,
        experiment_name,
        "evaluation",
        run_name=run_name,
        name_prefix="eval",
        tags=tags,
        params=params,
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = run.info.start_time
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id
