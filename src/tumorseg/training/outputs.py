"""Engine-output selectors referenced by the bundle configs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.handlers import from_engine

from tumorseg.conventions import REGIONS

__all__ = ["region_output"]


def region_output(index: int) -> Callable[[Any], tuple[list[Any], list[Any]]]:
    """Output transform giving ``(preds, labels)`` of one region channel, for a per-region metric.

    Args:
        index: channel in :data:`tumorseg.conventions.REGIONS` order (0 WT, 1 TC, 2 ET).
    """
    if not 0 <= index < len(REGIONS):
        raise ValueError(f"region index must be in [0, {len(REGIONS)}), got {index}")
    both = from_engine(["pred", "label"])

    def select(output: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        preds, labels = both(output)
        return [p[index : index + 1] for p in preds], [lab[index : index + 1] for lab in labels]

    return select
