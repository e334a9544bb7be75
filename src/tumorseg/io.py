"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything tumorseg writes (masks, checkpoints, manifests, CSV reports, synthetic studies,
cache metadata) goes through :func:`atomic_path`: the content is written to a hidden
temporary file in the destination folder, flushed to disk, then renamed over the destination
(``os.replace`` is atomic within a file system). A crash or kill leaves at most a hidden
``.<name>.<token>.tmp`` file, never a truncated destination.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_SUFFIX",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_temporary",
    "read_json",
]

#: Marker in the names of temporary files (hidden, beside their destination).
TMP_SUFFIX = ".tmp"

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext}") if dot and stem else (name, "")


def _temporary_for(path: Path, *, keep_suffix: bool) -> Path:
    token = uuid.uuid4().hex[:8]
    if keep_suffix:
        stem, suffix = _split_suffix(path.name)
        return path.with_name(f".{stem}.{token}{TMP_SUFFIX}{suffix}")
    return path.with_name(f".{path.name}.{token}{TMP_SUFFIX}")


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """True for a temporary file left by :func:`atomic_path` (e.g. after a kill)."""
    name = Path(path).name
    if not name.startswith("."):
        return False
    stem, suffix = _split_suffix(name)
    return name.endswith(TMP_SUFFIX) or stem.endswith(TMP_SUFFIX)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    Args:
        path: the destination. Its folder is created if needed.
        keep_suffix: end the temporary name with the destination's extension (``.nii.gz``,
            ``.json`` ...), for writers that choose the format from the file name.

    Example::

        with atomic_path("out/case.nii.gz", keep_suffix=True) as tmp:
            nibabel.save(image, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_for(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        # Flush the data before the rename, so a power cut cannot leave a renamed empty file.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename == str(tmp):
            err.filename = str(path)  # name the file the user asked for, not our temporary
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a :class:`~pathlib.Path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)


def read_json(
    path: str | os.PathLike[str], *, what: str = "file", error: type[Exception] = ValueError
) -> Any:
    """Parse the JSON file ``path``; failures name the file and say what it should have been.

    Args:
        path: the file (``~`` is expanded).
        what: what the file is, for messages (``"manifest"``).
        error: exception type raised for invalid JSON.

    Raises:
        FileNotFoundError: no such file.
        error: the text is not valid JSON (line and column shown).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist") from None
    except UnicodeDecodeError as err:
        raise error(f"{what} {str(path)!r} is not valid UTF-8 text ({err.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(
            f"{what} {str(path)!r} is not valid JSON: {err.msg} at line {err.lineno} "
            f"column {err.colno}"
        ) from None
    except RecursionError:
        raise error(f"{what} {str(path)!r} is not valid here: JSON nested too deeply") from None
