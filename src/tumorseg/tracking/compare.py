"""Compare the runs of an experiment: best metrics per region, params that differ, curves.

Plain MLflow client code (``search_runs``, ``get_metric_history``), so it reads a local SQLite
store and a team server alike. Behind ``tumorseg compare``.

What "best" means: for every validation metric, the best value over the run's validations
(highest Dice, lowest HD95 / loss); ``best_epoch`` is the epoch of the best value of the
metric the table is sorted by.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tumorseg.metrics.challenge import CHALLENGE_METRIC_COLUMNS
from tumorseg.tracking.settings import tracking_uri as resolve_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "CHALLENGE_METRIC_ORDER",
    "Comparison",
    "RunSummary",
    "best_metrics",
    "compare_runs",
    "lower_is_better",
    "plot_curves",
]

#: Validation metrics of :class:`~tumorseg.metrics.handlers.ChallengeMetricHandler` (prefix
#: ``val_``), in display order: the means over WT/TC/ET first, then per group.
CHALLENGE_METRIC_ORDER: tuple[str, ...] = tuple(
    [f"val_mean_{m}" for m in CHALLENGE_METRIC_COLUMNS]
    + [f"val_{m}_{g}" for m in CHALLENGE_METRIC_COLUMNS for g in ("wt", "tc", "et")]
)

#: Column order of the metrics the bundles log; others follow alphabetically.
METRIC_ORDER: tuple[str, ...] = (
    "val_mean_dice",
    "val_dice_wt",
    "val_dice_tc",
    "val_dice_et",
    "val_dice_mean",
    "val_hd95_wt",
    "val_hd95_tc",
    "val_hd95_et",
    "val_hd95_mean",
    *CHALLENGE_METRIC_ORDER,
)
ORDERS = ("auto", "max", "min")
_LOWER_IS_BETTER = ("hd95", "loss", "seconds", "hausdorff", "distance")


def lower_is_better(metric: str) -> bool:
    """True for distances, losses and times (HD95, ``train_loss`` ...), False for Dice-likes."""
    name = metric.lower()
    return any(token in name for token in _LOWER_IS_BETTER)


def _best(values: Iterable[tuple[int, float]], lower: bool) -> tuple[float, int | None]:
    finite = [(v, s) for s, v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, None
    value, step = (min if lower else max)(finite, key=lambda vs: vs[0])
    return value, step


@dataclass
class RunSummary:
    """One run as the comparison shows it.

    Args:
        run_id: MLflow run id.
        run_name: its name.
        status: ``RUNNING``, ``FINISHED``, ``FAILED`` or ``KILLED``.
        duration_s: wall time from start to end (to now while running), None if unknown.
        best: best value of each metric over the run's history (NaN when never logged).
        best_epoch: step of the best value of the sorting metric.
        params: every param of the run.
        curves: metric -> ``[(step, value), ...]`` histories that were read.
        parent_run_id: the parent (cross-validation) run, "" for a top-level run.
    """

    run_id: str
    run_name: str
    status: str
    duration_s: float | None
    best: dict[str, float]
    best_epoch: int | None
    params: dict[str, str]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    parent_run_id: str = ""


@dataclass
class Comparison:
    """Runs sorted by ``metric`` with their best metrics and the params that differ.

    Args:
        tracking_uri: where the runs were read.
        experiment: experiment name ("" when runs were chosen by id only).
        metric: the sorting metric.
        lower_is_better: sort direction.
        metrics: metric columns, in display order.
        differing_params: params whose value is not the same in every run (or the params
            asked for).
        runs: the runs, best first; runs without the metric last.
    """

    tracking_uri: str
    experiment: str
    metric: str
    lower_is_better: bool
    metrics: list[str]
    differing_params: list[str]
    runs: list[RunSummary]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run: rank, ids, best metrics, best epoch, duration, differing params."""
        out = []
        for rank, run in enumerate(self.runs, start=1):
            row: dict[str, Any] = {
                "rank": rank,
                "run_name": run.run_name,
                "run_id": run.run_id,
                "status": run.status,
            }
            row.update({m: run.best.get(m, math.nan) for m in self.metrics})
            row["best_epoch"] = run.best_epoch
            row["duration_s"] = run.duration_s
            row.update({p: run.params.get(p, "") for p in self.differing_params})
            out.append(row)
        return out

    def format_table(self, *, max_width: int = 32) -> str:
        """A plain-text table for the terminal (values cut to ``max_width`` characters)."""
        direction = "lower" if self.lower_is_better else "higher"
        head = (
            f"experiment {self.experiment or '(runs by id)'} at {self.tracking_uri}: "
            f"{len(self.runs)} run(s) sorted by best {self.metric} ({direction} is better)"
        )
        if not self.runs:
            return head + "\nno runs"
        header = ["#", "run", "status", *self.metrics, "best_epoch", "duration"]
        header += self.differing_params
        lines = []
        for row, run in zip(self.rows(), self.runs, strict=True):
            cells = [str(row["rank"]), run.run_name, run.status]
            cells += [_fmt_metric(row[m]) for m in self.metrics]
            cells.append("-" if run.best_epoch is None else str(run.best_epoch))
            cells.append(_fmt_duration(run.duration_s, run.status))
            cells += [_cut(str(row[p]), max_width) for p in self.differing_params]
            lines.append(cells)
        widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=True)]
        text = [head, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        text += [
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
            for cells in lines
        ]
        if not self.differing_params:
            text.append("params: identical in every run")
        return "\n".join(text)

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`rows` as CSV (full precision); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        columns = ["rank", "run_name", "run_id", "status", *self.metrics, "best_epoch"]
        columns += ["duration_s", *self.differing_params]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if _is_nan(v) or v is None else v for k, v in row.items()})
        return path


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _fmt_metric(value: float) -> str:
    return "-" if _is_nan(value) else f"{value:.4f}"


def _fmt_duration(seconds: float | None, status: str) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
    return text + (" (running)" if status == "RUNNING" else "")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def best_metrics(
    client: MlflowClient, run: Run, metrics: Sequence[str]
) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]]]:
    """Best value of each metric over ``run``'s history, and the histories (step order).

    Metrics the run never logged are NaN with an empty history.
    """
    best: dict[str, float] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for metric in metrics:
        if metric not in run.data.metrics:
            best[metric], curves[metric] = math.nan, []
            continue
        history = client.get_metric_history(run.info.run_id, metric)
        # The last value logged at a step wins (a resumed run may repeat an epoch).
        by_step = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
        curves[metric] = sorted(by_step.items())
        best[metric] = _best(curves[metric], lower_is_better(metric))[0]
    return best, curves


def _order_metrics(names: Iterable[str], first: str) -> list[str]:
    names = set(names) | {first}
    known = [m for m in METRIC_ORDER if m in names and m != first]
    rest = sorted(names - set(METRIC_ORDER) - {first})
    return [first, *known, *rest]


def _differing(runs: Sequence[RunSummary]) -> list[str]:
    keys = sorted({k for run in runs for k in run.params})
    return [k for k in keys if len({run.params.get(k, "") for run in runs}) > 1]


def _client(uri: str) -> MlflowClient:
    import mlflow

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise FileNotFoundError(
            f"no MLflow store at {uri!r}: train first, run from the folder holding mlflow.db, "
            "or pass --tracking-uri"
        )
    from tumorseg.tracking.store import check_tracking_uri

    check_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _experiment_runs(client: MlflowClient, name: str, uri: str) -> list[Run]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise ValueError(f"no MLflow experiment named {name!r} at {uri!r}; there are: {names}")
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _summary(
    client: MlflowClient, run: Run, metrics: Sequence[str], sort_metric: str, lower: bool
) -> RunSummary:
    best, curves = best_metrics(client, run, metrics)
    # The sort direction may be forced (--order), so the sorting metric is re-scored with it.
    best[sort_metric], best_epoch = _best(curves.get(sort_metric, []), lower)
    start, end = run.info.start_time, run.info.end_time
    if start is None:
        duration = None
    else:
        finish = end if end and run.info.status != "RUNNING" else int(time.time() * 1000)
        duration = max(0.0, (finish - start) / 1000.0)
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        duration_s=duration,
        best=best,
        best_epoch=best_epoch,
        params=dict(run.data.params),
        curves=curves,
        parent_run_id=run.data.tags.get("mlflow.parentRunId", ""),
    )


def compare_runs(
    *,
    experiment: str = "",
    metric: str = "val_mean_dice",
    top: int | None = None,
    run_ids: Sequence[str] = (),
    tracking_uri: str = "",
    order: str = "auto",
    metrics: Sequence[str] | None = None,
    kind: str = "",
    params: Sequence[str] | None = None,
) -> Comparison:
    """Read runs and build a :class:`Comparison`.

    Args:
        experiment: experiment name; required unless ``run_ids`` are given.
        metric: the metric to sort by (e.g. ``val_dice_et``).
        top: keep only the best ``top`` runs.
        run_ids: compare only these runs (with ``experiment``, they must belong to it).
        tracking_uri: store to read; empty: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        order: ``auto`` (lower is better for HD95, losses and times), ``max`` or ``min``.
        metrics: metric columns; None: every ``val_*`` metric any of the runs logged.
        kind: keep only runs of this ``tumorseg.kind`` tag (``training``, ``evaluation``,
            ``cross-validation``); empty keeps all.
        params: param columns to show, whether they differ or not (e.g. ``fold``, to show
            that runs scored the same folds); None: the params that differ between the runs.

    Raises:
        ValueError: bad arguments, unknown experiment or run id, a run outside the experiment.
        FileNotFoundError: a local SQLite store that does not exist.
        TrackingUnavailableError: the store cannot be reached.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if not experiment and not run_ids:
        raise ValueError("give an experiment name, run ids, or both")
    uri = resolve_uri(tracking_uri)
    client = _client(uri)
    from mlflow.exceptions import MlflowException

    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException:
                raise ValueError(f"no MLflow run with id {run_id!r} at {uri!r}") from None
        if experiment:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise ValueError(f"no MLflow experiment named {experiment!r} at {uri!r}")
            outside = [r.info.run_id for r in runs if r.info.experiment_id != exp.experiment_id]
            if outside:
                raise ValueError(f"runs {outside} are not in experiment {experiment!r}")
    else:
        runs = _experiment_runs(client, experiment, uri)
    if kind:
        runs = [r for r in runs if r.data.tags.get("tumorseg.kind", "") == kind]
    lower = lower_is_better(metric) if order == "auto" else order == "min"
    if metrics is None:
        names = {k for run in runs for k in run.data.metrics if k.startswith("val_")}
    else:
        names = set(metrics)
    columns = _order_metrics(names, metric)
    summaries = [_summary(client, run, columns, metric, lower) for run in runs]

    def sort_key(run: RunSummary) -> tuple[int, float]:
        value = run.best.get(metric, math.nan)
        if _is_nan(value):
            return (1, 0.0)
        return (0, value if lower else -value)

    summaries.sort(key=sort_key)
    if top is not None:
        summaries = summaries[:top]
    return Comparison(
        tracking_uri=uri,
        experiment=experiment,
        metric=metric,
        lower_is_better=lower,
        metrics=columns,
        differing_params=_differing(summaries) if params is None else list(params),
        runs=summaries,
    )


def plot_curves(
    comparison: Comparison, path: str | os.PathLike, *, metric: str | None = None
) -> Figure:
    """Overlay the validation curves (``metric`` per epoch) of the compared runs; write a PNG.

    One line per run that logged the metric, labelled with its name, in the table's order.

    Returns:
        The matplotlib figure (still open; ``plt.close(fig)`` when done).

    Raises:
        ValueError: when no compared run has a history of ``metric``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the PNG is the product
    import matplotlib.pyplot as plt

    metric = metric or comparison.metric
    curves: Mapping[str, list[tuple[int, float]]] = {
        run.run_name: run.curves.get(metric, []) for run in comparison.runs
    }
    if not any(curves.values()):
        raise ValueError(
            f"no run of the comparison logged {metric!r}; compared metrics: {comparison.metrics}"
        )
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{comparison.experiment or 'selected runs'}: {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return fig
