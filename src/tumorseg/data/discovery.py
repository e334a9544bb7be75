"""Find the cases of a dataset folder and check that they are usable: the one discovery module.

Manifests, training and inference all go through :func:`discover_cases`, so the three see the
same cases in the same channel order (:data:`tumorseg.conventions.CHANNEL_ORDER`).

Supported folder layouts (:data:`tumorseg.conventions.LAYOUTS`):

* ``brats2021``: one folder per case, ``<case>/<case>_flair.nii.gz``, ``_t1``, ``_t1ce``,
  ``_t2`` and an optional ``_seg``;
* ``brats2023``: one folder per case, ``<case>/<case>-t2f.nii.gz``, ``-t1n``, ``-t1c``,
  ``-t2w`` and an optional ``-seg``;
* ``msd``: ``imagesTr/<case>.nii.gz`` (4D, channels in :data:`CHANNEL_ORDER`), ``labelsTr/``,
  ``imagesTs/`` and ``dataset.json`` (its lists win when present);
* ``custom``: one folder per case with the file suffixes given by ``modality_suffixes``.

The case folders may sit directly in the dataset folder or one level down (for example
``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/``). Hidden files and macOS ``._*``
companions are ignored.

Discovery is lenient on purpose: a case folder that lacks a modality is still returned (with
the expected path of the missing file) so that :func:`validate_case` can report every bad case
of a dataset in one pass instead of failing on the first. The shared types live in
:mod:`tumorseg.data.cases` and the checks in :mod:`tumorseg.data.validation`; this module
re-exports both, so its public names are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tumorseg.conventions import CHANNEL_ORDER, LAYOUTS, get_layout
from tumorseg.data.cases import (
    IMAGE_EXTENSIONS,
    NIFTI_EXTENSIONS,
    Case,
    CaseProblem,
    DatasetError,
    _short,
    split_extension,
)
from tumorseg.data.validation import validate_case

__all__ = [
    "CUSTOM_LAYOUT",
    "Case",
    "CaseProblem",
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "detect_layout",
    "discover_cases",
    "parse_modality_suffixes",
    "recognise_label_convention",
    "split_extension",
    "validate_case",
]

#: Layout name given to cases found through an explicit ``modality_suffixes`` mapping.
CUSTOM_LAYOUT = "custom"

_FOLDER_LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023")
_EXPECTED = (
    "expected one folder per case named like <case>/<case>_flair.nii.gz, _t1, _t1ce, _t2 "
    "(brats2021), <case>/<case>-t2f.nii.gz, -t1n, -t1c, -t2w (brats2023), the same one "
    "folder deeper, or an MSD folder with imagesTr/ and dataset.json (msd)"
)


def _visible(path: Path) -> bool:
    # "._name" files are macOS resource forks that look like images but are not.
    return not path.name.startswith(".")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _image_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and _visible(p) and split_extension(p.name, extensions)[1]
    )


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(message=f"dataset folder {str(root)!r} does not exist; {_EXPECTED}")
    if not root.is_dir():
        raise DatasetError(message=f"dataset path {str(root)!r} is not a folder; {_EXPECTED}")
    if not any(_visible(p) for p in root.iterdir()):
        raise DatasetError(message=f"dataset folder {str(root)!r} is empty; {_EXPECTED}")
    return root


def _msd_root(root: Path) -> Path | None:
    """The MSD task folder: ``root`` itself or one visible subfolder of it."""
    for candidate in (root, *_subdirs(root)):
        if (candidate / "imagesTr").is_dir() or (candidate / "imagesTs").is_dir():
            return candidate
        if (candidate / "dataset.json").is_file() and _msd_dataset_json(candidate) is not None:
            return candidate
    return None


def _msd_dataset_json(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and ("training" in data or "test" in data):
        return data
    return None


def _match_suffix(stem: str, suffixes: Mapping[str, str]) -> str | None:
    """The key whose suffix ends ``stem``; the longest suffix wins (``_t1ce`` over ``_t1``)."""
    lower = stem.lower()
    best: tuple[int, str] | None = None
    for key, suffix in suffixes.items():
        matches = suffix and lower.endswith(suffix.lower()) and len(stem) > len(suffix)
        if matches and (best is None or len(suffix) > best[0]):
            best = (len(suffix), key)
    return None if best is None else best[1]


def _layout_suffixes(layout: str) -> dict[str, str]:
    spec = LAYOUTS[layout]
    return {**spec.modality_suffixes, "label": spec.label_suffix}


def _n_matching(folder: Path, suffixes: Mapping[str, str], extensions: Sequence[str]) -> int:
    """How many image files of ``folder`` end with one of ``suffixes``."""
    return sum(
        _match_suffix(split_extension(p.name, extensions)[0], suffixes) is not None
        for p in _image_files(folder, extensions)
    )


def _levels(root: Path) -> tuple[list[Path], list[Path]]:
    """Folders directly under ``root`` and one level deeper."""
    top = _subdirs(root)
    return top, [d for parent in top for d in _subdirs(parent)]


def _case_dirs(root: Path, suffixes: Mapping[str, str], extensions: Sequence[str]) -> list[Path]:
    """Case folders: those with a file named after ``suffixes``, at the shallowest level.

    A folder with images none of which follow the naming (a folder of reference
    segmentations, say) is not a case.
    """
    for level in _levels(root):
        dirs = [d for d in level if _n_matching(d, suffixes, extensions)]
        if dirs:
            return dirs
    return []


def _detect_folder_layout(root: Path) -> str | None:
    for level in _levels(root):
        scores = {
            name: sum(_n_matching(d, _layout_suffixes(name), NIFTI_EXTENSIONS) for d in level)
            for name in _FOLDER_LAYOUTS
        }
        best = max(scores, key=lambda name: scores[name])
        if scores[best] > 0:
            return best
    return None


def _describe_contents(root: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if _visible(p))
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def detect_layout(root: str | Path) -> str:
    """Which file layout a dataset folder uses.

    Args:
        root: the dataset folder (case folders directly in it or one level down, or an MSD
            task folder, or a folder holding one).

    Returns:
        ``"brats2021"``, ``"brats2023"`` or ``"msd"``.

    Raises:
        DatasetError: when the folder does not exist, is empty, or matches no layout; the
            message names the folder, what was expected and what was found.
    """
    root = _check_root(root)
    if _msd_root(root) is not None:
        return "msd"
    found = _detect_folder_layout(root)
    if found is None:
        raise DatasetError(
            message=f"cannot tell the layout of dataset folder {str(root)!r}: {_EXPECTED}; "
            f"found {_describe_contents(root)}"
        )
    return found


def _check_modality_suffixes(modality_suffixes: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(modality_suffixes) - set(CHANNEL_ORDER))
    if unknown:
        raise ValueError(
            f"modality_suffixes has unknown modality {unknown}; keys must be the canonical "
            f"modalities {list(CHANNEL_ORDER)} (got {dict(modality_suffixes)})"
        )
    missing = [m for m in CHANNEL_ORDER if m not in modality_suffixes]
    if missing:
        raise ValueError(
            f"modality_suffixes lacks {missing}; give a suffix for each of {list(CHANNEL_ORDER)} "
            f"(got {dict(modality_suffixes)})"
        )
    suffixes = {m: str(modality_suffixes[m]) for m in CHANNEL_ORDER}
    empty = [m for m, s in suffixes.items() if not s]
    if empty or len({s.lower() for s in suffixes.values()}) != len(suffixes):
        raise ValueError(
            f"modality_suffixes must be non-empty and distinct (got {dict(modality_suffixes)})"
        )
    return suffixes


def _folder_case(
    folder: Path,
    *,
    layout: str,
    suffixes: Mapping[str, str],
    label_suffix: str,
    extensions: Sequence[str],
) -> Case:
    case_id = folder.name
    keyed = {**suffixes, "label": label_suffix}
    found: dict[str, list[Path]] = {key: [] for key in keyed}
    unrecognised: list[Path] = []
    for path in _image_files(folder, extensions):
        key = _match_suffix(split_extension(path.name, extensions)[0], keyed)
        if key is None:
            unrecognised.append(path)
        else:
            found[key].append(path)
    issues = [
        CaseProblem(
            case_id,
            _short(paths[0]),
            f"{len(paths)} files match {key!r} ({', '.join(p.name for p in paths)}); keep one",
        )
        for key, paths in found.items()
        if len(paths) > 1
    ]
    # The expected name of a missing file lets validate_case say what to add.
    images = tuple(
        found[m][0] if found[m] else folder / f"{case_id}{suffixes[m]}{extensions[0]}"
        for m in CHANNEL_ORDER
    )
    label = found["label"][0] if found["label"] else None
    if label is None and unrecognised:
        # A misnamed label map (BraTS 2020 ships BraTS20_Training_355's as
        # W39_1998.09.19_Segm.nii) would otherwise turn a training case into a test case.
        expected = f"{case_id}{label_suffix}{extensions[0]}"
        issues.append(
            CaseProblem(
                case_id,
                _short(unrecognised[0]),
                f"no label map named {expected}, but unrecognised image file(s) "
                f"{', '.join(p.name for p in unrecognised)}: rename the label map to {expected} "
                "or remove the extra files",
            )
        )
    return Case(case_id, images, label, layout, tuple(issues))


def _msd_case_id(path: Path) -> str:
    return split_extension(path.name, NIFTI_EXTENSIONS)[0]


def _discover_msd(root: Path) -> list[Case]:
    task = _msd_root(root)
    if task is None:
        raise DatasetError(
            message=f"dataset folder {str(root)!r} is not an MSD task folder: expected "
            f"imagesTr/, labelsTr/, imagesTs/ and dataset.json; found {_describe_contents(root)}"
        )
    spec = _msd_dataset_json(task)
    pairs: list[tuple[Path, Path | None]] = []
    if spec is not None:
        for entry in spec.get("training", []):
            image = task / str(entry["image"] if isinstance(entry, dict) else entry)
            label = entry.get("label") if isinstance(entry, dict) else None
            pairs.append((image, task / str(label) if label else None))
        for entry in spec.get("test", []):
            image = entry["image"] if isinstance(entry, dict) else entry
            pairs.append((task / str(image), None))
    else:
        for image in _listed(task / "imagesTr"):
            label = task / "labelsTr" / image.name
            pairs.append((image, label if label.is_file() else None))
        pairs.extend((image, None) for image in _listed(task / "imagesTs"))
    # pathlib drops the "./" of dataset.json entries ("./imagesTr/x.nii.gz") when joining.
    return [Case(_msd_case_id(image), (image,), label, "msd") for image, label in pairs]


def _listed(folder: Path) -> list[Path]:
    return _image_files(folder, NIFTI_EXTENSIONS) if folder.is_dir() else []


def discover_cases(
    root: str | Path,
    *,
    layout: str | None = None,
    modality_suffixes: Mapping[str, str] | None = None,
    label_suffix: str | None = None,
) -> list[Case]:
    """List the cases of a dataset folder, sorted by case id.

    Args:
        root: the dataset folder.
        layout: ``brats2021``, ``brats2023`` or ``msd``; detected when None.
        modality_suffixes: custom naming, one folder per case: canonical modality
            (``flair``, ``t1``, ``t1ce``, ``t2``) to file-name suffix, for example
            ``{"flair": "_FLAIR", "t1": "_T1", "t1ce": "_T1CE", "t2": "_T2"}``. NIfTI, NRRD and
            MetaImage files are accepted. The cases get layout ``layout`` when given, else
            ``custom``.
        label_suffix: suffix of the label map; default the layout's (``_seg``/``-seg``), and
            ``_seg`` for custom naming.

    Returns:
        The cases, with images in :data:`CHANNEL_ORDER`. Cases missing a file are included
        (the missing path is where the file was expected) for :func:`validate_case` to report.

    Raises:
        DatasetError: the folder does not exist, is empty, matches no layout, holds no case,
            or holds two cases with the same id.
        ValueError: an unknown layout or a bad ``modality_suffixes`` mapping.
    """
    root = _check_root(root)
    layout_name = None if layout is None else get_layout(layout).name
    if modality_suffixes is not None:
        if layout_name == "msd":
            raise ValueError("modality_suffixes applies to one-folder-per-case layouts, not msd")
        suffixes = _check_modality_suffixes(modality_suffixes)
        seg = label_suffix or (LAYOUTS[layout_name].label_suffix if layout_name else "_seg")
        keyed = {**suffixes, "label": seg}
        cases = [
            _folder_case(
                d,
                layout=layout_name or CUSTOM_LAYOUT,
                suffixes=suffixes,
                label_suffix=seg,
                extensions=IMAGE_EXTENSIONS,
            )
            for d in _case_dirs(root, keyed, IMAGE_EXTENSIONS)
        ]
        expected = f"one folder per case with <case>{suffixes['flair']}.nii.gz and so on"
    else:
        if layout_name is None:
            layout_name = detect_layout(root)
        if layout_name == "msd":
            cases = _discover_msd(root)
            expected = "imagesTr/<case>.nii.gz (4D) and dataset.json"
        else:
            spec = LAYOUTS[layout_name]
            seg = label_suffix or spec.label_suffix
            keyed = {**spec.modality_suffixes, "label": seg}
            cases = [
                _folder_case(
                    d,
                    layout=layout_name,
                    suffixes=spec.modality_suffixes,
                    label_suffix=seg,
                    extensions=NIFTI_EXTENSIONS,
                )
                for d in _case_dirs(root, keyed, NIFTI_EXTENSIONS)
            ]
            expected = spec.description
    if not cases:
        raise DatasetError(
            message=f"no cases found in dataset folder {str(root)!r} (layout "
            f"{layout_name or CUSTOM_LAYOUT}: {expected}); found {_describe_contents(root)}"
        )
    cases.sort(key=lambda c: c.case_id)
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if duplicates:
        problems = [
            CaseProblem(c.case_id, _short(c.images[0].parent), "case id found more than once")
            for c in cases
            if c.case_id in duplicates
        ]
        raise DatasetError(problems, message=f"duplicate case ids in {str(root)!r}:")
    return cases


def recognise_label_convention(layout: str, label_values: set[int]) -> str:
    """The label convention of a dataset, from its layout and the label values it holds.

    The BraTS 2024+ glioma and metastasis data keep the BraTS 2023 file names, and their
    labels 1-3 mean what they meant in 2023; label 4, the resection cavity, is what tells
    them apart. A ``brats2023``-layout dataset holding label 4 is therefore ``brats2024``;
    every other layout keeps its own convention (label 4 of a ``brats2021`` dataset is
    enhancing tumour).

    Args:
        layout: the dataset's layout (``brats2021``, ``brats2023``, ``msd``).
        label_values: every value found in its label maps.

    Raises:
        ValueError: for a layout without a label convention (custom naming).
    """
    spec = get_layout(layout)
    if spec.label_convention == "brats2023" and 4 in label_values:
        return "brats2024"
    return spec.label_convention


def parse_modality_suffixes(value: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``"flair=_FLAIR,t1=_T1,t1ce=_T1CE,t2=_T2"`` (or a mapping) -> ``{modality: suffix}``.

    Raises:
        ValueError: for a malformed string (the value is shown).
    """
    if value is None or isinstance(value, Mapping):
        return None if value is None else {str(k): str(v) for k, v in value.items()}
    out = {}
    for part in str(value).split(","):
        if not part.strip():
            continue
        key, sep, suffix = part.partition("=")
        if not sep or not key.strip() or not suffix.strip():
            raise ValueError(
                f"modality suffix entry {part.strip()!r} is not MODALITY=SUFFIX (got {value!r}; "
                "example flair=_FLAIR,t1=_T1,t1ce=_T1CE,t2=_T2)"
            )
        out[key.strip().lower()] = suffix.strip()
    return out
