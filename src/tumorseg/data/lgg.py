"""The LGG (TCGA lower-grade glioma) 2D slice dataset: discovery, manifests, datalists.

The Kaggle "LGG segmentation dataset" (Buda et al. 2019, 110 TCGA patients) is laid out as::

    kaggle_3m/<patient>/<patient>_<n>.tif        3-channel uint8: pre-contrast, FLAIR, post-contrast
    kaggle_3m/<patient>/<patient>_<n>_mask.tif   1-channel uint8: FLAIR abnormality, 0 or 255

``<n>`` is the slice index from 1; the slices of a patient stacked in that order form a volume
(:func:`stack_patient`). The bundle ``bundles/lgg_flair_segmentation_2d`` trains a 2D network on
the slices, and scores it like the 3D models: per slice, and per patient with the slices
re-stacked into a volume. The rest of the LGG code sits in its layer like the 3D path's: the
synthetic slices in :mod:`tumorseg.data.synthetic_lgg`, the bundle's data settings
(:class:`~tumorseg.training.data.LGGData`) in :mod:`tumorseg.training.data`, the 3D clean-up
in :mod:`tumorseg.transforms.post`, the scores and their ignite metric in
:mod:`tumorseg.metrics.lgg`, folder inference in :mod:`tumorseg.inference.lgg`.

An LGG manifest is a JSON file like the 3D ones, but one item per slice::

    {"name": ..., "description": ..., "layout": "kaggle_3m",
     "channel_order": ["pre-contrast", "flair", "post-contrast"], "num_folds": 5, "seed": 0,
     "tumorseg_version": "0.1.0",
     "training": [{"case_id": "P_1", "patient": "P", "slice": 1, "image": "P/P_1.tif",
                   "label": "P/P_1_mask.tif", "fold": 0}, ...],
     "testing": [{"case_id": ..., "patient": ..., "slice": ..., "image": ...}],
     "problems": ["path: what is wrong", ...]}

Folds are per patient (:func:`tumorseg.data.manifest.assign_folds`), so the slices of one
patient never straddle training and validation. Items are ordered by patient, then by slice
index as a number (``P_2`` before ``P_10``).

Bad inputs never stop the rest: a mask without its image, a slice whose size differs from its
patient's (or from its mask), a non-TIF file in a patient folder, an unreadable TIF: each is
reported in ``problems`` (and logged) naming the file, and the other slices go on.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.data.manifest import assign_folds, select_split
from tumorseg.io import atomic_path, atomic_write_text, is_temporary, read_json

__all__ = [
    "LGG_CHANNEL_ORDER",
    "LGG_LAYOUT",
    "LGG_SPLITS",
    "LGGDatasetError",
    "LGGDiscovery",
    "LGGPatient",
    "LGGSlice",
    "build_lgg_manifest",
    "check_lgg_dataset",
    "discover_kaggle_3m",
    "lgg_datalist",
    "load_lgg_manifest",
    "looks_like_kaggle_3m",
    "parse_slice_name",
    "resolve_kaggle_3m_root",
    "stack_patient",
    "write_lgg_manifest",
    "write_tif",
]

logger = logging.getLogger(__name__)

#: The layout name recorded in LGG manifests.
LGG_LAYOUT = "kaggle_3m"

#: Channels of a kaggle_3m image slice, in file order (R, G, B).
LGG_CHANNEL_ORDER: tuple[str, ...] = ("pre-contrast", "flair", "post-contrast")

#: Values of ``split`` accepted by :func:`lgg_datalist`.
LGG_SPLITS: tuple[str, ...] = ("train", "val", "test", "all")

_MANIFEST_KEYS = (
    "name",
    "description",
    "layout",
    "channel_order",
    "num_folds",
    "seed",
    "tumorseg_version",
    "training",
    "testing",
)

_SLICE_RE = re.compile(r"^(?P<patient>.+)_(?P<index>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)

_TIF_RE = re.compile(r"\.tiff?$", re.IGNORECASE)


class LGGDatasetError(ValueError):
    """A kaggle_3m folder or LGG manifest that cannot be used at all; the message names it."""


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class LGGSlice:
    """One slice of a patient: its image TIF and, when labelled, its mask TIF."""

    patient: str
    index: int
    image: Path
    mask: Path | None = None

    @property
    def case_id(self) -> str:
        """``<patient>_<index>``, the file stem of the image."""
        return f"{self.patient}_{self.index}"


@dataclass(frozen=True)
class LGGPatient:
    """The usable slices of one patient folder, ordered by index, all of one size."""

    patient_id: str
    folder: Path
    slices: tuple[LGGSlice, ...]
    size: tuple[int, int]  # (height, width)

    @property
    def labelled(self) -> bool:
        """True when every slice has a mask."""
        return all(s.mask is not None for s in self.slices)


@dataclass
class LGGDiscovery:
    """What :func:`discover_kaggle_3m` found: the patients and every problem met on the way."""

    root: Path
    patients: list[LGGPatient] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        """Usable slices over all patients."""
        return sum(len(p.slices) for p in self.patients)


def parse_slice_name(name: str) -> tuple[str, int, bool] | None:
    """Split a kaggle_3m file name into ``(patient, index, is_mask)``; ``None`` if not one.

    ``"TCGA_CS_4941_19960909_12_mask.tif"`` -> ``("TCGA_CS_4941_19960909", 12, True)``.
    """
    match = _SLICE_RE.match(name)
    if match is None:
        return None
    return match.group("patient"), int(match.group("index")), match.group("mask") is not None


def resolve_kaggle_3m_root(root: str | os.PathLike[str]) -> Path:
    """The kaggle_3m folder given it or its parent (the Kaggle download's own folder).

    Raises:
        LGGDatasetError: ``root`` is not a folder.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise LGGDatasetError(f"kaggle_3m folder {str(path)!r} does not exist or is not a folder")
    # The Kaggle download unpacks to lgg-mri-segmentation/kaggle_3m/; accept either level.
    inner = path / "kaggle_3m"
    return inner if inner.is_dir() else path


def _tif_info(path: Path) -> tuple[tuple[int, int], int]:
    """((height, width), channels) of a TIF, reading only its header."""
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
        return (height, width), len(img.getbands())


def write_tif(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 array as a TIF (``(H, W)`` grey or ``(H, W, 3)`` RGB), atomically.

    The one writer of kaggle_3m files: the synthetic slices and the predicted masks.
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def _scan_patient(folder: Path, problems: list[str]) -> LGGPatient | None:
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    patient = folder.name
    for path in sorted(folder.iterdir()):
        name = path.name
        # Hidden files (.DS_Store, macOS ._ companions, our own atomic temporaries) are noise.
        if name.startswith(".") or is_temporary(path):
            continue
        if path.is_dir():
            problems.append(f"{path}: unexpected folder inside patient folder, ignored")
            continue
        if not _TIF_RE.search(name):
            problems.append(f"{path}: not a TIF file, ignored")
            continue
        parsed = parse_slice_name(name)
        if parsed is None or parsed[0] != patient:
            problems.append(
                f"{path}: TIF name is not {patient}_<n>.tif or {patient}_<n>_mask.tif, ignored"
            )
            continue
        _, index, is_mask = parsed
        target = masks if is_mask else images
        if index in target:
            problems.append(f"{path}: slice {index} given twice (also {target[index].name})")
            continue
        target[index] = path
    for index in sorted(set(masks) - set(images)):
        problems.append(f"{masks[index]}: mask without its image {patient}_{index}.tif, ignored")
    if masks:
        # A patient with masks is a labelled one: an image lacking its mask is a missing file,
        # not an unlabelled slice (a patient is labelled or not as a whole).
        for index in sorted(set(images) - set(masks)):
            problems.append(
                f"{images[index]}: image without its mask {patient}_{index}_mask.tif, ignored"
            )
            del images[index]

    infos: dict[int, tuple[tuple[int, int], int]] = {}
    for index in sorted(images):
        try:
            size, channels = _tif_info(images[index])
            if channels != len(LGG_CHANNEL_ORDER):
                problems.append(
                    f"{images[index]}: image has {channels} channel(s), expected "
                    f"{len(LGG_CHANNEL_ORDER)} ({', '.join(LGG_CHANNEL_ORDER)}); slice ignored"
                )
                continue
            if index in masks:
                mask_size, mask_channels = _tif_info(masks[index])
                if mask_size != size or mask_channels != 1:
                    problems.append(
                        f"{masks[index]}: mask is {mask_size[0]}x{mask_size[1]} with "
                        f"{mask_channels} channel(s), its image {size[0]}x{size[1]}; "
                        "slice ignored"
                    )
                    continue
        except OSError as err:
            problems.append(f"{images[index]}: unreadable TIF ({err}); slice ignored")
            continue
        infos[index] = (size, channels)
    if not infos:
        if images or masks:
            problems.append(f"{folder}: no usable slice in this patient folder")
        return None
    # A patient volume needs one slice size; the most common one is the patient's, the odd
    # slices are reported (the smallest size wins a tie, so the choice is deterministic).
    counts = Counter(size for size, _ in infos.values())
    size = min(counts, key=lambda s: (-counts[s], s))
    slices = []
    for index, (slice_size, _) in sorted(infos.items()):
        if slice_size != size:
            problems.append(
                f"{images[index]}: slice is {slice_size[0]}x{slice_size[1]}, the other slices of "
                f"{patient} are {size[0]}x{size[1]}; slice ignored"
            )
            continue
        slices.append(LGGSlice(patient, index, images[index], masks.get(index)))
    return LGGPatient(patient, folder, tuple(slices), size)


def discover_kaggle_3m(root: str | os.PathLike[str]) -> LGGDiscovery:
    """Find the patients and slices of a kaggle_3m folder, reporting every bad file.

    Files at the top level (``data.csv``, ``README.md`` of the Kaggle download) are ignored;
    inside a patient folder every file must be ``<patient>_<n>.tif`` or
    ``<patient>_<n>_mask.tif``. A patient folder without any mask is unlabelled (inference
    input); in a folder with masks, an image without its mask is reported and left out.

    Args:
        root: the ``kaggle_3m`` folder, or a folder holding it.

    Returns:
        The patients (sorted by id, slices by index) and the problems, one line each,
        starting with the offending path. Problems are also logged as warnings.

    Raises:
        LGGDatasetError: ``root`` is not a folder, or holds no usable slice.
    """
    base = resolve_kaggle_3m_root(root)
    found = LGGDiscovery(root=base)
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        patient = _scan_patient(folder, found.problems)
        if patient is not None:
            found.patients.append(patient)
    for problem in found.problems:
        logger.warning("kaggle_3m: %s", problem)
    if not found.patients:
        detail = f" ({len(found.problems)} problem(s), first: {found.problems[0]})"
        raise LGGDatasetError(
            f"no usable <patient>/<patient>_<n>.tif slice in {str(base)!r}"
            + (detail if found.problems else "")
        )
    return found


def looks_like_kaggle_3m(root: str | os.PathLike[str]) -> bool:
    """True when ``root`` (or ``root/kaggle_3m``) has a patient folder holding its slices.

    A cheap test to pick the layout of a folder (``tumorseg manifest`` without ``--layout``):
    a sub-folder ``<patient>`` holding a file named ``<patient>_<n>.tif`` or
    ``<patient>_<n>_mask.tif``. Nothing is opened.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        return False
    base = resolve_kaggle_3m_root(path)
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for entry in folder.iterdir():
            parsed = parse_slice_name(entry.name)
            if parsed is not None and parsed[0] == folder.name:
                return True
    return False


def stack_patient(slices: Mapping[int, np.ndarray]) -> np.ndarray:
    """Re-stack 2D slices ``{index: (H, W)}`` into a ``(slices, H, W)`` volume, by index.

    Raises:
        ValueError: no slice, or slices of different sizes.
    """
    if not slices:
        raise ValueError("no slice to stack")
    order = sorted(slices)
    shapes = {np.shape(slices[i]) for i in order}
    if len(shapes) != 1:
        raise ValueError(f"slices of one patient differ in size: {sorted(shapes)}")
    return np.stack([np.asarray(slices[i]) for i in order])


# --------------------------------------------------------------------------- manifests


def _version() -> str:
    from tumorseg import __version__

    return __version__


def build_lgg_manifest(
    root: str | os.PathLike[str],
    *,
    num_folds: int = 5,
    seed: int = 0,
    name: str = "",
    description: str = "",
) -> dict[str, Any]:
    """An LGG manifest (see the module docstring) from a kaggle_3m folder.

    Labelled patients (every slice has a mask) go to ``training`` with a patient-level fold,
    the others to ``testing``. Paths are relative to the kaggle_3m folder.

    Args:
        root: the kaggle_3m folder (or its parent).
        num_folds: cross-validation folds.
        seed: changes the fold assignment.
        name: the manifest's name; default the folder name.
        description: free text.

    Raises:
        LGGDatasetError: no usable slice at all.
        ValueError: a bad ``num_folds``.
    """
    found = discover_kaggle_3m(root)
    labelled = [p for p in found.patients if p.labelled]
    folds = assign_folds(
        [p.patient_id for p in labelled], num_folds=num_folds, seed=seed, patient_id=str
    )

    def item(s: LGGSlice) -> dict[str, Any]:
        out: dict[str, Any] = {
            "case_id": s.case_id,
            "patient": s.patient,
            "slice": s.index,
            "image": s.image.relative_to(found.root).as_posix(),
        }
        if s.mask is not None:
            out["label"] = s.mask.relative_to(found.root).as_posix()
            out["fold"] = folds[s.patient]
        return out

    return {
        "name": name or found.root.name,
        "description": description or "LGG kaggle_3m slices (FLAIR abnormality masks)",
        "layout": LGG_LAYOUT,
        "channel_order": list(LGG_CHANNEL_ORDER),
        "num_folds": num_folds,
        "seed": seed,
        "tumorseg_version": _version(),
        "training": [item(s) for p in labelled for s in p.slices],
        "testing": [item(s) for p in found.patients if not p.labelled for s in p.slices],
        "problems": list(found.problems),
    }


def _check_lgg_manifest(manifest: Any, *, source: str) -> None:
    if not isinstance(manifest, dict):
        raise LGGDatasetError(f"{source}: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise LGGDatasetError(f"{source}: not an LGG manifest, missing key(s) {missing}")
    if manifest["layout"] != LGG_LAYOUT:
        raise LGGDatasetError(
            f"{source}: layout is {manifest['layout']!r}, expected {LGG_LAYOUT!r} (a 3D "
            "manifest belongs to the brats_mri_segmentation bundle)"
        )
    for key, needed in (
        ("training", ("case_id", "patient", "slice", "image", "label", "fold")),
        ("testing", ("case_id", "patient", "slice", "image")),
    ):
        for index, entry in enumerate(manifest[key]):
            lacking = [k for k in needed if not isinstance(entry, dict) or k not in entry]
            if lacking:
                raise LGGDatasetError(f"{source}: {key}[{index}] lacks {lacking}")


def write_lgg_manifest(manifest: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write an LGG manifest atomically (indent 2); returns the path.

    Raises:
        LGGDatasetError: the manifest lacks required keys.
    """
    data = dict(manifest)
    _check_lgg_manifest(data, source="LGG manifest to write")
    return atomic_write_text(Path(path).expanduser(), json.dumps(data, indent=2) + "\n")


def load_lgg_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an LGG manifest file.

    Raises:
        FileNotFoundError: no such file.
        LGGDatasetError: invalid JSON or not an LGG manifest; the message names the file.
    """
    path = Path(path).expanduser()
    manifest = read_json(path, what="LGG manifest", error=LGGDatasetError)
    _check_lgg_manifest(manifest, source=f"LGG manifest {str(path)!r}")
    return dict(manifest)


def check_lgg_dataset(
    dataset_dir: str | os.PathLike[str], manifest: Mapping[str, Any]
) -> list[str]:
    """What stops ``dataset_dir`` from serving ``manifest``: one line per slice, naming the file.

    Every slice the manifest lists must be a usable slice of the folder (the image, and its
    mask where the manifest has a label). Bad files the manifest does not use are not
    reported: they do not change what training reads.

    Args:
        dataset_dir: a kaggle_3m folder (or its parent), e.g. a copy of the one the manifest
            was built from.
        manifest: an LGG manifest (:func:`load_lgg_manifest`).

    Returns:
        ``"<case_id>: <path>: <what is wrong>"`` lines; empty when every slice is there.
    """
    try:
        found = discover_kaggle_3m(dataset_dir)
    except LGGDatasetError as err:
        return [str(err)]
    usable: dict[str, str | None] = {}
    for patient in found.patients:
        for s in patient.slices:
            mask = s.mask.relative_to(found.root).as_posix() if s.mask is not None else None
            usable[s.image.relative_to(found.root).as_posix()] = mask
    # Discovery's problem lines start with the absolute path of the file they are about.
    known: dict[str, str] = {}
    for line in found.problems:
        known.setdefault(line.split(": ", 1)[0], line)
    out = []
    for key in ("training", "testing"):
        for entry in manifest[key]:
            image, label = str(entry["image"]), entry.get("label")
            if image in usable and (label is None or usable[image] == label):
                continue
            files = [found.root / image] + ([found.root / str(label)] if label else [])
            detail = next((known[str(f)] for f in files if str(f) in known), None)
            if detail is None:
                missing = [f for f in files if not f.is_file()]
                what = "image" if missing and missing[0] == files[0] else "mask"
                detail = (
                    f"{missing[0]}: {what} listed in the manifest is missing"
                    if missing
                    else f"{files[0]}: slice listed in the manifest is not usable here"
                )
            out.append(f"{entry['case_id']}: {detail}")
    return out


def lgg_datalist(
    manifest: Mapping[str, Any],
    *,
    dataset_dir: str | os.PathLike[str],
    fold: int | None = 0,
    split: str = "train",
) -> list[dict[str, Any]]:
    """MONAI datalist items of one split, paths made absolute under ``dataset_dir``.

    Args:
        manifest: an LGG manifest.
        dataset_dir: the kaggle_3m folder (or its parent) the manifest's paths are relative to.
        fold: the validation fold; ``None`` puts every labelled slice in ``train``.
        split: ``train`` (labelled, not ``fold``), ``val`` (labelled, ``fold``), ``test``
            (unlabelled) or ``all`` (labelled and unlabelled).

    Returns:
        Items with ``image``, ``label`` (labelled splits), ``patient``, ``slice``, ``case_id``,
        ordered by patient then slice index.

    Raises:
        ValueError: an unknown split.
    """
    if split not in LGG_SPLITS:
        raise ValueError(f"split must be one of {LGG_SPLITS}, got {split!r}")
    root = resolve_kaggle_3m_root(dataset_dir)
    chosen = select_split(manifest, fold=fold, split=split)
    items = []
    for entry in sorted(chosen, key=lambda t: (t["patient"], int(t["slice"]))):
        out = {k: entry[k] for k in ("case_id", "patient", "slice")}
        out["image"] = str(root / entry["image"])
        if "label" in entry:
            out["label"] = str(root / entry["label"])
        items.append(out)
    return items
