"""Cache the deterministic preprocessing once per case: in memory when it fits, else on disk.

Loading, reorienting, resampling, cropping and normalising four 240x240x155 volumes costs
seconds of CPU per case; a training pipeline that repeats it for every patch keeps the GPU
waiting. :func:`cached_dataset` runs that deterministic part once per case and keeps the
result:

* ``memory``: MONAI ``CacheDataset`` (``cache_rate`` of the cases, filled with threads);
* ``disk``: MONAI ``PersistentDataset`` in ``<cache_dir>/<fingerprint>/``, where the
  fingerprint (:func:`transform_fingerprint`) hashes the configuration of every cached
  transform with the tumorseg and MONAI versions, and each file is keyed by the manifest
  entry plus the size and modification time of the files it names (:func:`entry_hash`). A
  changed transform or a replaced study therefore never reads a stale result, and the cache
  is shared by runs, folds, training and validation;
* ``auto``: ``memory`` when ``cache_rate`` of the cases fits the memory budget
  (:func:`memory_budget_bytes`), else ``disk``; the size of a case is read from its disk-cache
  file, or measured by preprocessing the first case;
* ``none``: a plain ``Dataset`` (every item is preprocessed every time).

Only the leading ``cache_transforms`` transforms are cached: a marker is inserted after them,
so cheap deterministic steps of the training chain that depend on the patch size (padding to
``roi_size``) run after the cache and do not split it per ``roi_size`` or per split.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import LoadImage, LoadImaged, ThreadUnsafe, Transform

from tumorseg.io import atomic_write_text

__all__ = [
    "CACHE_MODES",
    "CacheBoundary",
    "ThreadSafeLoad",
    "auto_num_workers",
    "cached_dataset",
    "default_cache_dir",
    "entry_hash",
    "memory_budget_bytes",
    "transform_fingerprint",
]

logger = logging.getLogger(__name__)

#: Accepted values of ``mode`` in :func:`cached_dataset`.
CACHE_MODES: tuple[str, ...] = ("auto", "memory", "disk", "none")

# Bytes this process has already committed to in-memory caches: the training and validation
# datasets share one budget instead of each taking all of it.
_memory_reserved = 0
_memory_lock = threading.Lock()

# Object addresses in reprs ("<foo at 0x7f...>") differ per process and must not reach a hash.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

_FINGERPRINT_FILE = "fingerprint.json"


class CacheBoundary:
    """Identity step that marks where the cached part of a ``Compose`` ends.

    MONAI caches a ``Compose`` up to its first random transform or first callable that is not
    a MONAI ``Transform``; this class is deliberately not a ``Transform`` so it is such a
    stop, and it changes nothing.
    """

    def __call__(self, data: Any) -> Any:
        return data

    def __repr__(self) -> str:
        return "CacheBoundary()"


class ThreadSafeLoad(Transform, ThreadUnsafe):
    """Runs a private copy of the wrapped loader per call when a ``Compose`` runs threaded.

    MONAI's ``NibabelReader`` keeps the file names of ``read`` in an attribute that
    ``get_data`` reads back (MONAI 1.6.1), so two threads sharing one ``LoadImaged`` can stack
    the wrong number of channels (a 1-channel image now and then). ``Compose(threading=True)``,
    which ``CacheDataset`` uses to fill its cache with threads, deep-copies ``ThreadUnsafe``
    steps per call; this wrapper opts the loader into that. Without threads it only forwards.
    """

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, data: Any) -> Any:
        return self.transform(data)

    def __repr__(self) -> str:
        return f"ThreadSafeLoad({self.transform!r})"


def _thread_safe(step: Any) -> Any:
    """``step`` wrapped so that threaded cache filling uses a private copy, if it loads files."""
    return ThreadSafeLoad(step) if isinstance(step, LoadImage | LoadImaged) else step


def auto_num_workers(*, cap: int = 8, reserve: int = 1) -> int:
    """Data-loader worker processes for this machine.

    Counts the CPUs this process may run on (``os.sched_getaffinity``, so container and
    ``taskset`` limits are honoured; ``os.cpu_count()`` elsewhere), keeps ``reserve`` of them
    for the main process (it runs the network on CPU, and feeds the GPU otherwise) and caps
    the result, because beyond a handful of workers the cached pipeline is no longer the
    bottleneck and each worker costs memory.

    Args:
        cap: most workers returned (>= 0).
        reserve: CPUs left to the main process (>= 0).

    Returns:
        ``min(cap, cpus - reserve)``, at least 0 (0 loads in the main process).
    """
    if cap < 0 or reserve < 0:
        raise ValueError(f"cap and reserve must be >= 0, got cap={cap}, reserve={reserve}")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(cap, cpus - reserve))


def default_cache_dir() -> str:
    """Where preprocessed cases are kept unless ``cache_dir`` says otherwise.

    ``$TUMORSEG_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/tumorseg/preprocessed`` (by
    default ``~/.cache/tumorseg/preprocessed``): outside the repository and the run folders,
    so the cache survives runs and folds.
    """
    explicit = os.environ.get("TUMORSEG_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tumorseg", "preprocessed")


def _canonical(obj: Any, seen: set[int]) -> Any:
    """A JSON-able, process-independent description of ``obj``'s configuration."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return repr(obj)  # exact, and nan/inf stay JSON-able
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, torch.dtype | np.dtype | torch.device):
        return str(obj)
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, np.ndarray | np.generic):
        return {"array": np.asarray(obj).tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj.detach().cpu().tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, Path):
        return str(obj)
    if id(obj) in seen:
        return "<cycle>"
    seen = seen | {id(obj)}
    if isinstance(obj, Mapping):
        ordered = sorted(obj.items(), key=lambda kv: str(kv[0]))
        return {str(k): _canonical(v, seen) for k, v in ordered}
    if isinstance(obj, list | tuple):
        return [_canonical(v, seen) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(json.dumps(_canonical(v, seen), sort_keys=True) for v in obj)
    if callable(obj) and hasattr(obj, "__qualname__"):  # functions, methods, builtins
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    state = getattr(obj, "__dict__", None)
    if state is not None:
        cls = type(obj)
        # Private attributes are kept: MONAI stores configuration there too (LoadImaged._loader).
        return {"class": f"{cls.__module__}.{cls.__qualname__}", **_canonical(state, seen)}
    return _ADDRESS.sub("", repr(obj))


def transform_fingerprint(transforms: Sequence[Any] | Any) -> str:
    """Hash of the configuration of ``transforms`` plus the tumorseg and MONAI versions.

    Two transform chains get the same fingerprint exactly when every transform has the same
    class and the same public attributes (recursively: the ``Spacing`` inside ``Spacingd``,
    its ``pixdim``, the label convention, ...), so any configuration change (a different
    ``pixdim``, another transform, a new tumorseg or MONAI release) gives a new cache folder.

    Args:
        transforms: the cached transforms (a sequence or a MONAI ``Compose``).

    Returns:
        A 16-character hex digest.
    """
    import monai

    import tumorseg

    items = getattr(transforms, "transforms", transforms)
    description = {
        "tumorseg": tumorseg.__version__,
        "monai": monai.__version__,
        "transforms": [_canonical(t, set()) for t in items],
        # The version does not move with every edit of a working copy: the source of our own
        # transforms is hashed too, so fixing one of them invalidates the cache.
        "sources": sorted({_source_digest(type(t)) for t in items} - {""}),
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _source_digest(cls: type) -> str:
    """Digest of the source file of a tumorseg class; empty for other packages' classes."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if not cls.__module__.startswith("tumorseg.") or not path:
        return ""
    try:
        return f"{cls.__module__}:{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"
    except OSError:
        return ""


def _file_stats(value: Any, out: list[Any]) -> None:
    if isinstance(value, str | os.PathLike):
        try:
            st = os.stat(value)
        except (OSError, ValueError):
            return
        out.append([os.fspath(value), st.st_size, st.st_mtime_ns])
    elif isinstance(value, Mapping):
        for v in value.values():
            _file_stats(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _file_stats(v, out)


def entry_hash(item: Any) -> bytes:
    """Cache key of one manifest entry: its content and the size and mtime of its files.

    The stat of the files makes a study replaced in place (same path, new content) a cache
    miss; it costs one ``stat`` per file.

    Returns:
        Hex digest as bytes (what MONAI's ``PersistentDataset`` expects from ``hash_func``).
    """
    stats: list[Any] = []
    _file_stats(item, stats)
    text = json.dumps({"item": item, "files": stats}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest().encode()


def memory_budget_bytes(budget_gb: float | None = None, *, fraction: float = 0.5) -> int:
    """Bytes the in-memory caches of this process may still take.

    Args:
        budget_gb: explicit total budget in GiB; ``None`` means ``fraction`` of the memory
            available now.
        fraction: share of the available memory used when ``budget_gb`` is ``None``; the
            rest is left to the data-loader workers, the network and the system.

    Returns:
        The budget minus what earlier in-memory caches of this process reserved (>= 0).
    """
    if budget_gb is not None and budget_gb < 0:
        raise ValueError(f"memory budget must be >= 0 GiB, got {budget_gb}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if budget_gb is None:
        total = int(_available_memory_bytes() * fraction)
    else:
        total = int(budget_gb * 2**30)
    return max(0, total - _memory_reserved)


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other POSIX systems: free pages (ignores reclaimable page cache: conservative)
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 4 * 2**30  # unknown: assume a small machine


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


def _split_compose(transform: Any, cache_transforms: int | None) -> Any:
    """``transform`` as a ``Compose`` whose cached prefix is its first ``cache_transforms``."""
    from monai.transforms import Compose, RandomizableTrait

    if isinstance(transform, Compose):
        steps = list(transform.transforms)
        options: dict[str, Any] = {
            "map_items": transform.map_items,
            "unpack_items": transform.unpack_items,
            "log_stats": transform.log_stats,
            "lazy": transform.lazy,
            "overrides": transform.overrides,
        }
    elif isinstance(transform, Sequence):
        steps, options = list(transform), {}
    else:
        raise TypeError(f"transform must be a Compose or a sequence, got {type(transform)!r}")
    if cache_transforms is None:
        return Compose([_thread_safe(t) for t in steps], **options)
    if not 0 <= cache_transforms <= len(steps):
        raise ValueError(
            f"cache_transforms must be in [0, {len(steps)}] for this chain, got {cache_transforms}"
        )
    head, tail = steps[:cache_transforms], steps[cache_transforms:]
    random = [type(t).__name__ for t in head if isinstance(t, RandomizableTrait)]
    if random:
        raise ValueError(
            f"cache_transforms={cache_transforms} puts random transforms {random} in the cached "
            "part: they must come after it"
        )
    head = [_thread_safe(t) for t in head]
    return Compose([*head, CacheBoundary(), *tail], **options)


def _cached_prefix(compose: Any) -> list[Any]:
    """The transforms MONAI's caching datasets run once (up to the first random/non-Transform)."""
    from monai.transforms import RandomizableTrait, Transform

    prefix = []
    for t in compose.flatten().transforms:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            break
        prefix.append(t)
    return prefix


def _fingerprint_folder(cache_dir: str | os.PathLike[str], prefix: list[Any]) -> Path:
    """``<cache_dir>/<fingerprint>``: where the disk cache of these transforms lives."""
    return Path(cache_dir).expanduser() / transform_fingerprint(prefix)


def _prepare_folder(folder: Path, prefix: list[Any]) -> None:
    """Create the cache folder with a readable note of what it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / _FINGERPRINT_FILE
    if not meta.exists():
        import monai

        import tumorseg

        description = {
            "tumorseg": tumorseg.__version__,
            "monai": monai.__version__,
            "transforms": [type(t).__name__ for t in prefix],
        }
        _write_json_atomic(meta, description)


def _write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(content, indent=1, sort_keys=True))


def _case_bytes(
    folder: Path, compose: Any, item: Mapping[str, Any], hash_func: Callable[[Any], bytes]
) -> int:
    """Bytes of one preprocessed case: its disk-cache file when present, else measured."""
    cached = folder / f"{hash_func(item).decode()}.pt"
    if cached.is_file():  # torch.save of tensors: the file size is the tensors' size
        return cached.stat().st_size
    end = len(_cached_prefix(compose))
    return _nbytes(compose(dict(item), end=end, threading=True))


def _reserve(nbytes: int) -> None:
    global _memory_reserved
    with _memory_lock:
        _memory_reserved += nbytes


def cached_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Any,
    *,
    mode: str = "auto",
    cache_transforms: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_rate: float = 1.0,
    memory_budget_gb: float | None = None,
    num_workers: int | None = None,
    hash_func: Callable[[Any], bytes] = entry_hash,
) -> Any:
    """A MONAI dataset that computes the deterministic preprocessing once per case.

    Args:
        data: manifest entries (``{"image": [...], "label": ...}``).
        transform: the full chain, deterministic part first (a ``Compose`` or a sequence).
        mode: ``auto``, ``memory``, ``disk`` or ``none`` (see the module docstring).
        cache_transforms: how many leading transforms are cached; ``None`` caches up to the
            first random transform (MONAI's rule).
        cache_dir: root of the disk cache; ``None`` means :func:`default_cache_dir`.
        cache_rate: share of the cases held in memory in ``memory`` mode (MONAI's meaning;
            the rest is preprocessed on every use); ``auto`` picks memory only when this share
            fits the budget.
        memory_budget_gb: total GiB the in-memory caches of this process may take; ``None``
            means half the memory available (see :func:`memory_budget_bytes`).
        num_workers: threads filling an in-memory cache; ``None`` or 0 picks one per CPU.
        hash_func: cache key of one entry in ``disk`` mode.

    Returns:
        A ``CacheDataset``, ``PersistentDataset`` or ``Dataset``.

    Raises:
        ValueError: for an unknown ``mode``, a ``cache_rate`` outside [0, 1] or a random
            transform inside the cached part.
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset

    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")
    if not 0.0 <= cache_rate <= 1.0:
        raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate}")
    data = list(data)
    compose = _split_compose(transform, cache_transforms)
    if mode == "none" or not data:
        return Dataset(data, compose)
    root = default_cache_dir() if cache_dir is None or not str(cache_dir) else cache_dir
    prefix = _cached_prefix(compose)
    folder = _fingerprint_folder(root, prefix)
    if mode == "auto":
        # One case measured stands for all: BraTS-like studies share their canvas size.
        per_case = _case_bytes(folder, compose, data[0], hash_func)
        wanted = int(per_case * math.ceil(len(data) * cache_rate))
        budget = memory_budget_bytes(memory_budget_gb)
        mode = "memory" if wanted <= budget else "disk"
        logger.info(
            "cache: %d cases x %.1f MiB preprocessed = %.2f GiB at cache_rate %.2f, memory "
            "budget %.2f GiB: caching in %s",
            len(data),
            per_case / 2**20,
            wanted / 2**30,
            cache_rate,
            budget / 2**30,
            "memory" if mode == "memory" else f"{folder}",
        )
        if mode == "memory":
            _reserve(wanted)
    if mode == "memory":
        workers = num_workers or auto_num_workers(reserve=0) or 1
        return CacheDataset(
            data, compose, cache_rate=cache_rate, num_workers=workers, progress=False
        )
    _prepare_folder(folder, prefix)
    return PersistentDataset(data, compose, cache_dir=folder, hash_func=hash_func)
