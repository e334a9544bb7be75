"""Score with the official BraTS 2024+ metrics: the ``brats-evaluation`` package (panoptica).

Since 2024 the BraTS challenges score with ``brats-evaluation``, built on ``panoptica``:
lesions are connected components, matched by maximum bipartite matching on Dice, and each
region group of a task configuration gets Dice (DSC), normalised surface distance (NSD) and
HD95, globally and per lesion. This module calls the package; it does not re-implement it.

For each case it

1. reads the prediction and the reference, checks their values against their label
   conventions and converts both into the numbering of the configuration
   (:data:`tumorseg.conventions.CHALLENGE_CONVENTIONS`: ``gli`` and ``mets`` 1 NETC, 2 SNFH,
   3 ET, 4 RC; ``ped`` 1 ET, 2 NETC, 3 CC, 4 ED; ``MenRT`` 1 GTV; ``MenPre`` and ``GoAT`` 1, 2,
   3), with :func:`tumorseg.conventions.convert_labels`;
2. calls the package's ``evaluate_single_exam`` with the configuration's
   ``Panoptica_Evaluator`` on the converted maps (NIfTI images with the reference's header);
3. turns the results into a table with the package's own ``parse_seg_results``, so the
   columns (``global_dsc_wt``, ``global_nsd_wt``, ``global_hd95_wt`` with infinity as 373,
   ``lesionwise_dsc_mean_et``, ``all_instance_tp_et``, ...) and the mean/std/median rows are
   the package's.

Label 4 is enhancing tumour in the BraTS 2018-2021 convention and the resection cavity in
``brats2024``. Both conventions are therefore never guessed: a reference is in the convention
given (``convention``), the manifest's or the dataset layout's, else in the configuration's own
numbering; a prediction in the one given (``pred_convention``, ``convention``), else the
references' found one where 4 can only be enhancing tumour, else the configuration's own
numbering. A map read in the configuration's own numbering without a declaration is refused if
it holds label 4 where 4 is not enhancing tumour (``gli``, ``mets``, ``ped``): a
2021-convention mask is converted (4 -> 3) or refused, never scored as RC. A reference
folder in the BraTS 2023+ file layout is read in ``brats2024`` numbering for ``gli``/``mets``
(the 2024 data keep the 2023 file names; labels 1-3 are the same in both).

Predictions are paired with references by case id, and otherwise as the package's own
command line pairs them: by the case number (``12345-000``) the reference's name holds and
the prediction's name ends with. A reference without a prediction is listed under the
package's ``missings`` and scored by its parser (0, HD95 373).

Outputs (written atomically): ``per_case.csv`` (one row per reference case, ``subject_id``
first, then the parser's columns), ``summary.csv`` (the parser's ``mean``, ``std`` and
``median`` rows), ``challenge_results.json`` (the package's raw results, in the format of its
``brats-evaluate`` command, for ``brats-parse-metrics``) and ``summary.json`` (the options,
conventions, package versions, missing and unmatched cases, and the summary rows).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import (
    CHALLENGE_CONVENTIONS,
    LabelConvention,
    convert_labels,
    get_convention,
)
from tumorseg.io import atomic_write_text
from tumorseg.metrics.evaluate import score_cases
from tumorseg.metrics.pairing import (
    EvaluationError,
    _check_geometry,
    _find_references,
    find_predictions,
)

__all__ = [
    "CHALLENGES",
    "CHALLENGE_METRIC_COLUMNS",
    "CITATION",
    "ChallengePackageMissing",
    "ChallengeResult",
    "challenge_evaluator",
    "challenge_groups",
    "check_challenge",
    "evaluate_challenge",
    "load_challenge_package",
    "pair_challenge_cases",
    "parse_challenge_results",
    "score_challenge_arrays",
    "to_challenge_image",
]

#: The configurations shipped with ``brats-evaluation``, by the names its CLI takes.
CHALLENGES: tuple[str, ...] = tuple(CHALLENGE_CONVENTIONS)

#: Column prefixes of the package's table that validation and ``tumorseg compare`` show by
#: default, each followed by ``_<group>`` (``global_dsc_wt``).
CHALLENGE_METRIC_COLUMNS: tuple[str, ...] = (
    "lesionwise_dsc_mean",
    "lesionwise_nsd_mean",
    "lesionwise_hd95_mean",
    "global_dsc",
    "global_nsd",
    "global_hd95",
)

#: What the package asks its users to cite.
CITATION = "https://github.com/BrainLesion/panoptica#citation"

# The package's command line: a reference's subject id, which the prediction's name ends with.
_SUBJECT_ID = re.compile(r"(\d{5}(?:-\d{3})?|\d{4}-\d{1,3})")
# Rows the package's parser appends after the subjects.
_STAT_ROWS = ("mean", "std", "median")


class ChallengePackageMissing(ImportError):
    """The optional ``brats-evaluation`` package (extra ``tumorseg[brats]``) is not installed."""


def load_challenge_package() -> tuple[Any, Any]:
    """Import the official scoring package: ``(brats_evaluation, panoptica)``.

    Raises:
        ChallengePackageMissing: when either is not installed, saying how to install it.
    """
    try:
        brats_evaluation = importlib.import_module("brats_evaluation")
        panoptica = importlib.import_module("panoptica")
    except ImportError as err:
        raise ChallengePackageMissing(
            f"scoring with a BraTS 2024+ challenge configuration needs the official package "
            f"brats-evaluation ({err}); install it with: pip install 'tumorseg[brats]'"
        ) from None
    return brats_evaluation, panoptica


def check_challenge(challenge: str) -> str:
    """The configuration name as the package spells it (``gli``, ``MenRT``, ...).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    for name in CHALLENGES:
        if str(challenge).lower() == name.lower():
            return name
    raise ValueError(f"unknown challenge configuration {challenge!r}; expected one of {CHALLENGES}")


@cache
def challenge_evaluator(challenge: str) -> Any:
    """The package's ``Panoptica_Evaluator`` of a configuration (loaded once per process)."""
    name = check_challenge(challenge)
    brats_evaluation, panoptica = load_challenge_package()
    with _quiet():
        return panoptica.Panoptica_Evaluator.load_from_config(
            str(brats_evaluation.config_path(name))
        )


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the package's prints and panoptica's warnings (its 0.5 NSD default, ...)."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def challenge_groups(challenge: str) -> list[str]:
    """Region groups of a configuration, in its order (``et``, ``tc``, ``wt``, ...)."""
    return list(challenge_evaluator(challenge).segmentation_class_groups_names)


def _forbidden_four(target: LabelConvention) -> bool:
    """Whether label 4 of a mask of unknown convention could be misread under ``target``.

    Label 4 is enhancing tumour in ``brats2021``; a target that gives 4 another meaning
    (RC in ``brats2024``, edema in ``brats2024ped``) must not take a 4 it was not told about.
    """
    meaning = {v: c for c, v in target.classes.items()}.get(4)
    return meaning is not None and meaning != "ET"


def _resolve_reference_convention(found: str | None, target: LabelConvention) -> str | None:
    """The references' convention: a dataset's or manifest's, read in the target numbering
    when the two agree on every class the found one has (``brats2023`` layout, 2024 data)."""
    if found is None:
        return None
    conv = get_convention(found)
    if all(target.classes.get(c) == v for c, v in conv.classes.items()):
        return target.name
    return conv.name


def to_challenge_image(
    path: str | os.PathLike[str],
    *,
    challenge: str,
    convention: str | None,
    name: str,
) -> Any:
    """Read a label map and return it in the configuration's numbering, as a NIfTI image.

    The image is for writing to a file: the package reads the voxel spacing only from files
    (an in-memory image reaches panoptica's lesion-wise metrics as 1 mm).

    Args:
        path: the label map (NIfTI).
        challenge: configuration name.
        convention: the map's label convention; ``None`` means the configuration's own
            numbering, in which case a map holding label 4 is refused where 4 is not
            enhancing tumour (``gli``, ``mets``, ``ped``).
        name: how to refer to the map in error messages.

    Returns:
        A ``nibabel.Nifti1Image`` (uint8) on the file's grid, with its header.

    Raises:
        EvaluationError: illegal values, an ambiguous label 4, or a class that cannot be
            converted (the message names the file and the fix).
    """
    import nibabel as nib

    target = get_convention(CHALLENGE_CONVENTIONS[check_challenge(challenge)])
    img: Any = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if convention is None:
        if _forbidden_four(target) and bool(np.any(data == 4)):
            raise EvaluationError(
                f"{name} holds label 4, which is enhancing tumour in the BraTS 2018-2021 "
                f"convention but {_class_of(target, 4)} in {target.name!r} (the numbering of "
                f"--challenge {challenge}); say which it is: --convention brats2021 converts "
                f"4 to enhancing tumour, --convention {target.name} keeps it as "
                f"{_class_of(target, 4)}"
            )
        source = target.name
    else:
        source = get_convention(convention).name
    try:
        converted = convert_labels(data, source, target, name=name)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    return nib.Nifti1Image(converted, img.affine, header)


def _class_of(conv: LabelConvention, value: int) -> str:
    return {v: c for c, v in conv.classes.items()}[value]


def pair_challenge_cases(
    predictions: Mapping[str, Path], references: Mapping[str, Path]
) -> dict[str, Path]:
    """Prediction of each reference case: same case id, else the package CLI's rule.

    The package's ``brats-evaluate`` takes the subject id (``12345-000``, ``12345``,
    ``1234-0``) from the reference's file name and the prediction whose name ends with it.

    Raises:
        EvaluationError: when two predictions fit one reference.
    """
    pairs = {cid: predictions[cid] for cid in references if cid in predictions}
    free = {cid: p for cid, p in predictions.items() if cid not in references}
    for cid in sorted(set(references) - set(pairs)):
        match = _SUBJECT_ID.search(references[cid].name)
        if match is None:
            continue
        suffix = f"{match.group(1)}.nii.gz"
        fits = sorted(k for k, p in free.items() if p.name.endswith(suffix))
        if len(fits) > 1:
            names = ", ".join(free[k].name for k in fits)
            raise EvaluationError(
                f"reference {references[cid].name}: several predictions end with {suffix} "
                f"({names}); keep one or name it {cid}.nii.gz"
            )
        if fits:
            pairs[cid] = free.pop(fits[0])
    return pairs


def _score_case(
    case_id: str,
    pred_path: Path,
    ref_path: Path,
    challenge: str,
    pred_convention: str | None,
    ref_convention: str | None,
) -> dict[str, Any]:
    """The package's result dict of one case (runs in a worker process)."""
    pred = to_challenge_image(
        pred_path,
        challenge=challenge,
        convention=pred_convention,
        name=f"prediction {pred_path.name} (case {case_id})",
    )
    ref = to_challenge_image(
        ref_path,
        challenge=challenge,
        convention=ref_convention,
        name=f"reference {ref_path.name} (case {case_id})",
    )
    return _evaluate(pred, ref, case_id, challenge)


def _evaluate(pred: Any, ref: Any, case_id: str, challenge: str) -> dict[str, Any]:
    """Write the two images to a scratch folder and score the files, as the package's CLI."""
    import nibabel as nib

    brats_evaluation, _ = load_challenge_package()
    evaluator = challenge_evaluator(challenge)
    with tempfile.TemporaryDirectory(prefix="tumorseg-challenge-") as tmp:
        # Compressed, as the package's users hand it files: an uncompressed .nii would be
        # memory-mapped by nibabel; gzip costs about 0.25 s per map (docs/benchmarks.md).
        pred_file, ref_file = Path(tmp) / "prediction.nii.gz", Path(tmp) / "reference.nii.gz"
        nib.save(pred, str(pred_file))
        nib.save(ref, str(ref_file))
        with _quiet():
            result: dict[str, Any] = brats_evaluation.evaluate_single_exam(
                str(pred_file), str(ref_file), case_id, evaluator
            )
    if "error" in result:
        raise EvaluationError(
            f"case {case_id!r}: the brats-evaluation package could not score it: {result['error']}"
        )
    return result


def score_challenge_arrays(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    challenge: str,
    convention: str | LabelConvention,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    case_id: str = "case",
) -> dict[str, Any]:
    """The package's result dict for two in-memory label maps of one convention.

    Args:
        pred: predicted label map, 3D.
        ref: reference label map, same shape.
        challenge: configuration name.
        convention: convention of both maps (converted to the configuration's numbering).
        spacing: voxel size in mm (the NIfTI zooms the package reads).
        case_id: the ``subject_name`` of the result.

    Raises:
        ValueError: illegal values or a shape mismatch.
    """
    import nibabel as nib

    target = CHALLENGE_CONVENTIONS[check_challenge(challenge)]
    if np.shape(pred) != np.shape(ref):
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    images = [
        nib.Nifti1Image(convert_labels(a, convention, target, name=n), affine)
        for a, n in ((pred, "prediction"), (ref, "reference"))
    ]
    return _evaluate(images[0], images[1], case_id, challenge)


def parse_challenge_results(
    results: Sequence[Mapping[str, Any]], missing: Sequence[str] = ()
) -> Any:
    """The package's ``parse_seg_results`` table of results, as a pandas DataFrame.

    Args:
        results: result dicts of ``evaluate_single_exam`` (one per case).
        missing: subject ids of reference cases without a prediction (the parser scores
            them 0, HD95 373).

    Returns:
        The parser's table: one row per subject then the ``mean``, ``std`` and ``median``
        rows, ``subject_id`` first, its columns in its order.

    Raises:
        EvaluationError: when there is nothing to parse.
    """
    import pandas as pd

    brats_evaluation, _ = load_challenge_package()
    if not results:
        raise EvaluationError("no case was scored, so there is no table to write")
    with tempfile.TemporaryDirectory(prefix="tumorseg-challenge-") as tmp:
        json_path = Path(tmp) / "results.json"
        csv_path = Path(tmp) / "parsed.csv"
        json_path.write_text(_results_json(results, missing))
        with _quiet():
            brats_evaluation.parse_seg_results(str(json_path), str(csv_path))
        if not csv_path.is_file():
            raise EvaluationError("the brats-evaluation parser wrote no table")
        return pd.read_csv(csv_path, dtype={"subject_id": str})


def _results_json(results: Sequence[Mapping[str, Any]], missing: Sequence[str]) -> str:
    """The package CLI's summary JSON (``{"metrics": [...], "missings": [...]}``)."""
    payload = {"metrics": list(results), "missings": list(missing)}
    return json.dumps(payload, indent=4, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class ChallengeResult:
    """What :func:`evaluate_challenge` computed.

    Attributes:
        challenge: the configuration.
        table: the package parser's table (pandas DataFrame): subjects, then mean/std/median.
        results: the package's raw result dict of each scored case.
        missing: reference cases without a prediction (scored by the parser's rule).
        unmatched: predictions without a reference (ignored).
        output_dir: where the files were written, if anywhere.
        info: options, conventions and versions, as written to ``summary.json``.
    """

    challenge: str
    table: Any
    results: list[dict[str, Any]]
    missing: list[str]
    unmatched: list[str]
    output_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def per_case(self) -> Any:
        """The subject rows of :attr:`table`."""
        return self.table[~self.table["subject_id"].isin(_STAT_ROWS)].reset_index(drop=True)

    @property
    def summary(self) -> Any:
        """The ``mean``, ``std`` and ``median`` rows of :attr:`table`."""
        return self.table[self.table["subject_id"].isin(_STAT_ROWS)].reset_index(drop=True)

    @property
    def groups(self) -> list[str]:
        """Region groups of the configuration, in the table's order (``et``, ``tc``, ...)."""
        prefix = "all_instance_tp_"
        return [c[len(prefix) :] for c in self.table.columns if c.startswith(prefix)]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write_outputs(result: ChallengeResult) -> None:
    out = result.output_dir
    assert out is not None
    atomic_write_text(out / "per_case.csv", result.per_case.to_csv(index=False))
    atomic_write_text(out / "summary.csv", result.summary.to_csv(index=False))
    atomic_write_text(out / "challenge_results.json", _results_json(result.results, result.missing))
    stats = {
        str(row["subject_id"]): {
            k: _none_if_nan(float(v)) for k, v in row.items() if k != "subject_id"
        }
        for row in result.summary.to_dict("records")
    }
    payload = {
        **result.info,
        "n_cases": len(result.per_case),
        "missing_predictions": result.missing,
        "unmatched_predictions": result.unmatched,
        "summary": stats,
    }
    atomic_write_text(out / "summary.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")


def evaluate_challenge(
    pred_dir: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    *,
    challenge: str,
    convention: str | None = None,
    pred_convention: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    allow_missing: bool = False,
) -> ChallengeResult:
    """Score a folder of predictions with a BraTS 2024+ configuration of ``brats-evaluation``.

    Args:
        pred_dir: folder of predicted label maps (``<case_id>.nii.gz``, or names ending with
            the reference's case number as the package's command line accepts).
        ref: folder of reference label maps, BraTS/MSD dataset folder or manifest JSON.
        challenge: ``gli``, ``mets``, ``ped``, ``MenRT``, ``MenPre`` or ``GoAT``.
        convention: label convention of the references (and of the predictions unless
            ``pred_convention``); ``None`` takes the manifest's or the dataset layout's, else
            the configuration's own numbering (a map holding an undeclared label 4 is then
            refused for ``gli``, ``mets`` and ``ped``).
        pred_convention: label convention of the predictions when it differs. Without it
            (and without ``convention``) the predictions take the references' found
            convention only where label 4 can mean nothing but enhancing tumour
            (``brats2021``, ``brats2023``, ``msd``); otherwise they are read in the
            configuration's numbering and a predicted 4 is refused, so a 2021-trained
            model's enhancing tumour is never scored as resection cavity.
        output_dir: where to write the reports; nothing is written when ``None``.
        num_workers: worker processes; ``None`` picks ``min(cpu count, cases, 8)``, ``0`` or
            ``1`` scores in this process.
        progress: show a progress bar.
        allow_missing: accept that no prediction matches any reference. Without it that is
            an error, as it means a wrong or empty folder.

    Returns:
        The package parser's table, the raw results and the missing/unmatched cases.

    Raises:
        ChallengePackageMissing: ``brats-evaluation`` is not installed.
        FileNotFoundError: ``pred_dir`` or ``ref`` does not exist.
        CaseMismatchError: a prediction's shape or affine differs from its reference.
        EvaluationError: other unusable inputs (illegal or ambiguous labels, no prediction).
    """
    name = check_challenge(challenge)
    target = get_convention(CHALLENGE_CONVENTIONS[name])
    for conv in (convention, pred_convention):
        if conv is not None:
            get_convention(conv)
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    brats_evaluation, panoptica = load_challenge_package()
    predictions = find_predictions(pred_dir)
    references, found = _find_references(ref)
    ref_conv = (
        get_convention(convention).name
        if convention is not None
        else _resolve_reference_convention(found, target)
    )
    declared = pred_convention if pred_convention is not None else convention
    pred_conv: str | None
    if declared is not None:
        pred_conv = get_convention(declared).name
    elif ref_conv is not None and not _forbidden_four(get_convention(ref_conv)):
        pred_conv = ref_conv  # the references' convention, found, where 4 can only be ET
    else:
        pred_conv = None  # only a declaration makes a predicted 4 a resection cavity
    pairs = pair_challenge_cases(predictions, references)
    missing = sorted(set(references) - set(pairs))
    used = {p.name for p in pairs.values()}
    unmatched = sorted(cid for cid, p in predictions.items() if p.name not in used)
    if not pairs:
        detail = " (allow_missing makes no difference: there is nothing to score)"
        raise EvaluationError(
            f"no prediction in {str(pred_dir)!r} matches any of the {len(references)} "
            f"reference cases ({len(predictions)} prediction file(s) there): a wrong or empty "
            f"folder?{detail if allow_missing else ''}"
        )
    for cid, pred_path in sorted(pairs.items()):
        _check_geometry(cid, pred_path, references[cid])

    jobs = [(cid, pairs[cid], references[cid], name, pred_conv, ref_conv) for cid in sorted(pairs)]
    results = score_cases(
        _score_case, jobs, num_workers=num_workers, progress=progress, desc="challenge"
    )
    results.sort(key=lambda r: str(r["subject_name"]))
    table = parse_challenge_results(results, missing)
    result = ChallengeResult(
        challenge=name,
        table=table,
        results=results,
        missing=missing,
        unmatched=unmatched,
        output_dir=Path(output_dir) if output_dir is not None else None,
        info={
            "challenge": name,
            "config": f"brats_evaluation/configs/config_{name}.yaml",
            "brats_evaluation_version": _version("brats-evaluation")
            or getattr(brats_evaluation, "__version__", None),
            "panoptica_version": _version("panoptica") or getattr(panoptica, "__version__", None),
            "parser": "brats_evaluation.parse_seg_results",
            "label_numbering": target.name,
            "reference_convention": ref_conv or f"{target.name} (the configuration's own)",
            "prediction_convention": pred_conv or f"{target.name} (the configuration's own)",
            "citation": CITATION,
        },
    )
    if result.output_dir is not None:
        _write_outputs(result)
    return result
