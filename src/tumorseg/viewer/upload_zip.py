"""An uploaded zip read entry by entry in memory, by modality, with size and ratio limits.

:func:`read_zip` never extracts by name: entry names are only checked and used to tell the
modalities apart.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib

from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.viewer.upload_limits import CHUNK_BYTES, UploadError, UploadLimits, check_name

__all__ = ["read_zip"]

_NIFTI_NAME = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
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
            chunk = fh.read(CHUNK_BYTES)
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
