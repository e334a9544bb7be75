"""Uploaded NIfTI files checked from their header, then inflated in bounded chunks.

:func:`check_nifti_header` checks what a header declares (format, dimensions, data type,
byte size against the voxel and byte caps, geometry) from the first 540 decompressed bytes,
before any voxel is touched; :func:`read_nifti` then inflates the file in chunks, never past
what the header declared, with the compression ratio checked as it goes, and requires
exactly the bytes the header declares.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tumorseg.viewer.upload_limits import CHUNK_BYTES, MAX_SIDE, UploadError, UploadLimits

__all__ = ["NiftiInfo", "check_nifti_header", "read_nifti"]

#: Bytes of the NIfTI-1 and NIfTI-2 headers (the single-file magic is followed by 4 bytes).
_NIFTI1_SIZE, _NIFTI2_SIZE = 348, 540
_MAX_OFFSET = 2**20  # header plus extensions before the voxels


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
    if any(s > MAX_SIDE for s in shape[:3]) or info.voxels > limits.max_voxels:
        raise UploadError(
            f"{name!r} declares {shown} voxels ({info.voxels:,}); the limit is "
            f"{limits.max_voxels:,} voxels and {MAX_SIDE} a side",
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
        chunk = inflater.read(min(CHUNK_BYTES, info.file_bytes + 1 - len(raw)))
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
