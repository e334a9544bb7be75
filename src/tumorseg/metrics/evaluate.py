"""Evaluate a folder of predicted label maps against references: CSV and JSON reports.

Predictions are ``<case_id>.nii.gz`` (or ``.nii``) files in one folder. References are either

* a folder of ``<case_id>.nii.gz`` label maps,
* a dataset folder: MSD (``labelsTr/<case_id>.nii.gz``) or BraTS (``<case_id>/<case_id>_seg``
  / ``-seg``), or
* a manifest JSON read with ``tumorseg.data.manifest.load_datalist`` (items with ``case_id``
  and ``label``).

A trailing ``_seg``/``-seg`` in a file name is not part of the case id, so ``X_seg.nii.gz``
and ``X.nii.gz`` are the same case.

Every reference case is scored; one without a prediction is scored the BraTS way (Dice 0,
HD95 373.13 mm for every structure) and listed as missing. A prediction whose shape or affine
differs from its reference is an error naming the case, found from the headers before any
case is scored. Cases are scored in parallel worker processes.

Outputs (written atomically): ``per_case.csv``, ``summary.csv`` (mean, std, median, 25% and
75% quantiles and count per metric and structure), ``summary.json`` (the same plus the
definitions used, the missing cases and unmatched predictions) and, with ``per_label``,
``per_label.csv`` (sensitivity and specificity of edema, non-enhancing and enhancing tumour).

Finding and pairing the files is :mod:`tumorseg.metrics.pairing` (its names are re-exported
here); this module scores the pairs and writes the reports.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import functools
import io
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import get_convention
from tumorseg.io import atomic_write_text
from tumorseg.metrics.lesionwise import LESION_HD95_PENALTY_MM, get_lesionwise_params
from tumorseg.metrics.pairing import (
    CaseMismatchError,
    EvaluationError,
    _check_geometry,
    _find_references,
    case_id_from_path,
    find_predictions,
    find_references,
)
from tumorseg.metrics.regions import (
    STRUCTURES,
    case_metrics,
    hd95_key,
    metric_key,
    missing_case_metrics,
)
from tumorseg.metrics.surface import HD95_EMPTY_MM, seed_normals_table

__all__ = [
    "CaseMismatchError",
    "EvaluationError",
    "EvaluationResult",
    "PER_LABEL_CLASSES",
    "case_id_from_path",
    "evaluate_folder",
    "find_predictions",
    "find_references",
    "metric_names",
    "score_cases",
    "summarise",
]

#: Classes of the per-label sensitivity/specificity table, named as in the Decathlon 3D U-Net.
PER_LABEL_CLASSES: tuple[tuple[str, str], ...] = (
    ("ED", "edema"),
    ("NCR", "non-enhancing tumour"),
    ("ET", "enhancing tumour"),
)


@dataclass
class EvaluationResult:
    """What :func:`evaluate_folder` computed.

    Attributes:
        rows: one dict per reference case (``case_id``, ``status`` and every metric), sorted
            by case id.
        summary: metric key -> ``{"structure", "metric", "mean", "std", "median", "q25",
            "q75", "n"}``.
        missing: reference cases without a prediction (scored Dice 0, HD95 373.13).
        unmatched: predictions without a reference (ignored).
        per_label: rows of the per-label sensitivity/specificity table (empty unless asked).
        output_dir: where the files were written, if anywhere.
        info: definitions and options, as written to ``summary.json``.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    missing: list[str]
    unmatched: list[str]
    per_label: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> Any:
        """The per-case rows as a pandas DataFrame indexed by case id (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("case_id")


def metric_names(*, lesionwise: bool = True, hd_variant: str = "surface-distance") -> list[str]:
    """Per-structure metric names, in report order (``dice``, ``hd95``, ...)."""
    names = [
        "dice",
        hd95_key(hd_variant),
        "nsd",
        "sensitivity",
        "specificity",
        "precision",
        "volume_ref_ml",
        "volume_pred_ml",
    ]
    if lesionwise:
        names += ["lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fn", "lesion_fp"]
    return names


def _metric_columns(lesionwise: bool, hd_variant: str) -> list[tuple[str, str, str]]:
    """``(key, metric, structure)`` of every output column, in order."""
    cols = [
        (metric_key(m, s), m, s)
        for s in STRUCTURES
        for m in metric_names(lesionwise=lesionwise, hd_variant=hd_variant)
    ]
    cols.append(("generalised_dice", "generalised_dice", "NCR+ED+ET"))
    return cols


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)  # type: ignore[attr-defined]
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    zooms = img.header.get_zooms()[:3]  # type: ignore[attr-defined]
    return data, (float(zooms[0]), float(zooms[1]), float(zooms[2]))


@dataclass(frozen=True)
class _Options:
    convention: str
    lesionwise: bool
    hd_variant: str
    lesion_task: str


def _score_case(
    case_id: str, pred_path: Path | None, ref_path: Path, opts: _Options
) -> dict[str, Any]:
    """Metrics of one case (runs in a worker process)."""
    ref, spacing = _load(ref_path)
    kwargs: dict[str, Any] = dict(
        spacing=spacing,
        convention=opts.convention,
        lesionwise=opts.lesionwise,
        hd_variant=opts.hd_variant,
        lesion_task=opts.lesion_task,
    )
    try:
        if pred_path is None:
            values = missing_case_metrics(ref, **kwargs)
            status = "missing"
        else:
            pred, _ = _load(pred_path)
            values = case_metrics(pred, ref, **kwargs)
            status = "ok"
    except ValueError as err:
        raise EvaluationError(f"case {case_id!r}: {err}") from None
    return {"case_id": case_id, "status": status, **values}


def _normals_or_none() -> np.ndarray | None:
    try:
        return seed_normals_table()
    except ImportError:  # pragma: no cover - depends on the MONAI release
        return None


def score_cases(
    fn: Callable[..., dict[str, Any]],
    jobs: Sequence[tuple[Any, ...]],
    *,
    num_workers: int | None,
    progress: bool,
    desc: str,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> list[dict[str, Any]]:
    """``fn(*job)`` for every job, in this process or in spawned worker processes.

    Args:
        fn: a picklable (module-level) function returning one case's dict.
        jobs: argument tuples, one per case.
        num_workers: worker processes; ``None`` picks ``min(cpu count, jobs, 8)``, ``0`` or
            ``1`` runs in this process.
        progress: show a progress bar labelled ``desc``.
        desc: the bar's label.
        initializer: run once in each worker with ``initargs``.
        initargs: arguments of ``initializer``.

    Returns:
        The results in completion order (callers sort them). The first failure cancels the
        rest and is raised.
    """
    from tqdm.auto import tqdm

    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, len(jobs), 8)
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress)
    try:
        if num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(fn(*job))
                bar.update()
            return results
        # spawn: workers never inherit torch/OpenMP state from this process.
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=num_workers, mp_context=ctx, initializer=initializer, initargs=initargs
        ) as pool:
            futures = [pool.submit(fn, *job) for job in jobs]
            try:
                for fut in cf.as_completed(futures):
                    results.append(fut.result())
                    bar.update()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()
    return results


def _init_worker(normals: np.ndarray | None) -> None:
    if normals is not None:
        seed_normals_table(normals)


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summarise(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]
) -> dict[str, dict[str, Any]]:
    """Mean, sample std, median, 25/75% quantiles and count of every column over the rows.

    Args:
        rows: per-case dicts.
        columns: ``(key, metric, structure)`` triples to summarise.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, metric, structure in columns:
        values = np.asarray([float(r[key]) for r in rows if key in r], dtype=np.float64)
        values = values[np.isfinite(values)]
        n = int(values.size)
        out[key] = {
            "metric": metric,
            "structure": structure,
            "mean": float(values.mean()) if n else math.nan,
            "std": float(values.std(ddof=1)) if n > 1 else math.nan,
            "median": float(np.median(values)) if n else math.nan,
            "q25": float(np.percentile(values, 25)) if n else math.nan,
            "q75": float(np.percentile(values, 75)) if n else math.nan,
            "n": n,
        }
    return out


def _per_label_rows(rows: Sequence[Mapping[str, Any]], convention: str) -> list[dict[str, Any]]:
    conv = get_convention(convention)
    cols = [
        (metric_key(m, s), m, s)
        for s, _ in PER_LABEL_CLASSES
        for m in ("sensitivity", "specificity")
    ]
    stats = summarise(rows, cols)
    table = []
    for structure, name in PER_LABEL_CLASSES:
        sens = stats[metric_key("sensitivity", structure)]
        spec = stats[metric_key("specificity", structure)]
        table.append(
            {
                "class": name,
                "structure": structure,
                "label": conv.classes[structure],
                "sensitivity_mean": sens["mean"],
                "sensitivity_std": sens["std"],
                "specificity_mean": spec["mean"],
                "specificity_std": spec["std"],
                "n": sens["n"],
            }
        )
    return table


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["nan" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return buf.getvalue()


def _write_outputs(result: EvaluationResult, columns: Sequence[tuple[str, str, str]]) -> None:
    out = result.output_dir
    assert out is not None
    keys = [key for key, _, _ in columns]
    atomic_write_text(
        out / "per_case.csv",
        _csv_text(
            ["case_id", "status", *keys],
            ([r["case_id"], r["status"], *(r[k] for k in keys)] for r in result.rows),
        ),
    )
    stat_names = ["mean", "std", "median", "q25", "q75", "n"]
    atomic_write_text(
        out / "summary.csv",
        _csv_text(
            ["metric", "structure", "key", *stat_names],
            (
                [s["metric"], s["structure"], key, *(s[n] for n in stat_names)]
                for key, s in result.summary.items()
            ),
        ),
    )
    if result.per_label:
        header = list(result.per_label[0])
        atomic_write_text(
            out / "per_label.csv",
            _csv_text(header, ([row[h] for h in header] for row in result.per_label)),
        )
    payload = {
        **result.info,
        "n_cases": len(result.rows),
        "missing_predictions": result.missing,
        "unmatched_predictions": result.unmatched,
        "metrics": {
            key: {k: _nan_to_none(v) for k, v in s.items()} for key, s in result.summary.items()
        },
    }
    if result.per_label:
        payload["per_label"] = [
            {k: _nan_to_none(v) for k, v in row.items()} for row in result.per_label
        ]
    atomic_write_text(out / "summary.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _definitions(opts: _Options) -> dict[str, Any]:
    params = get_lesionwise_params(opts.lesion_task)
    hd_def = (
        "surface-distance: DeepMind surface-distance compute_robust_hausdorff(..., 95) "
        "(area-weighted surfels), as the BraTS 2023 official metric code"
        if opts.hd_variant == "surface-distance"
        else "monai: MONAI compute_hausdorff_distance(percentile=95), surface voxels, unweighted"
    )
    return {
        "convention": get_convention(opts.convention).name,
        "hd95_definition": hd_def,
        "hd95_key": hd95_key(opts.hd_variant),
        "empty_masks": {
            "both_empty": {"dice": 1.0, "hd95": 0.0},
            "one_empty": {"dice": 0.0, "hd95": HD95_EMPTY_MM},
            "missing_prediction": {"dice": 0.0, "hd95": HD95_EMPTY_MM},
        },
        "lesionwise": (
            {
                "task": params.task,
                "dilation_factor": params.dilation_factor,
                "volume_threshold_mm3": params.volume_threshold_mm3,
                "connectivity": 26,
                "missed_or_fp_lesion": {"dice": 0.0, "hd95": LESION_HD95_PENALTY_MM},
            }
            if opts.lesionwise
            else None
        ),
    }


def _select_cases(
    references: Mapping[str, Path], cases: Collection[str], ref: str | os.PathLike[str]
) -> dict[str, Path]:
    wanted = sorted({str(c) for c in cases})
    if not wanted:
        raise EvaluationError(f"no case to score: the case selection for {str(ref)!r} is empty")
    unknown = [c for c in wanted if c not in references]
    if unknown:
        raise EvaluationError(
            f"case(s) {unknown} have no reference label map in {str(ref)!r} "
            f"({len(references)} reference case(s)); are the manifest and the references "
            "of the same dataset?"
        )
    return {c: references[c] for c in wanted}


def evaluate_folder(
    pred_dir: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    *,
    convention: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    num_workers: int | None = None,
    per_label: bool = False,
    lesionwise: bool = True,
    hd_variant: str = "surface-distance",
    lesion_task: str = "BraTS-GLI",
    progress: bool = True,
    allow_missing: bool = False,
    cases: Collection[str] | None = None,
) -> EvaluationResult:
    """Score every reference case against its prediction and write the reports.

    Args:
        pred_dir: folder of ``<case_id>.nii.gz`` predicted label maps.
        ref: folder of ``<case_id>.nii.gz`` reference maps, dataset folder or manifest JSON.
        convention: label convention of both predictions and references; ``None`` takes
            the manifest's ``label_convention`` or the dataset layout's, else ``brats2021``.
        output_dir: where to write ``per_case.csv``, ``summary.csv``, ``summary.json`` (and
            ``per_label.csv``); nothing is written when ``None``.
        num_workers: worker processes; ``None`` picks ``min(cpu count, cases, 8)``, ``0`` or
            ``1`` scores in this process.
        per_label: also build the per-label sensitivity/specificity table.
        lesionwise: compute the BraTS 2023 lesion-wise scores.
        hd_variant: ``"surface-distance"`` (BraTS, default) or ``"monai"``.
        lesion_task: BraTS 2023 task whose lesion-wise parameters apply.
        progress: show a progress bar.
        allow_missing: score every case even when no prediction matches any reference
            (all Dice 0); by default that is an error, as it means a wrong or empty folder.
        cases: score only these reference cases (e.g. one fold's validation cases); the
            predictions of the other references are then neither scored nor unmatched.

    Returns:
        The per-case rows, summary statistics and lists of missing/unmatched cases.

    Raises:
        FileNotFoundError: when ``pred_dir`` or ``ref`` does not exist.
        CaseMismatchError: when a prediction's shape or affine differs from its reference.
        EvaluationError: for other unusable inputs (no references, no prediction matching
            any of them, illegal label values, a case of ``cases`` without a reference...).
    """
    # Validate the options before touching the file system.
    if convention is not None:
        get_convention(convention)
    hd95_key(hd_variant)
    task = get_lesionwise_params(lesion_task).task
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    predictions = find_predictions(pred_dir)
    references, found_convention = _find_references(ref)
    unmatched = sorted(set(predictions) - set(references))
    if cases is not None:
        references = _select_cases(references, cases, ref)
    opts = _Options(
        convention=get_convention(convention or found_convention or "brats2021").name,
        lesionwise=bool(lesionwise),
        hd_variant=hd_variant,
        lesion_task=task,
    )
    missing = sorted(set(references) - set(predictions))
    if references and len(missing) == len(references) and not allow_missing:
        raise EvaluationError(
            f"no prediction in {str(pred_dir)!r} matches any of the {len(references)} reference "
            f"cases ({len(predictions)} prediction file(s) there): a wrong or empty folder? "
            "(--allow-missing / allow_missing=True scores them all as missing, Dice 0)"
        )
    for cid in sorted(set(references) & set(predictions)):
        _check_geometry(cid, predictions[cid], references[cid])

    jobs = [(cid, predictions.get(cid), references[cid]) for cid in sorted(references)]
    rows = score_cases(
        functools.partial(_score_case, opts=opts),
        jobs,
        num_workers=num_workers,
        progress=progress,
        desc="evaluate",
        initializer=_init_worker,
        initargs=(_normals_or_none(),),
    )
    rows.sort(key=lambda r: r["case_id"])

    columns = _metric_columns(opts.lesionwise, opts.hd_variant)
    result = EvaluationResult(
        rows=rows,
        summary=summarise(rows, columns),
        missing=missing,
        unmatched=unmatched,
        per_label=_per_label_rows(rows, opts.convention) if per_label else [],
        output_dir=Path(output_dir) if output_dir is not None else None,
        info=_definitions(opts),
    )
    if result.output_dir is not None:
        _write_outputs(result, columns)
    return result
