"""tumorseg: brain-tumour segmentation in MRI on MONAI bundles."""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

__all__ = ["__version__"]

# Subpackages load on first attribute access, so bundle configs can write
# `$tumorseg.training.region_output(0)` after `$import tumorseg` while `tumorseg --help`
# does not pay for importing torch.
_SUBPACKAGES = frozenset(
    {"cli", "conventions", "data", "inference", "metrics", "tracking", "training", "transforms"}
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
