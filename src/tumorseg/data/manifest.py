"""Dataset manifests: which cases a dataset holds, where their files are, and their folds.

A manifest is a JSON file that the bundle (training) and inference read::

    {"name": "...", "description": "...", "layout": "brats2021", "label_convention": "brats2021",
     "channel_order": ["flair", "t1", "t1ce", "t2"], "num_folds": 5, "seed": 0,
     "tumorseg_version": "0.1.0",
     "training": [{"case_id": "X", "image": ["X/X_flair.nii.gz", ...], "label": "X/X_seg.nii.gz",
                   "fold": 0}],
     "testing": [{"case_id": "Y", "image": [...]}]}

Paths are relative to the dataset folder with POSIX separators, so a manifest is portable:
whoever has a copy of the dataset only points ``dataset_dir`` at it. ``image`` lists the four
modalities in :data:`tumorseg.conventions.CHANNEL_ORDER`, or is one string for a 4D MSD file.
Cases with a label map go to ``training`` (with a cross-validation fold), the others to
``testing``. A manifest built with ``skip_bad=True`` also records the cases it left out under
``skipped``.

Folds are assigned per patient (:func:`assign_folds`), so the timepoints of one patient never
straddle training and validation. The patient of a case is, by default, its BraTS 2023+ id
without the timepoint (``BraTS-GLI-00001-001`` -> ``BraTS-GLI-00001``), else the case id;
custom datasets pass a ``patient_id`` key (a function, a case -> patient mapping or a regular
expression, see :func:`patient_key`). Items whose patient differs from their case id record it
as ``patient_id``, and a manifest whose patient spans two folds is refused when read.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from tumorseg.conventions import CHANNEL_ORDER, LAYOUTS, get_convention, get_layout
from tumorseg.data.discovery import (
    Case,
    CaseProblem,
    DatasetError,
    discover_cases,
    validate_case,
)
from tumorseg.io import atomic_write_text, read_json

__all__ = [
    "MANIFEST_KEYS",
    "SPLITS",
    "ManifestError",
    "assign_folds",
    "brats_patient_id",
    "build_manifest",
    "datalist_from_directory",
    "load_datalist",
    "load_manifest",
    "manifest_from_case_ids",
    "patient_key",
    "select_split",
    "validate_manifest_against",
    "write_manifest",
]

#: Keys every manifest has, in the order they are written.
MANIFEST_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "layout",
    "label_convention",
    "channel_order",
    "num_folds",
    "seed",
    "tumorseg_version",
    "training",
    "testing",
)

#: Values of ``split`` accepted by :func:`load_datalist`.
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")

# BraTS 2023+ ids are <challenge>-<patient>-<timepoint>, e.g. BraTS-GLI-00001-000 / -001.
_BRATS_TIMEPOINT = re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d{3}$")

#: How a case id maps to its patient: a function, a ``{case_id: patient}`` mapping, a regular
#: expression (its group ``patient``, else its first group, else the whole match) or None for
#: :func:`brats_patient_id`.
PatientKey: TypeAlias = Callable[[str], str] | Mapping[str, str] | str | re.Pattern[str] | None


class ManifestError(ValueError):
    """A manifest file or dict that is not valid; the message names the file."""


class _LoadedManifest(dict[str, Any]):
    """A manifest dict that remembers its file, so that ``load_datalist`` can default
    ``dataset_dir`` to the file's folder even when handed the dict rather than the path."""

    path: Path


def _version() -> str:
    from tumorseg import __version__

    return __version__


# --------------------------------------------------------------------------- folds


def brats_patient_id(case_id: str) -> str:
    """The patient of a case: BraTS 2023+ ids lose their timepoint, other ids are patients.

    ``"BraTS-GLI-00001-001"`` -> ``"BraTS-GLI-00001"``; ``"BraTS2021_00000"`` is unchanged.
    """
    match = _BRATS_TIMEPOINT.match(case_id)
    return match.group(1) if match else case_id


def patient_key(key: PatientKey = None) -> Callable[[str], str]:
    r"""The case-id -> patient function of a :data:`PatientKey`.

    Args:
        key: None (:func:`brats_patient_id`); a function; a mapping ``{case_id: patient}``
            (every case must be in it); or a regular expression searched in the case id,
            whose named group ``patient`` (else group 1, else the whole match) is the patient,
            e.g. ``r"^(sub-\d+)_ses-"`` for ``sub-01_ses-2``.

    Returns:
        A function that raises ``ValueError`` naming the case when it has no patient.

    Raises:
        ValueError: ``key`` is an invalid regular expression.
        TypeError: ``key`` is of another type.
    """
    if key is None:
        return brats_patient_id
    if isinstance(key, str | re.Pattern):
        try:
            pattern = re.compile(key)
        except re.error as err:
            raise ValueError(
                f"patient_id {key!r} is not a valid regular expression: {err}"
            ) from err
        group: str | int = (
            "patient" if "patient" in pattern.groupindex else (1 if pattern.groups else 0)
        )

        def from_regex(case_id: str) -> str:
            match = pattern.search(case_id)
            if match is None or not match.group(group):
                raise ValueError(
                    f"case {case_id!r}: patient_id pattern {pattern.pattern!r} does not match it"
                )
            return str(match.group(group))

        return from_regex
    if isinstance(key, Mapping):
        table = dict(key)

        def from_mapping(case_id: str) -> str:
            if case_id not in table:
                raise ValueError(f"case {case_id!r} has no entry in the patient_id mapping")
            return str(table[case_id])

        return from_mapping
    if callable(key):
        return key
    raise TypeError(
        f"patient_id must be a function, a mapping, a regular expression or None, got "
        f"{type(key).__name__}"
    )


def _order_key(seed: int, patient: str) -> str:
    # A hash rather than random.shuffle: the order of a patient does not depend on which other
    # patients exist or on the Python version, only on (seed, patient id).
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def assign_folds(
    case_ids: Iterable[str],
    *,
    num_folds: int = 5,
    seed: int = 0,
    patient_id: PatientKey = None,
) -> dict[str, int]:
    """Seeded, patient-level, balanced cross-validation folds.

    Patients are put in a seeded pseudo-random order (SHA-256 of ``"<seed>:<patient>"``), the
    largest first, and each goes to the fold that holds the fewest cases so far (the lowest
    index on ties). All cases of one patient share a fold; fold sizes differ by at most one
    when every patient has one case. The result depends only on the set of ids and the seed,
    not on their order.

    Args:
        case_ids: the case ids (unique).
        num_folds: number of folds (at least 1).
        seed: changes the assignment.
        patient_id: maps a case id to its patient (see :func:`patient_key`); default
            :func:`brats_patient_id`.

    Returns:
        Case id to fold index in ``range(num_folds)``, keys sorted.

    Raises:
        ValueError: ``num_folds`` < 1, a repeated case id, or cases the patient key does not
            cover (all of them listed).
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 1:
        raise ValueError(f"num_folds must be an integer >= 1, got {num_folds!r}")
    ids = list(case_ids)
    repeated = sorted({c for c in ids if ids.count(c) > 1}) if len(set(ids)) < len(ids) else []
    if repeated:
        raise ValueError(f"case ids must be unique; repeated: {repeated[:10]}")
    patients: dict[str, list[str]] = {}
    for case_id, patient in _patients(ids, patient_id).items():
        patients.setdefault(patient, []).append(case_id)
    order = sorted(patients, key=lambda p: (-len(patients[p]), _order_key(seed, p)))
    sizes = [0] * num_folds
    folds: dict[str, int] = {}
    for patient in order:
        fold = min(range(num_folds), key=lambda f: (sizes[f], f))
        for case_id in patients[patient]:
            folds[case_id] = fold
        sizes[fold] += len(patients[patient])
    return dict(sorted(folds.items()))


def _patients(case_ids: Iterable[str], key: PatientKey) -> dict[str, str]:
    """``{case_id: patient}`` in case-id order; every uncovered case named in one error."""
    to_patient = patient_key(key)
    out: dict[str, str] = {}
    failures: list[str] = []
    for case_id in sorted(case_ids):
        try:
            out[case_id] = str(to_patient(case_id))
        except (KeyError, ValueError) as err:
            failures.append(str(err.args[0]) if err.args else case_id)
    if failures:
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        raise ValueError(
            f"{len(failures)} case(s) without a patient: " + "; ".join(failures[:10]) + more
        )
    return out


# --------------------------------------------------------------------------- building


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _item(case: Case, root: Path) -> dict[str, Any]:
    images = [_relative(p, root) for p in case.images]
    item: dict[str, Any] = {
        "case_id": case.case_id,
        "image": images[0] if case.layout == "msd" else images,
    }
    if case.label is not None:
        item["label"] = _relative(case.label, root)
    return item


def _resolve_convention(layout: str, label_convention: str | None) -> str:
    if label_convention is not None:
        return get_convention(label_convention).name
    if layout in LAYOUTS:
        return LAYOUTS[layout].label_convention
    raise ValueError(
        f"label_convention is required for layout {layout!r} (custom file naming): pass one "
        f"of {sorted(LAYOUTS)} (CLI --label-convention)"
    )


def _assemble(
    *,
    name: str,
    description: str,
    layout: str,
    label_convention: str,
    num_folds: int,
    seed: int,
    training: list[dict[str, Any]],
    testing: list[dict[str, Any]],
    patient_id: PatientKey = None,
) -> dict[str, Any]:
    ids = [t["case_id"] for t in training]
    patients = _patients(ids, patient_id)
    folds = assign_folds(ids, num_folds=num_folds, seed=seed, patient_id=patients)
    for item in training:
        item["fold"] = folds[item["case_id"]]
        if patients[item["case_id"]] != item["case_id"]:
            item["patient_id"] = patients[item["case_id"]]
    return {
        "name": name,
        "description": description,
        "layout": layout,
        "label_convention": label_convention,
        "channel_order": list(CHANNEL_ORDER),
        "num_folds": num_folds,
        "seed": seed,
        "tumorseg_version": _version(),
        "training": sorted(training, key=lambda t: t["case_id"]),
        "testing": sorted(testing, key=lambda t: t["case_id"]),
    }


def build_manifest(
    dataset_dir: str | Path,
    *,
    layout: str | None = None,
    label_convention: str | None = None,
    num_folds: int = 5,
    seed: int = 0,
    skip_bad: bool = False,
    validate: bool = True,
    modality_suffixes: Mapping[str, str] | None = None,
    label_suffix: str | None = None,
    name: str | None = None,
    description: str | None = None,
    progress: bool = False,
    patient_id: PatientKey = None,
) -> dict[str, Any]:
    """Discover, check and fold the cases of a dataset folder.

    Args:
        dataset_dir: the dataset folder; manifest paths are relative to it.
        layout: ``brats2021``, ``brats2023`` or ``msd``; detected when None.
        label_convention: label values of the label maps; default the layout's.
            Required with ``modality_suffixes`` when no ``layout`` is given.
        num_folds: cross-validation folds of the training cases.
        seed: seed of the fold assignment.
        skip_bad: leave bad cases out (listed under ``skipped``, with a warning) instead of
            raising.
        validate: open every file (:func:`~tumorseg.data.discovery.validate_case`). False
            only checks that the files exist: fast, for building in memory before training.
        modality_suffixes: custom file naming, see
            :func:`~tumorseg.data.discovery.discover_cases`.
        label_suffix: suffix of the label maps, when not the layout's.
        name: manifest name; default the dataset folder name.
        description: free text; default a summary of what was found.
        progress: show a progress bar while validating.
        patient_id: the patient of each case id, so that every case of a patient shares a
            fold (a function, a mapping or a regular expression, see :func:`patient_key`);
            default :func:`brats_patient_id`.

    Returns:
        The manifest dict (see the module docstring).

    Raises:
        DatasetError: bad cases and ``skip_bad`` False (every bad case listed), or a dataset
            folder that is missing, empty or of no known layout.
        ValueError: bad arguments.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 1:
        raise ValueError(f"num_folds must be an integer >= 1, got {num_folds!r}")
    root = Path(dataset_dir).expanduser()
    cases = discover_cases(
        root, layout=layout, modality_suffixes=modality_suffixes, label_suffix=label_suffix
    )
    layout_name = cases[0].layout
    convention = _resolve_convention(layout_name, label_convention)

    checked: Iterable[Case] = cases
    if progress and validate:
        from tqdm.auto import tqdm

        checked = tqdm(cases, desc=f"checking {root.name}", unit="case")
    problems: list[CaseProblem] = []
    for case in checked:
        problems.extend(validate_case(case, label_convention=convention, check_readable=validate))

    skipped: list[dict[str, str]] = []
    if problems:
        if not skip_bad:
            raise DatasetError(
                problems,
                message=f"{len(problems)} problem(s) in {len({p.case_id for p in problems})} "
                f"case(s) of {str(root)!r}; fix them or leave the cases out (skip_bad=True, "
                "CLI --skip-bad):",
            )
        bad = {p.case_id for p in problems}
        cases = [c for c in cases if c.case_id not in bad]
        skipped = [{"case_id": p.case_id, "file": p.file, "reason": p.reason} for p in problems]
        warnings.warn(
            f"left out {len(bad)} bad case(s) of {str(root)!r}:\n"
            + "\n".join(str(p) for p in problems),
            stacklevel=2,
        )
        if not cases:
            raise DatasetError(problems, message=f"every case of {str(root)!r} is bad:")

    items = [_item(c, root) for c in cases]
    training = [i for i in items if "label" in i]
    testing = [i for i in items if "label" not in i]
    manifest = _assemble(
        name=name or root.resolve().name,
        description=description
        or f"{len(training)} labelled and {len(testing)} unlabelled case(s) found in "
        f"{root.resolve().name} ({layout_name} layout)",
        layout=layout_name,
        label_convention=convention,
        num_folds=num_folds,
        seed=seed,
        training=training,
        testing=testing,
        patient_id=patient_id,
    )
    if skip_bad:
        manifest["skipped"] = skipped
    return manifest


def manifest_from_case_ids(
    case_ids: Iterable[str],
    *,
    layout: str,
    name: str,
    description: str,
    testing_ids: Iterable[str] = (),
    label_convention: str | None = None,
    num_folds: int = 5,
    seed: int = 0,
    patient_id: PatientKey = None,
) -> dict[str, Any]:
    """A manifest for a published dataset from its list of case ids, without the files.

    Paths follow the layout's naming (``<case>/<case>_flair.nii.gz``, ``imagesTr/<case>.nii.gz``
    ...) relative to the folder that holds the case folders (MSD: the task folder), and folds
    come from :func:`assign_folds`, so the result equals what :func:`build_manifest` gives on
    a complete copy of the dataset.

    Args:
        case_ids: labelled (training) cases.
        layout: ``brats2021``, ``brats2023`` or ``msd``.
        name: manifest name.
        description: provenance of the list.
        testing_ids: unlabelled cases (MSD ``imagesTs``).
        label_convention: default the layout's.
        num_folds: cross-validation folds.
        seed: fold seed.
        patient_id: the patient of each case id (see :func:`patient_key`); default
            :func:`brats_patient_id`.

    Returns:
        The manifest dict.
    """
    spec = get_layout(layout)

    def item(case_id: str, *, labelled: bool) -> dict[str, Any]:
        if spec.four_d:
            folder = "imagesTr" if labelled else "imagesTs"
            out: dict[str, Any] = {"case_id": case_id, "image": f"{folder}/{case_id}.nii.gz"}
            if labelled:
                out["label"] = f"labelsTr/{case_id}.nii.gz"
            return out
        out = {
            "case_id": case_id,
            "image": [
                f"{case_id}/{case_id}{spec.modality_suffixes[m]}.nii.gz" for m in CHANNEL_ORDER
            ],
        }
        if labelled:
            out["label"] = f"{case_id}/{case_id}{spec.label_suffix}.nii.gz"
        return out

    return _assemble(
        name=name,
        description=description,
        layout=spec.name,
        label_convention=_resolve_convention(spec.name, label_convention),
        num_folds=num_folds,
        seed=seed,
        training=[item(c, labelled=True) for c in case_ids],
        testing=[item(c, labelled=False) for c in testing_ids],
        patient_id=patient_id,
    )


# --------------------------------------------------------------------------- files


def write_manifest(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """Write a manifest atomically: a reader sees the old file or the new one, never half.

    The JSON is indented by 2, with ``training`` and ``testing`` sorted by case id. The text
    goes to a temporary file in the same folder, then replaces ``path`` with ``os.replace``.

    Returns:
        The path written.

    Raises:
        ManifestError: the manifest lacks required keys.
    """
    path = Path(path).expanduser()
    data = dict(manifest)
    _check_manifest(data, source="manifest to write")
    for key in ("training", "testing"):
        data[key] = sorted(data[key], key=lambda t: t["case_id"])
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _check_items(items: Any, key: str, *, labelled: bool, num_folds: int, where: str) -> None:
    if not isinstance(items, list):
        raise ManifestError(f"{where}: {key!r} must be a list, got {type(items).__name__}")
    needed = ("case_id", "image", "label", "fold") if labelled else ("case_id", "image")
    for index, item in enumerate(items):
        missing = [k for k in needed if not isinstance(item, dict) or k not in item]
        if missing:
            raise ManifestError(f"{where}: {key}[{index}] lacks {missing} (got {item!r:.200})")
        if not isinstance(item["case_id"], str) or not item["case_id"]:
            raise ManifestError(f"{where}: {key}[{index}]: case_id must be a non-empty string")
        image = item["image"]
        paths = [image] if isinstance(image, str) else image
        if not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): image must be a path or a list "
                f"of {len(CHANNEL_ORDER)} paths, got {image!r:.200}"
            )
        label = item.get("label")
        if (labelled or label) and not (isinstance(label, str) and label):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): label must be a path, got "
                f"{label!r:.200}"
            )
        if labelled and not (
            isinstance(item["fold"], int)
            and not isinstance(item["fold"], bool)
            and 0 <= item["fold"] < max(num_folds, 1)
        ):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): fold {item['fold']!r} is not in "
                f"0..{num_folds - 1}"
            )
        if "patient_id" in item and not (
            isinstance(item["patient_id"], str) and item["patient_id"]
        ):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): patient_id must be a non-empty "
                f"string, got {item['patient_id']!r}"
            )
    if labelled:
        folds: dict[str, set[int]] = {}
        for item in items:
            patient = item.get("patient_id", item["case_id"])
            folds.setdefault(patient, set()).add(item["fold"])
        split = {p: sorted(f) for p, f in folds.items() if len(f) > 1}
        if split:
            shown = ", ".join(f"{p} (folds {f})" for p, f in sorted(split.items())[:5])
            raise ManifestError(
                f"{where}: {len(split)} patient(s) in more than one fold, so validation would "
                f"see patients that training saw: {shown}"
            )


def _check_manifest(manifest: Any, *, source: str) -> None:
    if not isinstance(manifest, dict):
        raise ManifestError(f"{source}: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ManifestError(
            f"{source}: not a tumorseg manifest, missing key(s) {missing} (has {sorted(manifest)})"
        )
    order = manifest["channel_order"]
    if not isinstance(order, list | tuple) or list(order) != list(CHANNEL_ORDER):
        raise ManifestError(
            f"{source}: channel_order {manifest['channel_order']!r} differs from "
            f"{list(CHANNEL_ORDER)}, the only order tumorseg uses"
        )
    num_folds = manifest["num_folds"]
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 1:
        raise ManifestError(f"{source}: num_folds must be an integer >= 1, got {num_folds!r}")
    _check_items(manifest["training"], "training", labelled=True, num_folds=num_folds, where=source)
    _check_items(manifest["testing"], "testing", labelled=False, num_folds=num_folds, where=source)


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a manifest file.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: invalid JSON or missing keys; the message names the file.
    """
    path = Path(path).expanduser()
    manifest = read_json(path, what="manifest", error=ManifestError)
    _check_manifest(manifest, source=f"manifest {str(path)!r}")
    loaded = _LoadedManifest(manifest)
    loaded.path = path.resolve()
    return loaded


# --------------------------------------------------------------------------- datalists


def _existing(path: Path) -> Path:
    """``path``, or its ``.nii``/``.nii.gz`` twin when only that one exists.

    Some redistributions of BraTS (for example on Kaggle) ship uncompressed ``.nii`` files.
    """
    if path.exists():
        return path
    name = path.name
    if name.endswith(".nii.gz"):
        twin = path.with_name(name[: -len(".gz")])
    elif name.endswith(".nii"):
        twin = path.with_name(name + ".gz")
    else:
        return path
    return twin if twin.exists() else path


def _absolute(relative: str, root: Path, *, resolve_twins: bool) -> str:
    path = root / relative
    return str(_existing(path) if resolve_twins else path)


def select_split(
    manifest: Mapping[str, Any], *, fold: int | None, split: str
) -> list[dict[str, Any]]:
    """The items of ``split`` as they are in ``manifest`` (paths untouched).

    ``train`` is every training item outside ``fold`` (all of them when ``fold`` is None),
    ``val`` the items of ``fold`` (none when ``fold`` is None), ``test`` the testing items and
    ``all`` both lists.
    """
    training = list(manifest["training"])
    if split == "train":
        return [t for t in training if fold is None or t["fold"] != fold]
    if split == "val":
        return [] if fold is None else [t for t in training if t["fold"] == fold]
    if split == "test":
        return list(manifest["testing"])
    return [*training, *manifest["testing"]]


def load_datalist(
    manifest: str | Path | Mapping[str, Any],
    *,
    dataset_dir: str | Path | None = None,
    fold: int | None = 0,
    split: str = "train",
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """The items of one split, with absolute paths, ready for a MONAI dataset.

    Args:
        manifest: a manifest file or dict.
        dataset_dir: the dataset folder the manifest's paths are relative to; default the
            manifest file's folder (also for a dict from :func:`load_manifest`; required for
            other dicts).
        fold: the validation fold. None: ``train`` is every training case and ``val`` empty.
        split: ``train`` (training cases outside ``fold``), ``val`` (inside ``fold``),
            ``test`` (testing cases) or ``all`` (training then testing).
        check_files: check that ``dataset_dir`` exists and holds the split's first case,
            and use the ``.nii``/``.nii.gz`` twin of a file listed under the other extension.

    Returns:
        Dicts with ``case_id``, ``image`` (list of paths, or one path for MSD), ``label`` and
        ``fold`` for training cases; other keys of the manifest items are kept.

    Raises:
        ValueError: unknown split, fold out of range, dataset folder missing or not holding
            the cases (the message says to set ``dataset_dir``).
    """
    if isinstance(manifest, Mapping):
        data = dict(manifest)
        _check_manifest(data, source="manifest dict")
        if dataset_dir is None:
            source = getattr(manifest, "path", None)  # set by load_manifest
            if source is None:
                raise ValueError(
                    "dataset_dir is required when the manifest is a dict not read by "
                    "load_manifest: set dataset_dir to the folder holding the cases"
                )
            dataset_dir = Path(source).parent
    else:
        data = load_manifest(manifest)
        if dataset_dir is None:
            dataset_dir = Path(manifest).expanduser().resolve().parent
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    num_folds = int(data["num_folds"])
    if fold is not None and (isinstance(fold, bool) or not 0 <= int(fold) < num_folds):
        raise ValueError(
            f"fold {fold!r} is out of range: the manifest has num_folds={num_folds} "
            f"(folds 0..{num_folds - 1}), or use fold=None"
        )
    root = Path(dataset_dir).expanduser().resolve()
    if check_files and not root.is_dir():
        raise ValueError(
            f"dataset folder {str(root)!r} does not exist: set dataset_dir to the folder "
            "holding the cases"
        )

    chosen = select_split(data, fold=fold, split=split)

    out: list[dict[str, Any]] = []
    for item in chosen:
        new = dict(item)
        image = item["image"]
        if isinstance(image, str):
            new["image"] = _absolute(image, root, resolve_twins=check_files)
        else:
            new["image"] = [_absolute(p, root, resolve_twins=check_files) for p in image]
        if item.get("label"):
            new["label"] = _absolute(item["label"], root, resolve_twins=check_files)
        out.append(new)

    if check_files and out:
        first = out[0]["image"]
        probe = Path(first if isinstance(first, str) else first[0])
        if not probe.exists():
            raise ValueError(
                f"{out[0]['case_id']}: {probe} not found: dataset folder {str(root)!r} does not "
                "hold the manifest's cases; set dataset_dir to your copy of the dataset"
            )
    return out


def datalist_from_directory(
    dataset_dir: str | Path,
    *,
    fold: int | None = 0,
    split: str = "train",
    num_folds: int = 5,
    seed: int = 0,
    **discovery_kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`load_datalist` for a dataset folder that has no manifest file.

    Builds the manifest in memory without opening the files (``validate=False``: only their
    presence is checked), so training can start on a plain folder.

    Args:
        dataset_dir: the dataset folder.
        fold: validation fold, as in :func:`load_datalist`.
        split: ``train``, ``val``, ``test`` or ``all``.
        num_folds: cross-validation folds.
        seed: fold seed.
        **discovery_kwargs: ``layout``, ``label_convention``, ``modality_suffixes``,
            ``label_suffix``, ``skip_bad`` or ``patient_id``, passed to
            :func:`build_manifest`.

    Returns:
        The split's items with absolute paths.
    """
    allowed = {
        "layout",
        "label_convention",
        "modality_suffixes",
        "label_suffix",
        "skip_bad",
        "patient_id",
    }
    unknown = sorted(set(discovery_kwargs) - allowed)
    if unknown:
        raise TypeError(f"unexpected argument(s) {unknown}; accepted: {sorted(allowed)}")
    manifest = build_manifest(
        dataset_dir, num_folds=num_folds, seed=seed, validate=False, **discovery_kwargs
    )
    return load_datalist(manifest, dataset_dir=dataset_dir, fold=fold, split=split)


def validate_manifest_against(
    dataset_dir: str | Path,
    manifest: str | Path | Mapping[str, Any],
    *,
    check_readable: bool = False,
    progress: bool = False,
) -> list[CaseProblem]:
    """Check that a copy of a dataset holds every case a manifest lists.

    Use it with the committed manifests of ``data_manifests/`` to check a local copy of a
    public dataset before training on it.

    Args:
        dataset_dir: the local copy.
        manifest: a manifest file or dict.
        check_readable: also open every file and run the full
            :func:`~tumorseg.data.discovery.validate_case` checks (slow on a full dataset).
        progress: show a progress bar.

    Returns:
        One problem per missing or bad file, naming the case; empty when the copy matches.

    Raises:
        ValueError: ``dataset_dir`` does not exist, or an invalid manifest.
    """
    data = load_manifest(manifest) if not isinstance(manifest, Mapping) else dict(manifest)
    if isinstance(manifest, Mapping):
        _check_manifest(data, source="manifest dict")
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise ValueError(
            f"dataset folder {str(root)!r} does not exist: set dataset_dir to your copy"
        )
    items: Iterable[dict[str, Any]] = [*data["training"], *data["testing"]]
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"checking {root.name}", unit="case")
    problems: list[CaseProblem] = []
    for item in items:
        image = item["image"]
        paths = [image] if isinstance(image, str) else list(image)
        label = item.get("label")
        case = Case(
            case_id=item["case_id"],
            images=tuple(_existing(root / p) for p in paths),
            label=_existing(root / label) if label else None,
            layout=str(data["layout"]),
        )
        problems.extend(
            validate_case(
                case,
                label_convention=str(data["label_convention"]),
                check_readable=check_readable,
            )
        )
    return problems
