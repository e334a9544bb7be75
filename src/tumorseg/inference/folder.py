"""A folder of NIfTI studies segmented to files: resumable, prefetching, with its tables.

:func:`segment_nifti_folder` is the loop behind :meth:`tumorseg.inference.Predictor.predict_folder`
for a ``nifti`` bundle: it finds the studies (:func:`tumorseg.data.discover_cases`), skips
those whose mask exists (a killed run resumes), loads and preprocesses the next study in a
background thread while the current one is in the network, keeps ``volumes.csv`` and
``failures.csv`` up to date after every study, and reports what it did in a
:class:`FolderReport`. A study that cannot be used is reported and the batch goes on; a write
error that will not go away by itself (full disk, read-only folder) stops it with
:class:`OutputError`.
"""

from __future__ import annotations

import csv
import errno
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tumorseg.conventions import REGIONS, get_convention, get_layout
from tumorseg.data.discovery import CaseProblem, discover_cases, parse_modality_suffixes
from tumorseg.inference.bundle import DEFAULT_CONVENTION
from tumorseg.inference.dicom_input import (
    DICOM_STUDY_KEY,
    find_dicom_cases,
    is_dicom_input,
    parse_dicom_map,
)
from tumorseg.inference.dicom_seg import (
    DICOM_SEG_SUFFIX,
    SegAlgorithm,
    import_dicom_packages,
    read_dicom_seg_labels,
    write_dicom_seg,
)
from tumorseg.inference.inputs import CaseError, describe_error
from tumorseg.inference.results import (
    PROBABILITIES_DIR,
    LoadedCase,
    PredictionResult,
    region_volumes_ml,
)
from tumorseg.inference.writer import (
    remove_stale_temporaries,
    write_csv_atomic,
    write_probabilities_atomic,
)

__all__ = [
    "FAILURES_CSV",
    "OUTPUT_FORMATS",
    "VOLUMES_CSV",
    "FolderReport",
    "InferenceFailed",
    "OutputError",
    "check_output_formats",
    "segment_nifti_folder",
]

logger = logging.getLogger(__name__)

FAILURES_CSV = "failures.csv"
VOLUMES_CSV = "volumes.csv"
NIFTI = "nifti"
DICOM_SEG = "dicom-seg"
#: What ``--output-format`` takes.
OUTPUT_FORMATS = (NIFTI, DICOM_SEG)
_VOLUME_COLUMNS = ("case_id", *(f"{r}_ml" for r in REGIONS))


class InferenceFailed(RuntimeError):
    """Raised by :meth:`FolderReport.raise_for_failures` when studies failed (after the batch)."""

    def __init__(self, report: FolderReport) -> None:
        self.report = report
        lines = [
            f"{len(report.failed)} of {report.total} studies failed (see "
            f"{report.output_dir / FAILURES_CSV}):",
            *(str(f) for f in report.failed),
        ]
        super().__init__("\n".join(lines))


#: Write errors that will not go away by themselves: the batch stops at the first one.
_DISK_ERRNOS = {
    errno.ENOSPC: "free space on that disk (or choose another --output)",
    errno.EDQUOT: "free space within your quota (or choose another --output)",
    errno.EROFS: "choose a writable --output folder",
    errno.EACCES: "make the folder writable or choose a writable --output folder",
    errno.EPERM: "make the folder writable or choose a writable --output folder",
}


def _write_failure(err: OSError, path: Path) -> str:
    """``cannot write <path>: <reason> (<errno>); <fix>`` for an output that failed."""
    code = errno.errorcode.get(err.errno or 0, "")
    fix = _DISK_ERRNOS.get(err.errno or 0, "check the output folder")
    return f"cannot write {path}: {err.strerror or err}{f' ({code})' if code else ''}; {fix}"


class OutputError(OSError):
    """The output could not be written (full disk, read-only folder): the batch stopped.

    What was written before is complete and kept; rerunning the same command after the fix
    skips it.

    Attributes:
        report: what was done before the batch stopped (None when it stopped before any
            study).
    """

    def __init__(self, message: str, *, code: int | None, report: FolderReport | None) -> None:
        super().__init__(code, message)
        self.message = message
        self.report = report

    def __str__(self) -> str:
        return self.message


class _SaveFailed(Exception):
    def __init__(self, err: OSError, path: Path) -> None:
        self.err = err
        self.path = path


@dataclass
class FolderReport:
    """What :meth:`Predictor.predict_folder` did.

    Attributes:
        output_dir: where the masks, ``volumes.csv`` and ``failures.csv`` are.
        written: case ids segmented and written by this run.
        skipped: case ids whose mask already existed (not recomputed).
        failed: studies that could not be segmented, with file and reason.
        timings: seconds per stage summed over the written cases.
        seconds: wall-clock seconds of the whole run.
    """

    output_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseProblem] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.written) + len(self.skipped) + len(self.failed)

    @property
    def ok(self) -> bool:
        """True when no study failed."""
        return not self.failed

    def raise_for_failures(self) -> FolderReport:
        """Raise :class:`InferenceFailed` if any study failed; return ``self`` otherwise."""
        if self.failed:
            raise InferenceFailed(self)
        return self

    def summary(self) -> str:
        return (
            f"{len(self.written)} written, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed; in {self.seconds:.1f} s -> {self.output_dir}"
        )


def _read_volume_rows(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError:
        return {}
    if not rows or tuple(rows[0]) != _VOLUME_COLUMNS:
        return {}
    return {r[0]: r for r in rows[1:] if len(r) == len(_VOLUME_COLUMNS)}


def _volume_row(case_id: str, volumes: Mapping[str, float]) -> list[str]:
    return [case_id, *(f"{volumes[r]:.4f}" for r in REGIONS)]


def segment_nifti_folder(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    load_case: Callable[..., LoadedCase],
    predict_loaded: Callable[..., PredictionResult],
    label_convention: str | None = None,
    modality_suffixes: str | Mapping[str, str] | None = None,
    layout: str | None = None,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = True,
    output_formats: Sequence[str] = ("nifti",),
    dicom_map: str | Mapping[str, str] | None = None,
    algorithm: SegAlgorithm | None = None,
) -> FolderReport:
    """Segment every study of a folder into ``<output_dir>/<case_id>.nii.gz``.

    See :meth:`tumorseg.inference.Predictor.predict_folder`, which calls this for a ``nifti``
    bundle, for what is written, skipped and reported.

    Args:
        input_dir: the dataset folder.
        output_dir: where masks and tables go (created).
        load_case: checks, loads and preprocesses one study
            (:meth:`~tumorseg.inference.Predictor.load_case`); runs in a background thread.
        predict_loaded: segments a loaded study
            (:meth:`~tumorseg.inference.Predictor.predict_loaded`).
        label_convention: output label numbers; None or ``""`` means each input layout's own.
        modality_suffixes: custom file naming (:func:`tumorseg.data.parse_modality_suffixes`).
        layout: force a layout instead of detecting it.
        overwrite: recompute studies whose mask exists.
        save_probabilities: also write ``probabilities/<case_id>.npz`` (float16).
        progress: show a progress bar with ETA on stderr.
        output_formats: ``nifti`` (``<case_id>.nii.gz``) and/or ``dicom-seg``
            (``<case_id>.seg.dcm``, DICOM input only).
        dicom_map: series descriptions of the modalities of DICOM cases; DICOM input is
            used when given or when the folder holds DICOM files and no NIfTI
            (:mod:`tumorseg.inference.dicom_input`).
        algorithm: the algorithm a DICOM-SEG names.

    Returns:
        What was written, skipped and failed.

    Raises:
        tumorseg.data.DatasetError: the folder holds no recognisable study at all.
        OutputError: the output cannot be written; the batch stopped.
        ValueError: no input folder, an unknown label convention or bad suffix mapping.
    """
    start = time.perf_counter()
    if not str(input_dir):
        raise ValueError(
            "no input folder given (tumorseg infer --input, inference.json --dataset_dir)"
        )
    fixed = get_convention(label_convention).name if label_convention else None
    formats = check_output_formats(output_formats)
    dicom = dicom_map is not None or is_dicom_input(input_dir)
    if DICOM_SEG in formats:
        import_dicom_packages()  # missing: one message before any study
    if dicom:
        parse_dicom_map(dicom_map)  # a bad map fails before any study
        cases = find_dicom_cases(input_dir)
        load_case = functools.partial(load_case, dicom_map=dicom_map)
    elif DICOM_SEG in formats:
        raise ValueError(
            f"--output-format {DICOM_SEG} needs DICOM input (it references the source "
            f"series); {str(input_dir)!r} holds NIfTI studies"
        )
    else:
        suffixes = parse_modality_suffixes(modality_suffixes)
        cases = discover_cases(Path(input_dir), layout=layout, modality_suffixes=suffixes)
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(_write_failure(err, out), code=err.errno, report=None) from None
    for folder in (out, out / PROBABILITIES_DIR):
        for stale in remove_stale_temporaries(folder):
            logger.info("removed %s, left by an interrupted run", stale)

    report = FolderReport(output_dir=out)
    old_rows = _read_volume_rows(out / VOLUMES_CSV)
    rows: dict[str, list[str]] = {}
    todo = []
    for case in cases:
        outputs = _outputs(out, case.case_id, formats)
        probs = out / PROBABILITIES_DIR / f"{case.case_id}.npz"
        done = all(p.is_file() for p in outputs) and (not save_probabilities or probs.is_file())
        if done and not overwrite:
            report.skipped.append(case.case_id)
            rows[case.case_id] = old_rows.get(case.case_id) or _volume_row_of(
                case.case_id, outputs[0], fixed or _layout_convention(case.layout)
            )
        else:
            todo.append(case)

    def write_tables() -> None:
        order = [c.case_id for c in cases if c.case_id in rows]
        failed = [(f.case_id, f.file, f.reason) for f in report.failed]
        for name, header, table in (
            (VOLUMES_CSV, _VOLUME_COLUMNS, [rows[c] for c in order]),
            (FAILURES_CSV, ("case_id", "file", "reason"), failed),
        ):
            try:
                write_csv_atomic(out / name, header, table)
            except OSError as err:
                raise _SaveFailed(err, out / name) from None

    try:
        write_tables()
    except _SaveFailed as failed:  # nothing done yet: the folder cannot be used
        raise OutputError(
            _write_failure(failed.err, failed.path), code=failed.err.errno, report=None
        ) from None
    stopped: _SaveFailed | None = None
    bar = tqdm(total=len(todo), desc="infer", unit="case", disable=not progress, file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tumorseg-load")
    try:

        def submit(i: int) -> Future | None:
            if i >= len(todo):
                return None
            case = todo[i]
            if case.issues:
                return None  # reported below without loading
            return pool.submit(load_case, case.images, case_id=case.case_id)

        upcoming = submit(0)
        for i, case in enumerate(todo):
            current, upcoming = upcoming, submit(i + 1)
            try:
                if case.issues:
                    problem = case.issues[0]
                    raise CaseError(case.case_id, problem.file, problem.reason)
                assert current is not None
                loaded = current.result()
                conv = fixed or _layout_convention(case.layout)
                result = predict_loaded(loaded, label_convention=conv)
                try:
                    _save(result, loaded, out, formats, save_probabilities, algorithm)
                except OSError as err:  # the output's fault, not the study's
                    raise _SaveFailed(err, out / f"{case.case_id}.nii.gz") from None
                rows[case.case_id] = _volume_row(case.case_id, result.volumes_ml())
                report.written.append(case.case_id)
                for stage, seconds in result.timings.items():
                    report.timings[stage] = report.timings.get(stage, 0.0) + seconds
            except _SaveFailed as failed:
                reason = _write_failure(failed.err, failed.path).split(": ", 1)[1]
                _fail(report, CaseProblem(case.case_id, str(failed.path), reason), bar)
                if failed.err.errno in _DISK_ERRNOS:
                    stopped = failed
            except CaseError as err:
                _fail(report, CaseProblem(err.case_id, err.file, err.reason), bar)
            except Exception as err:  # one bad study must not stop the batch
                logger.debug("case %s failed", case.case_id, exc_info=True)
                file = str(case.images[0]) if case.images else ""
                _fail(report, CaseProblem(case.case_id, file, describe_error(err)), bar)
            bar.update(1)
            try:
                write_tables()
            except _SaveFailed as failed:
                stopped = stopped or failed
                _report_unrecorded(report, failed, bar)
            if stopped is not None:
                break
    finally:
        bar.close()
        # A KeyboardInterrupt must not wait for the study being loaded ahead.
        pool.shutdown(wait=False, cancel_futures=True)
    report.seconds = time.perf_counter() - start
    if stopped is not None:
        left = len(todo) - len(report.written) - len(report.failed)
        raise OutputError(
            f"{_write_failure(stopped.err, stopped.path)}. The batch stopped: "
            f"{len(report.written)} studies written and kept, {len(report.failed)} failed, "
            f"{left} not done; rerun the same command once fixed (finished studies are "
            "skipped)",
            code=stopped.err.errno,
            report=report,
        )
    return report


def _layout_convention(layout: str) -> str:
    try:
        return get_layout(layout).label_convention
    except ValueError:
        return DEFAULT_CONVENTION  # custom naming: the BraTS submission numbers


def check_output_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    """The output formats asked for, checked: some of :data:`OUTPUT_FORMATS`, no repeats.

    Raises:
        ValueError: an unknown or empty list (the value is shown).
    """
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    bad = [f for f in items if f not in OUTPUT_FORMATS]
    if bad or not items:
        raise ValueError(
            f"output format must be some of {list(OUTPUT_FORMATS)} (comma-separated), got "
            f"{formats!r}"
        )
    return tuple(dict.fromkeys(items))


def _outputs(out: Path, case_id: str, formats: Sequence[str]) -> list[Path]:
    """The files a finished case has, in ``formats`` order."""
    names = {NIFTI: f"{case_id}.nii.gz", DICOM_SEG: f"{case_id}{DICOM_SEG_SUFFIX}"}
    return [out / names[f] for f in formats]


def _save(
    result: PredictionResult,
    loaded: LoadedCase,
    out: Path,
    formats: Sequence[str],
    save_probabilities: bool,
    algorithm: SegAlgorithm | None,
) -> None:
    """Write a case's outputs; the probabilities first, the SEG last (a SEG means done)."""
    if NIFTI in formats:
        result.save(out, save_probabilities=save_probabilities)
    elif save_probabilities:
        write_probabilities_atomic(
            out / PROBABILITIES_DIR / f"{result.case_id}.npz",
            result.probabilities,
            affine=result.affine,
            regions=result.regions,
        )
    if DICOM_SEG in formats:
        path = out / f"{result.case_id}{DICOM_SEG_SUFFIX}"
        try:
            write_dicom_seg(
                path,
                result.label,
                result.label_convention,
                loaded.data[DICOM_STUDY_KEY],
                algorithm=algorithm,
            )
        except OSError as err:
            raise _SaveFailed(err, path) from None


def _volume_row_of(case_id: str, mask: Path, convention: str) -> list[str]:
    """Volumes of an existing mask or SEG (a case done by an earlier, interrupted run)."""
    if mask.name.endswith(DICOM_SEG_SUFFIX):
        label, affine = read_dicom_seg_labels(mask, convention)
        return _volume_row(case_id, region_volumes_ml(label, affine, convention))
    import nibabel as nib

    img: Any = nib.load(str(mask))
    label = np.asanyarray(img.dataobj)
    return _volume_row(case_id, region_volumes_ml(label, img.affine, convention))


def _fail(report: FolderReport, failure: CaseProblem, bar: Any) -> None:
    report.failed.append(failure)
    bar.write(f"FAILED {failure}", file=sys.stderr)


def _report_unrecorded(report: FolderReport, failed: _SaveFailed, bar: Any) -> None:
    """The tables cannot be written: the failures go to stderr instead (nothing is lost)."""
    bar.write(
        f"could not write {failed.path} ({failed.err.strerror or failed.err}); "
        f"{len(report.failed)} failure(s) not recorded in {FAILURES_CSV}"
        + (", listed above" if report.failed else ""),
        file=sys.stderr,
    )
