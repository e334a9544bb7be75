"""Shared test fixtures: the repository root and the real studies beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BUNDLE = REPO_ROOT / "bundles" / "brats_mri_segmentation"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real BraTS-format studies); skips where a clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real studies not found at {SHARED_DATA} (only CI and dev machines have them)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    return BUNDLE
