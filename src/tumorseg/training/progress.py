"""Training progress: patches/s and ETA while an epoch runs, data wait vs compute after it.

A GPU that waits for the data pipeline looks busy in a loss log; it is visible only when the
time spent waiting for batches is measured separately. :class:`TrainingProgress` takes
timestamps around ignite's ``GET_BATCH_STARTED``/``GET_BATCH_COMPLETED`` (waiting for the
data loader) and ``GET_BATCH_COMPLETED``/``ITERATION_COMPLETED`` (moving the batch to the
device, forward, backward, optimizer step), and:

* on a terminal, shows a tqdm bar per epoch with patches/s, the loss, the share of time spent
  waiting for data, and tqdm's ETA of the epoch;
* elsewhere (CI, log files), logs one line every ``log_interval_s`` seconds instead of
  redrawing a bar, so logs are not flooded;
* after each epoch logs a summary: patches, patches/s, data wait vs compute seconds, and
  the ETA of the run; and stores the figures in ``engine.state.metrics``
  (``train_patches_per_s``, ``train_data_wait_s``, ``train_compute_s``,
  ``train_data_wait_share``) so metric handlers such as MLflow's record them per epoch.

On CUDA the compute time is host time: kernels are queued asynchronously, and the wait is
absorbed by the next synchronising call (the loss read by the metric handlers every
iteration), so per-epoch sums are right while single iterations may be misattributed.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["TrainingProgress", "batch_patches"]

logger = logging.getLogger(__name__)


def batch_patches(batch: Any, *, image_key: str = "image") -> int:
    """Number of patches in a collated batch (a dict of tensors or a list of samples)."""
    if isinstance(batch, dict):
        image = batch.get(image_key)
        shape = getattr(image, "shape", None)
        return int(shape[0]) if shape else 1
    if isinstance(batch, list | tuple):
        return len(batch)
    return 1


def _default_loss(output: Any) -> float | None:
    """The loss of a MONAI trainer's output (a dict, or a list of per-sample dicts)."""
    if isinstance(output, list | tuple) and output:
        output = output[0]
    if isinstance(output, dict):
        output = output.get("loss")
    try:
        return float(output)
    except (TypeError, ValueError):
        return None


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


class TrainingProgress:
    """Progress bar / periodic log and per-epoch timing summary for an ignite trainer.

    Args:
        progress_bar: draw a tqdm bar; ``None`` draws one only when ``stream`` is a terminal.
        log_interval_s: seconds between progress log lines when there is no bar (> 0).
        refresh_s: least seconds between two redraws of the bar (tqdm's ``mininterval``).
        image_key: batch key whose first dimension counts the patches.
        loss_transform: output -> loss value shown; default reads MONAI's ``loss`` key.
        record_metrics: store the epoch figures in ``engine.state.metrics``.
        stream: where the bar is drawn (default ``sys.stderr``, tqdm's default).
        clock: time source in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        progress_bar: bool | None = None,
        log_interval_s: float = 30.0,
        refresh_s: float = 0.5,
        image_key: str = "image",
        loss_transform: Callable[[Any], float | None] = _default_loss,
        record_metrics: bool = True,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if log_interval_s <= 0:
            raise ValueError(f"log_interval_s must be > 0, got {log_interval_s}")
        self.stream = stream if stream is not None else sys.stderr
        if progress_bar is None:
            isatty = getattr(self.stream, "isatty", None)
            progress_bar = bool(isatty and isatty())
        self.progress_bar = progress_bar
        self.log_interval_s = float(log_interval_s)
        self.refresh_s = float(refresh_s)
        self.image_key = image_key
        self.loss_transform = loss_transform
        self.record_metrics = record_metrics
        self.clock = clock
        self._bar: Any = None
        self._run_start = 0.0
        self._run_epochs = 0
        self._reset_epoch(0.0)

    def _reset_epoch(self, now: float) -> None:
        self.epoch_start = now
        self.patches = 0
        self.iterations = 0
        self.data_s = 0.0
        self.compute_s = 0.0
        self._get_start = now
        self._got = now
        self._last_iteration_end = now
        self._last_log = now
        self._loss: float | None = None

    def attach(self, engine: Any) -> None:
        """Register on ``engine`` (an ignite ``Engine`` such as MONAI's trainers)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._close)

    # -- event handlers ---------------------------------------------------------------------

    def _started(self, engine: Any) -> None:
        self._run_start = self.clock()
        self._run_epochs = 0

    def _epoch_started(self, engine: Any) -> None:
        self._reset_epoch(self.clock())
        if self.progress_bar:
            from tqdm.auto import tqdm

            self._close(engine)
            self._bar = tqdm(
                total=engine.state.epoch_length,
                desc=f"epoch {engine.state.epoch}/{engine.state.max_epochs}",
                unit="it",
                leave=False,
                file=self.stream,
                dynamic_ncols=True,
                mininterval=self.refresh_s,
            )

    def _get_batch_started(self, engine: Any) -> None:
        self._get_start = self.clock()

    def _get_batch_completed(self, engine: Any) -> None:
        now = self.clock()
        # ignite fires GET_BATCH_STARTED for an epoch's first batch before EPOCH_STARTED
        # when it restarts the loader: count that wait from the epoch start only.
        self.data_s += now - max(self._get_start, self.epoch_start)
        self._got = now
        self.patches += batch_patches(engine.state.batch, image_key=self.image_key)

    def _iteration_completed(self, engine: Any) -> None:
        now = self.clock()
        self._last_iteration_end = now
        self.compute_s += now - self._got
        self.iterations += 1
        self._loss = self.loss_transform(engine.state.output)
        rate = self.patches / max(now - self.epoch_start, 1e-9)
        wait = self.data_s / max(self.data_s + self.compute_s, 1e-9)
        if self._bar is not None:
            postfix = {"patches/s": f"{rate:.2f}", "data": f"{wait:.0%}"}
            if self._loss is not None:
                postfix["loss"] = f"{self._loss:.4f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)
        elif now - self._last_log >= self.log_interval_s:
            self._last_log = now
            total = engine.state.epoch_length or 0
            per_iteration = (now - self.epoch_start) / self.iterations
            eta = _hms((total - self.iterations) * per_iteration) if total else "?"
            loss = "" if self._loss is None else f", loss {self._loss:.4f}"
            logger.info(
                "epoch %d/%d iteration %d/%d: %.2f patches/s%s, data wait %.0f%%, epoch ETA %s",
                engine.state.epoch,
                engine.state.max_epochs,
                self.iterations,
                total,
                rate,
                loss,
                100 * wait,
                eta,
            )

    def _epoch_completed(self, engine: Any) -> None:
        now = self.clock()
        self._close(engine)
        self._run_epochs += 1
        # The epoch's training ends with its last iteration: handlers that run before this one
        # on EPOCH_COMPLETED (validation) are not training time.
        wall = max(self._last_iteration_end - self.epoch_start, 1e-9)
        rate = self.patches / wall
        share = self.data_s / wall
        # Per-epoch time of this run so far (with validation, checkpoints, ...), for the ETA;
        # a validation handler running after this one is counted from the next epoch on.
        per_epoch = (now - self._run_start) / self._run_epochs
        left = (engine.state.max_epochs - engine.state.epoch) * per_epoch
        logger.info(
            "epoch %d/%d: %d patches in %.1f s, %.2f patches/s; data wait %.1f s (%.0f%%), "
            "compute %.1f s, other %.1f s; run ETA %s",
            engine.state.epoch,
            engine.state.max_epochs,
            self.patches,
            wall,
            rate,
            self.data_s,
            100 * share,
            self.compute_s,
            max(0.0, wall - self.data_s - self.compute_s),
            _hms(left),
        )
        if self.record_metrics:
            engine.state.metrics.update(
                {
                    "train_patches_per_s": rate,
                    "train_data_wait_s": self.data_s,
                    "train_compute_s": self.compute_s,
                    "train_data_wait_share": share,
                }
            )

    def _close(self, engine: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
