"""What an upload may ask of the server, and how a refusal is said: shared by the upload readers.

:class:`UploadLimits` bounds every reader (:mod:`.upload_multipart`, :mod:`.upload_nifti`,
:mod:`.upload_zip`, :mod:`.uploads`); :class:`UploadError` is their one failure, carrying the
HTTP status to answer with; :func:`check_name` refuses a client file name with a path in it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHUNK_BYTES", "MAX_SIDE", "MIN_SIDE", "UploadError", "UploadLimits", "check_name"]

#: The smallest and largest side, in voxels, of an uploaded study.
MIN_SIDE, MAX_SIDE = 8, 1024
#: Bytes inflated per step when reading a compressed file or zip entry.
CHUNK_BYTES = 2**20


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
