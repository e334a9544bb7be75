"""MLflow tracking shared by every bundle: where runs go, what they record, how they compare.

Light (no MLflow import): :func:`tracking_uri`, :func:`artifact_location`, :func:`run_name`,
:func:`file_sha256`. Loaded on first use: :class:`MLflowTracker` (the ignite handler the
bundle configs declare), :func:`check_tracking_uri`, :func:`fold_parent` (cross-validation
parent run), :func:`compare_runs` and :func:`plot_curves` (``tumorseg compare``),
:func:`pretrained_tags` and :func:`with_tags` (fine-tuning: the run names its source).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tumorseg.tracking.settings import artifact_location, run_name, tracking_uri
from tumorseg.tracking.store import (
    TrackingUnavailableError,
    check_tracking_uri,
    file_sha256,
)

if TYPE_CHECKING:
    from tumorseg.tracking.compare import Comparison, RunSummary, compare_runs, plot_curves
    from tumorseg.tracking.handler import MLflowTracker
    from tumorseg.tracking.lifecycle import read_run_record
    from tumorseg.tracking.pretrained import pretrained_tags, with_tags
    from tumorseg.tracking.runs import fold_parent, summarise_children

__all__ = [
    "Comparison",
    "MLflowTracker",
    "RunSummary",
    "TrackingUnavailableError",
    "artifact_location",
    "check_tracking_uri",
    "compare_runs",
    "file_sha256",
    "fold_parent",
    "plot_curves",
    "pretrained_tags",
    "read_run_record",
    "run_name",
    "summarise_children",
    "tracking_uri",
    "with_tags",
]

_LAZY = {
    "Comparison": "compare",
    "RunSummary": "compare",
    "compare_runs": "compare",
    "plot_curves": "compare",
    "MLflowTracker": "handler",
    "read_run_record": "lifecycle",
    "pretrained_tags": "pretrained",
    "with_tags": "pretrained",
    "fold_parent": "runs",
    "summarise_children": "runs",
}


def __getattr__(name: str) -> Any:
    # The handler pulls in ignite and torch, compare pulls in MLflow: load them only when asked
    # for, so that `tumorseg --help` and the demo's settings stay light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"tumorseg.tracking.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
