"""The viewer's case list: volumes from ``volumes.csv``, Dice from a metrics table, paginated.

The list never loads a case's images. Its figures come, in this order, from:

- ``volumes.csv`` of the output folder (written by ``tumorseg infer``: ``case_id`` and
  ``WT_ml``, ``TC_ml``, ``ET_ml``; read tolerantly: unknown columns are ignored, a missing or
  unparsable number is left empty, ``dice_WT``... columns are used when present);
- a per-case metrics table (``per_case.csv`` of ``tumorseg evaluate``: ``dice_WT``, ``dice_TC``,
  ``dice_ET``), given or found in the output folder;
- otherwise the label maps alone (mask, and reference when the dataset has one): for a few
  cases at once (uploads, a folder without ``volumes.csv``) right away, for many in a
  background thread while the rows say ``pending``.

Both tables are re-read only when their modification time or size changes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import CHANNEL_ORDER, REGIONS, get_convention
from tumorseg.inference.results import region_volumes_ml
from tumorseg.metrics.regions import dice

__all__ = ["METRICS_CSV", "SORT_KEYS", "VOLUMES_CSV", "CaseIndex", "label_figures"]

log = logging.getLogger(__name__)

#: The table of region volumes ``tumorseg infer`` writes beside the masks.
VOLUMES_CSV = "volumes.csv"
#: The per-case table of ``tumorseg evaluate``, looked for in the output folder.
METRICS_CSV = "per_case.csv"
#: What the list can be sorted by: the id, a region volume, a region Dice.
SORT_KEYS: tuple[str, ...] = ("case_id", *REGIONS, *(f"dice_{r}" for r in REGIONS))
#: At most this many cases' label maps are read within one request; more go to the background.
SYNC_LIMIT = 16
MAX_PAGE = 500


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class _Table:
    """A CSV keyed by ``case_id``, re-read when its file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._rows: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def rows(self) -> dict[str, dict[str, str]]:
        if self.path is None:
            return {}
        try:
            stat = self.path.stat()
        except OSError:
            return {}
        stamp = (stat.st_mtime, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    with self.path.open(newline="", encoding="utf-8", errors="replace") as fh:
                        reader = csv.DictReader(fh)
                        self._rows = {row["case_id"]: row for row in reader if row.get("case_id")}
                except (OSError, csv.Error) as err:
                    log.warning("viewer: cannot read %s (%s); ignoring it", self.path, err)
                    self._rows = {}
                self._stamp = stamp
            return self._rows


def _regions(row: Mapping[str, str] | None, pattern: str) -> dict[str, float] | None:
    if not row:
        return None
    values = {r: _number(row.get(pattern.format(r))) for r in REGIONS}
    if all(v is None for v in values.values()):
        return None
    return {r: v for r, v in values.items() if v is not None}


def label_figures(
    pred: np.ndarray, ref: np.ndarray | None, affine: np.ndarray, convention: str
) -> dict[str, Any]:
    """Region volumes (mL) of a label map and, with a reference on its grid, region Dice.

    Returns:
        ``volumes_ml`` (region -> mL) and, when ``ref`` has ``pred``'s shape, ``dice``
        (region -> Dice, 1 when both are empty).
    """
    out: dict[str, Any] = {"volumes_ml": region_volumes_ml(pred, affine, convention)}
    if ref is not None and ref.shape == pred.shape:
        conv = get_convention(convention)
        out["dice"] = {
            r: dice(np.isin(pred, conv.region_values(r)), np.isin(ref, conv.region_values(r)))
            for r in REGIONS
        }
    return out


class CaseIndex:
    """Rows of the case list of a :class:`~tumorseg.viewer.store.ResultsStore`.

    Args:
        store: the output folder's cases.
        metrics_csv: per-case metrics table with ``dice_WT``, ``dice_TC``, ``dice_ET``;
            default ``<output_dir>/per_case.csv`` when it exists.
        sync_limit: cases whose label maps may be read during one request.
    """

    def __init__(
        self,
        store: Any,
        *,
        metrics_csv: str | os.PathLike[str] | None = None,
        sync_limit: int = SYNC_LIMIT,
    ) -> None:
        self.store = store
        self.sync_limit = sync_limit
        self._volumes = _Table(store.output_dir / VOLUMES_CSV)
        if metrics_csv is not None and not Path(metrics_csv).is_file():
            raise FileNotFoundError(f"metrics table {str(metrics_csv)!r} does not exist")
        self._metrics = _Table(
            Path(metrics_csv) if metrics_csv is not None else store.output_dir / METRICS_CSV
        )
        self._stats: dict[tuple[str, float, float], dict[str, Any]] = {}
        self._queued: dict[tuple[str, float, float], Any] = {}
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    # -- label-map figures ---------------------------------------------------------------

    @staticmethod
    def _key(entry: Any) -> tuple[str, float, float]:
        ref = entry.reference.stat().st_mtime if entry.reference is not None else 0.0
        return (entry.case_id, entry.mask.stat().st_mtime, ref)

    @staticmethod
    def label_stats(entry: Any) -> dict[str, Any]:
        """:func:`label_figures` of a case's mask and reference files (images are not read)."""
        import nibabel as nib

        mask: Any = nib.load(str(entry.mask))
        pred = np.asarray(mask.dataobj, dtype=np.uint8)
        ref = None
        if entry.reference is not None:
            ref_img: Any = nib.load(str(entry.reference))
            ref = np.asarray(ref_img.dataobj, dtype=np.uint8)
        return label_figures(pred, ref, mask.affine, entry.convention)

    def _stats_of(self, entry: Any) -> dict[str, Any]:
        key = self._key(entry)
        with self._lock:
            cached = self._stats.get(key)
        if cached is not None:
            return cached
        try:
            stats = self.label_stats(entry)
        except Exception as err:  # one broken file must not hide the other cases
            stats = {"error": f"{type(err).__name__}: {err}"}
        with self._lock:
            self._stats[key] = stats
        return stats

    def _background(self, entries: list[Any]) -> None:
        with self._lock:
            for entry in entries:
                self._queued.setdefault(self._key(entry), entry)
            if self._worker is not None and self._worker.is_alive():
                return
            self._worker = threading.Thread(target=self._drain, name="viewer-caselist", daemon=True)
            self._worker.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queued:
                    self._worker = None
                    return
                key = next(iter(self._queued))
                entry = self._queued.pop(key)
            try:
                self._stats_of(entry)
            except OSError:  # the file went away meanwhile
                continue

    # -- rows ----------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """One row per case of the output folder, sorted by case id.

        A row: ``case_id``, ``volumes_ml`` and ``dice`` (region -> value, or None),
        ``has_reference``, ``modalities``, ``pending`` (figures being computed) and
        ``error`` (the label maps could not be read).
        """
        volumes, metrics = self._volumes.rows(), self._metrics.rows()
        rows, missing = [], []
        for case_id, entry in self.store.cases().items():
            csv_row = volumes.get(case_id)
            dice = _regions(csv_row, "dice_{}") or _regions(metrics.get(case_id), "dice_{}")
            row: dict[str, Any] = {
                "case_id": case_id,
                "volumes_ml": _regions(csv_row, "{}_ml"),
                "dice": dice if entry.reference is not None or dice else None,
                "has_reference": entry.reference is not None,
                "modalities": list(CHANNEL_ORDER) if entry.images else [],
            }
            if row["volumes_ml"] is None or (entry.reference is not None and dice is None):
                missing.append((row, entry))
            rows.append(row)
        sync = missing if len(missing) <= self.sync_limit else []
        later = [] if sync else missing
        for row, entry in missing:
            with self._lock:
                stats = self._stats.get(self._key(entry))
            if stats is None and (row, entry) in sync:
                stats = self._stats_of(entry)
            if stats is None:
                row["pending"] = True
                continue
            if "error" in stats:
                row["error"] = stats["error"]
                continue
            if row["volumes_ml"] is None:
                row["volumes_ml"] = {k: round(v, 3) for k, v in stats["volumes_ml"].items()}
            if row["dice"] is None and "dice" in stats:
                row["dice"] = {k: round(v, 4) for k, v in stats["dice"].items()}
        if later:
            self._background([entry for row, entry in later if row.get("pending")])
        return rows

    def page(
        self,
        *,
        offset: int = 0,
        limit: int = 100,
        sort: str = "case_id",
        order: str = "asc",
        query: str = "",
    ) -> dict[str, Any]:
        """One page of the list, sorted and filtered.

        Args:
            offset: rows skipped.
            limit: rows returned (at most 500).
            sort: a key of :data:`SORT_KEYS`; cases without the value come last.
            order: ``asc`` or ``desc``.
            query: keep the cases whose id contains this text (case-insensitive).

        Returns:
            ``cases`` (the rows), ``total`` (rows matching), ``offset``, ``limit``, ``sort``,
            ``order``, ``pending`` (rows whose figures are being computed).

        Raises:
            ValueError: for a bad sort key, order, offset or limit.
        """
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}; expected one of {list(SORT_KEYS)}")
        if order not in ("asc", "desc"):
            raise ValueError(f"unknown order {order!r}; expected asc or desc")
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            raise ValueError(
                f"offset must be >= 0 and limit in 1..{MAX_PAGE}, got {offset} and {limit}"
            )
        rows = self.rows()
        if query:
            needle = query.lower()
            rows = [r for r in rows if needle in r["case_id"].lower()]
        if sort != "case_id":
            dice_sort = sort.startswith("dice_")
            field_name, region = ("dice", sort[5:]) if dice_sort else ("volumes_ml", sort)
            known = [r for r in rows if (r[field_name] or {}).get(region) is not None]
            unknown = [r for r in rows if (r[field_name] or {}).get(region) is None]
            known.sort(key=lambda r: r[field_name][region], reverse=order == "desc")
            rows = known + unknown
        elif order == "desc":
            rows = rows[::-1]
        return {
            "cases": rows[offset : offset + limit],
            "total": len(rows),
            "offset": offset,
            "limit": limit,
            "sort": sort,
            "order": order,
            "pending": sum(1 for r in rows if r.get("pending")),
        }
