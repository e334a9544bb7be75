"""Run one MONAI bundle workflow in a child process, as a user would, for the benchmarks.

A child process because MONAI's runner configures global logging from ``logging.conf``, which
must not leak into the benchmark's own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_bundle_workflow"]


def run_bundle_workflow(
    bundle: Path,
    workflow: str,
    configs: Sequence[str | Path],
    overrides: Mapping[str, Any],
    log: Path,
) -> float:
    """``python -m monai.bundle run <workflow>`` with ``configs`` and ``--key value`` overrides.

    Args:
        bundle: the bundle folder (its ``configs/metadata.json`` and ``logging.conf`` are used).
        workflow: ``training``, ``evaluating`` ...
        configs: config files, merged in order; names relative to ``<bundle>/configs``, or paths.
        overrides: config ids -> values; lists go as JSON (the CLI parses them back).
        log: the child's stdout and stderr go here.

    Returns:
        The child's wall seconds.

    Raises:
        RuntimeError: the workflow failed; the message ends with the log's last 30 lines.
    """
    cfg = bundle / "configs"
    files = [str(cfg / name) for name in configs]  # an absolute path stays itself
    cmd = [sys.executable, "-m", "monai.bundle", "run", workflow]
    cmd += ["--meta_file", str(cfg / "metadata.json")]
    cmd += ["--config_file", files[0] if len(files) == 1 else repr(files)]
    cmd += ["--logging_file", str(cfg / "logging.conf")]
    for key, value in overrides.items():
        # JSON lists are Python literals the CLI parses back; no spaces, except inside strings.
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, list) else str(value)
        cmd += [f"--{key}", text]
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{workflow} failed (exit {done.returncode}); log {log}:\n{tail}")
    return time.perf_counter() - start
