"""Which process of a ``torch.distributed`` job this is, and the work rank 0 alone does.

Data sets, checkpoints, metric files and MLflow runs are written once per job, by global
rank 0; the other ranks wait or skip. Those decisions are needed by ``data``, ``metrics``,
``tracking`` and ``training`` alike, so they live here, in the bottom layer beside
:mod:`tumorseg.conventions` and :mod:`tumorseg.io`, and this module imports nothing else of
tumorseg but :mod:`tumorseg.io`.

Joining and leaving a process group is :mod:`tumorseg.training.distributed`'s job; the
functions here only read the group a job has (or has not) joined.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from tumorseg.io import atomic_write_text

__all__ = ["ensure_generated", "is_rank0", "process_group"]

logger = logging.getLogger(__name__)


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined ``torch.distributed`` group; ``(0, 1)`` without."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank0() -> bool:
    """True outside distributed runs and on global rank 0: the one process that writes."""
    return process_group()[0] == 0


def ensure_generated(
    folder: str | os.PathLike[str],
    *,
    settings: Mapping[str, Any],
    generate: Callable[[Path], Any],
    marker: str,
    what: str,
) -> str:
    """Write a generated data set into ``folder`` once; reuse it while it is complete.

    A marker file written last (atomically) records ``settings``, so an interrupted
    generation (no marker) or one with other settings is redone, never trained on. In a
    multi-process job only rank 0 generates; every rank then waits for it at a barrier (each
    builds the bundle's data) and checks that it sees the finished set.

    Args:
        folder: where the set goes.
        settings: what the set is generated from (JSON-serialisable).
        generate: writes the set into the folder it is given.
        marker: file name of the marker in ``folder``.
        what: the set's name, for messages.

    Returns:
        ``folder`` as a string.

    Raises:
        ValueError: a rank other than 0 does not see the finished set (``folder`` is not on
            a filesystem every node shares).
    """
    root = Path(folder).expanduser()
    path = root / marker
    text = json.dumps(dict(settings), sort_keys=True, default=list)

    def complete() -> bool:
        return path.is_file() and path.read_text(encoding="utf-8") == text

    rank, world_size = process_group()
    if rank == 0 and not complete():
        logger.info("generating %s in %s", what, root)
        generate(root)
        atomic_write_text(path, text)
    if world_size > 1:
        dist.barrier()
        if not complete():
            raise ValueError(
                f"rank {rank} does not see {what} rank 0 wrote in {str(root)!r}: put it on a "
                "filesystem every node shares, or pass dataset_dir"
            )
    return str(root)
