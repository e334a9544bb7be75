"""Validation of uploaded studies: multipart bodies, zips and NIfTI files, parsed from bytes.

Everything here treats its input as hostile and bounded by :class:`UploadLimits`:

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
"""

from __future__ import annotations

import email.message
import email.utils
import gzip
import io
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tumorseg.conventions import CHANNEL_ORDER

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

_NIFTI_NAME = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_MIN_SIDE, _MAX_SIDE = 8, 1024
#: Bytes of the NIfTI-1 and NIfTI-2 headers (the single-file magic is followed by 4 bytes).
_NIFTI1_SIZE, _NIFTI2_SIZE = 348, 540
_MAX_OFFSET = 2**20  # header plus extensions before the voxels
_CHUNK = 2**20
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")
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
        status: the HTTP status to answer with (400 bad request, 413 too large, 429/503 busy,
            507 no space left to store it).
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """How much an upload may ask of the server.

    Attributes:
        max_body_bytes: the largest request body.
        max_voxels: the most voxels of a study, all files and channels together.
        max_study_bytes: the most bytes of a study's uncompressed files together.
        max_ratio: the largest compression ratio (uncompressed / compressed bytes) of a file,
            checked once it has inflated past ``ratio_floor_bytes``. MR images compress
            about 10x; label maps or blank volumes compress 100-1000x, which is what a
            decompression bomb looks like.
        ratio_floor_bytes: files smaller than this once inflated are not ratio-checked.
        max_parts: the most parts of a multipart body.
        max_zip_entries: the most entries of a zip.
    """

    max_body_bytes: int = 512 * 2**20
    max_voxels: int = 2**26
    max_study_bytes: int = 2**29
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 2**20
    max_parts: int = 16
    max_zip_entries: int = 64


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


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body.

    Attributes:
        name: the form field.
        filename: the client's file name (None for a plain field, ``""`` for an empty file
            input).
        data: the content, a view on the request body.
    """

    name: str
    filename: str | None
    data: memoryview


@dataclass(frozen=True)
class NiftiInfo:
    """What a checked NIfTI header declares.

    Attributes:
        shape: the data shape (3D, or 4D with the channels last).
        dtype: the voxel type.
        offset: where the voxels start.
        affine: the voxel-to-world affine (finite, invertible).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    affine: np.ndarray

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=object))

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.dtype.itemsize

    @property
    def file_bytes(self) -> int:
        """The size of the whole (uncompressed) file: header, extensions and voxels."""
        return self.offset + self.data_bytes


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
    if len(name) > 255:
        raise UploadError(f"refused file name {name[:40]!r}...: longer than 255 characters")
    return name


# --------------------------------------------------------------------------------- multipart


def _header_params(value: str, header: str) -> email.message.Message:
    message = email.message.Message()
    message[header] = value
    return message


def parse_multipart(
    body: bytes, content_type: str, *, max_parts: int = 16, max_header_bytes: int = 8192
) -> list[Part]:
    """Split a multipart/form-data body into its parts (views on ``body``, not copies).

    Args:
        body: the request body.
        content_type: the request's Content-Type (with the boundary).
        max_parts: the most parts accepted.
        max_header_bytes: the most bytes of one part's headers.

    Raises:
        UploadError: for another content type, a bad boundary, a malformed or unterminated
            body, too many parts, or a part that is not form data.
    """
    ctype = _header_params(content_type, "Content-Type")
    if ctype.get_content_type() != "multipart/form-data":
        raise UploadError("expected a multipart/form-data upload")
    boundary = ctype.get_param("boundary")
    if not isinstance(boundary, str) or not _BOUNDARY.match(boundary) or boundary.endswith(" "):
        raise UploadError("the multipart upload has no valid boundary")
    dash = b"--" + boundary.encode("ascii")
    separator = b"\r\n" + dash
    view = memoryview(body)
    if body.startswith(dash):
        pos = 0
    else:
        pos = body.find(separator)  # after a preamble
        if pos < 0:
            raise UploadError("the multipart upload holds no part")
        pos += 2
    parts: list[Part] = []
    while True:
        pos += len(dash)
        if body[pos : pos + 2] == b"--":
            return parts  # the closing delimiter; an epilogue is ignored
        line_end = body.find(b"\r\n", pos, pos + 256)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise UploadError("malformed multipart upload: bad delimiter line")
        start = line_end + 2
        if body.startswith(b"\r\n", start):
            head, data_start = b"", start + 2
        else:
            head_end = body.find(b"\r\n\r\n", start, start + max_header_bytes)
            if head_end < 0:
                raise UploadError("malformed multipart upload: part headers missing or too long")
            head, data_start = body[start:head_end], head_end + 4
        end = body.find(separator, data_start)
        if end < 0:
            raise UploadError("malformed multipart upload: a part is not terminated")
        if len(parts) >= max_parts:
            raise UploadError(f"the upload has more than {max_parts} parts")
        parts.append(_part(head, view[data_start:end]))
        pos = end + 2


def _part(head: bytes, data: memoryview) -> Part:
    disposition = None
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            raise UploadError("malformed multipart upload: bad part header")
        if key.strip().lower() == "content-disposition":
            disposition = value.strip()
    if disposition is None:
        raise UploadError("malformed multipart upload: a part has no Content-Disposition")
    message = _header_params(disposition, "Content-Disposition")
    name = message.get_param("name", header="content-disposition")
    if message.get_content_disposition() != "form-data" or name is None:
        raise UploadError("malformed multipart upload: a part is not a named form field")
    filename = message.get_filename()
    return Part(name=email.utils.collapse_rfc2231_value(name), filename=filename, data=data)


# ------------------------------------------------------------------------------------- NIfTI


def _sizeof_hdr(block: bytes | bytearray) -> int | None:
    if len(block) < 4:
        return None
    for order in ("<", ">"):
        size = int(np.frombuffer(bytes(block[:4]), dtype=f"{order}i4")[0])
        if size in (_NIFTI1_SIZE, _NIFTI2_SIZE):
            return size
    return None


def check_nifti_header(block: bytes | bytearray, *, name: str, limits: UploadLimits) -> NiftiInfo:
    """Check the start of an uncompressed NIfTI-1/2 file (at least its header).

    Nothing beyond the header is read: the checks are on what the header *declares*.

    Args:
        block: the first bytes of the file (348 for NIfTI-1, 540 for NIfTI-2 suffice).
        name: the file's (checked) name, for messages.
        limits: the caps on voxels and bytes.

    Returns:
        The declared shape, type, data offset and affine.

    Raises:
        UploadError: 400 for bytes that are not a single-file NIfTI header or a header that
            cannot describe an image (dimensions, data type, offset, geometry); 413 for one
            that declares more voxels or bytes than the limits.
    """
    import nibabel as nib

    size = _sizeof_hdr(block)
    if size is None or len(block) < size:
        raise UploadError(f"{name!r} is not a readable NIfTI image (no NIfTI header)")
    klass = nib.Nifti1Header if size == _NIFTI1_SIZE else nib.Nifti2Header
    try:
        header: Any = klass(bytes(block[:size]), check=True)
        magic = bytes(header["magic"]).rstrip(b"\0")
        dim = [int(d) for d in header["dim"]]
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header["vox_offset"])
        bitpix = int(header["bitpix"])
    except Exception as err:  # nibabel raises several types for a broken header
        raise UploadError(f"{name!r} is not a readable NIfTI image ({err})") from None
    if magic not in (b"n+1", b"n+2"):
        raise UploadError(
            f"{name!r} is not a single-file NIfTI image (magic {magic!r}); upload .nii or .nii.gz"
        )
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise UploadError(f"{name!r} declares {ndim} dimensions; a NIfTI image has 1 to 7")
    shape = tuple(dim[1 : ndim + 1])
    shown = "x".join(str(s) for s in shape)
    if any(s < 1 for s in shape):
        raise UploadError(f"{name!r} declares the shape {shown}: every side must be >= 1")
    if dtype.kind not in "uif" or dtype.itemsize > 8 or bitpix != 8 * dtype.itemsize:
        raise UploadError(
            f"{name!r} has voxels of type {dtype} (bitpix {bitpix}); expected integers or floats"
        )
    info = NiftiInfo(shape=shape, dtype=dtype, offset=offset, affine=np.eye(4))
    if any(s > _MAX_SIDE for s in shape[:3]) or info.voxels > limits.max_voxels:
        raise UploadError(
            f"{name!r} declares {shown} voxels ({info.voxels:,}); the limit is "
            f"{limits.max_voxels:,} voxels and {_MAX_SIDE} a side",
            status=413,
        )
    if info.data_bytes > limits.max_study_bytes:
        raise UploadError(
            f"{name!r} declares {info.data_bytes / 2**20:.0f} MiB of voxels; the limit is "
            f"{limits.max_study_bytes / 2**20:.0f} MiB",
            status=413,
        )
    if not size + 4 <= offset <= _MAX_OFFSET:
        raise UploadError(
            f"{name!r} declares its voxels at byte {offset}; expected {size + 4} to {_MAX_OFFSET}"
        )
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
        zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
        ok = (
            bool(np.isfinite(affine).all())
            and abs(float(np.linalg.det(affine[:3, :3]))) > 1e-12
            and bool(np.isfinite(zooms).all() and (zooms > 0).all())
        )
    except Exception:
        ok = False
    if not ok:
        raise UploadError(f"{name!r} has no usable voxel-to-world geometry (qform/sform, pixdim)")
    try:
        header.get_slope_inter()  # nibabel refuses to scale with a NaN intercept, etc.
    except Exception as err:
        raise UploadError(f"{name!r} has unusable intensity scaling ({err})") from None
    return NiftiInfo(shape=shape, dtype=dtype, offset=offset, affine=affine)


class _Inflater:
    """gzip decompression in bounded chunks, over several members, with a ratio limit.

    The input is fed 64 KiB at a time and the output asked for in bounded amounts, so neither
    a large file nor a bomb makes zlib copy or produce more than that per call.
    """

    _FEED = 2**16

    def __init__(self, data: memoryview, *, name: str, limits: UploadLimits) -> None:
        self.name = name
        self.limits = limits
        self.view = data
        self.pos = 0  # the next byte of ``view`` not yet given to zlib
        self.buf: bytes | memoryview = b""  # given to zlib and not consumed yet
        self.out = 0
        self._zlib: Any = zlib.decompressobj(wbits=31)

    def read(self, size: int) -> bytes:
        """Up to ``size`` more bytes (fewer only at the end of the data)."""
        chunks: list[bytes] = []
        want = size
        try:
            while want > 0:
                if self._zlib.eof:  # the end of a gzip member: another may follow
                    leftover = self._zlib.unused_data
                    if not leftover and self.pos >= len(self.view):
                        break
                    start = (leftover + bytes(self.view[self.pos : self.pos + 2]))[:2]
                    if start != b"\x1f\x8b":
                        raise UploadError(f"{self.name!r} has bytes after its gzip data")
                    self._zlib = zlib.decompressobj(wbits=31)
                    self.buf = leftover
                    continue
                if not self.buf:
                    if self.pos >= len(self.view):
                        break
                    self.buf = self.view[self.pos : self.pos + self._FEED]
                    self.pos += len(self.buf)
                before = len(self.buf)
                chunk = self._zlib.decompress(self.buf, want)
                self.buf = self._zlib.unconsumed_tail
                if not chunk and not self._zlib.eof and self.buf and len(self.buf) == before:
                    raise UploadError(f"{self.name!r} is not a valid gzip file")
                chunks.append(chunk)
                want -= len(chunk)
        except zlib.error as err:
            raise UploadError(f"{self.name!r} is not a valid gzip file ({err})") from None
        data = b"".join(chunks)
        self.out += len(data)
        self._check_ratio()
        return data

    def _check_ratio(self) -> None:
        consumed = self.pos - len(self.buf)
        limits = self.limits
        if self.out > limits.ratio_floor_bytes and self.out > limits.max_ratio * max(consumed, 1):
            raise UploadError(
                f"{self.name!r} inflates more than {limits.max_ratio:g}x (compression ratio "
                "limit); an image that compresses this much is empty or a decompression bomb",
                status=413,
            )

    @property
    def finished(self) -> bool:
        """The data ended exactly at the end of a gzip member."""
        return (
            bool(self._zlib.eof)
            and not self._zlib.unused_data
            and not self.buf
            and self.pos >= len(self.view)
        )


def read_nifti(
    data: bytes | memoryview, *, name: str, limits: UploadLimits
) -> tuple[bytes | bytearray, NiftiInfo]:
    """Check and inflate one uploaded NIfTI file (gzip-compressed or not).

    The header is checked from the first decompressed bytes before anything else is
    inflated; the rest is inflated in 1 MiB chunks up to the size the header declares, the
    compression ratio checked after each.

    Returns:
        The uncompressed file and what its header declares.

    Raises:
        UploadError: for a file that is not a valid NIfTI (or gzip) file, that is truncated
            or longer than its header declares, or that exceeds the limits.
    """
    view = memoryview(data).cast("B")
    if bytes(view[:2]) != b"\x1f\x8b":
        info = check_nifti_header(bytes(view[:_NIFTI2_SIZE]), name=name, limits=limits)
        _check_length(len(view), info, name)
        return bytes(view), info
    inflater = _Inflater(view, name=name, limits=limits)
    raw = bytearray(inflater.read(_NIFTI2_SIZE))
    info = check_nifti_header(raw, name=name, limits=limits)
    while len(raw) <= info.file_bytes:
        chunk = inflater.read(min(_CHUNK, info.file_bytes + 1 - len(raw)))
        if not chunk:
            break
        raw += chunk
    if len(raw) <= info.file_bytes and not inflater.finished:
        raise UploadError(f"{name!r} is a truncated gzip file")
    _check_length(len(raw), info, name)
    return raw, info


def _check_length(length: int, info: NiftiInfo, name: str) -> None:
    if length < info.file_bytes:
        raise UploadError(
            f"{name!r} is truncated: its header declares {info.file_bytes:,} bytes, the file "
            f"holds {length:,}"
        )
    if length > info.file_bytes:
        raise UploadError(f"{name!r} holds more data than its header declares")


# --------------------------------------------------------------------------------------- zip


def _modality_of(stem: str) -> str | None:
    lowered = stem.lower()
    for token, modality in _MODALITY_TOKENS:
        if re.search(rf"(^|[_\-.]){token}$", lowered):
            return modality
    return None


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: UploadLimits) -> bytes:
    """One entry, inflated in chunks with the ratio limit against its stored size."""
    budget = limits.max_study_bytes
    chunks, total = [], 0
    with archive.open(info) as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > budget:
                raise UploadError(
                    f"the zip holds more than {budget // 2**20} MiB once inflated", status=413
                )
            if total > limits.ratio_floor_bytes and total > limits.max_ratio * max(
                info.compress_size, 1
            ):
                raise UploadError(
                    f"zip entry {info.filename!r} inflates more than {limits.max_ratio:g}x "
                    "(compression ratio limit)",
                    status=413,
                )
            chunks.append(chunk)
    return b"".join(chunks)


def read_zip(data: bytes | memoryview, *, limits: UploadLimits) -> dict[str, tuple[str, bytes]]:
    """The NIfTI entries of a zip, by modality, read in memory (never extracted by name).

    Entry names are checked like upload names (each path component; folders inside the zip
    are allowed, ``..`` and absolute paths are not). Label maps (``seg``) and macOS metadata
    are skipped. Each modality must appear once.

    Args:
        data: the zip's bytes.
        limits: entry count, inflated size and compression ratio limits.

    Returns:
        ``{modality: (entry name, bytes)}``, or ``{"image": ...}`` for one 4D file.

    Raises:
        UploadError: for a bad zip, an unsafe or unrecognised entry, or too much data.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as err:
        raise UploadError(f"not a zip archive: {err}") from None
    if len(infos) > limits.max_zip_entries:
        raise UploadError(f"the zip has more than {limits.max_zip_entries} entries")
    found: dict[str, tuple[str, bytes]] = {}
    total = 0
    with archive:
        for info in infos:
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
            modality = _modality_of(stem) or "image"
            if modality in found:
                raise UploadError(f"the zip holds two {modality} files: {found[modality][0]!r}")
            total += info.file_size
            if total > limits.max_study_bytes:
                raise UploadError(
                    f"the zip holds more than {limits.max_study_bytes // 2**20} MiB", status=413
                )
            try:
                content = _read_entry(archive, info, limits)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
                raise UploadError(f"zip entry {name!r} cannot be read: {err}") from None
            except RuntimeError as err:  # encrypted entries
                raise UploadError(f"zip entry {name!r} cannot be read: {err}") from None
            found[modality] = (name, content)
    if set(found) == {"image"} or set(found) == set(CHANNEL_ORDER):
        return found
    raise UploadError(
        "the zip must hold the four modalities (names ending in "
        f"{'/'.join(CHANNEL_ORDER)}) or one 4D file; found {sorted(found) or 'none'}"
    )


# ------------------------------------------------------------------------------------- study


def _check_shape(info: NiftiInfo, *, name: str, four_d: bool) -> tuple[int, int, int]:
    shape = info.shape
    expected = "a 4D image with 4 channels" if four_d else "a 3D image"
    ok = (len(shape) == 4 and shape[3] == len(CHANNEL_ORDER)) if four_d else len(shape) == 3
    if not ok:
        raise UploadError(f"{name!r} has shape {shape}; expected {expected}")
    spatial = shape[:3]
    if any(not _MIN_SIDE <= s <= _MAX_SIDE for s in spatial):
        raise UploadError(
            f"{name!r} has shape {shape}; each side must be {_MIN_SIDE}-{_MAX_SIDE} voxels"
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
