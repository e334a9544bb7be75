"""The one MLflow run a training or evaluation logs to: opened by id, resumed, ended.

Why not MONAI's ``MLFlowHandler``: it looks a run up by name among the experiment's unfinished
runs (with no name it takes *any* unfinished run), so a crashed earlier training left RUNNING
is silently reused. :class:`TrackedRun` instead creates its run itself and keeps the run id in
``<ckpt_dir>/mlflow_run.json`` (:data:`RUN_RECORD`), so a training resumed from its checkpoint
folder continues that run and a fresh one opens a new run; an evaluation links the training
run of the checkpoint it scores.

A training killed outright (SIGKILL, out of memory, a lost node) cannot end its own run. The
record therefore also names the process that logs to the run; the next training that opens in
the same folder without resuming marks such a run ``KILLED`` (:func:`end_abandoned_run`)
before opening its own, so no run stays RUNNING forever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine

from tumorseg.io import atomic_write_text
from tumorseg.tracking.settings import run_name as make_run_name
from tumorseg.tracking.store import (
    PARAMS_PER_BATCH,
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

__all__ = [
    "KINDS",
    "RUN_RECORD",
    "TrackedRun",
    "bundle_config_on_stack",
    "end_abandoned_run",
    "read_run_record",
]

logger = logging.getLogger(__name__)

#: What a run is; recorded as the ``tumorseg.kind`` tag.
KINDS = ("training", "evaluation")
#: File in the checkpoint folder naming the run a training logs to (resume continues it).
RUN_RECORD = "mlflow_run.json"


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _writer_alive(record: Mapping[str, str]) -> bool:
    """Whether the process named in a run record still runs (on this host, not this process)."""
    if record.get("host") != socket.gethostname():
        # Another machine's process cannot be probed; a training rerun in the same folder means
        # the user has given that one up.
        return False
    try:
        pid = int(record.get("pid", ""))
    except ValueError:
        return False
    return pid != os.getpid() and _process_alive(pid)


def end_abandoned_run(client: MlflowClient, record: Mapping[str, str] | None, uri: str) -> bool:
    """Mark the run of a killed training ``KILLED``; True when one was.

    A run counts as abandoned when its record names this store, MLflow still has it RUNNING,
    and the process that logged to it is gone. A live process keeps its run (two trainings
    writing one checkpoint folder is the user's conflict; it is warned about, not settled here).

    Args:
        client: client of the store at ``uri``.
        record: the run record of the checkpoint folder (:func:`read_run_record`), or None.
        uri: the tracking URI this training logs to.
    """
    from mlflow.exceptions import MlflowException

    if record is None or record.get("tracking_uri") != uri:
        return False
    run_id = record["run_id"]
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    if run.info.status != "RUNNING" or run.info.lifecycle_stage != "active":
        return False
    if _writer_alive(record):
        logger.warning(
            "MLflow run %s is still being logged to by process %s on this host, which writes "
            "the same checkpoint folder; it is left RUNNING",
            run_id,
            record.get("pid"),
        )
        return False
    client.set_tag(run_id, "tumorseg.ended_by", "the next training in its checkpoint folder")
    client.set_terminated(run_id, "KILLED")
    logger.warning(
        "MLflow: run %s (%s) was left RUNNING by a training that was killed; marked KILLED",
        record.get("run_name", ""),
        run_id,
    )
    return True


def _jsonable(value: Any) -> Any:
    """Plain JSON data for a resolved config value, or ``...`` when it is an object."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(_jsonable(v) is not ... for v in value):
        return [_jsonable(v) for v in value]
    if type(value).__name__ == "device":  # torch.device: say which
        return str(value)
    return ...


def bundle_config_on_stack() -> dict[str, Any] | None:
    """The merged config of the MONAI bundle workflow that is running this handler, if any.

    A component instantiated from a bundle config cannot reference the parser that built it,
    and the merged config (files plus command-line overrides) is what reproduces a run; the
    ``ConfigParser`` is a local of a caller frame while ``trainer.run()`` executes, so it is
    read from there. Outside a bundle workflow there is none and nothing is logged.

    Returns:
        ``{"config": <merged config>, "resolved": <resolved top-level values>}`` or None.
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


def _dataset_size(engine: Engine | None) -> int | None:
    loader = getattr(engine, "data_loader", None) if engine is not None else None
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an iterable dataset has no length
        return None


def first_line(err: BaseException) -> str:
    """The first line of an error's message, at most 300 characters, for a warning."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


class TrackedRun:
    """One MLflow run: checked store, created by id or reopened on resume, params, end.

    Args:
        tracking_uri: tracking store; empty: ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` here.
        experiment_name: MLflow experiment, created when missing.
        run_name: name of a new run; empty: ``<kind>-<timestamp>``.
        params: run parameters (nested mappings become ``a.b`` keys).
        tags: extra run tags; read when the run opens, so they may be added to until then.
        kind: ``"training"`` or ``"evaluation"`` (``tumorseg.kind`` tag).
        ckpt_dir: checkpoint folder: the run record lives here; an evaluation hashes its
            ``model.pt`` and links the training run recorded here.
        parent_run_id: make this run a child of that run (cross-validation folds).
        source_dir: a folder inside the git checkout whose commit is recorded.
        check_timeout_s: seconds the start-up reachability check waits.
        request_timeout_s: HTTP timeout of each call to the store.

    Raises:
        ValueError: an unknown ``kind`` or an empty ``experiment_name``.
    """

    def __init__(
        self,
        *,
        tracking_uri: str = "",
        experiment_name: str = "tumorseg",
        run_name: str = "",
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        kind: str = "training",
        ckpt_dir: str | os.PathLike = "",
        parent_run_id: str = "",
        source_dir: str | os.PathLike = "",
        check_timeout_s: int = 5,
        request_timeout_s: int = 10,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not str(experiment_name).strip():
            raise ValueError(f"experiment_name must be a non-empty name, got {experiment_name!r}")
        self.tracking_uri = str(tracking_uri or "")
        self.experiment_name = str(experiment_name)
        self.run_name = str(run_name or "")
        self.params = dict(params or {})
        self.tags = dict(tags or {})
        self.kind = kind
        self.ckpt_dir = Path(ckpt_dir) if str(ckpt_dir) else None
        self.parent_run_id = str(parent_run_id or "")
        self.source_dir = str(source_dir or "")
        self.check_timeout_s = int(check_timeout_s)
        self.request_timeout_s = int(request_timeout_s)

        self.client: MlflowClient | None = None
        self.uri = ""
        self.run_id: str | None = None
        self.resumed = False

    @property
    def active(self) -> bool:
        """True while a run is open."""
        return self.client is not None and self.run_id is not None

    def timeouts(self) -> Any:
        """Context manager bounding each store call of this run (see ``client_timeouts``)."""
        # MLflow's defaults retry for minutes; keep each call short, unless the user set them.
        return client_timeouts(max_retries=1, timeout_s=self.request_timeout_s, override=False)

    def open(self, engine: Engine, validator: Engine | None = None) -> None:
        """Check the store, open (or, on resume, reopen) the run and log its params.

        Args:
            engine: the trainer (or evaluator) at ``STARTED``; a trainer whose epoch is past 0
                has resumed from its checkpoint.
            validator: the trainer's evaluator, whose dataset size is a param.

        Raises:
            TrackingUnavailableError: the store cannot be reached; nothing has been trained.
        """
        import mlflow

        self.uri = check_tracking_uri(self.tracking_uri, timeout_s=self.check_timeout_s)
        self.client = mlflow.MlflowClient(self.uri)
        with self.timeouts():
            experiment = get_or_create_experiment(self.client, self.experiment_name, self.uri)
            self.resumed = self.kind == "training" and engine.state.epoch > 0
            run_id = self._recorded_run(experiment.experiment_id) if self.resumed else None
            if self.kind == "training" and self.ckpt_dir is not None and not self.resumed:
                end_abandoned_run(self.client, read_run_record(self.ckpt_dir), self.uri)
            params = self._all_params(engine, validator)
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
                        "host": socket.gethostname(),
                        "pid": str(os.getpid()),
                    },
                )
            self._log_params(params)

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

    def _all_params(self, engine: Engine, validator: Engine | None) -> dict[str, str]:
        params = flatten_params(self.params)
        params.update(environment_params(self.source_dir or None))
        if self.kind == "training":
            params["max_epochs"] = str(engine.state.max_epochs)
            params["epoch_length"] = str(engine.state.epoch_length)
        scored = validator if validator is not None else engine
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
        for i in range(0, max(len(new), len(changed)), PARAMS_PER_BATCH):
            self.client.log_batch(
                self.run_id,
                params=new[i : i + PARAMS_PER_BATCH],
                tags=changed[i : i + PARAMS_PER_BATCH],
            )

    def end(self, status: str, *, reachable: bool) -> None:
        """End the run with ``status`` and let go of the store; warns instead of raising.

        Args:
            status: ``FINISHED``, ``FAILED`` ...
            reachable: False when the store did not answer the last call: the run is then
                left RUNNING there (a resumed training continues it) rather than waited for.
        """
        if not self.active:
            return
        assert self.client is not None and self.run_id is not None
        if not reachable:
            logger.warning(
                "MLflow: run %s at %s stays RUNNING there (the store did not answer); a resumed "
                "training continues it",
                self.run_id,
                self.uri,
            )
        else:
            try:
                with self.timeouts():
                    self.client.set_terminated(self.run_id, status)
            except Exception as err:  # any client/network error
                logger.warning(
                    "MLflow: could not mark run %s %s at %s (%s: %s)",
                    self.run_id,
                    status,
                    self.uri,
                    type(err).__name__,
                    first_line(err),
                )
        self.run_id = None
        self._dispose()

    def _dispose(self) -> None:
        # A SQLite store keeps its connection pool open for the client's lifetime.
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        engine = getattr(store, "engine", None)
        if engine is not None and hasattr(engine, "dispose"):
            engine.dispose()
