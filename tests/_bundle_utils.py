"""Settings and commands shared by the tests that run bundles through MONAI's CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
#: The 3D bundle's configs folder.
CONFIGS = BUNDLES / "brats_mri_segmentation" / "configs"

#: Small enough for two CPU cores: 32^3 volumes, a narrow network, one patch per case.
TINY: dict[str, Any] = {
    "roi_size": [32, 32, 32],
    "filters": [4, 8, 16, 32, 32],
    "batch_size": 1,
    "num_samples": 1,
    "num_workers": 0,
    "cache_rate": 1.0,
    "num_folds": 3,
    "sw_batch_size": 2,
}


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``--key value`` pairs of MONAI's command line: values as Python reprs without spaces
    (``[4,8]``, ``True``), which is how ``monai.bundle`` parses them."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return args


def bundle_cmd(
    configs: Path, workflow: str, files: Sequence[str], overrides: Mapping[str, Any]
) -> list[str]:
    """``python -m monai.bundle run <workflow>`` of ``files`` (names in ``configs``)."""
    paths = [str(configs / f) for f in files]
    cmd = [sys.executable, "-m", "monai.bundle", "run", workflow]
    cmd += ["--meta_file", str(configs / "metadata.json")]
    cmd += ["--config_file", paths[0] if len(paths) == 1 else str(paths)]
    cmd += ["--logging_file", str(configs / "logging.conf")]
    return cmd + override_args(overrides)


def run_ok(
    cmd: list[str], cwd: Path, *, timeout: float = 600, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; fail the test with the end of its output unless it exits 0."""
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env and dict(env)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bundle_env() -> dict[str, str]:
    """The environment of a bundle run: no tracking URI inherited from the developer's shell."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
