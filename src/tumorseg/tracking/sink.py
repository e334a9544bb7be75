"""Metric values and artifacts sent to an open MLflow run, never failing the training.

A dead or hanging tracking server must cost a training nothing but a warning: values that
could not be sent are buffered (up to :data:`MAX_PENDING`) and re-sent when the store answers
again; after a failure, calls are attempted at most once per (doubling, capped) wait, so a
server that hangs rather than refuses costs one bounded request per wait; an artifact that
could not be uploaded stays in its local folder and is listed in
:attr:`MetricSink.not_uploaded`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tumorseg.tracking.lifecycle import TrackedRun, first_line

if TYPE_CHECKING:
    from mlflow.entities import Metric

__all__ = ["MAX_PENDING", "MetricSink"]

logger = logging.getLogger(__name__)

#: Metric values kept for re-sending while the server is away (about 100 epochs of a big run).
MAX_PENDING = 100_000
#: MLflow's batch limit on metrics (``mlflow.utils.validation``).
_METRICS_PER_BATCH = 1000
#: Longest wait between attempts while the store fails.
_MAX_RETRY_WAIT_S = 600.0
_KEY_BAD_CHARS = re.compile(r"[^\w\-. /:]")


def _scalar(value: Any) -> float | None:
    """A float for a loggable metric value (python/numpy/0-d tensor), else None."""
    if hasattr(value, "numel") and hasattr(value, "item"):
        if value.numel() != 1:
            return None
        value = value.item()
    elif hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _metric_key(name: str) -> str:
    return _KEY_BAD_CHARS.sub("_", str(name))


class MetricSink:
    """Buffer, send and re-send metric values and artifacts of one :class:`TrackedRun`.

    Nothing is sent while the run is not open (another rank, or before the start): every call
    is then a no-op.

    Args:
        run: the run the values go to.
        retry_interval_s: after a failed call, seconds before the next attempt (doubling with
            each further failure, up to 10 minutes).

    Raises:
        ValueError: a negative ``retry_interval_s``.
    """

    def __init__(self, run: TrackedRun, *, retry_interval_s: float = 30.0) -> None:
        if retry_interval_s < 0:
            raise ValueError(f"retry_interval_s must be >= 0, got {retry_interval_s}")
        self.run = run
        self.retry_interval_s = float(retry_interval_s)
        self.unsent = 0  # metric values given up on (buffer overflow), reported at the end
        self.not_uploaded: list[Path] = []  # artifacts kept only locally
        self._pending: list[Metric] = []
        self._retry_at: float | None = None  # set while the store is failing
        self._failures = 0  # consecutive failed calls

    @property
    def active(self) -> bool:
        """True while the run is open: values are sent."""
        return self.run.active

    @property
    def failing(self) -> bool:
        """True from a failed call until a call succeeds again."""
        return self._retry_at is not None

    @property
    def pending(self) -> int:
        """Metric values buffered, not yet sent."""
        return len(self._pending)

    def log_metrics(self, values: Mapping[str, Any], *, step: int) -> None:
        """Log the scalar values at ``step``; never raises (a failure is buffered and warned)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in values.items():
            number = _scalar(value)
            if number is not None:
                self._pending.append(Metric(_metric_key(key), number, now, int(step)))
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            self.unsent += dropped
            del self._pending[:dropped]
        self.flush()

    def flush(self, *, force: bool = False) -> bool:
        """Send buffered metric values; True when nothing is left to send.

        While the store is failing, an attempt is made at most every ``retry_interval_s``
        (``force`` ignores that), so a dead server costs one bounded request per interval.
        """
        if not self.active or not self._pending:
            return not self._pending
        if not force and self._retry_at is not None and time.monotonic() < self._retry_at:
            return False
        client, run_id = self.run.client, self.run.run_id
        assert client is not None and run_id is not None
        try:
            with self.run.timeouts():
                while self._pending:
                    batch = self._pending[:_METRICS_PER_BATCH]
                    client.log_batch(run_id, metrics=batch)
                    del self._pending[: len(batch)]
        except Exception as err:  # any client/network error: training must go on
            if self._retry_at is None:
                logger.warning(
                    "MLflow tracking at %s failed (%s: %s). Training continues; metrics stay in "
                    "this log and are re-sent when the store answers again (next try in %.0f s); "
                    "checkpoints are not affected.",
                    self.run.uri,
                    type(err).__name__,
                    first_line(err),
                    self.retry_interval_s,
                )
            self._failed()
            return False
        if self._retry_at is not None:
            logger.warning(
                "MLflow tracking at %s answers again; buffered metrics sent", self.run.uri
            )
            self._retry_at, self._failures = None, 0
        return True

    def _failed(self) -> None:
        # Doubling waits (capped): a server that hangs rather than refuses costs each attempt
        # a full timeout, which must stay a small share of a long outage's training time.
        self._failures += 1
        wait = min(self.retry_interval_s * 2 ** (self._failures - 1), _MAX_RETRY_WAIT_S)
        self._retry_at = time.monotonic() + wait

    def _store_down(self) -> bool:
        """True inside the wait after a failed call: calls are skipped, not attempted."""
        return self._retry_at is not None and time.monotonic() < self._retry_at

    def upload(self, local: Path, artifact_path: str) -> bool:
        """Upload a file or folder's content; on failure it is listed in :attr:`not_uploaded`."""
        if not self.active:
            return False
        client, run_id = self.run.client, self.run.run_id
        assert client is not None and run_id is not None
        if self._store_down():
            self.not_uploaded.append(local)
            return False
        try:
            with self.run.timeouts():
                if local.is_dir():
                    client.log_artifacts(run_id, str(local), artifact_path)
                else:
                    client.log_artifact(run_id, str(local), artifact_path)
        except Exception as err:  # any client/network error: training must go on
            logger.warning(
                "MLflow: could not upload %s to run %s at %s (%s: %s)",
                artifact_path,
                run_id,
                self.run.uri,
                type(err).__name__,
                first_line(err),
            )
            self._failed()
            self.not_uploaded.append(local)
            return False
        return True
