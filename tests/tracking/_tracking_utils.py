"""Helpers of the tracking tests: a real `mlflow server` on a free loopback port, bundle runs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from _bundle_utils import (  # noqa: F401 (re-exported to the tracking tests)
    CONFIGS,
    TINY,
    bundle_env,  # noqa: F401
    free_port,  # noqa: F401
)
from _bundle_utils import bundle_cmd as _bundle_cmd

VENV_BIN = Path(sys.executable).parent


@dataclass
class Server:
    """A running `mlflow server`: its URI, process and store."""

    uri: str
    process: subprocess.Popen
    root: Path

    def stop(self) -> None:
        """Kill the server and everything it started (its own process group), bounded."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(root: Path, *, start_timeout_s: float = 90.0) -> Iterator[Server]:
    """Start `mlflow server` (SQLite backend, artifacts served) on a free 127.0.0.1 port."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    # The GenAI job runner starts seven extra processes; tracking does not use it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = Server(uri=f"http://127.0.0.1:{port}", process=process, root=root)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _healthy(server.uri):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                tail = (root / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server did not start on {server.uri}:\n{tail}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()
        log.close()


#: Fold 0 of 3 over 6 cases: 4 training iterations per epoch at batch size 1.
ITERATIONS_PER_EPOCH = 4


def bundle_cmd(dataset: Path, work: Path, **overrides: Any) -> list[str]:
    """``python -m monai.bundle run training`` of the real train.json with tiny settings."""
    values = {
        **TINY,
        "bundle_root": str(CONFIGS.parent),
        "dataset_dir": str(dataset),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        **overrides,
    }
    return _bundle_cmd(CONFIGS, "training", ["train.json"], values)


_METRICS_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)$")


def printed_metrics(log: str) -> dict[str, list[str]]:
    """Every ``name: value`` the StatsHandlers printed per epoch, values as printed (4 d.p.)."""
    out: dict[str, list[str]] = {}
    for line in log.splitlines():
        match = _METRICS_LINE.search(line)
        if match:
            for name, value in re.findall(r"(\S+): (\S+)", match.group(2)):
                out.setdefault(name, []).append(value)
    return out
