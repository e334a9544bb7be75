"""Cross-validation: K fold trainings as child runs of one parent run.

A driver opens the parent with :func:`fold_parent` and passes its id to every fold's
training (bundle override ``--parent_run_id``); the handler tags each fold's run with
``mlflow.parentRunId`` so the MLflow UI nests them. When the block ends, the parent gets the
mean and standard deviation over its children of every validation metric's best value
(``cv_mean_val_dice_et``, ``cv_std_val_dice_et`` ...) and ``cv_folds``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tumorseg.tracking.store import create_run

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["child_runs", "fold_parent", "summarise_children"]

logger = logging.getLogger(__name__)


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Any]:
    """The runs whose ``mlflow.parentRunId`` tag is ``parent_run_id``."""
    parent = client.get_run(parent_run_id)
    return list(
        client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=1000,
        )
    )


def summarise_children(client: MlflowClient, parent_run_id: str) -> dict[str, float]:
    """Log, on the parent, mean and std over children of each ``val_*`` metric's best value.

    Returns:
        The logged values (``cv_folds``, ``cv_mean_<metric>``, ``cv_std_<metric>``).
    """
    from mlflow.entities import Metric

    from tumorseg.tracking.compare import best_metrics

    children = child_runs(client, parent_run_id)
    names = sorted({k for run in children for k in run.data.metrics if k.startswith("val_")})
    per_metric: dict[str, list[float]] = {name: [] for name in names}
    for run in children:
        best, _ = best_metrics(client, run, names)
        for name, value in best.items():
            if math.isfinite(value):
                per_metric[name].append(value)
    summary: dict[str, float] = {"cv_folds": float(len(children))}
    for name, values in per_metric.items():
        if values:
            summary[f"cv_mean_{name}"] = statistics.fmean(values)
            summary[f"cv_std_{name}"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    import time

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, 0) for k, v in summary.items()]
    for i in range(0, len(batch), 1000):
        client.log_batch(parent_run_id, metrics=batch[i : i + 1000])
    return summary


@contextlib.contextmanager
def fold_parent(
    *,
    experiment_name: str,
    run_name: str = "",
    tracking_uri: str = "",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """Open a parent run for K fold trainings; yields its id for ``--parent_run_id``.

    On exit the children are summarised on the parent (:func:`summarise_children`) and the
    parent ends FINISHED, or FAILED when the block raised.

    Example::

        with fold_parent(experiment_name="brats21", run_name="dynunet-5fold") as parent:
            for fold in range(5):
                monai.bundle.run("training", ..., fold=fold, parent_run_id=parent,
                                 ckpt_dir=f"models/fold{fold}")

    Raises:
        TrackingUnavailableError: the store cannot be reached (before anything is trained).
    """
    client, run = create_run(
        tracking_uri,
        experiment_name,
        "cross-validation",
        run_name=run_name,
        name_prefix="cv",
        tags=tags,
        params=params,
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        try:
            summarise_children(client, run_id)
        except Exception as err:  # the folds' own runs are intact; only the summary is missing
            logger.warning("MLflow: cross-validation summary of %s not logged: %s", run_id, err)
        client.set_terminated(run_id, status)
