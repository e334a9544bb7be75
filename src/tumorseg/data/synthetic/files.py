"""Synthetic studies on disk: affines, one case's NIfTI files, a whole BraTS or MSD dataset.

Each case of :func:`generate_dataset` is :func:`~tumorseg.data.synthetic.phantom.make_phantom`
of a seed derived from ``(seed, index)``, written in the layout's file names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import CHANNEL_ORDER, FileLayout, get_convention, get_layout
from tumorseg.data.synthetic.anatomy import _ORIENTATION_AXES
from tumorseg.data.synthetic.phantom import (
    _check_contrast,
    _check_orientation,
    _check_resection_cavity,
    _check_seed,
    _check_shape,
    _check_tumour_scale,
    make_phantom,
)
from tumorseg.io import atomic_path, atomic_write_text

__all__ = ["generate_dataset", "orientation_affine", "write_case"]

_CASE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_DEFAULT_PREFIX = {"brats2021": "SYN2021", "brats2023": "BraTS-SYN", "msd": "BRATS"}


def _check_spacing(spacing: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}")
    return (values[0], values[1], values[2])


def orientation_affine(
    orientation: str = "LPS",
    *,
    shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    oblique_degrees: float = 0.0,
) -> np.ndarray:
    """A voxel-to-world (RAS+ mm, nibabel's convention) affine for an axis-code orientation.

    Args:
        orientation: 3-letter axis codes as in :func:`nibabel.aff2axcodes`: ``"LPS"`` makes
            the first voxel axis point left, the second posterior, the third superior.
        shape: voxels per axis; the volume's centre is put at the world origin.
        spacing: voxel size in mm per voxel axis.
        oblique_degrees: rotation about the world left-right axis (a head tilt, as in an
            AC-PC-angled acquisition), in (-45, 45) so the nearest axis codes stay
            ``orientation``.

    Returns:
        A float64 4x4 affine.

    Raises:
        ValueError: for a bad orientation, shape, spacing or angle (the value is shown).
    """
    code = _check_orientation(orientation)
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"shape must be 3 positive integers, got {shape!r}")
    zooms = _check_spacing(spacing)
    try:
        angle = float(oblique_degrees)
    except (TypeError, ValueError):
        angle = float("nan")
    if not (np.isfinite(angle) and abs(angle) < 45):
        raise ValueError(f"oblique_degrees must be in (-45, 45), got {oblique_degrees!r}")

    linear: np.ndarray = np.zeros((3, 3))
    for k, c in enumerate(code):
        linear[_ORIENTATION_AXES[c], k] = zooms[k] * (1.0 if c in "RAS" else -1.0)
    theta = np.deg2rad(angle)
    tilt = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.0, np.cos(theta), -np.sin(theta)],
            [0.0, np.sin(theta), np.cos(theta)],
        ]
    )
    linear = tilt @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.array(dims, float) - 1.0) / 2.0)
    return affine


def _check_case_id(case_id: Any) -> str:
    if not isinstance(case_id, str) or not _CASE_ID_RE.match(case_id):
        raise ValueError(
            f"case id must be letters, digits, '.', '_' or '-' (not starting with '.', "
            f"'_' or '-'), got {case_id!r}"
        )
    return case_id


def _case_paths(out_dir: Path, case_id: str, layout: FileLayout, labelled: bool) -> dict[str, Any]:
    """Where one case's files go; ``targets`` must not exist yet (the folder, or the files)."""
    if layout.four_d:
        image = out_dir / ("imagesTr" if labelled else "imagesTs") / f"{case_id}.nii.gz"
        label = out_dir / "labelsTr" / f"{case_id}.nii.gz" if labelled else None
        return {"images": [image], "label": label, "targets": [p for p in (image, label) if p]}
    folder = out_dir / case_id
    images = [folder / f"{case_id}{layout.modality_suffixes[m]}.nii.gz" for m in CHANNEL_ORDER]
    label = folder / f"{case_id}{layout.label_suffix}.nii.gz" if labelled else None
    return {"images": images, "label": label, "targets": [folder], "folder": folder}


def _exists_error(path: Path, more: int = 0) -> FileExistsError:
    extra = f" (and {more} more)" if more else ""
    return FileExistsError(
        f"{path} already exists{extra}; pass overwrite=True / --overwrite to replace it"
    )


def _nifti(data: np.ndarray, affine: np.ndarray, zooms: Sequence[float]) -> Any:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    # Scanner-anatomical (code 1) in both forms, as scanners' converters write; readers that
    # prefer either one then agree.
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(data.dtype)
    img.header.set_zooms(tuple(zooms))
    img.header.set_xyzt_units("mm", "sec")
    return img


def _save_atomic(img: Any, path: Path) -> None:
    """Write to a hidden temporary name in the same folder, then rename over ``path``."""
    import nibabel as nib

    with atomic_path(path, keep_suffix=True) as tmp:
        nib.save(img, tmp)


def _to_image_dtype(images: np.ndarray, image_dtype: str) -> np.ndarray:
    if image_dtype == "float32":
        return images.astype(np.float32)
    if image_dtype != "int16":
        raise ValueError(f"image_dtype must be 'int16' or 'float32', got {image_dtype!r}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values; cannot store them as int16")
    lo, hi = float(images.min()), float(images.max())
    if lo < -32768 or hi > 32767:
        raise ValueError(
            f"image values span [{lo:g}, {hi:g}], outside int16; pass image_dtype='float32'"
        )
    return np.rint(images).astype(np.int16)


def write_case(
    out_dir: str | os.PathLike[str],
    case_id: str,
    images: np.ndarray,
    label: np.ndarray | None,
    *,
    affine: np.ndarray,
    layout: str = "brats2021",
    overwrite: bool = False,
    image_dtype: str = "int16",
) -> dict[str, Any]:
    """Write one case as NIfTI files in a dataset layout.

    ``brats2021`` / ``brats2023`` cases become a folder ``<out_dir>/<case_id>/`` with one file
    per modality (plus the label map when given), assembled in a hidden temporary folder and
    renamed into place, so the folder is either complete or absent. ``msd`` cases become a 4D
    ``imagesTr/<case_id>.nii.gz`` (modalities on the last axis in CHANNEL_ORDER) and
    ``labelsTr/<case_id>.nii.gz``, or ``imagesTs/`` when unlabelled, each file written under a
    temporary name and renamed. Both qform and sform hold ``affine`` with code 1 (scanner).

    Args:
        out_dir: dataset root (created if missing).
        case_id: case identifier (letters, digits, ``.``, ``_``, ``-``).
        images: ``(4, X, Y, Z)`` array in CHANNEL_ORDER (flair, t1, t1ce, t2).
        label: ``(X, Y, Z)`` integer label map (stored as uint8), or None for an unlabelled case.
        affine: 4x4 voxel-to-world affine (see :func:`orientation_affine`); the voxel sizes
            in the header are taken from it.
        layout: ``brats2021``, ``brats2023`` or ``msd``.
        overwrite: replace an existing case instead of raising.
        image_dtype: ``"int16"`` (rounded, like real BraTS files) or ``"float32"``.

    Returns:
        ``{"case_id": ..., "image": [paths], "label": path or None}`` with paths as strings
        (one 4D path for ``msd``, four paths in CHANNEL_ORDER otherwise).

    Raises:
        FileExistsError: when the case exists and ``overwrite`` is false (the path is named).
        ValueError: for bad shapes, affine, layout, case id or image values.
    """
    lay = get_layout(layout)
    case_id = _check_case_id(case_id)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != len(CHANNEL_ORDER):
        raise ValueError(
            f"images must be ({len(CHANNEL_ORDER)}, X, Y, Z) in order {CHANNEL_ORDER}, "
            f"got shape {images.shape}"
        )
    if label is not None:
        label = np.asarray(label)
        if label.shape != images.shape[1:]:
            raise ValueError(
                f"label shape {label.shape} does not match image shape {images.shape[1:]}"
            )
        if not np.issubdtype(label.dtype, np.integer) or label.min() < 0 or label.max() > 255:
            raise ValueError(
                f"label must hold integers in 0..255, got dtype {label.dtype} "
                f"with values {np.unique(label)[:8].tolist()}"
            )
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got {affine!r}")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms <= 0):
        raise ValueError(f"affine has a zero-length voxel axis: {affine!r}")
    data = _to_image_dtype(images, image_dtype)

    out = Path(out_dir)
    paths = _case_paths(out, case_id, lay, label is not None)
    existing = [p for p in paths["targets"] if p.exists()]
    if existing and not overwrite:
        raise _exists_error(existing[0])

    label_img = _nifti(label.astype(np.uint8), affine, zooms) if label is not None else None
    if lay.four_d:
        # Label first: readers enumerate images, so a visible image always has its label.
        if label_img is not None:
            paths["label"].parent.mkdir(parents=True, exist_ok=True)
            _save_atomic(label_img, paths["label"])
        image_img = _nifti(np.moveaxis(data, 0, -1), affine, (*zooms, 1.0))
        paths["images"][0].parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(image_img, paths["images"][0])
    else:
        _write_case_folder(paths, data, label_img, affine, zooms)
    return {
        "case_id": case_id,
        "image": [str(p) for p in paths["images"]],
        "label": str(paths["label"]) if paths["label"] is not None else None,
    }


def _write_case_folder(
    paths: dict[str, Any], data: np.ndarray, label_img: Any, affine: np.ndarray, zooms: Any
) -> None:
    import nibabel as nib

    folder: Path = paths["folder"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = folder.with_name(f".{folder.name}.{token}.partial")
    old = folder.with_name(f".{folder.name}.{token}.old")
    staging.mkdir()
    try:
        for channel, path in zip(data, paths["images"], strict=True):
            nib.save(_nifti(channel, affine, zooms), staging / path.name)
        if label_img is not None:
            nib.save(label_img, staging / paths["label"].name)
        if folder.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            os.replace(folder, old)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _case_id(layout: str, index: int, prefix: str | None) -> str:
    name = get_layout(layout).name
    head = _DEFAULT_PREFIX[name] if prefix is None else prefix
    if name == "brats2023":
        return f"{head}-{index:05d}-000"
    return f"{head}_{index:03d}"


def _case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _msd_dataset_json(
    training: list[str], test: list[str], convention: str, version: str
) -> dict[str, Any]:
    conv = get_convention(convention)
    names = {"ED": "edema", "NCR": "non-enhancing tumor", "ET": "enhancing tumour"}
    labels = {"0": "background"}
    for value, name in sorted((v, names[c]) for c, v in conv.classes.items()):
        labels[str(value)] = name
    return {
        "name": "BRATS",
        "description": "Synthetic glioma phantoms (tumorseg synth) in the MSD Task01 layout",
        "reference": "tumorseg.data.synthetic",
        "licence": "CC0-1.0",
        "release": f"tumorseg {version}",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": labels,
        "numTraining": len(training),
        "numTest": len(test),
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in training
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test],
    }


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    num_cases: int = 4,
    shape: tuple[int, int, int] = (64, 64, 64),
    seed: int = 0,
    layout: str = "brats2021",
    label_convention: str | None = None,
    orientation: str = "LPS",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    oblique_degrees: float = 0.0,
    num_unlabelled: int = 0,
    case_prefix: str | None = None,
    contrast: Mapping[str, Mapping[str, float]] | None = None,
    tumour_scale: float = 1.0,
    resection_cavity: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> list[str]:
    """Write a synthetic dataset in a BraTS or MSD layout.

    Labelled cases are numbered ``0..num_cases-1`` and unlabelled ones (written without a
    label map: for inference) continue the numbering. Case ``i`` depends only on ``(seed, i)``
    and the geometry, so adding cases never changes the existing ones. Case ids:
    ``SYN2021_000`` (brats2021), ``BraTS-SYN-00000-000`` (brats2023), ``BRATS_000`` (msd);
    ``case_prefix`` replaces the part before the number. For ``msd`` a ``dataset.json`` like
    the Task01 one is written last.

    Args:
        out_dir: dataset root (created if missing).
        num_cases: labelled cases (>= 1).
        shape: voxels per axis of every stored volume (each >= 16).
        seed: base seed (>= 0).
        layout: ``brats2021``, ``brats2023`` or ``msd``.
        label_convention: label numbers to use; None means the layout's own convention.
        orientation: voxel axis codes of the stored volumes (``LPS``, ``RAS``, ...).
        spacing: voxel size in mm.
        oblique_degrees: head tilt of the affine (see :func:`orientation_affine`).
        num_unlabelled: extra cases without label maps.
        case_prefix: replaces the default case-id prefix.
        contrast: tissue-level overrides for every case, passed to :func:`make_phantom`
            (e.g. a shifted set for transfer-learning experiments).
        tumour_scale: tumour size factor for every case, passed to :func:`make_phantom`.
        resection_cavity: post-operative cases with a resection cavity labelled ``RC``
            (:func:`make_phantom`); needs ``label_convention="brats2024"``.
        overwrite: replace existing cases (and ``dataset.json``) instead of raising.
        progress: show a tqdm progress bar.

    Returns:
        The case ids, labelled first.

    Raises:
        FileExistsError: when any target exists and ``overwrite`` is false; checked before
            anything is written.
        ValueError: for invalid arguments (the value received is shown).
    """
    lay = get_layout(layout)
    conv = get_convention(
        label_convention if label_convention is not None else lay.label_convention
    )
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    orientation = _check_orientation(orientation)
    for name, value, minimum in (
        ("num_cases", num_cases, 1),
        ("num_unlabelled", num_unlabelled, 0),
    ):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if case_prefix is not None and not _CASE_ID_RE.match(case_prefix):
        raise ValueError(
            f"case_prefix must be letters, digits, '.', '_' or '-' (not starting with "
            f"'.', '_' or '-'), got {case_prefix!r}"
        )
    # Checked here too, so a bad value fails before any case is written.
    _check_contrast(contrast)
    _check_tumour_scale(tumour_scale)
    _check_resection_cavity(resection_cavity, conv)
    affine = orientation_affine(
        orientation, shape=shape, spacing=spacing, oblique_degrees=oblique_degrees
    )

    out = Path(out_dir)
    total = int(num_cases) + int(num_unlabelled)
    ids = [_case_id(lay.name, i, case_prefix) for i in range(total)]
    if not overwrite:
        existing = [
            p
            for i, cid in enumerate(ids)
            for p in _case_paths(out, cid, lay, i < num_cases)["targets"]
            if p.exists()
        ]
        if lay.four_d and (out / "dataset.json").exists():
            existing.append(out / "dataset.json")
        if existing:
            raise _exists_error(existing[0], len(existing) - 1)

    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    for i, cid in enumerate(tqdm(ids, desc="synth", unit="case", disable=not progress)):
        images, label = make_phantom(
            shape,
            seed=_case_seed(seed, i),
            label_convention=conv.name,
            contrast=contrast,
            tumour_scale=tumour_scale,
            orientation=orientation,
            resection_cavity=resection_cavity,
        )
        write_case(
            out,
            cid,
            images,
            label if i < num_cases else None,
            affine=affine,
            layout=lay.name,
            overwrite=overwrite,
        )
    if lay.four_d:
        from tumorseg import __version__

        meta = _msd_dataset_json(ids[:num_cases], ids[num_cases:], conv.name, __version__)
        atomic_write_text(out / "dataset.json", json.dumps(meta, indent=4) + "\n")
    return ids
