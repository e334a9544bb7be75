"""Atomic output files: label maps in the input's exact geometry, probability maps, CSV tables.

Every file is written under a hidden temporary name in its destination folder, flushed to
disk and renamed over the final name (``os.replace`` is atomic on POSIX and Windows), so a run
killed at any moment leaves either the complete previous file, the complete new one, or a
hidden ``.<name>.*.tmp`` that :func:`remove_stale_temporaries` clears on the next run. Since a
mask only appears once complete, "the mask exists" is a safe "this case is done" test.

The label map copies the header of the input's first modality byte for byte (qform and sform
with their codes, units, description) and changes only the data type and shape, so it overlays
the input in any viewer, whichever of qform or sform the viewer prefers.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.io import TMP_SUFFIX, atomic_write_bytes, is_temporary

__all__ = [
    "TMP_SUFFIX",
    "atomic_write_bytes",
    "label_image",
    "remove_stale_temporaries",
    "write_csv_atomic",
    "write_label_atomic",
    "write_probabilities_atomic",
]


# Level 1 compresses a mostly-empty uint8 mask nearly as well as level 9 at a fraction of the
# time; nibabel uses the same default.
_GZIP_LEVEL = 1


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed run left in ``folder`` (only this module's own).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        # Only names made by atomic_write_bytes: ".<final name>.<random>.tmp".
        if p.is_file() and is_temporary(p):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def label_image(label: np.ndarray, reference: Any | None, affine: np.ndarray | None = None) -> Any:
    """A NIfTI image of ``label`` (uint8) whose header is ``reference``'s but for type and shape.

    Args:
        label: ``(X, Y, Z)`` label map in the reference's voxel order.
        reference: nibabel NIfTI-1/2 header of the input study; None for non-NIfTI inputs,
            which get ``affine`` as qform and sform (code 1, scanner).
        affine: the voxel-to-world affine, used only when ``reference`` is None.

    Raises:
        ValueError: when the label's shape is not the reference's spatial shape.
    """
    import nibabel as nib

    label = np.asarray(label, dtype=np.uint8)
    if reference is None:
        if affine is None:
            raise ValueError("label_image needs a reference header or an affine")
        img = nib.Nifti1Image(label, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
        return img
    spatial = tuple(int(s) for s in reference.get_data_shape()[:3])
    if label.shape != spatial:
        raise ValueError(f"label shape {label.shape} differs from the input's {spatial}")
    header = reference.copy()
    header.set_data_shape(label.shape)
    header.set_data_dtype(np.uint8)
    # A scaled or windowed source (scl_slope, cal_min/max) must not rescale or window the labels,
    # and a 4D source's intent (MSD: vector) does not describe a label map.
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    header.set_intent("none")
    image_class = nib.Nifti2Image if isinstance(reference, nib.Nifti2Header) else nib.Nifti1Image
    # affine=None keeps the header's qform and sform (and their codes) exactly as they are.
    return image_class(label, None, header=header)


def write_label_atomic(path: str | os.PathLike[str], image: Any) -> Path:
    """Write a NIfTI image atomically; ``.nii.gz`` paths are gzip-compressed."""
    data = image.to_bytes()
    if str(path).lower().endswith(".gz"):
        # mtime=0: identical masks give identical files, so reruns and both entry points
        # (CLI, bundle) can be compared byte for byte.
        data = gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)
    return atomic_write_bytes(path, data)


def write_probabilities_atomic(
    path: str | os.PathLike[str],
    probabilities: np.ndarray,
    *,
    affine: np.ndarray,
    regions: Sequence[str],
) -> Path:
    """Write region probabilities as a float16 ``.npz`` (NIfTI has no float16 type).

    The archive holds ``probabilities`` (float16, ``(len(regions), X, Y, Z)`` on the input's
    voxel grid, the same grid as the mask), ``affine`` (float64 4x4) and ``regions``; load it
    with :func:`numpy.load`.
    """
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {
        "probabilities": np.asarray(probabilities, dtype=np.float16),
        "affine": np.asarray(affine, dtype=np.float64),
        "regions": np.asarray(list(regions)),
    }
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=_GZIP_LEVEL) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def write_csv_atomic(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Write a CSV table atomically (header row first)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_bytes(path, text.getvalue().encode("utf-8"))
