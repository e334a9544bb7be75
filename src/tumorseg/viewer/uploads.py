"""Validation of uploaded studies: NIfTI parsed from bytes, zip read entry by entry in memory.

Uploaded file names are only *checked* (a name with a path in it is refused, because a client
sending one is either broken or hostile) and used to tell modalities apart inside a zip; they
never become file names. What is written to disk is named by the server
(``uploads/<generated case id>/<modality>.nii.gz``).
"""

from __future__ import annotations

import gzip
import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tumorseg.conventions import CHANNEL_ORDER

__all__ = [
    "UploadError",
    "ValidatedStudy",
    "check_name",
    "parse_nifti",
    "read_zip",
    "validate_study",
]

_NIFTI_NAME = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_MIN_SIDE, _MAX_SIDE = 8, 1024
# Modality tokens at the end of a file stem inside a zip (BraTS 2021 and 2023 spellings),
# most specific first so that ``t1ce`` is not read as ``t1``.
_MODALITY_TOKENS: tuple[tuple[str, str], ...] = (
    ("t1ce", "t1ce"),
    ("t1gd", "t1ce"),
    ("t1c", "t1ce"),
    ("flair", "flair"),
    ("t2f", "flair"),
    ("t1n", "t1"),
    ("t1", "t1"),
    ("t2w", "t2"),
    ("t2", "t2"),
)


class UploadError(ValueError):
    """An upload refused, with the reason to show the user.

    Args:
        message: the reason.
        status: the HTTP status to answer with (400 bad request, 413 too large).
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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


def check_name(name: str | None) -> str:
    """Refuse a client file name that carries a path or control characters.

    Returns:
        The name, unchanged (for messages and modality matching only).

    Raises:
        UploadError: for an empty name, ``..``, a slash, a backslash, a drive or a control
            character.
    """
    if not name:
        raise UploadError("an uploaded file has no name")
    if "/" in name or "\\" in name or ".." in name or ":" in name or any(ord(c) < 32 for c in name):
        raise UploadError(f"refused file name {name!r}: names must not contain a path")
    return name


def _inflate(data: bytes, *, max_bytes: int) -> bytes:
    # Bounded decompression: a small gzip "bomb" must not inflate to gigabytes in memory.
    inflater = zlib.decompressobj(wbits=31)
    out = inflater.decompress(data, max_bytes + 1)
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise UploadError(f"a file decompresses to more than {max_bytes // 2**20} MiB", status=413)
    return out


def parse_nifti(data: bytes, *, name: str, max_bytes: int) -> Any:
    """Parse NIfTI-1/2 bytes (gzip-compressed or not) and read the voxels, or refuse.

    Args:
        data: the file content.
        name: its (checked) name, for messages.
        max_bytes: the most bytes the uncompressed file may take.

    Returns:
        The nibabel image, its data readable.

    Raises:
        UploadError: when the bytes are not a readable NIfTI image.
    """
    import nibabel as nib

    raw = _inflate(data, max_bytes=max_bytes) if data[:2] == b"\x1f\x8b" else data
    image: Any = None
    for image_class in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = image_class.from_bytes(raw)
            np.asanyarray(image.dataobj)  # a truncated file fails here, not in the predictor
            break
        except Exception:
            image = None
    if image is None:
        raise UploadError(f"{name!r} is not a readable NIfTI image")
    return image


def _check_image(image: Any, *, name: str, four_d: bool) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image.shape)
    spatial = shape[:3]
    expected = "a 4D image with 4 channels" if four_d else "a 3D image"
    ok = (len(shape) == 4 and shape[3] == len(CHANNEL_ORDER)) if four_d else len(shape) == 3
    if not ok:
        raise UploadError(f"{name!r} has shape {shape}; expected {expected}")
    if any(not _MIN_SIDE <= s <= _MAX_SIDE for s in spatial):
        raise UploadError(
            f"{name!r} has shape {shape}; each side must be {_MIN_SIDE}-{_MAX_SIDE} voxels"
        )
    return spatial[0], spatial[1], spatial[2]


def _modality_of(stem: str) -> str | None:
    lowered = stem.lower()
    for token, modality in _MODALITY_TOKENS:
        if re.search(rf"(^|[_\-.]){token}$", lowered):
            return modality
    return None


def read_zip(data: bytes, *, max_bytes: int) -> dict[str, tuple[str, bytes]]:
    """The NIfTI entries of a zip, by modality, read in memory (never extracted by name).

    Entry names are checked like upload names (each path component; folders inside the zip
    are allowed, ``..`` and absolute paths are not). Label maps (``seg``) and macOS metadata
    are skipped. Each modality must appear once.

    Args:
        data: the zip's bytes.
        max_bytes: the most bytes all entries may take once decompressed.

    Returns:
        ``{modality: (entry name, bytes)}``, or ``{"image": ...}`` for one 4D file.

    Raises:
        UploadError: for a bad zip, an unsafe or unrecognised entry, or too much data.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise UploadError(f"not a zip archive: {err}") from None
    found: dict[str, tuple[str, bytes]] = {}
    total = 0
    with archive:
        for info in archive.infolist():
            name = info.filename
            if name.startswith("/") or "\\" in name:
                raise UploadError(f"refused zip entry {name!r}: absolute or Windows path")
            parts = [p for p in name.split("/") if p]
            try:
                for part in parts:
                    check_name(part)
            except UploadError:
                raise UploadError(
                    f"refused zip entry {name!r}: names must not contain .."
                ) from None
            if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1][0] == ".":
                continue
            base = parts[-1]
            if not _NIFTI_NAME.search(base):
                raise UploadError(f"zip entry {name!r} is not a .nii or .nii.gz file")
            stem = _NIFTI_NAME.sub("", base)
            if re.search(r"(^|[_\-.])seg$", stem.lower()):
                continue
            total += info.file_size
            if total > max_bytes:
                raise UploadError(f"the zip holds more than {max_bytes // 2**20} MiB", status=413)
            with archive.open(info) as fh:
                content = fh.read(max_bytes + 1)  # the declared size may lie
            if len(content) > max_bytes:
                raise UploadError(f"the zip holds more than {max_bytes // 2**20} MiB", status=413)
            modality = _modality_of(stem) or "image"
            if modality in found:
                raise UploadError(f"the zip holds two {modality} files: {found[modality][0]!r}")
            found[modality] = (name, content)
    if set(found) == {"image"} or set(found) == set(CHANNEL_ORDER):
        return found
    raise UploadError(
        "the zip must hold the four modalities (names ending in "
        f"{'/'.join(CHANNEL_ORDER)}) or one 4D file; found {sorted(found) or 'none'}"
    )


def validate_study(files: dict[str, tuple[str, bytes]], *, max_bytes: int) -> ValidatedStudy:
    """Check a study: every file a NIfTI image, the four modalities on one grid.

    Args:
        files: ``{modality: (checked name, bytes)}`` for all of ``CHANNEL_ORDER``, or
            ``{"image": (name, bytes)}`` for a 4D file.
        max_bytes: the most bytes one uncompressed file may take.

    Returns:
        The study, each file re-encoded as gzip-compressed NIfTI.

    Raises:
        UploadError: for a missing modality, an unreadable file or mismatched grids.
    """
    four_d = set(files) == {"image"}
    if not four_d and set(files) != set(CHANNEL_ORDER):
        missing = sorted(set(CHANNEL_ORDER) - set(files))
        raise UploadError(f"upload the four modalities or a zip; missing {missing}")
    out: dict[str, bytes] = {}
    grid: tuple[tuple[int, int, int], np.ndarray] | None = None
    for modality, (name, data) in files.items():
        image = parse_nifti(data, name=name, max_bytes=max_bytes)
        shape = _check_image(image, name=name, four_d=four_d)
        if grid is None:
            grid = (shape, image.affine)
        elif shape != grid[0] or not np.allclose(image.affine, grid[1], atol=1e-3):
            raise UploadError(f"{name!r} is not on the same voxel grid as the other modalities")
        raw = image.to_bytes()
        out[modality] = gzip.compress(raw, compresslevel=1, mtime=0)
    assert grid is not None
    return ValidatedStudy(files=out, shape=grid[0])
