"""Cases of an output folder, their volumes in RAS order, and slices rendered to PNG.

A *case* is a mask ``<output_dir>/<case_id>.nii.gz`` (as written by ``tumorseg infer``), with
its images and reference label found in an optional dataset folder (by case id, through
:func:`tumorseg.data.discover_cases`) or in ``<output_dir>/uploads/<case_id>/`` for studies
uploaded to the viewer. Clients only ever name a case id, which is looked up in the scanned
table: no client string is joined into a path.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import (
    CHANNEL_ORDER,
    CLASS_COLOURS,
    CLASSES,
    get_convention,
    get_layout,
)
from tumorseg.io import is_temporary
from tumorseg.viewer.caselist import label_figures
from tumorseg.viewer.volumes import LABEL_VOLUMES, label_table, volume_nifti

__all__ = [
    "CLASS_COLOURS",
    "UPLOADS_DIR",
    "VIEWS",
    "CaseEntry",
    "CaseVolumes",
    "ResultsStore",
    "render_slice",
]

#: Folder of the output folder holding uploaded studies, one sub-folder per generated case id.
UPLOADS_DIR = "uploads"
#: The three orthogonal views, named after the RAS axis they cut (axial cuts S, ...).
VIEWS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
_MASK_SUFFIXES = (".nii.gz", ".nii")
_CACHE_CASES = 4
_CACHE_VOLUMES = 12


@dataclass(frozen=True)
class CaseEntry:
    """Where one case's files are.

    Attributes:
        case_id: the case.
        mask: the predicted label map.
        images: the four modality files in ``CHANNEL_ORDER``, one 4D file, or empty.
        reference: the reference label map, or None.
        convention: label convention of mask and reference.
    """

    case_id: str
    mask: Path
    images: tuple[Path, ...]
    reference: Path | None
    convention: str


@dataclass
class CaseVolumes:
    """One case loaded in RAS+ voxel order (``nibabel.as_closest_canonical``).

    Attributes:
        images: modality name -> ``(X, Y, Z)`` float32 intensities (may be empty).
        windows: modality name -> display window ``(low, high)``.
        pred: ``(X, Y, Z)`` uint8 predicted labels.
        ref: reference labels on the same grid, or None.
        zooms: voxel size in mm along X, Y, Z.
        voxel_ml: volume of one voxel in mL.
        affine: voxel-to-world (RAS mm) affine of the RAS+ ordered volumes.
        crop: the box the page's volumes are cut to (set on first use).
    """

    images: dict[str, np.ndarray]
    windows: dict[str, tuple[float, float]]
    pred: np.ndarray
    ref: np.ndarray | None
    zooms: tuple[float, float, float]
    voxel_ml: float
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    crop: tuple[slice, slice, slice] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _canonical(path: Path) -> tuple[np.ndarray, Any]:
    import nibabel as nib

    img: Any = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(img.dataobj), img


def _window(volume: np.ndarray) -> tuple[float, float]:
    # Percentiles of the non-zero voxels: the background would pull the window to 0.
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _mask_case_id(path: Path) -> str | None:
    name = path.name
    if name.startswith(".") or is_temporary(path):
        return None
    for suffix in _MASK_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


class ResultsStore:
    """The cases of an output folder, scanned on demand, with a small cache of loaded cases.

    Args:
        output_dir: folder of ``<case_id>.nii.gz`` masks.
        data_dir: dataset folder with the cases' images (and reference labels), or None.
        label_convention: convention of the masks; default the dataset layout's own, else
            ``brats2021``.

    Raises:
        FileNotFoundError: when ``output_dir`` (or a given ``data_dir``) is not a folder.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        data_dir: str | os.PathLike[str] | None = None,
        label_convention: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        if not self.output_dir.is_dir():
            raise FileNotFoundError(f"output folder {str(self.output_dir)!r} does not exist")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._data_cases: dict[str, Any] = {}
        layout_convention = None
        if self.data_dir is not None:
            from tumorseg.data import discover_cases

            if not self.data_dir.is_dir():
                raise FileNotFoundError(f"dataset folder {str(self.data_dir)!r} does not exist")
            for case in discover_cases(self.data_dir):
                self._data_cases[case.case_id] = case
                layout_convention = get_layout(case.layout).label_convention
        self.convention = get_convention(label_convention or layout_convention or "brats2021").name
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, float], CaseVolumes] = OrderedDict()
        self._volume_cache: OrderedDict[tuple[str, float, str], bytes] = OrderedDict()
        self._scan: tuple[tuple[int, int], dict[str, CaseEntry]] | None = None

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded studies are kept (``<output_dir>/uploads``)."""
        return self.output_dir / UPLOADS_DIR

    def uploaded_images(self, case_id: str) -> tuple[Path, ...]:
        """The image files of an uploaded study (empty when ``case_id`` was not uploaded)."""
        folder = self.uploads_dir / case_id
        four = tuple(folder / f"{m}.nii.gz" for m in CHANNEL_ORDER)
        if all(p.is_file() for p in four):
            return four
        single = folder / "image.nii.gz"
        return (single,) if single.is_file() else ()

    def _stamp(self) -> tuple[int, int]:
        """Modification times of the output and uploads folders: a mask or an uploaded
        study's folder added, renamed or removed changes them."""
        try:
            uploads = self.uploads_dir.stat().st_mtime_ns
        except OSError:
            uploads = 0
        return self.output_dir.stat().st_mtime_ns, uploads

    def cases(self) -> dict[str, CaseEntry]:
        """Scan the output folder: case id -> files, sorted by case id (the scan is kept
        while the folders are unchanged)."""
        stamp = self._stamp()
        with self._lock:
            if self._scan is not None and self._scan[0] == stamp:
                return dict(self._scan[1])
        found = self._scan_cases()
        with self._lock:
            self._scan = (stamp, found)
        return dict(found)

    def _scan_cases(self) -> dict[str, CaseEntry]:
        found: dict[str, CaseEntry] = {}
        # One directory listing each (a stat per file would cost seconds with 1,000s of cases).
        with os.scandir(self.output_dir) as listing:
            masks = sorted(e.path for e in listing if e.is_file())
        try:
            with os.scandir(self.uploads_dir) as listing:
                uploaded = {e.name for e in listing if e.is_dir()}
        except OSError:
            uploaded = set()
        for name in masks:
            path = Path(name)
            case_id = _mask_case_id(path)
            if case_id is None or case_id in found:
                continue
            data = self._data_cases.get(case_id)
            if data is not None:
                images: tuple[Path, ...] = tuple(data.images)
            else:
                images = self.uploaded_images(case_id) if case_id in uploaded else ()
            reference = data.label if data is not None else None
            found[case_id] = CaseEntry(case_id, path, images, reference, self.convention)
        return found

    def get(self, case_id: str) -> CaseEntry:
        """The case named ``case_id``.

        Raises:
            KeyError: for an id that is not a case of the output folder.
        """
        entry = self.cases().get(case_id)
        if entry is None:
            raise KeyError(case_id)
        return entry

    def load(self, entry: CaseEntry) -> CaseVolumes:
        """The case's volumes in RAS order (cached while the mask file is unchanged)."""
        key = (entry.case_id, entry.mask.stat().st_mtime)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        volumes = self._load(entry)
        with self._lock:
            self._cache[key] = volumes
            while len(self._cache) > _CACHE_CASES:
                self._cache.popitem(last=False)
        return volumes

    def _load(self, entry: CaseEntry) -> CaseVolumes:
        pred, img = _canonical(entry.mask)
        pred = np.asarray(pred, dtype=np.uint8)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        images: dict[str, np.ndarray] = {}
        if len(entry.images) == len(CHANNEL_ORDER):
            for name, path in zip(CHANNEL_ORDER, entry.images, strict=True):
                images[name] = np.asarray(_canonical(path)[0], dtype=np.float32)
        elif len(entry.images) == 1:
            data = np.asarray(_canonical(entry.images[0])[0], dtype=np.float32)
            for c, name in enumerate(CHANNEL_ORDER[: data.shape[-1] if data.ndim == 4 else 1]):
                images[name] = data[..., c] if data.ndim == 4 else data
        # A study on another grid than the mask cannot be overlaid voxel by voxel; show the
        # mask alone rather than a misregistered picture.
        images = {k: v for k, v in images.items() if v.shape == pred.shape}
        ref = None
        if entry.reference is not None:
            ref_data = np.asarray(_canonical(entry.reference)[0], dtype=np.uint8)
            ref = ref_data if ref_data.shape == pred.shape else None
        volumes = CaseVolumes(
            images=images,
            windows={k: _window(v) for k, v in images.items()},
            pred=pred,
            ref=ref,
            zooms=(zooms[0], zooms[1], zooms[2]),
            voxel_ml=float(np.prod(zooms)) / 1000.0,
            affine=np.asarray(img.affine, dtype=np.float64),
        )
        volumes.summary = self._summary(entry, volumes)
        return volumes

    def _summary(self, entry: CaseEntry, vol: CaseVolumes) -> dict[str, Any]:
        conv = get_convention(entry.convention)
        figures = label_figures(vol.pred, vol.ref, vol.affine, entry.convention)
        volumes = {r: round(v, 3) for r, v in figures["volumes_ml"].items()}
        dice = {r: round(v, 4) for r, v in figures.get("dice", {}).items()}
        wt = np.isin(vol.pred, list(conv.region_values("WT")))
        # Open on the slices through the tumour's centre, not on the volume's middle.
        focus = (
            [int(round(float(c))) for c in np.argwhere(wt).mean(axis=0)]
            if wt.any()
            else [s // 2 for s in vol.pred.shape]
        )
        has_ref = vol.ref is not None
        return {
            "case_id": entry.case_id,
            "shape": list(vol.pred.shape),
            "zooms": list(vol.zooms),
            "modalities": list(vol.images),
            "has_reference": vol.ref is not None,
            "volumes_ml": volumes,
            "dice": dice or None,
            "focus": focus,
            "focus_mm": [float(v) for v in (vol.affine @ [*focus, 1.0])[:3]],
            "windows": {k: list(v) for k, v in vol.windows.items()},
            "labels": label_table(entry.convention, CLASS_COLOURS),
            "volumes": [*vol.images, *(n for n in LABEL_VOLUMES if n != "ref" or has_ref)],
        }

    def volume(self, case_id: str, name: str) -> bytes:
        """One volume of a case as gzipped NIfTI (:func:`~tumorseg.viewer.volumes.volume_nifti`).

        Args:
            case_id: the case.
            name: a modality (``flair``, ...), ``pred``, ``ref`` or ``pred_outline``.

        Raises:
            KeyError: for an unknown case id.
            ValueError: for a volume the case does not have.
        """
        entry = self.get(case_id)
        key = (entry.case_id, entry.mask.stat().st_mtime, name)
        with self._lock:
            if key in self._volume_cache:
                self._volume_cache.move_to_end(key)
                return self._volume_cache[key]
        data = volume_nifti(self.load(entry), name)
        with self._lock:
            self._volume_cache[key] = data
            while len(self._volume_cache) > _CACHE_VOLUMES:
                self._volume_cache.popitem(last=False)
        return data

    def summary(self, case_id: str) -> dict[str, Any]:
        """Shape, modalities, region volumes (mL), Dice (with a reference) of one case.

        Raises:
            KeyError: for an unknown case id.
        """
        return self.load(self.get(case_id)).summary


def _oriented(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """A 2D cut for display: radiological (patient's right on the left), superior/anterior up."""
    axis = VIEWS[view]
    cut = np.take(volume, index, axis=axis).T  # rows: the later RAS axis, columns: the earlier
    return cut[::-1, :] if view == "sagittal" else cut[::-1, ::-1]


def render_slice(
    vol: CaseVolumes,
    *,
    view: str,
    index: int,
    modality: str | None = None,
    source: str = "pred",
    opacity: float = 0.5,
    classes: tuple[str, ...] = CLASSES,
    convention: str = "brats2021",
    min_size: int = 256,
) -> bytes:
    """One slice with the label overlaid, as PNG bytes.

    Args:
        vol: the loaded case.
        view: ``axial``, ``coronal`` or ``sagittal``.
        index: slice index along the view's RAS axis (clipped to the volume).
        modality: image under the overlay; default the first available (black if none).
        source: ``pred`` or ``ref`` (reference) labels.
        opacity: overlay opacity in [0, 1].
        classes: label classes to draw (``NCR``, ``ED``, ``ET``).
        convention: label convention of the volumes.
        min_size: the longer side is scaled up to at least this many pixels.

    Raises:
        ValueError: for an unknown view, source, modality or class.
    """
    from PIL import Image

    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {list(VIEWS)}")
    if source not in ("pred", "ref"):
        raise ValueError(f"unknown source {source!r}; expected pred or ref")
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}; expected some of {list(CLASSES)}")
    labels = vol.pred if source == "pred" else vol.ref
    if labels is None:
        raise ValueError("this case has no reference label")
    if modality is None:
        modality = next(iter(vol.images), None)
    elif modality not in vol.images:
        raise ValueError(f"unknown modality {modality!r}; this case has {list(vol.images)}")
    index = int(np.clip(index, 0, labels.shape[VIEWS[view]] - 1))
    lab = _oriented(labels, view, index)
    if modality is None:
        gray = np.zeros(lab.shape, np.float32)
    else:
        low, high = vol.windows[modality]
        gray = np.clip((_oriented(vol.images[modality], view, index) - low) / (high - low), 0, 1)
    rgb = np.repeat(gray[..., None] * 255.0, 3, axis=-1)
    conv = get_convention(convention)
    alpha = float(np.clip(opacity, 0.0, 1.0))
    for name in classes:
        mask = lab == conv.classes[name]
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(CLASS_COLOURS[name], np.float32)
    image = Image.fromarray(np.ascontiguousarray(rgb.round().astype(np.uint8)), mode="RGB")
    # Physical aspect ratio: columns/rows of a cut are the two RAS axes other than the view's.
    col_axis, row_axis = [a for a in range(3) if a != VIEWS[view]]
    width_mm = lab.shape[1] * vol.zooms[col_axis]
    height_mm = lab.shape[0] * vol.zooms[row_axis]
    scale = max(min_size / max(width_mm, height_mm), 1.0)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    image = image.resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
