"""An uploaded study validated as a whole (:func:`validate_study`), and the upload names' home.

:func:`validate_study` reads every file of a study (:func:`read_nifti`), checks its shape and
that the modalities share one voxel grid, within limits counted over the whole study. The
upload readers live in their own modules and are re-exported here, so callers import every
upload name from this module. Every reader treats its input as hostile and bounded by
:class:`UploadLimits`:

* a multipart body is split by hand (:func:`parse_multipart`): a fixed number of parts, each
  a view on the body (no copies);
* a NIfTI file's header is read and checked first (:func:`check_nifti_header`: format,
  dimensions, data type, declared byte size against the voxel and byte caps, geometry), from
  the first 540 decompressed bytes, before any voxel is touched; then the file is inflated
  in chunks, never past what the header declared, with the compression ratio checked as it
  goes (:func:`read_nifti`), and must hold exactly the bytes the header declares;
* a zip is read entry by entry in memory with the same ratio and size limits
  (:func:`read_zip`).

Uploaded file names are only *checked* (a name with a path in it is refused, because a client
sending one is either broken or hostile) and used to tell modalities apart inside a zip; they
never become file names. What is written to disk is named by the server
(``uploads/<generated case id>/<modality>.nii.gz``).

The pieces: :mod:`.upload_limits` (limits, the error, name checks), :mod:`.upload_multipart`,
:mod:`.upload_nifti` and :mod:`.upload_zip`.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.viewer.upload_limits import MAX_SIDE, MIN_SIDE, UploadError, UploadLimits, check_name
from tumorseg.viewer.upload_multipart import Part, parse_multipart
from tumorseg.viewer.upload_nifti import NiftiInfo, check_nifti_header, read_nifti
from tumorseg.viewer.upload_zip import read_zip

__all__ = [
    "NiftiInfo",
    "Part",
    "UploadError",
    "UploadLimits",
    "ValidatedStudy",
    "check_name",
    "check_nifti_header",
    "parse_multipart",
    "read_nifti",
    "read_zip",
    "validate_study",
]


@dataclass(frozen=True)
class ValidatedStudy:
    """An upload that passed validation.

    Attributes:
        files: ``{modality: gzip-compressed NIfTI bytes}`` for the four modalities, or
            ``{"image": ...}`` for one 4D file holding them.
        shape: spatial shape of the study.
    """

    files: dict[str, bytes]
    shape: tuple[int, int, int]


def _check_shape(info: NiftiInfo, *, name: str, four_d: bool) -> tuple[int, int, int]:
    shape = info.shape
    expected = "a 4D image with 4 channels" if four_d else "a 3D image"
    ok = (len(shape) == 4 and shape[3] == len(CHANNEL_ORDER)) if four_d else len(shape) == 3
    if not ok:
        raise UploadError(f"{name!r} has shape {shape}; expected {expected}")
    spatial = shape[:3]
    if any(not MIN_SIDE <= s <= MAX_SIDE for s in spatial):
        raise UploadError(
            f"{name!r} has shape {shape}; each side must be {MIN_SIDE}-{MAX_SIDE} voxels"
        )
    return spatial[0], spatial[1], spatial[2]


def validate_study(
    files: Mapping[str, tuple[str, bytes | memoryview]], *, limits: UploadLimits
) -> ValidatedStudy:
    """Check a study: every file a NIfTI image within the limits, the modalities on one grid.

    Args:
        files: ``{modality: (checked name, bytes)}`` for all of ``CHANNEL_ORDER``, or
            ``{"image": (name, bytes)}`` for a 4D file.
        limits: the caps (voxels and bytes count over the whole study).

    Returns:
        The study, each file gzip-compressed.

    Raises:
        UploadError: for a missing modality, an unreadable file, too much data or
            mismatched grids.
    """
    four_d = set(files) == {"image"}
    if not four_d and set(files) != set(CHANNEL_ORDER):
        missing = sorted(set(CHANNEL_ORDER) - set(files))
        raise UploadError(f"upload the four modalities or a zip; missing {missing}")
    out: dict[str, bytes] = {}
    grid: tuple[tuple[int, int, int], np.ndarray] | None = None
    voxels = nbytes = 0
    for modality, (name, data) in files.items():
        raw, info = read_nifti(data, name=name, limits=limits)
        shape = _check_shape(info, name=name, four_d=four_d)
        voxels += info.voxels
        nbytes += info.data_bytes
        if voxels > limits.max_voxels or nbytes > limits.max_study_bytes:
            raise UploadError(
                f"the study holds more than {limits.max_voxels:,} voxels or "
                f"{limits.max_study_bytes // 2**20} MiB",
                status=413,
            )
        if grid is None:
            grid = (shape, info.affine)
        elif shape != grid[0] or not np.allclose(info.affine, grid[1], atol=1e-3):
            raise UploadError(f"{name!r} is not on the same voxel grid as the other modalities")
        out[modality] = gzip.compress(raw, compresslevel=1, mtime=0)
        del raw
    assert grid is not None
    return ValidatedStudy(files=out, shape=grid[0])
