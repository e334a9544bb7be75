"""Multi-GPU and multi-node training: what ``configs/multi_gpu_train.json`` needs from Python.

A bundle trains under ``torchrun`` (one process per GPU, or per CPU slot on a machine
without one) with ``configs/multi_gpu_train.json`` merged over ``configs/train.json``. The
rank-dependent decisions live here rather than in the JSON, so no config slices handler
lists by rank (a known model-zoo trap: the slice silently drops the wrong handler when a
handler is added):

* :func:`init_distributed` joins the process group once (NCCL on CUDA, Gloo on CPU), with a
  collective timeout, pins the per-rank device and returns a :class:`DistributedContext`;
  ranks other than 0 only log warnings and errors;
* :func:`rank_seed` gives every rank its own augmentation stream, reproducible per run;
* :func:`shard_sampler` builds MONAI's ``DistributedSampler``: padded (every rank runs the same
  number of training iterations, which DDP's gradient all-reduce needs) or unpadded for
  validation (no case counted twice; MONAI's cumulative metrics all-gather once per
  validation, so unequal shards cannot hang);
* :func:`per_rank_memory_gb` and :func:`per_rank_num_workers` split one machine's memory
  budget and CPUs between the ranks it hosts;
* :func:`unwrap_state_dict` strips DDP's ``module.`` prefixes so weights load anywhere;
* :func:`torchrun_command` builds the ``torchrun`` command line of ``tumorseg launch`` (it
  lives in :mod:`tumorseg.training.torchrun` and is re-exported here).

Writing (checkpoints, MLflow) is rank 0's job and is decided where it happens
(:func:`tumorseg.ranks.is_rank0` in the ``Checkpointer`` and the ``MLflowTracker``).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from tumorseg.training.torchrun import (
    DDP_CONFIGS,
    DEFAULT_BUNDLE,
    format_command,
    torchrun_command,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BUNDLE",
    "DDP_CONFIGS",
    "DistributedContext",
    "RankAgreement",
    "SyncBuffers",
    "broadcast_buffers",
    "cleanup_distributed",
    "format_command",
    "init_distributed",
    "per_rank_memory_gb",
    "per_rank_num_workers",
    "rank_seed",
    "shard_sampler",
    "torchrun_command",
    "unwrap_state_dict",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Accepted values of ``backend`` in :func:`init_distributed`.
BACKENDS: tuple[str, ...] = ("auto", "nccl", "gloo")

# torchrun's environment contract (torch.distributed.run): every worker gets these.
_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 writes checkpoints, logs and MLflow).
        world_size: processes in the job.
        local_rank: rank on this node (selects the GPU).
        local_world_size: processes on this node (they share its CPUs and memory).
        backend: ``nccl`` or ``gloo``.
        device: this rank's device: ``cuda:<local_rank>`` or ``cpu``.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on global rank 0."""
        return self.rank == 0

    @property
    def device_ids(self) -> list[int] | None:
        """``device_ids`` of ``DistributedDataParallel``: the GPU index, None on CPU."""
        return [self.device.index or 0] if self.device.type == "cuda" else None

    def on_main(self, value: T, otherwise: T) -> T:
        """``value`` on rank 0 and ``otherwise`` elsewhere (e.g. a progress bar only once)."""
        return value if self.is_main else otherwise

    def seed(self, seed: int) -> int:
        """This rank's seed of a run seeded with ``seed`` (see :func:`rank_seed`)."""
        return rank_seed(seed, self.rank)


def _env_int(name: str, environ: Mapping[str, str]) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None


def init_distributed(
    *,
    backend: str = "auto",
    timeout_s: float = 1800.0,
    quiet_other_ranks: bool = True,
    environ: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Join the torchrun job's process group (once) and pin this rank's device.

    Idempotent: a second call returns the context of the group already joined, so a config
    may reference it from several keys.

    Args:
        backend: ``auto`` (NCCL when CUDA is available, else Gloo), ``nccl`` or ``gloo``.
        timeout_s: seconds a collective may wait for the other ranks before it fails with an
            error (instead of hanging when a rank died or is stuck).
        quiet_other_ranks: ranks other than 0 log only warnings and errors, so a job's log
            reads like a single-process one and failures on any rank are still shown.
        environ: where to check for torchrun's variables (default ``os.environ``); the
            group itself always joins through ``env://``, which reads ``os.environ``, so
            torchrun's agent store is reused.

    Returns:
        This process's :class:`DistributedContext`.

    Raises:
        RuntimeError: when not started by torchrun (its variables are missing), when NCCL is
            asked for without CUDA, or when this node has fewer GPUs than processes.
        ValueError: for an unknown ``backend`` or a ``timeout_s`` <= 0.
    """
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    env = os.environ if environ is None else environ
    missing = [name for name in _REQUIRED_ENV if name not in env]
    if missing:
        raise RuntimeError(
            f"multi-GPU training must be started by torchrun, but {', '.join(missing)} "
            "is not set in the environment. Start it with `tumorseg launch --nproc-per-node N "
            "-- <bundle args>` (or `torchrun ... -m monai.bundle run training ...`)."
        )
    rank, world_size = _env_int("RANK", env), _env_int("WORLD_SIZE", env)
    local_rank = _env_int("LOCAL_RANK", env)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", env) if "LOCAL_WORLD_SIZE" in env else 1
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and not cuda:
        raise RuntimeError("backend 'nccl' needs CUDA, but no GPU is visible; use 'gloo'")
    if cuda and backend == "nccl":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {count} GPU(s) are visible on this node: "
                "--nproc-per-node must not exceed the GPUs per node"
            )
        device = torch.device("cuda", local_rank)
        # Before the group exists: NCCL binds each rank's communicator to the current device.
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=float(timeout_s)),
            rank=rank,
            world_size=world_size,
        )
        _sync_ignite()
        if quiet_other_ranks and rank != 0:
            # Global switch, not a level or filter on some loggers: MONAI's StatsHandler and
            # ignite create loggers with handlers of their own, some after this point.
            logging.disable(logging.INFO)
        logger.info(
            "distributed: %d process(es), backend %s, collective timeout %.0f s; rank 0 on %s",
            world_size,
            backend,
            timeout_s,
            device,
        )
    else:
        backend = str(dist.get_backend())
    return DistributedContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        backend=backend,
        device=device,
    )


def _sync_ignite() -> None:
    """Make ignite (and MONAI's metric all-gather, which goes through it) see the new group.

    ignite decides once, on its first distributed query, whether it runs distributed; if that
    query came before the group existed, train-loss averages and MONAI's cumulative metrics
    would silently stay per-rank. ``sync`` makes it look again.
    """
    try:
        import ignite.distributed as idist
    except ImportError:  # pragma: no cover - ignite is a dependency
        return
    idist.sync()


def cleanup_distributed(*wrappers: Any) -> None:
    """Leave the process group, if one was joined (the bundle's ``finalize``).

    Args:
        wrappers: the job's ``DistributedDataParallel`` modules. Their reducers hold the
            process group, so it would outlive ``destroy_process_group`` and be torn down
            during interpreter shutdown, where Gloo aborts now and then ("terminate called
            without an active exception", SIGABRT: a completed run exits non-zero; measured
            on two CPU ranks in 6 of 121 runs, and in none of 65 with the reducer released
            first). The wrappers are unusable afterwards.
    """
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for wrapper in wrappers:
        for name in ("reducer", "logger"):  # what holds the group in a DDP module
            if hasattr(wrapper, name):
                delattr(wrapper, name)
    gc.collect()
    # Leave together, so no rank tears down while another still communicates.
    try:
        dist.barrier()
    except RuntimeError as err:  # a peer already gone: nothing left to wait for
        logger.warning("leaving the process group without the others: %s", err)
    dist.destroy_process_group()
    _sync_ignite()


def rank_seed(seed: int, rank: int) -> int:
    """Seed of ``rank`` in a run seeded with ``seed``: distinct per rank, the same every run.

    Rank 0 keeps ``seed`` itself, so the network initialisation (made on every rank and
    broadcast from rank 0 by DDP) equals a single-process run's; other ranks draw from
    NumPy's ``SeedSequence([seed, rank])``, whose streams are statistically independent and
    do not collide with the seeds of neighbouring runs (``seed + rank`` would: run 1 rank 0 =
    run 0 rank 1).

    Raises:
        ValueError: for a negative ``seed`` or ``rank``.
    """
    if seed < 0 or rank < 0:
        raise ValueError(f"seed and rank must be >= 0, got seed={seed}, rank={rank}")
    if rank == 0:
        return int(seed)
    # 31 bits: every seed consumer (numpy's legacy RandomState included) accepts it.
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] & 0x7FFFFFFF)


def shard_sampler(
    dataset: Any,
    *,
    shuffle: bool,
    even_divisible: bool,
    seed: int = 0,
    name: str = "dataset",
) -> Any:
    """MONAI ``DistributedSampler`` over ``dataset`` for the current process group.

    Args:
        dataset: a sized dataset.
        shuffle: reshuffle every epoch (training); the trainer calls ``set_epoch``.
        even_divisible: pad with repeated items so every rank gets the same number (training:
            DDP's gradient all-reduce needs equal iteration counts). False gives unequal shards
            without repeats (validation: every case counted once).
        seed: shuffle seed; it must be the same on every rank, so pass the run's seed, not
            the rank's.
        name: what the dataset is, for the error message.

    Raises:
        ValueError: when an unpadded split has fewer items than ranks (a rank would have
            nothing to run, and its evaluator no epoch).
    """
    import torch.distributed as dist
    from monai.data import DistributedSampler

    world_size = dist.get_world_size() if dist.is_initialized() else 1
    size = len(dataset)
    if not even_divisible and size < world_size:
        raise ValueError(
            f"the {name} has {size} case(s) but the job runs {world_size} processes: every "
            "process needs at least one case; use fewer processes or a larger split"
        )
    return DistributedSampler(
        dataset=dataset, shuffle=shuffle, even_divisible=even_divisible, seed=int(seed)
    )


def _local_world_size() -> int:
    value = os.environ.get("LOCAL_WORLD_SIZE", "") or "1"
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"LOCAL_WORLD_SIZE must be an integer, got {value!r}") from None


def per_rank_memory_gb(
    total_gb: float | None = None,
    *,
    local_world_size: int | None = None,
    fraction: float = 0.5,
) -> float:
    """This rank's share of the in-memory cache budget of the node.

    Each rank builds its own cache; without a split every rank would plan to take half of the
    node's free memory.

    Args:
        total_gb: the node's budget in GiB; None means ``fraction`` of the memory available.
        local_world_size: ranks on this node; default ``$LOCAL_WORLD_SIZE`` (1 when unset).
        fraction: used when ``total_gb`` is None.
    """
    from tumorseg.training.caching import memory_budget_bytes

    ranks = _local_world_size() if local_world_size is None else local_world_size
    if ranks < 1:
        raise ValueError(f"local_world_size must be >= 1, got {ranks}")
    total = (
        total_gb if total_gb is not None else memory_budget_bytes(None, fraction=fraction) / 2**30
    )
    return float(total) / ranks


def per_rank_num_workers(*, cap: int = 8, local_world_size: int | None = None) -> int:
    """Data-loader workers per rank: the node's CPUs split between its ranks, one kept each.

    Args:
        cap: most workers per rank.
        local_world_size: ranks on this node; default ``$LOCAL_WORLD_SIZE`` (1 when unset).
    """
    ranks = _local_world_size() if local_world_size is None else local_world_size
    if ranks < 1 or cap < 0:
        raise ValueError(f"local_world_size must be >= 1 and cap >= 0, got {ranks} and {cap}")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(cap, cpus // ranks - 1))


def unwrap_state_dict(state: Mapping[str, T]) -> dict[str, T]:
    """A network state dict without DDP/DataParallel's ``module.`` prefix on its keys.

    Weights saved from a wrapped network then load into a bare one, and vice versa through
    ``wrapped.module.load_state_dict``. Keys without the prefix are kept as they are.
    """
    prefix = "module."
    if state and all(str(k).startswith(prefix) for k in state):
        return {str(k)[len(prefix) :]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


class RankAgreement:
    """Fail fast when the ranks disagree about where training starts.

    Attached last to the trainer (after the ``Checkpointer``'s resume), it all-gathers every
    rank's epoch and iteration at ``STARTED``. A mismatch means some ranks resumed from a
    checkpoint others could not see (``ckpt_dir`` not on a filesystem all nodes share): their
    shards and collectives would drift apart silently, so the job stops with the figures.
    """

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        mine = (int(engine.state.epoch), int(engine.state.iteration))
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        if any(tuple(g) != mine for g in gathered):
            table = ", ".join(f"rank {r}: epoch {g[0]}" for r, g in enumerate(gathered))
            raise RuntimeError(
                f"ranks start from different checkpoints ({table}): ckpt_dir must be on a "
                "filesystem every node can read, or removed on all of them for a fresh start"
            )


def broadcast_buffers(module: Any, *, src: int = 0) -> int:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, in place.

    Returns:
        How many buffers were sent; 0 outside a process group or with one process.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 0
    buffers = list(getattr(module, "module", module).buffers())  # a DDP wrapper too
    for buf in buffers:
        dist.broadcast(buf.data, src=src)
    return len(buffers)


class SyncBuffers:
    """Give every rank rank 0's buffers when a validation starts (attach to the evaluator).

    DDP sends rank 0's buffers to the others at the start of each training forward pass, and
    each rank then updates its BatchNorm running statistics on its own shard. Validation runs
    each rank's bare network on its share of the cases, so without this the ranks score with
    statistics that differ from each other and from the checkpoint rank 0 saves. Networks
    without buffers (instance norm) make it a no-op.

    Args:
        network: the network the evaluator runs (a DDP wrapper is unwrapped).
    """

    def __init__(self, network: Any) -> None:
        self.network = network

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any = None) -> None:
        broadcast_buffers(self.network)
