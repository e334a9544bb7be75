"""Training helpers the bundle configs reference: data resolution, checkpoints, resume."""

from tumorseg.training.checkpoint import (
    Checkpointer,
    EarlyStopOnValidation,
    atomic_torch_save,
    is_rank0,
    load_checkpoint,
)
from tumorseg.training.data import BundleData, ensure_demo_dataset
from tumorseg.training.outputs import region_output

__all__ = [
    "BundleData",
    "Checkpointer",
    "EarlyStopOnValidation",
    "atomic_torch_save",
    "ensure_demo_dataset",
    "is_rank0",
    "load_checkpoint",
    "region_output",
]
