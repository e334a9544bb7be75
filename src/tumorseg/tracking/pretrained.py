"""MLflow tags that name the pretrained weights a fine-tuning started from.

Used by ``configs/finetune.json`` (and the 2D slice bundle's ``train.json``): the tags point
to the source checkpoint (path and SHA-256) and, when it was trained by tumorseg, to the run
that trained it, so the MLflow UI links a fine-tuned run to its origin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tumorseg.tracking.lifecycle import read_run_record
from tumorseg.tracking.store import file_sha256

__all__ = ["pretrained_tags", "with_tags"]


def pretrained_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """MLflow tags naming the pretrained source: path, SHA-256 and, when known, its run.

    The run is known when the checkpoint sits in the ``ckpt_dir`` of a tumorseg training that
    logged to MLflow (``mlflow_run.json`` beside it).
    """
    if not str(path or ""):
        return {"tumorseg.pretrained": "none"}
    file = Path(path).resolve()
    tags = {"tumorseg.pretrained": str(file)}
    digest = file_sha256(file)
    if digest:
        tags["tumorseg.pretrained.sha256"] = digest
    record = read_run_record(file.parent)
    if record:
        tags["tumorseg.pretrained.run_id"] = record["run_id"]
        if record.get("tracking_uri"):
            tags["tumorseg.pretrained.tracking_uri"] = record["tracking_uri"]
    return tags


def with_tags(handlers: Sequence[Any], tags: Mapping[str, str]) -> list[Any]:
    """``handlers`` with ``tags`` added to every MLflow tracker among them (the list, as is).

    The bundle's :class:`~tumorseg.tracking.MLflowTracker` sits in ``train.json``'s handler
    list; finding it by its ``tags`` attribute, not by list index, keeps ``finetune.json``
    independent of that list's order.
    """
    for handler in handlers:
        if isinstance(getattr(handler, "tags", None), dict):
            handler.tags.update(tags)
    return list(handlers)
