"""The artifacts of the best validation (or of an evaluation): a per-case CSV and overlays.

Shaped like MONAI's ``MetricsSaver``: :class:`ValidationArtifacts` attaches to the engine that
scores the cases, keeps what it needs while the engine runs (the case ids, the first cases'
slices for overlays, the per-case table of the best epoch) and writes it once, at the end, so
a long training uploads one ``cases.csv`` and a few PNGs instead of a set per epoch.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from tumorseg.tracking.overlays import CaseSlice, pick_slice, render_overlay
from tumorseg.tracking.sink import MetricSink

__all__ = ["ValidationArtifacts"]

logger = logging.getLogger(__name__)


def _case_from_meta(image: Any) -> str:
    """A case name from the image's source file, for datalists without ``case_id``."""
    meta = getattr(image, "meta", None) or {}
    source = meta.get("filename_or_obj", "")
    source = source[0] if isinstance(source, list | tuple) and source else source
    name = Path(str(source)).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        name = name.removesuffix(suffix)
    return name


def _write_csv(path: Path, rows: list[dict[str, Any]], epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["case_id", "epoch", *[k for k in rows[0] if k != "case_id"]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    "epoch": epoch,
                    **{
                        k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v)
                        for k, v in row.items()
                    },
                }
            )


class ValidationArtifacts:
    """Per-case scores and overlay PNGs of the best validation, uploaded through a sink.

    Cases are captured only while the sink's run is open (rank 0, after the start).

    Args:
        sink: where the files are uploaded.
        kind: ``"training"`` (files under ``validation/``, the best epoch's kept) or
            ``"evaluation"`` (files under ``evaluation/``, every epoch is the one).
        case_metric: the metric whose ``state.metric_details`` give the per-case CSV
            (``RegionMetricHandler``: Dice then HD95 per region).
        regions: names of the region channels, for the CSV columns.
        num_overlays: overlay PNGs (the first cases of the loader).

    Raises:
        ValueError: a negative ``num_overlays``.
    """

    def __init__(
        self,
        sink: MetricSink,
        *,
        kind: str = "training",
        case_metric: str = "val_hd95_mean",
        regions: Sequence[str] = ("wt", "tc", "et"),
        num_overlays: int = 3,
    ) -> None:
        if num_overlays < 0:
            raise ValueError(f"num_overlays must be >= 0, got {num_overlays}")
        self.sink = sink
        self.kind = kind
        self.case_metric = case_metric
        self.regions = tuple(str(r) for r in regions)
        self.num_overlays = int(num_overlays)
        self._step: Callable[[Engine], int] = lambda engine: int(engine.state.epoch)
        self._case_ids: list[str] = []
        self._slices: list[CaseSlice] = []
        self._best: tuple[int, list[dict[str, Any]], list[CaseSlice]] | None = None

    def attach(self, engine: Engine, *, step: Callable[[Engine], int] | None = None) -> None:
        """Capture the cases ``engine`` scores.

        Args:
            engine: the validator (or evaluator).
            step: the epoch the scores belong to (default the engine's own): a validator's
                scores belong to its trainer's epoch.
        """
        if step is not None:
            self._step = step
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._capture_cases)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        self._case_ids, self._slices = [], []

    def _capture_cases(self, engine: Engine) -> None:
        if not self.sink.active:
            return
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        # The evaluator's output holds image/label/pred only; the case ids are in the batch.
        batch = engine.state.batch
        found = batch.get("case_id") if isinstance(batch, Mapping) else None
        ids: list[Any] = list(found) if isinstance(found, list | tuple) else []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                continue
            case_id = str(ids[i]) if i < len(ids) else _case_from_meta(item.get("image"))
            case_id = case_id or f"case{len(self._case_ids)}"
            self._case_ids.append(case_id)
            if len(self._slices) < self.num_overlays and "pred" in item and "image" in item:
                try:
                    self._slices.append(
                        pick_slice(case_id, item["image"], item["pred"], item.get("label"))
                    )
                except ValueError as err:  # e.g. a 2D network: no overlay, nothing else lost
                    logger.debug("no overlay for %s: %s", case_id, err)

    def _epoch_completed(self, engine: Engine) -> None:
        if not self.sink.active:
            return
        # MONAI evaluators track the epoch of their best key metric (the one model.pt holds);
        # a plain ignite validator has none, and then the latest validation is kept.
        best_epoch = getattr(engine.state, "best_metric_epoch", None)
        is_best = (
            self.kind == "evaluation" or best_epoch is None or int(best_epoch) == engine.state.epoch
        )
        if is_best:
            self._best = (self._step(engine), self._case_rows(engine), list(self._slices))

    def _case_rows(self, engine: Engine) -> list[dict[str, Any]]:
        details = getattr(engine.state, "metric_details", {}) or {}
        table = details.get(self.case_metric)
        if table is None:
            return [{"case_id": c} for c in self._case_ids]
        values = table.detach().cpu().double().numpy() if hasattr(table, "detach") else table
        values = [list(map(float, row)) for row in values]
        width = len(values[0]) if values else 0
        n = len(self.regions)
        if width == 2 * n:
            columns = [f"dice_{r}" for r in self.regions] + [f"hd95_{r}" for r in self.regions]
        elif width == n:
            columns = [f"{self.case_metric}_{r}" for r in self.regions]
        else:
            columns = [f"{self.case_metric}_{i}" for i in range(width)]
        ids = self._case_ids if len(self._case_ids) == len(values) else []
        return [
            {"case_id": ids[i] if ids else str(i), **dict(zip(columns, row, strict=True))}
            for i, row in enumerate(values)
        ]

    def write(self, stage: Path) -> None:
        """Write the kept files under ``stage`` and upload them (a failed upload keeps them)."""
        if self._best is None:
            return
        folder = "evaluation" if self.kind == "evaluation" else "validation"
        epoch, rows, slices = self._best
        if rows:
            path = stage / folder / "cases.csv"
            _write_csv(path, rows, epoch)
            self.sink.upload(path, folder)
        for case in slices:
            path = stage / folder / "overlays" / f"{case.case_id}.png"
            try:
                render_overlay(case, path, title=f"{case.case_id}  epoch {epoch}")
            except Exception as err:  # a plotting problem must not fail the run
                logger.warning("MLflow: overlay of %s not drawn: %s", case.case_id, err)
                continue
            self.sink.upload(path, f"{folder}/overlays")
