"""Training helpers the bundle configs reference: data resolution, checkpoints, resume."""

from tumorseg.training.caching import (
    CACHE_MODES,
    CacheBoundary,
    auto_num_workers,
    cached_dataset,
    default_cache_dir,
    entry_hash,
    memory_budget_bytes,
    transform_fingerprint,
)
from tumorseg.training.checkpoint import (
    Checkpointer,
    EarlyStopOnValidation,
    atomic_torch_save,
    load_checkpoint,
    load_network_weights,
    network_state_dict,
)
from tumorseg.training.data import BundleData, LGGData, ensure_demo_dataset
from tumorseg.training.outputs import region_output
from tumorseg.training.performance import (
    amp_enabled,
    amp_kwargs,
    compile_enabled,
    configure_performance,
)
from tumorseg.training.progress import TrainingProgress, batch_patches
from tumorseg.training.settings import check_settings

__all__ = [
    "BundleData",
    "Checkpointer",
    "EarlyStopOnValidation",
    "LGGData",
    "atomic_torch_save",
    "check_settings",
    "ensure_demo_dataset",
    "load_checkpoint",
    "load_network_weights",
    "network_state_dict",
    "region_output",
    # Throughput (issue #10): cached preprocessing, progress and timing, CUDA speed settings.
    "CACHE_MODES",
    "CacheBoundary",
    "TrainingProgress",
    "amp_enabled",
    "amp_kwargs",
    "auto_num_workers",
    "batch_patches",
    "cached_dataset",
    "compile_enabled",
    "configure_performance",
    "default_cache_dir",
    "entry_hash",
    "memory_budget_bytes",
    "transform_fingerprint",
]

# Multi-GPU / multi-node training (issue #6): torchrun process groups, shards, per-rank seeds.
from tumorseg.training.distributed import (  # noqa: E402
    DistributedContext,
    RankAgreement,
    SyncBuffers,
    broadcast_buffers,
    cleanup_distributed,
    format_command,
    init_distributed,
    per_rank_memory_gb,
    per_rank_num_workers,
    rank_seed,
    shard_sampler,
    torchrun_command,
    unwrap_state_dict,
)

__all__ += [
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
