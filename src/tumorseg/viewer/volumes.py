"""The NIfTI volumes the browser viewer (NiiVue) loads: cropped to the head, compact, gzipped.

A loaded case (:class:`~tumorseg.viewer.store.CaseVolumes`, RAS+ voxel order) is cut to the
bounding box of its non-zero voxels (images and labels, plus a margin), so that the background
around the head is not sent; the affine is shifted to match, so every volume of a case stays on
one grid in world coordinates. Integer-valued images go out as ``int16``, labels as ``uint8``,
and the file is gzipped at a fast level.
"""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np

from tumorseg.conventions import get_convention

__all__ = [
    "LABEL_VOLUMES",
    "crop_box",
    "encode_nifti",
    "label_table",
    "outline",
    "volume_nifti",
]

#: Label volumes a case may offer besides its modalities: the prediction, the reference, and
#: the prediction's outline (its boundary voxels, drawn over the filled reference).
LABEL_VOLUMES: tuple[str, ...] = ("pred", "ref", "pred_outline")
_MARGIN = 2


def crop_box(vol: Any, margin: int = _MARGIN) -> tuple[slice, slice, slice]:
    """The bounding box of the non-zero voxels of every image and label map, plus ``margin``.

    Args:
        vol: a :class:`~tumorseg.viewer.store.CaseVolumes`.
        margin: voxels kept around the box on each side.

    Returns:
        One slice per axis; the whole volume when everything is zero.
    """
    shape = vol.pred.shape
    occupied = vol.pred != 0
    for image in vol.images.values():
        occupied |= image != 0
    if vol.ref is not None:
        occupied |= vol.ref != 0
    if not occupied.any():
        return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(occupied.any(axis=other))
        box.append(
            slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, shape[axis]))
        )
    return (box[0], box[1], box[2])


def encode_nifti(data: np.ndarray, affine: np.ndarray, *, level: int = 1) -> bytes:
    """A gzipped single-file NIfTI-1 of ``data`` on ``affine`` (sform and qform set)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=level, mtime=0)


def _compact(image: np.ndarray) -> np.ndarray:
    """``int16`` when the intensities are integers that fit (as scanners store them)."""
    if image.size and np.all(np.mod(image, 1) == 0):
        low, high = float(image.min()), float(image.max())
        if low >= np.iinfo(np.int16).min and high <= np.iinfo(np.int16).max:
            return image.astype(np.int16)
    return image.astype(np.float32)


def outline(labels: np.ndarray) -> np.ndarray:
    """The labelled voxels with a 6-neighbour of another value (the label's 3D boundary)."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        diff = np.diff(labels, axis=axis) != 0
        lead = [slice(None)] * labels.ndim
        trail = [slice(None)] * labels.ndim
        lead[axis], trail[axis] = slice(0, -1), slice(1, None)
        edge[tuple(lead)] |= diff
        edge[tuple(trail)] |= diff
    return np.where(edge & (labels != 0), labels, 0).astype(np.uint8)


def volume_nifti(vol: Any, name: str) -> bytes:
    """One volume of a loaded case as gzipped NIfTI bytes, cropped to the case's box.

    Args:
        vol: a :class:`~tumorseg.viewer.store.CaseVolumes` (RAS+ order, with its affine).
        name: a modality of the case (``flair``, ...), or ``pred``, ``ref``, ``pred_outline``.

    Raises:
        ValueError: for a name the case does not have (the names it has are listed).
    """
    if vol.crop is None:
        vol.crop = crop_box(vol)
    box = vol.crop
    if name in vol.images:
        data = _compact(vol.images[name][box])
    elif name == "pred":
        data = vol.pred[box]
    elif name == "pred_outline":
        data = outline(vol.pred[box])
    elif name == "ref" and vol.ref is not None:
        data = vol.ref[box]
    else:
        have = [*vol.images, "pred", "pred_outline", *(["ref"] if vol.ref is not None else [])]
        raise ValueError(f"unknown volume {name!r}; this case has {have}")
    affine = np.array(vol.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], float) + affine[:3, 3]
    return encode_nifti(data, affine)


def label_table(convention: str, colours: dict[str, tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The classes of ``convention`` for the page: name, label value, RGB colour."""
    conv = get_convention(convention)
    return [
        {"name": name, "value": int(value), "colour": list(colours[name])}
        for name, value in conv.classes.items()
        if name in colours
    ]
