"""Talking to the MLflow store: reachability, experiments, and what a run records about itself.

Everything here is plain MLflow client code (no ignite, no MONAI), so that ``tumorseg
compare`` and the training handler agree on how a store is reached and checked.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tumorseg.tracking.settings import artifact_location, tracking_uri
from tumorseg.tracking.settings import run_name as make_run_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

__all__ = [
    "PARAMS_PER_BATCH",
    "create_run",
    "TrackingUnavailableError",
    "check_tracking_uri",
    "client_timeouts",
    "environment_params",
    "fallback_hint",
    "file_sha256",
    "flatten_params",
    "get_or_create_experiment",
    "git_commit",
    "run_tags",
]

#: MLflow refuses longer param values (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``).
MAX_PARAM_LENGTH = 6000


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be reached; raised before any training happens."""


def fallback_hint() -> str:
    """How to train without the unreachable store: the end of every reachability error."""
    return (
        "To log locally instead, unset MLFLOW_TRACKING_URI or pass "
        "--tracking_uri sqlite:///mlflow.db; to train without tracking, pass --log_mlflow false."
    )


@contextlib.contextmanager
def client_timeouts(
    *, max_retries: int, timeout_s: int, backoff_factor: int = 1, override: bool = True
) -> Iterator[None]:
    """Set MLflow's HTTP retry/timeout environment variables for the duration of the block.

    MLflow reads them on every request (``mlflow.utils.rest_utils.http_request``), so this is
    the one supported way to bound a client call.

    Args:
        max_retries: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``.
        timeout_s: ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (whole seconds, as MLflow parses it).
        backoff_factor: ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``.
        override: replace values the user set; False keeps the user's.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout_s))),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(backoff_factor)),
    }
    saved = {key: os.environ.get(key) for key in wanted}
    for key, value in wanted.items():
        if override or saved[key] is None:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def check_tracking_uri(uri: str = "", *, timeout_s: int = 5) -> str:
    """Fail fast, with a clear message, when the tracking store cannot be reached.

    One bounded request (no retries, ``timeout_s``) lists an experiment; a server that is
    down, a wrong host or port, a hung server, a proxy answering with an error page and a
    refused login all end here, before any training time is spent. A local SQLite store is
    created if missing (its folder too).

    Args:
        uri: tracking URI; empty resolves as :func:`tumorseg.tracking.tracking_uri`.
        timeout_s: seconds to wait for an answer.

    Returns:
        The resolved URI.

    Raises:
        TrackingUnavailableError: naming the URI, the cause and how to fall back to local.
    """
    import mlflow

    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with client_timeouts(max_retries=0, timeout_s=timeout_s):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises MlflowException, requests and urllib3 errors
        cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise TrackingUnavailableError(
            f"MLflow tracking store {uri!r} is not reachable ({type(err).__name__}: {cause}). "
            f"Nothing was trained. {fallback_hint()}"
        ) from err
    return uri


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> Experiment:
    """The active experiment called ``name``, created (artifacts beside a local store) if new.

    Raises:
        ValueError: when the experiment exists but was deleted (MLflow cannot log to it).
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location(uri))
        except MlflowException as err:
            # Two trainings starting together: the other one created it first.
            if "RESOURCE_ALREADY_EXISTS" not in str(err) and "already exists" not in str(err):
                raise
        experiment = client.get_experiment_by_name(name)
    if experiment is None:  # pragma: no cover - created just above
        raise ValueError(f"MLflow experiment {name!r} could not be created at {uri!r}")
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} at {uri!r} is deleted; restore it "
            "(mlflow experiments restore) or choose another --experiment_name"
        )
    return experiment


def file_sha256(path: str | os.PathLike | None) -> str:
    """SHA-256 of a file (e.g. the manifest a run trained on); ``""`` for no path or no file."""
    if not path or not Path(path).is_file():
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(path: str | os.PathLike | None = None) -> tuple[str, bool]:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: this package).

    ``("unknown", False)`` outside a checkout or without git: tracking must never fail on it.
    """
    where = Path(path) if path else Path(__file__).resolve().parent
    if where.is_file():
        where = where.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit or "unknown", bool(status)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_params(source_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Software versions and code revision of this process: what makes a run reproducible."""
    commit, dirty = git_commit(source_dir)
    params = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "python_version": platform.python_version(),
    }
    for package in ("torch", "monai", "pytorch-ignite", "mlflow", "tumorseg"):
        params[f"{package.replace('pytorch-', '')}_version"] = _version(package)
    try:
        import torch

        params["cuda_version"] = str(torch.version.cuda or "none")
    except ImportError:  # pragma: no cover - torch is a dependency
        params["cuda_version"] = "none"
    return params


def run_tags(
    kind: str, *, commit: str = "", extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Tags every tumorseg run carries: what it is, who ran it where, the code revision."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "unknown"
    tags = {"tumorseg.kind": kind, "mlflow.user": user, "host": socket.gethostname()}
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    tags.update({str(k): str(v) for k, v in (extra or {}).items()})
    return tags


def flatten_params(params: Mapping[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """Nested params as ``a.b`` keys with string values, cut to MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in (params or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = "" if value is None else str(value)
        out[name] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return out


#: Params per MLflow ``log_batch`` call (the REST API accepts at most 100).
PARAMS_PER_BATCH = 100


def create_run(
    tracking_uri: str,
    experiment_name: str,
    kind: str,
    *,
    run_name: str = "",
    name_prefix: str = "run",
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> tuple[MlflowClient, Run]:
    """Open a run of ``kind`` in ``experiment_name`` (created if needed) with tumorseg's tags,
    and log ``params`` (:func:`flatten_params`) with :func:`environment_params`.

    Returns:
        The client and the new, running run.

    Raises:
        TrackingUnavailableError: the store cannot be reached.
        Exception: whatever the store raised while logging the params; the run is then ended
            ``FAILED`` rather than left running.
    """
    import mlflow
    from mlflow.entities import Param

    uri = check_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(uri)
    experiment = get_or_create_experiment(client, experiment_name, uri)
    env = environment_params()
    run = client.create_run(
        experiment.experiment_id,
        run_name=run_name or make_run_name(name_prefix),
        tags=run_tags(kind, commit=env["git_commit"], extra=tags),
    )
    batch = [Param(k, v) for k, v in {**flatten_params(params), **env}.items()]
    try:
        for i in range(0, len(batch), PARAMS_PER_BATCH):
            client.log_batch(run.info.run_id, params=batch[i : i + PARAMS_PER_BATCH])
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return client, run
