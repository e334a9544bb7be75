"""MONAI datalists from manifests: one split of one fold, with absolute paths."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tumorseg.data.discovery import (
    Case,
    CaseProblem,
    validate_case,
)
from tumorseg.data.manifest.build import build_manifest
from tumorseg.data.manifest.files import _check_manifest, load_manifest, recorded_dataset_dir

__all__ = [
    "SPLITS",
    "datalist_from_directory",
    "load_datalist",
    "select_split",
    "validate_manifest_against",
]

#: Values of ``split`` accepted by :func:`load_datalist`.
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")


def _existing(path: Path) -> Path:
    """``path``, or its ``.nii``/``.nii.gz`` twin when only that one exists.

    Some redistributions of BraTS (for example on Kaggle) ship uncompressed ``.nii`` files.
    """
    if path.exists():
        return path
    name = path.name
    if name.endswith(".nii.gz"):
        twin = path.with_name(name[: -len(".gz")])
    elif name.endswith(".nii"):
        twin = path.with_name(name + ".gz")
    else:
        return path
    return twin if twin.exists() else path


def _absolute(relative: str, root: Path, *, resolve_twins: bool) -> str:
    path = root / relative
    return str(_existing(path) if resolve_twins else path)


def select_split(
    manifest: Mapping[str, Any], *, fold: int | None, split: str
) -> list[dict[str, Any]]:
    """The items of ``split`` as they are in ``manifest`` (paths untouched).

    ``train`` is every training item outside ``fold`` (all of them when ``fold`` is None),
    ``val`` the items of ``fold`` (none when ``fold`` is None), ``test`` the testing items and
    ``all`` both lists.
    """
    training = list(manifest["training"])
    if split == "train":
        return [t for t in training if fold is None or t["fold"] != fold]
    if split == "val":
        return [] if fold is None else [t for t in training if t["fold"] == fold]
    if split == "test":
        return list(manifest["testing"])
    return [*training, *manifest["testing"]]


def load_datalist(
    manifest: str | Path | Mapping[str, Any],
    *,
    dataset_dir: str | Path | None = None,
    fold: int | None = 0,
    split: str = "train",
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """The items of one split, with absolute paths, ready for a MONAI dataset.

    Args:
        manifest: a manifest file or dict.
        dataset_dir: the dataset folder the manifest's paths are relative to; default the
            folder the manifest records (:func:`~tumorseg.data.manifest.recorded_dataset_dir`,
            also for a dict from :func:`load_manifest`; required for other dicts).
        fold: the validation fold. None: ``train`` is every training case and ``val`` empty.
        split: ``train`` (training cases outside ``fold``), ``val`` (inside ``fold``),
            ``test`` (testing cases) or ``all`` (training then testing).
        check_files: check that ``dataset_dir`` exists and holds the split's first case,
            and use the ``.nii``/``.nii.gz`` twin of a file listed under the other extension.

    Returns:
        Dicts with ``case_id``, ``image`` (list of paths, or one path for MSD), ``label`` and
        ``fold`` for training cases; other keys of the manifest items are kept.

    Raises:
        ValueError: unknown split, fold out of range, dataset folder missing or not holding
            the cases (the message says to set ``dataset_dir``).
    """
    if isinstance(manifest, Mapping):
        data = dict(manifest)
        _check_manifest(data, source="manifest dict")
        if dataset_dir is None:
            source = getattr(manifest, "path", None)  # set by load_manifest
            if source is None:
                raise ValueError(
                    "dataset_dir is required when the manifest is a dict not read by "
                    "load_manifest: set dataset_dir to the folder holding the cases"
                )
            dataset_dir = recorded_dataset_dir(data, source)
    else:
        data = load_manifest(manifest)
        if dataset_dir is None:
            dataset_dir = recorded_dataset_dir(data, manifest)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    num_folds = int(data["num_folds"])
    if fold is not None and (isinstance(fold, bool) or not 0 <= int(fold) < num_folds):
        raise ValueError(
            f"fold {fold!r} is out of range: the manifest has num_folds={num_folds} "
            f"(folds 0..{num_folds - 1}), or use fold=None"
        )
    root = Path(dataset_dir).expanduser().resolve()
    if check_files and not root.is_dir():
        raise ValueError(
            f"dataset folder {str(root)!r} does not exist: set dataset_dir to the folder "
            "holding the cases"
        )

    chosen = select_split(data, fold=fold, split=split)

    out: list[dict[str, Any]] = []
    for item in chosen:
        new = dict(item)
        image = item["image"]
        if isinstance(image, str):
            new["image"] = _absolute(image, root, resolve_twins=check_files)
        else:
            new["image"] = [_absolute(p, root, resolve_twins=check_files) for p in image]
        if item.get("label"):
            new["label"] = _absolute(item["label"], root, resolve_twins=check_files)
        out.append(new)

    if check_files and out:
        first = out[0]["image"]
        probe = Path(first if isinstance(first, str) else first[0])
        if not probe.exists():
            raise ValueError(
                f"{out[0]['case_id']}: {probe} not found: dataset folder {str(root)!r} does not "
                "hold the manifest's cases; set dataset_dir to your copy of the dataset"
            )
    return out


def datalist_from_directory(
    dataset_dir: str | Path,
    *,
    fold: int | None = 0,
    split: str = "train",
    num_folds: int = 5,
    seed: int = 0,
    **discovery_kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`load_datalist` for a dataset folder that has no manifest file.

    Builds the manifest in memory without opening the files (``validate=False``: only their
    presence is checked), so training can start on a plain folder.

    Args:
        dataset_dir: the dataset folder.
        fold: validation fold, as in :func:`load_datalist`.
        split: ``train``, ``val``, ``test`` or ``all``.
        num_folds: cross-validation folds.
        seed: fold seed.
        **discovery_kwargs: ``layout``, ``label_convention``, ``modality_suffixes``,
            ``label_suffix``, ``skip_bad`` or ``patient_id``, passed to
            :func:`build_manifest`.

    Returns:
        The split's items with absolute paths.
    """
    allowed = {
        "layout",
        "label_convention",
        "modality_suffixes",
        "label_suffix",
        "skip_bad",
        "patient_id",
    }
    unknown = sorted(set(discovery_kwargs) - allowed)
    if unknown:
        raise TypeError(f"unexpected argument(s) {unknown}; accepted: {sorted(allowed)}")
    manifest = build_manifest(
        dataset_dir, num_folds=num_folds, seed=seed, validate=False, **discovery_kwargs
    )
    return load_datalist(manifest, dataset_dir=dataset_dir, fold=fold, split=split)


def validate_manifest_against(
    dataset_dir: str | Path,
    manifest: str | Path | Mapping[str, Any],
    *,
    check_readable: bool = False,
    progress: bool = False,
) -> list[CaseProblem]:
    """Check that a copy of a dataset holds every case a manifest lists.

    Use it with the committed manifests of ``data_manifests/`` to check a local copy of a
    public dataset before training on it.

    Args:
        dataset_dir: the local copy.
        manifest: a manifest file or dict.
        check_readable: also open every file and run the full
            :func:`~tumorseg.data.discovery.validate_case` checks (slow on a full dataset).
        progress: show a progress bar.

    Returns:
        One problem per missing or bad file, naming the case; empty when the copy matches.

    Raises:
        ValueError: ``dataset_dir`` does not exist, or an invalid manifest.
    """
    data = load_manifest(manifest) if not isinstance(manifest, Mapping) else dict(manifest)
    if isinstance(manifest, Mapping):
        _check_manifest(data, source="manifest dict")
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise ValueError(
            f"dataset folder {str(root)!r} does not exist: set dataset_dir to your copy"
        )
    items: Iterable[dict[str, Any]] = [*data["training"], *data["testing"]]
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"checking {root.name}", unit="case")
    problems: list[CaseProblem] = []
    for item in items:
        image = item["image"]
        paths = [image] if isinstance(image, str) else list(image)
        label = item.get("label")
        case = Case(
            case_id=item["case_id"],
            images=tuple(_existing(root / p) for p in paths),
            label=_existing(root / label) if label else None,
            layout=str(data["layout"]),
        )
        problems.extend(
            validate_case(
                case,
                label_convention=str(data["label_convention"]),
                check_readable=check_readable,
            )
        )
    return problems
