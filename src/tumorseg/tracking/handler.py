"""The ignite handler that logs one training or evaluation to exactly one MLflow run.

Why not MONAI's ``MLFlowHandler``: it looks a run up by name among the experiment's unfinished
runs (with no name it takes *any* unfinished run), so a crashed earlier training left RUNNING
is silently reused, and the trainer and the validator each hold a handler that may open a run
of its own; a dead server mid-run raises and ends the training. :class:`MLflowTracker` instead

* checks the store once at start (bounded, no retries) and stops with the URI and the local
  fall-back in the message when it cannot be reached, before an iteration has run;
* creates its run itself, by id, never by name lookup, and attaches to the validator too, so
  the trainer's and the validator's metrics share that one run;
* continues the same run when training resumes from the checkpoint folder (the run id is kept
  in ``<ckpt_dir>/mlflow_run.json``), and opens a new one for a fresh training;
* logs on global rank 0 only;
* turns every tracking failure after the start into a warning: metric values that could not be
  sent are buffered and re-sent when the server answers again, training goes on, checkpoints
  are written by the trainer as always and artifacts stay in a local folder;
* logs params (the bundle's ``tracking_params``, versions, git commit, data sizes), per-epoch
  metrics (``train_loss``, ``lr``, ``epoch_seconds``, every validation metric), the merged
  bundle config, the best checkpoint, a per-case CSV and overlay PNGs of the best validation.

It is the one class the bundle configs declare, and wires three parts that each do one job:
:class:`~tumorseg.tracking.lifecycle.TrackedRun` (the run: open by id, resume, params, end),
:class:`~tumorseg.tracking.sink.MetricSink` (metric values and uploads that survive an outage)
and :class:`~tumorseg.tracking.artifacts.ValidationArtifacts` (the best validation's per-case
CSV and overlays).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from tumorseg.ranks import is_rank0
from tumorseg.tracking.artifacts import ValidationArtifacts
from tumorseg.tracking.lifecycle import TrackedRun, bundle_config_on_stack
from tumorseg.tracking.sink import MetricSink

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["MLflowTracker"]

logger = logging.getLogger(__name__)


class MLflowTracker:
    """Log a training (with its validations) or an evaluation to one MLflow run.

    Attach to the trainer (``train#handlers``) with ``validator`` set to the evaluator its
    ``ValidationHandler`` runs, after the ``Checkpointer`` (its resume must have happened when
    this handler decides whether the training is resumed); or attach to an evaluator alone with
    ``kind="evaluation"``.

    Metric names are the engines' own: the trainer's ``train_loss`` plus ``lr`` (learning rate
    of the epoch) and ``epoch_seconds``; every scalar of the validator's ``state.metrics``
    (``val_mean_dice``, ``val_dice_wt`` ...). All are logged at step = epoch.

    Args:
        tracking_uri: tracking store; empty: ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` here.
        experiment_name: MLflow experiment, created when missing.
        run_name: name of a new run; empty: ``<kind>-<timestamp>``.
        params: run parameters (nested mappings become ``a.b`` keys).
        tags: extra run tags.
        validator: the evaluator of a training; its metrics go to the same run.
        kind: ``"training"`` or ``"evaluation"`` (``tumorseg.kind`` tag).
        ckpt_dir: checkpoint folder: the run record lives here, ``model.pt`` is logged from here
            (training) or hashed and linked to its training run (evaluation).
        artifact_dir: local folder where artifacts are written before upload; they stay there,
            so an upload that fails loses nothing. Empty: a temporary folder.
        parent_run_id: make this run a child of that run (cross-validation folds).
        case_metric: the metric whose ``state.metric_details`` give the per-case CSV
            (``RegionMetricHandler``: Dice then HD95 per region).
        regions: names of the region channels, for the CSV columns.
        num_overlays: overlay PNGs of the best validation (the first cases of the loader).
        log_checkpoint: upload ``model.pt`` at the end of a training.
        source_dir: a folder inside the git checkout whose commit is recorded.
        config: files to log under ``config/`` at start, name -> JSON content (``{"config":
            {...}}`` gives ``config/config.json``); None: the running bundle's merged config
            (``config.json``) and its resolved top-level values (``resolved.json``).
        check_timeout_s: seconds the start-up reachability check waits.
        request_timeout_s: HTTP timeout of each logging call during the run.
        retry_interval_s: after a failed call, seconds before the next attempt.
        close_on_complete: end the run (FINISHED) when the engine completes.
    """

    def __init__(
        self,
        *,
        tracking_uri: str = "",
        experiment_name: str = "tumorseg",
        run_name: str = "",
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        validator: Engine | None = None,
        kind: str = "training",
        ckpt_dir: str | os.PathLike = "",
        artifact_dir: str | os.PathLike = "",
        parent_run_id: str = "",
        case_metric: str = "val_hd95_mean",
        regions: Sequence[str] = ("wt", "tc", "et"),
        num_overlays: int = 3,
        log_checkpoint: bool = True,
        source_dir: str | os.PathLike = "",
        config: Mapping[str, Any] | None = None,
        check_timeout_s: int = 5,
        request_timeout_s: int = 10,
        retry_interval_s: float = 30.0,
        close_on_complete: bool = True,
    ) -> None:
        self.run = TrackedRun(
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
            run_name=run_name,
            params=params,
            tags=tags,
            kind=kind,
            ckpt_dir=ckpt_dir,
            parent_run_id=parent_run_id,
            source_dir=source_dir,
            check_timeout_s=check_timeout_s,
            request_timeout_s=request_timeout_s,
        )
        self.sink = MetricSink(self.run, retry_interval_s=retry_interval_s)
        self.artifacts = ValidationArtifacts(
            self.sink,
            kind=kind,
            case_metric=case_metric,
            regions=regions,
            num_overlays=num_overlays,
        )
        self.validator = validator
        self.kind = kind
        self.artifact_dir = Path(artifact_dir) if str(artifact_dir) else None
        self.log_checkpoint = log_checkpoint
        self.config = config
        self.close_on_complete = close_on_complete
        self._epoch_lr: float | None = None
        self._epoch_t0 = 0.0
        self._main: Engine | None = None

    # ------------------------------------------------------------------ the parts' state

    @property
    def tags(self) -> dict[str, Any]:
        """Extra run tags, read when the run opens (``with_tags`` adds to them until then)."""
        return self.run.tags

    @tags.setter
    def tags(self, value: Mapping[str, Any]) -> None:
        self.run.tags = dict(value)

    @property
    def ckpt_dir(self) -> Path | None:
        """The checkpoint folder (run record, ``model.pt``)."""
        return self.run.ckpt_dir

    @property
    def client(self) -> MlflowClient | None:
        """The client of the open run (None before the start and on ranks other than 0)."""
        return self.run.client

    @property
    def run_id(self) -> str | None:
        """The open run's id; None before the start, after the end and on other ranks."""
        return self.run.run_id

    @property
    def uri(self) -> str:
        """The tracking URI the run lives in, once started."""
        return self.run.uri

    @property
    def resumed(self) -> bool:
        """True when a resumed training continues its recorded run."""
        return self.run.resumed

    @property
    def unsent(self) -> int:
        """Metric values given up on (the buffer overflowed during an outage)."""
        return self.sink.unsent

    @property
    def not_uploaded(self) -> list[Path]:
        """Artifacts that stayed only in the local folder."""
        return self.sink.not_uploaded

    @property
    def active(self) -> bool:
        """True while this process logs to an open run."""
        return self.run.active

    # ------------------------------------------------------------------ wiring

    def attach(self, engine: Engine) -> None:
        """Register the handlers on ``engine`` (and on ``validator`` when given)."""
        if self.kind == "training" and self.validator is None:
            logger.warning("MLflowTracker(kind='training') without a validator: no val metrics")
        self._main = engine
        scored = self.validator if self.validator is not None else engine
        engine.add_event_handler(Events.STARTED, self.start)
        if scored is not engine:
            engine.add_event_handler(Events.EPOCH_STARTED, self._train_epoch_started)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._train_epoch_completed)
        scored.add_event_handler(Events.EPOCH_COMPLETED, self._scores_completed)
        self.artifacts.attach(scored, step=self._step)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    def _step(self, engine: Engine) -> int:
        # Step = the trainer's epoch, so validation and training curves share one x axis
        # whatever epoch counter the validator keeps.
        main = self._main if self._main is not None and self.validator is not None else engine
        return int(main.state.epoch)

    # ------------------------------------------------------------------ start

    def start(self, engine: Engine) -> None:
        """Check the store, open (or, on resume, reopen) the run, log params and config.

        Raises:
            TrackingUnavailableError: the store cannot be reached; nothing has been trained.
        """
        if self.active or not is_rank0():
            return
        self.run.open(engine, self.validator)
        # From here on a failure is a warning: the run exists, training must not die of it.
        atexit.register(self._at_exit)
        config = dict(self.config) if self.config is not None else bundle_config_on_stack()
        if config is not None:
            folder = self._stage_dir() / "config"
            folder.mkdir(parents=True, exist_ok=True)
            for name, content in config.items():
                (folder / f"{name}.json").write_text(json.dumps(content, indent=2, default=str))
            self.sink.upload(folder, "config")

    # ------------------------------------------------------------------ per epoch

    def _train_epoch_started(self, engine: Engine) -> None:
        self._epoch_t0 = time.perf_counter()
        optimizer = getattr(engine, "optimizer", None)
        groups = getattr(optimizer, "param_groups", None)
        # Read here: the scheduler handler steps at EPOCH_COMPLETED, before this handler would.
        self._epoch_lr = float(groups[0]["lr"]) if groups else None

    def _train_epoch_completed(self, engine: Engine) -> None:
        values = dict(engine.state.metrics)
        if self._epoch_lr is not None:
            values["lr"] = self._epoch_lr
        values["epoch_seconds"] = time.perf_counter() - self._epoch_t0
        self.log_metrics(values, step=engine.state.epoch)

    def _scores_completed(self, engine: Engine) -> None:
        self.log_metrics(engine.state.metrics, step=self._step(engine))

    def log_metrics(self, values: Mapping[str, Any], *, step: int) -> None:
        """Log the scalar values at ``step``; never raises (a failure is buffered and warned)."""
        self.sink.log_metrics(values, step=step)

    def flush(self, *, force: bool = False) -> bool:
        """Send buffered metric values; True when nothing is left to send."""
        return self.sink.flush(force=force)

    def _stage_dir(self) -> Path:
        if self.artifact_dir is None:
            self.artifact_dir = Path(tempfile.mkdtemp(prefix="tumorseg-mlflow-"))
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        return self.artifact_dir

    # ------------------------------------------------------------------ end

    def complete(self, engine: Engine) -> None:
        """Write and upload the artifacts, send what is buffered, end the run."""
        if not self.active:
            return
        if self.sink.failing:
            self.flush(force=True)  # the store failed earlier: one probe decides for the uploads
        self.artifacts.write(self._stage_dir())
        if self.kind == "training" and self.log_checkpoint and self.ckpt_dir is not None:
            best = self.ckpt_dir / "model.pt"
            if best.is_file():
                self.sink.upload(best, "checkpoints")
        if self.not_uploaded:
            logger.warning(
                "MLflow: %d artifact(s) not uploaded to run %s at %s; they are kept locally: %s",
                len(self.not_uploaded),
                self.run_id,
                self.uri,
                ", ".join(str(p) for p in self.not_uploaded),
            )
        if self.close_on_complete:
            self.close("FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        """Send what is buffered and end the run with ``status``; warns instead of raising."""
        if not self.active:
            return
        sent = self.flush(force=True)
        if not sent or self.unsent:
            logger.warning(
                "MLflow: %d metric value(s) of run %s could not be sent to %s; they are in this "
                "training's log",
                self.sink.pending + self.unsent,
                self.run_id,
                self.uri,
            )
        self.run.end(status, reachable=sent)
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        # The process is ending without COMPLETED (an exception, Ctrl-C): the run failed.
        # A SIGKILL skips this: a resume continues that run, a fresh training marks it KILLED.
        if self.active:
            self.close("FAILED")
