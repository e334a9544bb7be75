"""tumorseg: brain-tumour segmentation in MRI on MONAI bundles."""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

__all__ = ["__version__"]

# Subpackages load on first attribute access, so bundle configs can write
# `$tumorseg.training.region_output(0)` after `$import tumorseg` while `tumorseg --help`
# does not pay for importing torch. Any module of the package qualifies: no list to forget.


def __getattr__(name: str) -> ModuleType:
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise  # the module exists but one of its own imports is missing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
