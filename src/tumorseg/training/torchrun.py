"""The ``torchrun`` command line of ``tumorseg launch``: one bundle workflow on every process.

Only string work happens here (no process group): :func:`torchrun_command` validates the job
shape and fills the ``monai.bundle run`` defaults, :func:`format_command` shell-quotes the
result for ``--dry-run``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tumorseg.conventions import DEFAULT_BUNDLE

__all__ = ["DDP_CONFIGS", "DEFAULT_BUNDLE", "format_command", "torchrun_command"]

#: Config files of a DDP training, relative to the bundle: the base, then the DDP overrides.
DDP_CONFIGS: tuple[str, ...] = ("configs/train.json", "configs/multi_gpu_train.json")


def torchrun_command(
    bundle_args: Sequence[str] = (),
    *,
    nproc_per_node: int | str = 1,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str = "",
    rdzv_backend: str = "c10d",
    rdzv_id: str = "tumorseg",
    max_restarts: int = 0,
    bundle: str | os.PathLike[str] = DEFAULT_BUNDLE,
    workflow: str = "training",
    config_files: Sequence[str | os.PathLike[str]] | None = None,
    python: str | None = None,
) -> list[str]:
    """The ``torchrun`` command that runs a bundle workflow on every process of a job.

    Single node: ``--standalone`` (torchrun picks a free port). Several nodes: every node runs
    the same command with the same ``rdzv_endpoint`` (``host:port`` of one of them) and
    ``rdzv_id``; with the ``static`` rendezvous each node also gives its ``node_rank``.

    Args:
        bundle_args: arguments after ``run <workflow>``, e.g. ``["--dataset_dir", "/data"]``.
            ``--meta_file``, ``--config_file``, ``--logging_file`` and ``--bundle_root`` given
            here replace the defaults.
        nproc_per_node: processes per node: a count, or ``"gpu"`` (one per visible GPU).
        nnodes: nodes in the job.
        node_rank: this node's rank; needed with ``rdzv_backend="static"`` only.
        rdzv_endpoint: ``host:port`` of the rendezvous; required when ``nnodes > 1``.
        rdzv_backend: ``c10d`` (ranks assigned on arrival; tolerates restarts) or ``static``.
        rdzv_id: job id shared by the nodes (e.g. ``$SLURM_JOB_ID``).
        max_restarts: times torchrun restarts all workers after one fails (each restart
            resumes from the latest checkpoint).
        bundle: bundle folder.
        workflow: bundle workflow id (``training``).
        config_files: config files; default ``train.json`` + ``multi_gpu_train.json`` of
            ``bundle``.
        python: interpreter; default this one.

    Returns:
        The argument list (``python -m torch.distributed.run ...``).

    Raises:
        ValueError: for a bad count, a missing endpoint or node rank, or a port that is not
            a number; the message shows the value received.
    """
    nproc = _nproc(nproc_per_node)
    if nnodes < 1:
        raise ValueError(f"nnodes must be >= 1, got {nnodes}")
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    if rdzv_backend not in ("c10d", "static"):
        raise ValueError(f"rdzv_backend must be 'c10d' or 'static', got {rdzv_backend!r}")
    if not workflow:
        raise ValueError(f"workflow must name a bundle workflow, got {workflow!r}")
    root = Path(bundle)
    files = [root / f for f in DDP_CONFIGS] if config_files is None else list(config_files)
    if not files:
        raise ValueError("config_files must name at least one config file, got none")
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", nproc]
    if nnodes == 1 and not rdzv_endpoint:
        if node_rank not in (None, 0):
            raise ValueError(f"node_rank must be 0 (or unset) on a single node, got {node_rank}")
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        if not rdzv_endpoint:
            raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint (host:port), got none")
        _check_endpoint(rdzv_endpoint)
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", rdzv_backend]
        cmd += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", str(rdzv_id)]
        if rdzv_backend == "static":
            if node_rank is None or not 0 <= node_rank < nnodes:
                raise ValueError(
                    f"the static rendezvous needs node_rank in [0, {nnodes}), got {node_rank}"
                )
            cmd += ["--node-rank", str(node_rank)]
        elif node_rank is not None and not 0 <= node_rank < nnodes:
            raise ValueError(f"node_rank must be in [0, {nnodes}), got {node_rank}")
    cmd += ["--max-restarts", str(max_restarts)]
    cmd += ["-m", "monai.bundle", "run", workflow]
    given = {a.split("=", 1)[0] for a in bundle_args if a.startswith("--")}
    defaults = {
        "--meta_file": str(root / "configs" / "metadata.json"),
        "--config_file": _config_arg([str(f) for f in files]),
        "--logging_file": str(root / "configs" / "logging.conf"),
        "--bundle_root": str(root),
    }
    for flag, value in defaults.items():
        if flag not in given:
            cmd += [flag, value]
    return cmd + list(bundle_args)


def _nproc(value: int | str) -> str:
    if isinstance(value, str) and value in ("gpu", "auto"):
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"nproc_per_node must be a positive count or 'gpu', got {value!r}"
        ) from None
    if count < 1 or str(value).strip() != str(count):
        raise ValueError(f"nproc_per_node must be a positive count or 'gpu', got {value!r}")
    return str(count)


def _check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rdzv_endpoint must be host:port with a port number, got {endpoint!r}")


def _config_arg(files: Sequence[str]) -> str:
    """MONAI's ``--config_file`` value: one path, or a list literal of paths.

    JSON's double quotes (a valid Python literal too, which is how ``fire`` reads it) keep the
    shell-quoted ``--dry-run`` line readable: ``'["a.json","b.json"]'``.
    """
    return files[0] if len(files) == 1 else json.dumps(list(files), separators=(",", ":"))


def format_command(cmd: Sequence[str]) -> str:
    """``cmd`` as one shell-quoted line (what ``tumorseg launch --dry-run`` prints)."""
    return shlex.join(list(cmd))
