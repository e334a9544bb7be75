"""The LGG (TCGA lower-grade glioma) 2D slice dataset: discovery, manifests, synthetic data,
per-slice and per-patient scores, 3D post-processing and folder inference.

The Kaggle "LGG segmentation dataset" (Buda et al. 2019, 110 TCGA patients) is laid out as::

    kaggle_3m/<patient>/<patient>_<n>.tif        3-channel uint8: pre-contrast, FLAIR, post-contrast
    kaggle_3m/<patient>/<patient>_<n>_mask.tif   1-channel uint8: FLAIR abnormality, 0 or 255

``<n>`` is the slice index from 1; the slices of a patient stacked in that order form a volume.
The bundle ``bundles/lgg_flair_segmentation_2d`` trains a 2D network on the slices, and scores
it like the 3D models: per slice, and per patient with the slices re-stacked into a volume.

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

import csv
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ignite.metrics import Metric
from scipy import ndimage

from tumorseg.data.manifest import assign_folds, select_split
from tumorseg.io import atomic_path, atomic_write_text, is_temporary, read_json
from tumorseg.ranks import ensure_generated, is_rank0, process_group

__all__ = [
    "LGG_CHANNEL_ORDER",
    "LGG_DEMO_DATASET",
    "LGG_LAYOUT",
    "LGG_SPLITS",
    "LGGData",
    "LGGDatasetError",
    "LGGDiscovery",
    "LGGInferenceReport",
    "LGGOverlapMetric",
    "LGGPatient",
    "LGGSlice",
    "build_lgg_manifest",
    "check_lgg_dataset",
    "discover_kaggle_3m",
    "ensure_lgg_demo_dataset",
    "generate_kaggle_3m",
    "kaggle_3m_patient_id",
    "is_lgg_bundle",
    "lgg_datalist",
    "load_lgg_manifest",
    "looks_like_kaggle_3m",
    "overlap_scores",
    "parse_slice_name",
    "remove_isolated_false_positives",
    "score_patients",
    "segment_kaggle_3m_folder",
    "segment_with_bundle",
    "stack_patient",
    "write_lgg_manifest",
]

logger = logging.getLogger(__name__)

#: The layout name recorded in LGG manifests.
LGG_LAYOUT = "kaggle_3m"

#: Channels of a kaggle_3m image slice, in file order (R, G, B).
LGG_CHANNEL_ORDER: tuple[str, ...] = ("pre-contrast", "flair", "post-contrast")

#: Values of ``split`` accepted by :func:`lgg_datalist`.
LGG_SPLITS: tuple[str, ...] = ("train", "val", "test", "all")

#: The synthetic set the bundle generates when no dataset is given.
LGG_DEMO_DATASET: dict[str, Any] = {"num_patients": 8, "shape": (64, 64, 24), "seed": 2019}

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
# Phantom channels (flair, t1, t1ce, t2) -> kaggle_3m RGB (pre-contrast, FLAIR, post-contrast).
_PHANTOM_TO_RGB = (1, 0, 2)


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


def _resolve_root(root: str | os.PathLike[str]) -> Path:
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
    base = _resolve_root(root)
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
    base = _resolve_root(path)
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for entry in folder.iterdir():
            parsed = parse_slice_name(entry.name)
            if parsed is not None and parsed[0] == folder.name:
                return True
    return False


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
    root = _resolve_root(dataset_dir)
    chosen = select_split(manifest, fold=fold, split=split)
    items = []
    for entry in sorted(chosen, key=lambda t: (t["patient"], int(t["slice"]))):
        out = {k: entry[k] for k in ("case_id", "patient", "slice")}
        out["image"] = str(root / entry["image"])
        if "label" in entry:
            out["label"] = str(root / entry["label"])
        items.append(out)
    return items


class LGGData:
    """The LGG bundle's data settings, resolved once; hands out splits.

    Args:
        dataset_dir: the kaggle_3m folder; empty means the synthetic demo set in ``demo_dir``.
        datalist: an LGG manifest JSON; empty means discover ``dataset_dir`` now.
        fold: validation fold; ``-1`` trains on every labelled slice.
        num_folds: folds used when discovering on the fly.
        seed: fold seed used when discovering on the fly.
        demo_dir: where the demo set is generated when ``dataset_dir`` is empty.

    Raises:
        LGGDatasetError: nothing to train on or an unusable folder / manifest.
    """

    def __init__(
        self,
        *,
        dataset_dir: str | os.PathLike[str] = "",
        datalist: str | os.PathLike[str] = "",
        fold: int = 0,
        num_folds: int = 5,
        seed: int = 0,
        demo_dir: str | os.PathLike[str] = "",
    ) -> None:
        self.fold: int | None = None if int(fold) < 0 else int(fold)
        self.datalist = str(datalist or "")
        dataset = str(dataset_dir or "")
        if not dataset:
            if not str(demo_dir or ""):
                raise LGGDatasetError("no dataset_dir or demo_dir given: nothing to train on")
            dataset = ensure_lgg_demo_dataset(demo_dir)
        self.dataset_dir = dataset
        if self.datalist:
            self.manifest = load_lgg_manifest(self.datalist)
        else:
            self.manifest = build_lgg_manifest(dataset, num_folds=int(num_folds), seed=int(seed))

    def files(self, split: str) -> list[dict[str, Any]]:
        """Items of ``split`` (``train``, ``val``, ``test``, ``all``) with absolute paths."""
        items = lgg_datalist(
            self.manifest, dataset_dir=self.dataset_dir, fold=self.fold, split=split
        )
        if not items and split in ("train", "val"):
            logger.warning("split %r of fold %s is empty", split, self.fold)
        return items


# --------------------------------------------------------------------------- synthetic data


def _save_tif(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def kaggle_3m_patient_id(prefix: str, index: int) -> str:
    """The id :func:`generate_kaggle_3m` gives its ``index``-th patient (TCGA-like, with a date)."""
    return f"{prefix}_{index:04d}_20000101"


def generate_kaggle_3m(
    out_dir: str | os.PathLike[str],
    *,
    num_patients: int = 4,
    shape: tuple[int, int, int] = (64, 64, 24),
    seed: int = 0,
    with_masks: bool = True,
    prefix: str = "TCGA_SY",
) -> list[str]:
    """Write a synthetic dataset in the kaggle_3m layout, from the 3D phantoms.

    Each patient is one :func:`tumorseg.data.synthetic.make_phantom` volume cut into axial
    slices: RGB uint8 TIFs of T1 (pre-contrast), FLAIR and T1ce (post-contrast), and masks of
    the whole tumour (the FLAIR abnormality) as 0/255. Intensities are scaled per patient and
    channel so that the 99.9th percentile of the brain is 255, like the Kaggle files. Slices
    above and below the tumour are tumour-free, as in the real data.

    Args:
        out_dir: the kaggle_3m folder to write (created; existing files are replaced).
        num_patients: patients to write.
        shape: (height, width, slices) of each patient, each >= 16.
        seed: the same seed writes identical files.
        with_masks: write the ``_mask.tif`` files (``False``: an inference input folder).
        prefix: patient ids are :func:`kaggle_3m_patient_id` of it.

    Returns:
        The patient ids written.

    Raises:
        ValueError: ``num_patients`` < 1 or a bad shape.
    """
    from tumorseg.data.synthetic import make_phantom

    if isinstance(num_patients, bool) or not isinstance(num_patients, int) or num_patients < 1:
        raise ValueError(f"num_patients must be an integer >= 1, got {num_patients!r}")
    root = Path(out_dir).expanduser()
    patients = []
    for i in range(num_patients):
        patient = kaggle_3m_patient_id(prefix, i)
        images, label = make_phantom(shape, seed=seed * 10_007 + i, num_tumours=1)
        rgb = images[list(_PHANTOM_TO_RGB)]
        brain = rgb[1] > 0
        top = np.array([np.percentile(c[brain], 99.9) if brain.any() else 1.0 for c in rgb])
        scaled = np.clip(rgb / np.maximum(top, 1e-6)[:, None, None, None] * 255.0, 0, 255)
        volume = np.rint(scaled).astype(np.uint8)
        for k in range(shape[2]):
            stem = root / patient / f"{patient}_{k + 1}"
            _save_tif(
                np.ascontiguousarray(np.moveaxis(volume[:, :, :, k], 0, -1)), Path(f"{stem}.tif")
            )
            if with_masks:
                mask = np.where(label[:, :, k] > 0, 255, 0).astype(np.uint8)
                _save_tif(mask, Path(f"{stem}_mask.tif"))
        patients.append(patient)
    return patients


def ensure_lgg_demo_dataset(demo_dir: str | os.PathLike[str]) -> str:
    """The synthetic kaggle_3m demo set in ``demo_dir`` (:data:`LGG_DEMO_DATASET`), generated
    once (by rank 0 only in a multi-process job; see
    :func:`tumorseg.ranks.ensure_generated`)."""
    return ensure_generated(
        demo_dir,
        settings=LGG_DEMO_DATASET,
        generate=lambda root: generate_kaggle_3m(root, **LGG_DEMO_DATASET),
        marker=".tumorseg_lgg_demo.json",
        what="the synthetic kaggle_3m demo set",
    )


# --------------------------------------------------------------------------- scores


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


def overlap_scores(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two binary masks of any dimension.

    Both empty scores (1, 1): a tumour-free slice predicted tumour-free is right, the usual
    LGG convention, so per-slice means reward the absence of false positives.
    """
    p = np.asarray(pred, bool)
    r = np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"prediction {p.shape} and reference {r.shape} differ in shape")
    inter = float(np.count_nonzero(p & r))
    total = float(np.count_nonzero(p) + np.count_nonzero(r))
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def remove_isolated_false_positives(
    volume: np.ndarray, *, min_slices: int = 2, min_voxels: int = 0
) -> np.ndarray:
    """Drop 3D connected components that span fewer than ``min_slices`` slices or hold
    fewer than ``min_voxels`` voxels.

    A real lesion continues over neighbouring slices; a 2D network's false positive on a
    tumour-free slice usually does not, so it is a component confined to one slice. Components
    use 26-connectivity, so a lesion that shifts diagonally between slices stays one.

    Args:
        volume: ``(slices, H, W)`` binary prediction of one patient.
        min_slices: keep components spanning at least this many slices (1 keeps all).
        min_voxels: keep components of at least this many voxels.

    Returns:
        A boolean volume of the same shape.
    """
    mask = np.asarray(volume, bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a (slices, H, W) volume, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask
    keep = np.zeros(count + 1, bool)
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        span = box[0].stop - box[0].start
        size = int(np.count_nonzero(labels[box] == number))
        keep[number] = span >= min_slices and size >= min_voxels
    return keep[labels]


def score_patients(
    preds: Mapping[str, Mapping[int, np.ndarray]],
    refs: Mapping[str, Mapping[int, np.ndarray]],
    *,
    min_slices: int = 0,
) -> dict[str, Any]:
    """Per-slice and per-patient Dice and IoU of 2D predictions re-stacked per patient.

    Args:
        preds: patient -> slice index -> binary (H, W) prediction.
        refs: the references, same keys.
        min_slices: when > 0, :func:`remove_isolated_false_positives` is applied to each
            patient's stacked prediction first.

    Returns:
        ``{"slice": {case_id: (dice, iou)}, "patient": {patient: (dice, iou)},
        "slice_dice", "slice_iou", "patient_dice", "patient_iou"}`` (the last four are means).

    Raises:
        ValueError: a patient or slice missing from ``refs``.
    """
    per_slice: dict[str, tuple[float, float]] = {}
    per_patient: dict[str, tuple[float, float]] = {}
    for patient in sorted(preds):
        if patient not in refs or set(refs[patient]) != set(preds[patient]):
            raise ValueError(f"patient {patient!r}: predictions and references differ in slices")
        pred = stack_patient(preds[patient])
        ref = stack_patient(refs[patient])
        if min_slices > 0:
            pred = remove_isolated_false_positives(pred, min_slices=min_slices)
        for k, index in enumerate(sorted(preds[patient])):
            per_slice[f"{patient}_{index}"] = overlap_scores(pred[k], ref[k])
        per_patient[patient] = overlap_scores(pred, ref)

    def mean(values: Iterable[tuple[float, float]], k: int) -> float:
        picked = [v[k] for v in values]
        return float(np.mean(picked)) if picked else float("nan")

    return {
        "slice": per_slice,
        "patient": per_patient,
        "slice_dice": mean(per_slice.values(), 0),
        "slice_iou": mean(per_slice.values(), 1),
        "patient_dice": mean(per_patient.values(), 0),
        "patient_iou": mean(per_patient.values(), 1),
    }


def _to_numpy(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def _slice_of(item: Mapping[str, Any]) -> tuple[str, int]:
    image = item.get("image")
    meta = getattr(image, "meta", None) or {}
    name = meta.get("filename_or_obj")
    parsed = parse_slice_name(Path(str(name)).name) if name else None
    if parsed is None:
        raise ValueError(
            "LGGOverlapMetric needs the image's file name <patient>_<n>.tif in its metadata "
            f"(MetaTensor 'filename_or_obj'), got {name!r}"
        )
    return parsed[0], parsed[1]


def _unpack(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The boolean mask of ``shape`` that ``np.packbits`` turned into ``bits``."""
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape) > 0


class LGGOverlapMetric(Metric):
    """Ignite metric: mean Dice or IoU per slice or per patient (slices re-stacked).

    Attach as a MONAI evaluator metric; it reads the evaluator's decollated output (a list of
    dicts with ``pred``, ``label`` and ``image``, whose metadata names the slice file), keeps
    each slice's binary masks, and scores when the epoch completes.

    Args:
        level: ``slice`` or ``patient``.
        kind: ``dice`` or ``iou``.
        min_slices: > 0 applies :func:`remove_isolated_false_positives` per patient first.
        save_path: optional CSV of the per-slice or per-patient scores, written atomically
            every time the metric is computed.
        output_transform: ignite's output transform (default: the engine output as is).
    """

    def __init__(
        self,
        *,
        level: str = "patient",
        kind: str = "dice",
        min_slices: int = 0,
        save_path: str | os.PathLike[str] | None = None,
        output_transform: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        if level not in ("slice", "patient"):
            raise ValueError(f"level must be 'slice' or 'patient', got {level!r}")
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', got {kind!r}")
        self.level = level
        self.kind = kind
        self.min_slices = int(min_slices)
        self.save_path = Path(save_path) if save_path else None
        self._preds: dict[str, dict[int, np.ndarray]] = {}
        self._refs: dict[str, dict[int, np.ndarray]] = {}
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        """Forget the slices of the previous epoch."""
        self._preds = {}
        self._refs = {}

    def update(self, output: Any) -> None:
        """Keep the binary masks of a batch of slices (channel 0 of ``pred`` and ``label``)."""
        items = output if isinstance(output, Sequence) else [output]
        for item in items:
            patient, index = _slice_of(item)
            pred = _to_numpy(item["pred"])
            ref = _to_numpy(item["label"])
            self._preds.setdefault(patient, {})[index] = pred.reshape(pred.shape[-2:]) > 0.5
            self._refs.setdefault(patient, {})[index] = ref.reshape(ref.shape[-2:]) > 0.5

    def _gathered(
        self,
    ) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, dict[int, np.ndarray]]]:
        """The masks of every rank's slices (this rank's alone without a process group).

        Under DDP each rank validates only its shard of the slices, and a patient's slices
        land on several ranks, so per-patient scores need everyone's slices. Masks travel
        bit-packed (8x smaller than bool arrays) through ``all_gather_object``, which every
        backend supports for Python objects.
        """
        import torch.distributed as dist

        _, world_size = process_group()
        if world_size < 2:
            return self._preds, self._refs
        mine = {
            patient: {
                index: (pred.shape, np.packbits(pred), np.packbits(self._refs[patient][index]))
                for index, pred in slices.items()
            }
            for patient, slices in self._preds.items()
        }
        parts: list[Any] = [None] * world_size
        dist.all_gather_object(parts, mine)
        preds: dict[str, dict[int, np.ndarray]] = {}
        refs: dict[str, dict[int, np.ndarray]] = {}
        for part in parts:
            for patient, slices in part.items():
                for index, (shape, pred, ref) in slices.items():
                    # A padding sampler repeats slices on some ranks: keyed by (patient,
                    # slice), a repeat replaces its identical twin, so nothing counts twice.
                    preds.setdefault(patient, {})[index] = _unpack(pred, shape)
                    refs.setdefault(patient, {})[index] = _unpack(ref, shape)
        return preds, refs

    def compute(self) -> float:
        """The mean score over the slices or patients seen this epoch, by every rank.

        Under ``torch.distributed`` every rank must call it (the evaluator does, at the end of
        each epoch): the slices are all-gathered first. Only rank 0 writes ``save_path``.
        """
        preds, refs = self._gathered()
        if not preds:
            return float("nan")
        scores = score_patients(preds, refs, min_slices=self.min_slices)
        if self.save_path is not None and is_rank0():
            column = 0 if self.kind == "dice" else 1
            lines = io.StringIO()
            writer = csv.writer(lines, lineterminator="\n")
            writer.writerow([self.level, self.kind])
            for key, value in scores[self.level].items():
                writer.writerow([key, f"{value[column]:.6f}"])
            atomic_write_text(self.save_path, lines.getvalue())
        return float(scores[f"{self.level}_{self.kind}"])


# --------------------------------------------------------------------------- inference


@dataclass
class LGGInferenceReport:
    """What :func:`segment_kaggle_3m_folder` wrote and what went wrong."""

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def raise_for_failures(self) -> LGGInferenceReport:
        """Raise :class:`LGGDatasetError` listing every failure; else return ``self``."""
        if self.failures:
            raise LGGDatasetError(
                f"{len(self.failures)} problem(s) while segmenting (the other slices were "
                "written):\n" + "\n".join(self.failures)
            )
        return self


def segment_kaggle_3m_folder(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    network: Any,
    preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
    device: Any = "cpu",
    threshold: float = 0.5,
    min_slices: int = 0,
    batch_size: int = 16,
    overwrite: bool = False,
) -> LGGInferenceReport:
    """Segment every slice of a kaggle_3m folder; write ``<patient>/<patient>_<n>_mask.tif``.

    Masks are 0/255 uint8 TIFs of the image's size, in the input's layout. Each patient's
    predictions are stacked by slice index before the optional 3D clean-up. Bad files are
    reported (never fatal); a patient whose slices fail is reported and the others go on.

    Args:
        input_dir: kaggle_3m folder (masks there are ignored).
        output_dir: where the mask TIFs go.
        network: the 2D network (sigmoid logits, channel 0 is the abnormality).
        preprocessing: the bundle's validation preprocessing, applied to ``{"image": path}``.
        device: torch device to run on.
        threshold: probability threshold.
        min_slices: > 0 applies :func:`remove_isolated_false_positives` per patient.
        batch_size: slices per forward pass.
        overwrite: replace existing masks (otherwise a patient already done is skipped).

    Returns:
        The report; call ``raise_for_failures()`` to turn problems into an error.
    """
    import torch

    found = discover_kaggle_3m(input_dir)
    report = LGGInferenceReport(failures=list(found.problems))
    out_root = Path(output_dir).expanduser()
    network.eval()
    for patient in found.patients:
        targets = {
            s.index: out_root / patient.patient_id / f"{s.case_id}_mask.tif" for s in patient.slices
        }
        if not overwrite and all(t.exists() for t in targets.values()):
            logger.info("%s: masks exist, skipped (overwrite=False)", patient.patient_id)
            continue
        try:
            masks: dict[int, np.ndarray] = {}
            height, width = patient.size
            for start in range(0, len(patient.slices), batch_size):
                chunk = patient.slices[start : start + batch_size]
                batch = torch.stack(
                    [
                        torch.as_tensor(preprocessing({"image": str(s.image)})["image"])
                        for s in chunk
                    ]
                )
                with torch.no_grad():
                    probs = torch.sigmoid(network(batch.to(device)))
                # Padding added by the preprocessing (DivisiblePad) is at the end: crop it away.
                binary = (probs[:, 0, :height, :width] > threshold).cpu().numpy()
                for s, mask in zip(chunk, binary, strict=True):
                    masks[s.index] = mask
            volume = stack_patient(masks)
            if min_slices > 0:
                volume = remove_isolated_false_positives(volume, min_slices=min_slices)
            for k, index in enumerate(sorted(masks)):
                _save_tif(np.where(volume[k], 255, 0).astype(np.uint8), targets[index])
                report.written.append(targets[index])
        except Exception as err:  # noqa: BLE001 - one bad patient must not stop the others
            report.failures.append(f"{patient.folder}: segmentation failed: {err}")
            logger.error("%s: segmentation failed: %s", patient.patient_id, err)
    return report


def is_lgg_bundle(bundle: str | os.PathLike[str]) -> bool:
    """True when the bundle's ``configs/train.json`` trains on kaggle_3m slices.

    That is, its ``data`` is :class:`LGGData`; ``tumorseg infer`` then segments a kaggle_3m
    folder (:func:`segment_with_bundle`) instead of 3D studies.

    Raises:
        ValueError: ``train.json`` is not valid JSON (the message names it).
    """
    train = Path(bundle).expanduser() / "configs" / "train.json"
    if not train.is_file():
        return False
    config = read_json(train, what="bundle config")
    data = config.get("data") if isinstance(config, dict) else None
    target = str(data.get("_target_", "")) if isinstance(data, dict) else ""
    return target.rsplit(".", 1)[-1] == LGGData.__name__


def segment_with_bundle(
    bundle: str | os.PathLike[str],
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    config_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
) -> LGGInferenceReport:
    """Segment a kaggle_3m folder with an LGG bundle, as its ``inference.json`` does.

    The bundle's ``train.json`` and ``inference.json`` (then ``config_files``) are parsed
    and their ``infer`` (:func:`segment_kaggle_3m_folder` with the bundle's network,
    validation preprocessing, threshold and 3D clean-up) is called, so this and
    ``monai.bundle run inferring`` make the same masks.

    Args:
        bundle: the bundle folder.
        input_dir: kaggle_3m folder to segment.
        output_dir: where ``<patient>/<patient>_<n>_mask.tif`` go.
        checkpoint: weights; default the bundle's ``checkpoint`` (``<ckpt_dir>/model.pt``).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; default the bundle's.
        overwrite: redo patients whose masks exist.
        config_files: more configs merged last (paths, or names under the bundle's
            ``configs/``, e.g. ``networks/transunet.json``).
        overrides: config ids -> values set after reading the configs.

    Returns:
        The report: masks written and every failure (bad files, failed patients).

    Raises:
        FileNotFoundError: a missing config file or checkpoint.
        ValueError: weights that do not fit the network; :class:`LGGDatasetError` for an
            input folder that is missing or holds no usable slice.
    """
    import torch
    from monai.bundle import ConfigParser

    root = Path(bundle).expanduser()
    configs = root / "configs"
    files = [configs / "train.json", configs / "inference.json"]
    for name in config_files:
        path = Path(name)
        files.append(path if path.is_file() else configs / path)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path} (bundle {str(root)!r})")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if (configs / "metadata.json").is_file():
        parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    parser["dataset_dir"] = str(input_dir)
    parser["output_dir"] = str(output_dir)
    parser["overwrite"] = bool(overwrite)
    if device is not None:
        parser["device"] = torch.device(device)
    if checkpoint is not None:
        parser["checkpoint"] = str(checkpoint)
    # The weights first: a missing checkpoint is reported before any input is read.
    try:
        network = parser.get_parsed_content("network")
    except RuntimeError as err:
        # MONAI says only "Failed to instantiate component"; the cause says what is wrong.
        cause = f": {err.__cause__}" if err.__cause__ is not None else ""
        raise ValueError(
            f"cannot build the network of bundle {str(root)!r} from "
            f"{[f.name for f in files]}{cause}"
        ) from None
    from tumorseg.training.checkpoint import load_network_weights

    load_network_weights(
        network,
        parser.get_parsed_content("checkpoint"),
        settings=f"channels={parser.get_parsed_content('channels')}",
        hint="pass the same ones (e.g. --override channels=[...], a network file such as "
        "networks/transunet.json) or the matching --checkpoint",
    )
    infer = parser.get_parsed_content("infer")
    report: LGGInferenceReport = infer(
        parser.get_parsed_content("input_dir"), parser.get_parsed_content("output_dir")
    )
    return report
