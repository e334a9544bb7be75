"""Background segmentation of uploaded studies, one at a time, with progress to poll."""

from __future__ import annotations

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
from tumorseg.viewer.uploads import ValidatedStudy

__all__ = ["Job", "JobManager", "PredictorFactory", "SupportsPredict"]


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
    """

    def __init__(self, store: ResultsStore, factories: Mapping[str, PredictorFactory]) -> None:
        self.store = store
        self.factories = dict(factories)
        self._predictors: dict[str, SupportsPredict] = {}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tumorseg-view-job")

    @property
    def models(self) -> list[str]:
        """The model names to choose from."""
        return list(self.factories)

    def submit(self, study: ValidatedStudy, *, model: str) -> Job:
        """Save the study under a generated case id and queue its segmentation.

        Raises:
            ValueError: for an unknown model name.
        """
        if model not in self.factories:
            raise ValueError(f"unknown model {model!r}; choose one of {self.models}")
        token = uuid.uuid4().hex[:10]
        job = Job(
            job_id=token,
            case_id=f"upload-{time.strftime('%Y%m%d-%H%M%S')}-{token[:6]}",
            model=model,
        )
        folder = self.store.uploads_dir / job.case_id
        for name, data in study.files.items():
            atomic_write_bytes(folder / f"{name}.nii.gz", data)
        with self._lock:
            self._jobs[job.job_id] = job
        self._pool.submit(self._run, job)
        return job

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
            self._update(job, state="failed", stage="failed", error=f"{type(err).__name__}: {err}")

    def shutdown(self) -> None:
        """Stop accepting jobs and wait for the running one."""
        self._pool.shutdown(wait=True, cancel_futures=True)
