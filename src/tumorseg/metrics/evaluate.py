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
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import json
import math
import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import LAYOUTS, get_convention
from tumorseg.io import atomic_write_text
from tumorseg.metrics.lesionwise import LESION_HD95_PENALTY_MM, get_lesionwise_params
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
    "summarise",
]

#: Classes of the per-label sensitivity/specificity table, named as in the Decathlon 3D U-Net.
PER_LABEL_CLASSES: tuple[tuple[str, str], ...] = (
    ("ED", "edema"),
    ("NCR", "non-enhancing tumour"),
    ("ET", "enhancing tumour"),
)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LABEL_SUFFIXES = tuple(sorted({lay.label_suffix for lay in LAYOUTS.values() if lay.label_suffix}))
# Affines are stored as float32 in NIfTI headers; anything beyond this is a different grid.
_AFFINE_ATOL_MM = 1e-3


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given (the message says why and where)."""


class CaseMismatchError(EvaluationError):
    """A prediction's grid (shape or affine) differs from its reference's."""


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


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """Case id of a label-map file: the name without ``.nii[.gz]`` and a ``_seg``/``-seg``."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix in _LABEL_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))


def _index(files: Iterable[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files:
        cid = case_id_from_path(path)
        if cid in out:
            raise EvaluationError(
                f"two {what} files for case {cid!r}: {out[cid].name} and {path.name}"
            )
        out[cid] = path
    return out


def find_predictions(pred_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Prediction files by case id (``<case_id>.nii.gz`` in ``pred_dir``).

    Raises:
        FileNotFoundError: when ``pred_dir`` is not a directory.
    """
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"prediction directory not found: {str(folder)!r}")
    return _index(_nifti_files(folder), "prediction")


def _from_manifest(path: Path) -> tuple[dict[str, Path], str | None]:
    try:
        from tumorseg.data.manifest import load_datalist, load_manifest
    except ImportError as err:
        raise EvaluationError(
            f"reading the manifest {str(path)!r} needs tumorseg.data.manifest, which is not "
            f"available ({err}); pass a folder of <case_id>.nii.gz label maps instead"
        ) from None
    convention = load_manifest(path).get("label_convention")
    items = load_datalist(path, fold=None, split="all")
    out: dict[str, Path] = {}
    for item in items:
        label = item.get("label")
        if not label:
            continue  # unlabelled case: nothing to compare with
        cid = str(item["case_id"])
        if cid in out:
            raise EvaluationError(f"manifest {str(path)!r} lists case {cid!r} twice")
        out[cid] = Path(label)
    if not out:
        raise EvaluationError(f"manifest {str(path)!r} has no case with a label")
    return out, str(convention) if convention else None


def _from_dataset_folder(path: Path) -> tuple[dict[str, Path], str | None]:
    """Labelled cases of a BraTS/MSD dataset folder, with the layout's label convention."""
    try:
        from tumorseg.data.discovery import discover_cases

        cases = discover_cases(path)
    except (ImportError, ValueError):
        cases = []  # not a layout the discovery module knows: try the plain patterns below
    labelled = {c.case_id: c.label for c in cases if c.label is not None and c.label.is_file()}
    if labelled:
        layouts = {c.layout for c in cases}
        layout = layouts.pop() if len(layouts) == 1 else None
        conv = LAYOUTS[layout].label_convention if layout in LAYOUTS else None
        return dict(sorted(labelled.items())), conv
    # Fallback without the discovery module: <case>/<case><label suffix> or labelsTr/.
    found: list[Path] = []
    if (path / "labelsTr").is_dir():
        found = _nifti_files(path / "labelsTr")
    for case_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for suffix in _LABEL_SUFFIXES:
            for ext in _NIFTI_SUFFIXES:
                candidate = case_dir / f"{case_dir.name}{suffix}{ext}"
                if candidate.is_file():
                    found.append(candidate)
    return _index(found, "reference"), None


def _find_references(ref: str | os.PathLike[str]) -> tuple[dict[str, Path], str | None]:
    path = Path(ref)
    if not path.exists():
        raise FileNotFoundError(f"reference not found: {str(path)!r}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return _from_manifest(path)
        raise EvaluationError(
            f"reference {str(path)!r} is a file but not a manifest (.json); "
            "pass a folder of <case_id>.nii.gz label maps or a manifest"
        )
    top = _nifti_files(path)
    if top:
        return _index(top, "reference"), None
    found, conv = _from_dataset_folder(path)
    if found:
        return found, conv
    raise EvaluationError(
        f"no reference label maps in {str(path)!r}: expected <case_id>.nii.gz files, a "
        "BraTS/MSD dataset folder (<case>/<case>_seg.nii.gz, labelsTr/) or a manifest"
    )


def find_references(ref: str | os.PathLike[str]) -> dict[str, Path]:
    """Reference label maps by case id, from a folder, a dataset folder or a manifest.

    Raises:
        FileNotFoundError: when ``ref`` does not exist.
        EvaluationError: when no reference label map is found.
    """
    return _find_references(ref)[0]


def _spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(s) for s in shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims = dims[:-1]
    return dims


def _check_geometry(case_id: str, pred_path: Path, ref_path: Path) -> None:
    import nibabel as nib

    try:
        pred = nib.load(str(pred_path))
        ref = nib.load(str(ref_path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise EvaluationError(f"case {case_id!r}: cannot read the label maps: {err}") from None
    pred_shape = _spatial_shape(pred.shape)  # type: ignore[attr-defined]
    ref_shape = _spatial_shape(ref.shape)  # type: ignore[attr-defined]
    if pred_shape != ref_shape:
        raise CaseMismatchError(
            f"case {case_id!r}: prediction {pred_path.name} has shape {pred_shape} but the "
            f"reference {ref_path.name} has shape {ref_shape}; resample the prediction to the "
            "reference grid"
        )
    pred_aff = np.asarray(pred.affine, dtype=np.float64)  # type: ignore[attr-defined]
    ref_aff = np.asarray(ref.affine, dtype=np.float64)  # type: ignore[attr-defined]
    if not np.allclose(pred_aff, ref_aff, rtol=0.0, atol=_AFFINE_ATOL_MM):
        diff = float(np.max(np.abs(pred_aff - ref_aff)))
        raise CaseMismatchError(
            f"case {case_id!r}: prediction {pred_path.name} and reference {ref_path.name} "
            f"have different affines (max difference {diff:.4g}; prediction "
            f"{np.round(pred_aff[:3], 4).tolist()}, reference {np.round(ref_aff[:3], 4).tolist()})"
        )


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

    Returns:
        The per-case rows, summary statistics and lists of missing/unmatched cases.

    Raises:
        FileNotFoundError: when ``pred_dir`` or ``ref`` does not exist.
        CaseMismatchError: when a prediction's shape or affine differs from its reference.
        EvaluationError: for other unusable inputs (no references, no prediction matching
            any of them, illegal label values...).
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
    opts = _Options(
        convention=get_convention(convention or found_convention or "brats2021").name,
        lesionwise=bool(lesionwise),
        hd_variant=hd_variant,
        lesion_task=task,
    )
    missing = sorted(set(references) - set(predictions))
    unmatched = sorted(set(predictions) - set(references))
    if references and len(missing) == len(references) and not allow_missing:
        raise EvaluationError(
            f"no prediction in {str(pred_dir)!r} matches any of the {len(references)} reference "
            f"cases ({len(predictions)} prediction file(s) there): a wrong or empty folder? "
            "(--allow-missing / allow_missing=True scores them all as missing, Dice 0)"
        )
    for cid in sorted(set(references) & set(predictions)):
        _check_geometry(cid, predictions[cid], references[cid])

    jobs = [(cid, predictions.get(cid), references[cid]) for cid in sorted(references)]
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, len(jobs), 8)
    rows: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    try:
        if num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                rows.append(_score_case(*job, opts))
                bar.update()
        else:
            try:
                normals: np.ndarray | None = seed_normals_table()
            except ImportError:  # pragma: no cover - depends on the MONAI release
                normals = None
            # spawn: workers never inherit torch/OpenMP state from this process.
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(
                max_workers=num_workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(normals,),
            ) as pool:
                futures = [pool.submit(_score_case, *job, opts) for job in jobs]
                try:
                    for fut in cf.as_completed(futures):
                        rows.append(fut.result())
                        bar.update()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()
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
