"""Background segmentation of uploaded studies, one at a time, with progress to poll.

The queue is bounded (:class:`JobManager` ``max_pending``): a full queue refuses the next
upload before it is stored. A study that cannot be stored, or whose segmentation fails, is
removed from ``uploads/``; the failed job's message stays for the page to show.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tumorseg.io import atomic_write_bytes
from tumorseg.viewer.store import ResultsStore
from tumorseg.viewer.uploads import UploadError, ValidatedStudy

__all__ = ["Job", "JobManager", "PredictorFactory", "SupportsPredict"]

log = logging.getLogger(__name__)
#: Finished jobs remembered for polling; older ones are forgotten.
_KEEP_FINISHED = 256


class SupportsPredict(Protocol):
    """What the viewer needs of a predictor (:class:`tumorseg.inference.Predictor` has it)."""

    def predict_case(
        self, images: Sequence[Path], *, case_id: str, label_convention: str
    ) -> Any:  # a result with ``save(output_dir) -> Path``
        ...


#: Builds a predictor; called once per model choice, on first use, in the worker thread.
PredictorFactory = Callable[[], SupportsPredict]


@dataclass
class Job:
    """The state of one upload's segmentation, as the page polls it."""

    job_id: str
    case_id: str
    model: str
    state: str = "queued"  # queued, running, done, failed
    stage: str = "waiting"
    progress: float = 0.0
    error: str | None = None
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


class JobManager:
    """Runs uploaded studies through a chosen predictor in one worker thread.

    One worker: segmentations are CPU/GPU heavy and would only slow each other down.

    Args:
        store: where the studies and masks go.
        factories: model name -> predictor factory (the names the page offers).
        max_pending: the most jobs queued or running at once; more are refused (503).
    """

    def __init__(
        self,
        store: ResultsStore,
        factories: Mapping[str, PredictorFactory],
        *,
        max_pending: int = 4,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.store = store
        self.factories = dict(factories)
        self.max_pending = max_pending
        self._predictors: dict[str, SupportsPredict] = {}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tumorseg-view-job")

    @property
    def models(self) -> list[str]:
        """The model names to choose from."""
        return list(self.factories)

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return self._pending

    def check_capacity(self) -> None:
        """Refuse early (before an upload is read) when the queue is full.

        Raises:
            UploadError: 503, the queue is full.
        """
        if self.pending >= self.max_pending:
            raise self._busy()

    def _busy(self) -> UploadError:
        return UploadError(
            f"the server is busy: {self.max_pending} segmentation(s) queued or running; "
            "try again in a minute",
            status=503,
        )

    def submit(self, study: ValidatedStudy, *, model: str) -> Job:
        """Save the study under a generated case id and queue its segmentation.

        Raises:
            ValueError: for an unknown model name.
            UploadError: 503 when the queue is full, 507 (no space) or 500 when the study
                cannot be stored; nothing of it is left on disk then.
        """
        if model not in self.factories:
            raise ValueError(f"unknown model {model!r}; choose one of {self.models}")
        with self._lock:
            if self._pending >= self.max_pending:
                raise self._busy()
            self._pending += 1
        token = uuid.uuid4().hex[:10]
        job = Job(
            job_id=token,
            case_id=f"upload-{time.strftime('%Y%m%d-%H%M%S')}-{token[:6]}",
            model=model,
        )
        folder = self.store.uploads_dir / job.case_id
        try:
            for name, data in study.files.items():
                atomic_write_bytes(folder / f"{name}.nii.gz", data)
        except OSError as err:
            self._discard(job.case_id)
            with self._lock:
                self._pending -= 1
            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            log.error("cannot store upload %s in %s: %s", job.case_id, folder, err)
            raise UploadError(
                f"the server cannot store the upload: {err.strerror or err}",
                status=507 if full else 500,
            ) from None
        with self._lock:
            self._jobs[job.job_id] = job
            self._forget_old()
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # shutting down
            self._discard(job.case_id)
            with self._lock:
                self._pending -= 1
            raise UploadError("the server is shutting down", status=503) from None
        return job

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in ("done", "failed")]
        for key in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._jobs[key]

    def _discard(self, case_id: str) -> None:
        """Remove an uploaded study (a failed upload or job)."""
        folder = self.store.uploads_dir / case_id
        shutil.rmtree(folder, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        """A job by id.

        Raises:
            KeyError: for an unknown id.
        """
        with self._lock:
            return self._jobs[job_id]

    def _update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            job.seconds = round(time.time() - job.started, 2)

    def _run(self, job: Job) -> None:
        try:
            self._update(job, state="running", stage="loading model", progress=0.1)
            predictor = self._predictors.get(job.model)
            if predictor is None:
                predictor = self._predictors[job.model] = self.factories[job.model]()
            images = self.store.uploaded_images(job.case_id)
            self._update(job, stage="segmenting", progress=0.3)
            result = predictor.predict_case(
                list(images), case_id=job.case_id, label_convention=self.store.convention
            )
            self._update(job, stage="saving", progress=0.9)
            result.save(self.store.output_dir)
            self._update(job, state="done", stage="done", progress=1.0)
        except Exception as err:  # reported to the page; the server keeps serving
            log.warning("job %s (%s) failed: %s", job.job_id, job.case_id, err)
            self._discard(job.case_id)
            self._update(job, state="failed", stage="failed", error=f"{type(err).__name__}: {err}")
        finally:
            with self._lock:
                self._pending -= 1

    def shutdown(self) -> None:
        """Stop accepting jobs and wait for the running one (queued ones are dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            queued = [j for j in self._jobs.values() if j.state == "queued"]
        for job in queued:  # cancelled: their uploads would never be segmented
            self._discard(job.case_id)
