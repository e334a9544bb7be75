"""Settings shared by the tests that run the 3D bundle through MONAI's CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The 3D bundle's configs folder.
CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "brats_mri_segmentation" / "configs"

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
