"""Where MLflow runs are stored and how they are named.

Default store: an embedded SQLite file ``mlflow.db`` in the working directory with artifacts
in ``mlartifacts/`` beside it; ``MLFLOW_TRACKING_URI`` (or the bundle's ``tracking_uri``
override) points at a shared server instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["artifact_location", "run_name", "tracking_uri"]

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"


def tracking_uri(uri: str = "") -> str:
    """The tracking URI: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else local SQLite.

    A relative SQLite path (``sqlite:///mlflow.db``) is made absolute against the working
    directory: the artifact folder beside it needs a ``file://`` URI, and a run record written
    to ``ckpt_dir`` must still find the store from another directory.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return f"sqlite:///{Path.cwd() / DB_NAME}"
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if path and not path.startswith(("/", ":memory:")):
        return f"sqlite:///{Path.cwd() / path}"
    return uri


def artifact_location(uri: str = "") -> str | None:
    """Artifact folder for new experiments: next to a local SQLite store, else the server's."""
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / ARTIFACT_DIR).as_uri()
    return None


def run_name(*parts: object) -> str:
    """A run name that says what the run is, e.g. ``unet-fold0-20261121-101500``."""
    words = [str(p) for p in parts if p not in (None, "")]
    return "-".join([*words, time.strftime("%Y%m%d-%H%M%S")])
