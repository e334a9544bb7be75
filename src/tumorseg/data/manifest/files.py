"""Manifest files: the keys a manifest has, and checked reading and atomic writing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.io import atomic_write_text, read_json

__all__ = [
    "MANIFEST_KEYS",
    "ManifestError",
    "load_manifest",
    "recorded_dataset_dir",
    "write_manifest",
]

#: Keys every manifest has, in the order they are written.
MANIFEST_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "layout",
    "label_convention",
    "channel_order",
    "num_folds",
    "seed",
    "tumorseg_version",
    "training",
    "testing",
)


#: Optional keys: where the dataset was when the manifest was written. ``dataset_dir`` is
#: absolute; ``dataset_dir_relative`` is relative to the manifest's folder (POSIX), present
#: when the dataset lies inside that folder, so a copied or moved folder still finds it.
LOCATION_KEYS: tuple[str, ...] = ("dataset_dir", "dataset_dir_relative")


class ManifestError(ValueError):
    """A manifest file or dict that is not valid; the message names the file."""


class _LoadedManifest(dict[str, Any]):
    """A manifest dict that remembers its file, so that ``load_datalist`` can default
    ``dataset_dir`` to the file's folder even when handed the dict rather than the path."""

    path: Path


def write_manifest(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """Write a manifest atomically: a reader sees the old file or the new one, never half.

    The JSON is indented by 2, with ``training`` and ``testing`` sorted by case id. The text
    goes to a temporary file in the same folder, then replaces ``path`` with ``os.replace``.
    A manifest with a ``dataset_dir`` (:func:`~tumorseg.data.manifest.build_manifest` records
    it) is written with it absolute and, when the dataset lies inside the manifest's folder,
    with ``dataset_dir_relative`` too (see :func:`recorded_dataset_dir`).

    Returns:
        The path written.

    Raises:
        ManifestError: the manifest lacks required keys.
    """
    path = Path(path).expanduser()
    data = dict(manifest)
    _check_manifest(data, source="manifest to write")
    for key in ("training", "testing"):
        data[key] = sorted(data[key], key=lambda t: t["case_id"])
    location = _location(data.get("dataset_dir"), path)
    for key in LOCATION_KEYS:
        data.pop(key, None)
    ordered = {k: data.pop(k) for k in MANIFEST_KEYS[: MANIFEST_KEYS.index("training")]}
    ordered.update(location)
    ordered.update(data)
    return atomic_write_text(path, json.dumps(ordered, indent=2) + "\n")


def _location(dataset_dir: Any, path: Path) -> dict[str, str]:
    """``dataset_dir`` (absolute) and ``dataset_dir_relative`` for a manifest at ``path``."""
    if not dataset_dir:
        return {}
    root = Path(str(dataset_dir)).expanduser().resolve()
    out = {"dataset_dir": str(root)}
    if root.is_relative_to(path.resolve().parent):  # else the absolute path only
        out["dataset_dir_relative"] = root.relative_to(path.resolve().parent).as_posix()
    return out


def recorded_dataset_dir(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """The dataset folder of a manifest file when the caller names none.

    The first that exists of: ``dataset_dir_relative`` (relative to the manifest's folder),
    ``dataset_dir`` (absolute), the manifest's own folder (manifests that record no location,
    such as the committed ``data_manifests/``, whose users set ``dataset_dir``).

    Args:
        manifest: the manifest dict.
        path: the manifest file.
    """
    folder = Path(path).expanduser().resolve().parent
    relative = manifest.get("dataset_dir_relative")
    candidates = [folder / str(relative)] if relative else []
    if manifest.get("dataset_dir"):
        candidates.append(Path(str(manifest["dataset_dir"])).expanduser())
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return folder


def _check_items(items: Any, key: str, *, labelled: bool, num_folds: int, where: str) -> None:
    if not isinstance(items, list):
        raise ManifestError(f"{where}: {key!r} must be a list, got {type(items).__name__}")
    needed = ("case_id", "image", "label", "fold") if labelled else ("case_id", "image")
    for index, item in enumerate(items):
        missing = [k for k in needed if not isinstance(item, dict) or k not in item]
        if missing:
            raise ManifestError(f"{where}: {key}[{index}] lacks {missing} (got {item!r:.200})")
        if not isinstance(item["case_id"], str) or not item["case_id"]:
            raise ManifestError(f"{where}: {key}[{index}]: case_id must be a non-empty string")
        image = item["image"]
        paths = [image] if isinstance(image, str) else image
        if not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): image must be a path or a list "
                f"of {len(CHANNEL_ORDER)} paths, got {image!r:.200}"
            )
        label = item.get("label")
        if (labelled or label) and not (isinstance(label, str) and label):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): label must be a path, got "
                f"{label!r:.200}"
            )
        if labelled and not (
            isinstance(item["fold"], int)
            and not isinstance(item["fold"], bool)
            and 0 <= item["fold"] < max(num_folds, 1)
        ):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): fold {item['fold']!r} is not in "
                f"0..{num_folds - 1}"
            )
        if "patient_id" in item and not (
            isinstance(item["patient_id"], str) and item["patient_id"]
        ):
            raise ManifestError(
                f"{where}: {key}[{index}] ({item['case_id']}): patient_id must be a non-empty "
                f"string, got {item['patient_id']!r}"
            )
    if labelled:
        folds: dict[str, set[int]] = {}
        for item in items:
            patient = item.get("patient_id", item["case_id"])
            folds.setdefault(patient, set()).add(item["fold"])
        split = {p: sorted(f) for p, f in folds.items() if len(f) > 1}
        if split:
            shown = ", ".join(f"{p} (folds {f})" for p, f in sorted(split.items())[:5])
            raise ManifestError(
                f"{where}: {len(split)} patient(s) in more than one fold, so validation would "
                f"see patients that training saw: {shown}"
            )


def _check_manifest(manifest: Any, *, source: str) -> None:
    if not isinstance(manifest, dict):
        raise ManifestError(f"{source}: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ManifestError(
            f"{source}: not a tumorseg manifest, missing key(s) {missing} (has {sorted(manifest)})"
        )
    order = manifest["channel_order"]
    if not isinstance(order, list | tuple) or list(order) != list(CHANNEL_ORDER):
        raise ManifestError(
            f"{source}: channel_order {manifest['channel_order']!r} differs from "
            f"{list(CHANNEL_ORDER)}, the only order tumorseg uses"
        )
    num_folds = manifest["num_folds"]
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 1:
        raise ManifestError(f"{source}: num_folds must be an integer >= 1, got {num_folds!r}")
    _check_items(manifest["training"], "training", labelled=True, num_folds=num_folds, where=source)
    _check_items(manifest["testing"], "testing", labelled=False, num_folds=num_folds, where=source)


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a manifest file.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: invalid JSON or missing keys; the message names the file.
    """
    path = Path(path).expanduser()
    manifest = read_json(path, what="manifest", error=ManifestError)
    _check_manifest(manifest, source=f"manifest {str(path)!r}")
    loaded = _LoadedManifest(manifest)
    loaded.path = path.resolve()
    return loaded
