"""tumorseg: brain-tumour segmentation in MRI on MONAI bundles."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

__version__ = "0.1.0"

__all__ = ["__version__"]

# Once pydicom is installed (the dicom extra), MONAI warns on every image loader it builds that
# NVIDIA's nvImageCodec GPU decoder is missing. tumorseg reads DICOM with ITK and never uses that
# decoder, and the warning, logged through handlers bound to whatever stream was current, broke
# the one-line error output of `tumorseg` commands.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

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
