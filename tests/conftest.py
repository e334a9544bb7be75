"""Shared test fixtures: the repository root and the real studies beside it."""

from __future__ import annotations

import logging
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


@pytest.fixture(autouse=True)
def _no_log_handler_on_a_closed_stream() -> None:
    """Drop logging handlers left writing to an earlier test's captured (now closed) stream.

    A library that attaches a handler to ``sys.stderr`` while a test captures it leaves that
    handler behind; every later warning through it prints "--- Logging error ---" into the
    next test's stderr, which broke the one-line error checks of an unrelated CLI test.
    """
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)
