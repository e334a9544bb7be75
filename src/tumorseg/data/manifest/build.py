"""Building manifests: from a dataset folder (discovered and validated) or from case ids."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tumorseg.conventions import CHANNEL_ORDER, LAYOUTS, get_convention, get_layout
from tumorseg.data.discovery import (
    Case,
    CaseProblem,
    DatasetError,
    discover_cases,
    recognise_label_convention,
    validate_case,
)
from tumorseg.data.manifest.folds import PatientKey, _patients, assign_folds

__all__ = [
    "build_manifest",
    "manifest_from_case_ids",
]


def _version() -> str:
    from tumorseg import __version__

    return __version__


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
        label_convention: label values of the label maps; default the layout's, except that
            a ``brats2023``-layout dataset whose label maps hold 4 (the resection cavity) is
            ``brats2024`` (recognised while validating; with ``validate=False`` it stays
            ``brats2023``). Required with ``modality_suffixes`` when no ``layout`` is given.
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
        The manifest dict (see the module docstring), with ``dataset_dir``: the folder,
        absolute.

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
    # A brats2023-layout dataset is brats2024 when its labels hold the resection cavity (4):
    # checked against the brats2024 values (a superset), then decided from what was found.
    recognise = label_convention is None and validate and convention == "brats2023"
    seen: set[int] = set()
    problems: list[CaseProblem] = []
    for case in checked:
        problems.extend(
            validate_case(
                case,
                label_convention="brats2024" if recognise else convention,
                check_readable=validate,
                label_values=seen if recognise else None,
            )
        )
    if recognise:
        convention = recognise_label_convention(layout_name, seen)

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
    # Where the cases are, so a manifest file alone finds them (write_manifest adds the
    # path relative to the manifest's folder).
    manifest["dataset_dir"] = str(root.resolve())
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
