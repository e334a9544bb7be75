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
"""

from __future__ import annotations

import atexit
import csv
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from tumorseg.io import atomic_write_text
from tumorseg.ranks import is_rank0
from tumorseg.tracking.overlays import CaseSlice, pick_slice, render_overlay
from tumorseg.tracking.settings import run_name as make_run_name
from tumorseg.tracking.store import (
    check_tracking_uri,
    client_timeouts,
    environment_params,
    file_sha256,
    flatten_params,
    get_or_create_experiment,
    run_tags,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

__all__ = ["KINDS", "RUN_RECORD", "MLflowTracker", "read_run_record"]

logger = logging.getLogger(__name__)

#: What a run is; recorded as the ``tumorseg.kind`` tag.
KINDS = ("training", "evaluation")
#: File in the checkpoint folder naming the run a training logs to (resume continues it).
RUN_RECORD = "mlflow_run.json"
#: MLflow's batch limits (``mlflow.utils.validation``).
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100
#: Metric values kept for re-sending while the server is away (about 100 epochs of a big run).
_MAX_PENDING = 100_000
#: Longest wait between attempts while the store fails.
_MAX_RETRY_WAIT_S = 600.0
_KEY_BAD_CHARS = re.compile(r"[^\w\-. /:]")


def read_run_record(ckpt_dir: str | os.PathLike) -> dict[str, str] | None:
    """The ``{tracking_uri, experiment_id, run_id, run_name}`` a training in ``ckpt_dir`` logged
    to, or None when there is no readable record."""
    path = Path(ckpt_dir) / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("run_id"):
        return None
    return {str(k): str(v) for k, v in record.items()}


def _write_run_record(ckpt_dir: Path, record: Mapping[str, str]) -> None:
    atomic_write_text(ckpt_dir / RUN_RECORD, json.dumps(dict(record), indent=2) + "\n")


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


def _jsonable(value: Any) -> Any:
    """Plain JSON data for a resolved config value, or ``...`` when it is an object."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(_jsonable(v) is not ... for v in value):
        return [_jsonable(v) for v in value]
    if type(value).__name__ == "device":  # torch.device: say which
        return str(value)
    return ...


def _bundle_config_on_stack() -> dict[str, Any] | None:
    """The merged config of the MONAI bundle workflow that is running this handler, if any.

    A component instantiated from a bundle config cannot reference the parser that built it,
    and the merged config (files plus command-line overrides) is what reproduces a run; the
    ``ConfigParser`` is a local of a caller frame while ``trainer.run()`` executes, so it is
    read from there. Outside a bundle workflow there is none and nothing is logged.
    """
    try:
        from monai.bundle import ConfigParser
    except ImportError:  # pragma: no cover - monai is a dependency
        return None
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        parser = owner if isinstance(owner, ConfigParser) else getattr(owner, "parser", None)
        if isinstance(parser, ConfigParser):
            resolved: dict[str, Any] = {}
            content = getattr(parser.ref_resolver, "resolved_content", {})
            for key, item in list(content.items()):
                if "#" not in key and not key.startswith("_"):
                    value = _jsonable(item)
                    if value is not ...:
                        resolved[key] = value
            return {"config": parser.get(), "resolved": resolved}
        frame = frame.f_back  # type: ignore[assignment]
    return None


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
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not str(experiment_name).strip():
            raise ValueError(f"experiment_name must be a non-empty name, got {experiment_name!r}")
        if num_overlays < 0:
            raise ValueError(f"num_overlays must be >= 0, got {num_overlays}")
        if retry_interval_s < 0:
            raise ValueError(f"retry_interval_s must be >= 0, got {retry_interval_s}")
        self.tracking_uri = str(tracking_uri or "")
        self.experiment_name = str(experiment_name)
        self.run_name = str(run_name or "")
        self.params = dict(params or {})
        self.tags = dict(tags or {})
        self.validator = validator
        self.kind = kind
        self.ckpt_dir = Path(ckpt_dir) if str(ckpt_dir) else None
        self.artifact_dir = Path(artifact_dir) if str(artifact_dir) else None
        self.parent_run_id = str(parent_run_id or "")
        self.case_metric = case_metric
        self.regions = tuple(str(r) for r in regions)
        self.num_overlays = int(num_overlays)
        self.log_checkpoint = log_checkpoint
        self.source_dir = str(source_dir or "")
        self.config = config
        self.check_timeout_s = int(check_timeout_s)
        self.request_timeout_s = int(request_timeout_s)
        self.retry_interval_s = float(retry_interval_s)
        self.close_on_complete = close_on_complete

        self.client: MlflowClient | None = None
        self.uri = ""
        self.run_id: str | None = None
        self.resumed = False
        self.unsent = 0  # metric values given up on (buffer overflow), reported at the end
        self.not_uploaded: list[Path] = []  # artifacts kept only locally
        self._pending: list[Metric] = []
        self._retry_at: float | None = None  # set while the store is failing
        self._failures = 0  # consecutive failed calls
        self._epoch_lr: float | None = None
        self._epoch_t0 = 0.0
        self._case_ids: list[str] = []
        self._slices: list[CaseSlice] = []
        self._best: tuple[int, list[dict[str, Any]], list[CaseSlice]] | None = None
        self._main: Engine | None = None

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
        scored.add_event_handler(Events.EPOCH_STARTED, self._scores_started)
        scored.add_event_handler(Events.ITERATION_COMPLETED, self._capture_cases)
        scored.add_event_handler(Events.EPOCH_COMPLETED, self._scores_completed)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    @property
    def active(self) -> bool:
        """True while this process logs to an open run."""
        return self.client is not None and self.run_id is not None

    # ------------------------------------------------------------------ start

    def start(self, engine: Engine) -> None:
        """Check the store, open (or, on resume, reopen) the run, log params and config.

        Raises:
            TrackingUnavailableError: the store cannot be reached; nothing has been trained.
        """
        if self.active or not is_rank0():
            return
        import mlflow

        self.uri = check_tracking_uri(self.tracking_uri, timeout_s=self.check_timeout_s)
        self.client = mlflow.MlflowClient(self.uri)
        with self._timeouts():
            experiment = get_or_create_experiment(self.client, self.experiment_name, self.uri)
            self.resumed = self.kind == "training" and engine.state.epoch > 0
            run_id = self._recorded_run(experiment.experiment_id) if self.resumed else None
            params = self._all_params(engine)
            if run_id is None:
                tags = run_tags(self.kind, commit=params.get("git_commit", ""), extra=self.tags)
                tags.update(self._link_tags())
                if self.parent_run_id:
                    tags["mlflow.parentRunId"] = self.parent_run_id
                name = self.run_name or make_run_name(self.kind)
                run = self.client.create_run(experiment.experiment_id, run_name=name, tags=tags)
                run_id = run.info.run_id
                logger.info("MLflow run %s (%s) at %s", name, run_id, self.uri)
            else:
                self.client.update_run(run_id, status="RUNNING")
                self.client.set_tag(run_id, "tumorseg.resumed_at_epoch", str(engine.state.epoch))
                logger.info("MLflow: resumed training continues run %s at %s", run_id, self.uri)
            self.run_id = run_id
            if self.kind == "training" and self.ckpt_dir is not None:
                _write_run_record(
                    self.ckpt_dir,
                    {
                        "tracking_uri": self.uri,
                        "experiment_id": experiment.experiment_id,
                        "run_id": run_id,
                        "run_name": self.client.get_run(run_id).info.run_name,
                    },
                )
            self._log_params(params)
        # From here on a failure is a warning: the run exists, training must not die of it.
        atexit.register(self._at_exit)
        config = dict(self.config) if self.config is not None else _bundle_config_on_stack()
        if config is not None:
            folder = self._stage_dir() / "config"
            folder.mkdir(parents=True, exist_ok=True)
            for name, content in config.items():
                (folder / f"{name}.json").write_text(json.dumps(content, indent=2, default=str))
            self._upload(folder, "config")

    def _recorded_run(self, experiment_id: str) -> str | None:
        """The run of the interrupted training in ``ckpt_dir``, if it is in this store."""
        if self.ckpt_dir is None or self.client is None:
            return None
        record = read_run_record(self.ckpt_dir)
        if record is None:
            return None
        if record.get("tracking_uri") != self.uri or record.get("experiment_id") != experiment_id:
            logger.warning(
                "MLflow: the interrupted training logged to %s (experiment %s); this one logs "
                "to %s (experiment %s), so it opens a new run",
                record.get("tracking_uri"),
                record.get("experiment_id"),
                self.uri,
                experiment_id,
            )
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(record["run_id"])
        except MlflowException:
            logger.warning("MLflow run %s of %s no longer exists; opening a new run", record)
            return None
        if run.info.lifecycle_stage != "active":
            logger.warning("MLflow run %s is deleted; opening a new run", run.info.run_id)
            return None
        return run.info.run_id

    def _link_tags(self) -> dict[str, str]:
        """An evaluation names the training run of the checkpoint it scores."""
        if self.kind != "evaluation" or self.ckpt_dir is None:
            return {}
        record = read_run_record(self.ckpt_dir)
        return {"tumorseg.training_run_id": record["run_id"]} if record else {}

    def _all_params(self, engine: Engine) -> dict[str, str]:
        params = flatten_params(self.params)
        params.update(environment_params(self.source_dir or None))
        if self.kind == "training":
            params["max_epochs"] = str(engine.state.max_epochs)
            params["epoch_length"] = str(engine.state.epoch_length)
        scored = self.validator if self.validator is not None else engine
        sizes = {"train_cases": engine if scored is not engine else None, "val_cases": scored}
        for name, eng in sizes.items():
            size = _dataset_size(eng)
            if size is not None:
                params[name] = str(size)
        if self.kind == "evaluation" and self.ckpt_dir is not None:
            model = self.ckpt_dir / "model.pt"
            params["checkpoint"] = str(model)
            params["checkpoint_sha256"] = file_sha256(model)
        return params

    def _log_params(self, params: Mapping[str, str]) -> None:
        """Log params; on a resumed run, keep the first values (MLflow forbids changing one)."""
        from mlflow.entities import Param, RunTag

        assert self.client is not None and self.run_id is not None
        existing = self.client.get_run(self.run_id).data.params if self.resumed else {}
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        changed = [RunTag(f"resume.{k}", v) for k, v in params.items() if existing.get(k, v) != v]
        if changed:
            logger.warning(
                "MLflow: resumed run keeps its first params; changed values recorded as tags: %s",
                ", ".join(f"{t.key}={t.value}" for t in changed),
            )
        for i in range(0, max(len(new), len(changed)), _PARAMS_PER_BATCH):
            self.client.log_batch(
                self.run_id,
                params=new[i : i + _PARAMS_PER_BATCH],
                tags=changed[i : i + _PARAMS_PER_BATCH],
            )

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

    def _scores_started(self, engine: Engine) -> None:
        self._case_ids, self._slices = [], []

    def _capture_cases(self, engine: Engine) -> None:
        if not self.active:
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

    def _scores_completed(self, engine: Engine) -> None:
        # Step = the trainer's epoch, so validation and training curves share one x axis
        # whatever epoch counter the validator keeps.
        main = self._main if self._main is not None and self.validator is not None else engine
        epoch = int(main.state.epoch)
        self.log_metrics(engine.state.metrics, step=epoch)
        if not self.active:
            return
        # MONAI evaluators track the epoch of their best key metric (the one model.pt holds);
        # a plain ignite validator has none, and then the latest validation is kept.
        best_epoch = getattr(engine.state, "best_metric_epoch", None)
        is_best = (
            self.kind == "evaluation" or best_epoch is None or int(best_epoch) == engine.state.epoch
        )
        if is_best:
            self._best = (epoch, self._case_rows(engine), list(self._slices))

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

    # ------------------------------------------------------------------ logging

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
        if len(self._pending) > _MAX_PENDING:
            dropped = len(self._pending) - _MAX_PENDING
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
        assert self.client is not None and self.run_id is not None
        try:
            with self._timeouts():
                while self._pending:
                    batch = self._pending[:_METRICS_PER_BATCH]
                    self.client.log_batch(self.run_id, metrics=batch)
                    del self._pending[: len(batch)]
        except Exception as err:  # any client/network error: training must go on
            if self._retry_at is None:
                logger.warning(
                    "MLflow tracking at %s failed (%s: %s). Training continues; metrics stay in "
                    "this log and are re-sent when the store answers again (next try in %.0f s); "
                    "checkpoints are not affected.",
                    self.uri,
                    type(err).__name__,
                    _first_line(err),
                    self.retry_interval_s,
                )
            self._failed()
            return False
        if self._retry_at is not None:
            logger.warning("MLflow tracking at %s answers again; buffered metrics sent", self.uri)
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

    def _upload(self, local: Path, artifact_path: str) -> bool:
        """Upload a file or folder's content; on failure it is listed in :attr:`not_uploaded`."""
        if not self.active:
            return False
        assert self.client is not None and self.run_id is not None
        if self._store_down():
            self.not_uploaded.append(local)
            return False
        try:
            with self._timeouts():
                if local.is_dir():
                    self.client.log_artifacts(self.run_id, str(local), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(local), artifact_path)
        except Exception as err:  # any client/network error: training must go on
            logger.warning(
                "MLflow: could not upload %s to run %s at %s (%s: %s)",
                artifact_path,
                self.run_id,
                self.uri,
                type(err).__name__,
                _first_line(err),
            )
            self._failed()
            self.not_uploaded.append(local)
            return False
        return True

    def _timeouts(self) -> Any:
        # MLflow's defaults retry for minutes; keep each call short, unless the user set them.
        return client_timeouts(max_retries=1, timeout_s=self.request_timeout_s, override=False)

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
        if self._retry_at is not None:
            self.flush(force=True)  # the store failed earlier: one probe decides for the uploads
        stage = self._stage_dir()
        folder = "evaluation" if self.kind == "evaluation" else "validation"
        if self._best is not None:
            epoch, rows, slices = self._best
            if rows:
                path = stage / folder / "cases.csv"
                _write_csv(path, rows, epoch)
                self._upload(path, folder)
            for case in slices:
                path = stage / folder / "overlays" / f"{case.case_id}.png"
                try:
                    render_overlay(case, path, title=f"{case.case_id}  epoch {epoch}")
                except Exception as err:  # a plotting problem must not fail the run
                    logger.warning("MLflow: overlay of %s not drawn: %s", case.case_id, err)
                    continue
                self._upload(path, f"{folder}/overlays")
        if self.kind == "training" and self.log_checkpoint and self.ckpt_dir is not None:
            best = self.ckpt_dir / "model.pt"
            if best.is_file():
                self._upload(best, "checkpoints")
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
        assert self.client is not None and self.run_id is not None
        sent = self.flush(force=True)
        if not sent or self.unsent:
            logger.warning(
                "MLflow: %d metric value(s) of run %s could not be sent to %s; they are in this "
                "training's log",
                len(self._pending) + self.unsent,
                self.run_id,
                self.uri,
            )
        if not sent:
            logger.warning(
                "MLflow: run %s at %s stays RUNNING there (the store did not answer); a resumed "
                "training continues it",
                self.run_id,
                self.uri,
            )
        else:
            try:
                with self._timeouts():
                    self.client.set_terminated(self.run_id, status)
            except Exception as err:  # any client/network error
                logger.warning(
                    "MLflow: could not mark run %s %s at %s (%s: %s)",
                    self.run_id,
                    status,
                    self.uri,
                    type(err).__name__,
                    _first_line(err),
                )
        self.run_id = None
        self._dispose()
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        # The process is ending without COMPLETED (an exception, Ctrl-C): the run failed.
        # A SIGKILL skips this; the run then stays RUNNING until a resume continues it.
        if self.active:
            self.close("FAILED")

    def _dispose(self) -> None:
        # A SQLite store keeps its connection pool open for the client's lifetime.
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        engine = getattr(store, "engine", None)
        if engine is not None and hasattr(engine, "dispose"):
            engine.dispose()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


def _case_from_meta(image: Any) -> str:
    """A case name from the image's source file, for datalists without ``case_id``."""
    meta = getattr(image, "meta", None) or {}
    source = meta.get("filename_or_obj", "")
    source = source[0] if isinstance(source, list | tuple) and source else source
    name = Path(str(source)).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        name = name.removesuffix(suffix)
    return name


def _dataset_size(engine: Engine | None) -> int | None:
    loader = getattr(engine, "data_loader", None) if engine is not None else None
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an iterable dataset has no length
        return None


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
