"""Pair predicted label maps with their references: case ids, file discovery, grid checks.

References come from a folder of ``<case_id>.nii.gz`` label maps, a BraTS or MSD dataset
folder or a manifest; a trailing ``_seg``/``-seg`` is not part of the case id. A prediction
whose shape or affine differs from its reference is a :class:`CaseMismatchError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tumorseg.conventions import LAYOUTS

__all__ = [
    "CaseMismatchError",
    "EvaluationError",
    "case_id_from_path",
    "find_predictions",
    "find_references",
]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LABEL_SUFFIXES = tuple(sorted({lay.label_suffix for lay in LAYOUTS.values() if lay.label_suffix}))
# Affines are stored as float32 in NIfTI headers; anything beyond this is a different grid.
_AFFINE_ATOL_MM = 1e-3


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given (the message says why and where)."""


class CaseMismatchError(EvaluationError):
    """A prediction's grid (shape or affine) differs from its reference's."""


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """Case id of a label-map file: the name without ``.nii[.gz]`` and a ``_seg``/``-seg``."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix in _LABEL_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))


def _index(files: Iterable[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files:
        cid = case_id_from_path(path)
        if cid in out:
            raise EvaluationError(
                f"two {what} files for case {cid!r}: {out[cid].name} and {path.name}"
            )
        out[cid] = path
    return out


def find_predictions(pred_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Prediction files by case id (``<case_id>.nii.gz`` in ``pred_dir``).

    Raises:
        FileNotFoundError: when ``pred_dir`` is not a directory.
    """
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"prediction directory not found: {str(folder)!r}")
    return _index(_nifti_files(folder), "prediction")


def _from_manifest(path: Path) -> tuple[dict[str, Path], str | None]:
    try:
        from tumorseg.data.manifest import load_datalist, load_manifest
    except ImportError as err:
        raise EvaluationError(
            f"reading the manifest {str(path)!r} needs tumorseg.data.manifest, which is not "
            f"available ({err}); pass a folder of <case_id>.nii.gz label maps instead"
        ) from None
    convention = load_manifest(path).get("label_convention")
    items = load_datalist(path, fold=None, split="all")
    out: dict[str, Path] = {}
    for item in items:
        label = item.get("label")
        if not label:
            continue  # unlabelled case: nothing to compare with
        cid = str(item["case_id"])
        if cid in out:
            raise EvaluationError(f"manifest {str(path)!r} lists case {cid!r} twice")
        out[cid] = Path(label)
    if not out:
        raise EvaluationError(f"manifest {str(path)!r} has no case with a label")
    return out, str(convention) if convention else None


def _from_dataset_folder(path: Path) -> tuple[dict[str, Path], str | None]:
    """Labelled cases of a BraTS/MSD dataset folder, with the layout's label convention."""
    try:
        from tumorseg.data.discovery import discover_cases

        cases = discover_cases(path)
    except (ImportError, ValueError):
        cases = []  # not a layout the discovery module knows: try the plain patterns below
    labelled = {c.case_id: c.label for c in cases if c.label is not None and c.label.is_file()}
    if labelled:
        layouts = {c.layout for c in cases}
        layout = layouts.pop() if len(layouts) == 1 else None
        conv = LAYOUTS[layout].label_convention if layout in LAYOUTS else None
        return dict(sorted(labelled.items())), conv
    # Fallback without the discovery module: <case>/<case><label suffix> or labelsTr/.
    found: list[Path] = []
    if (path / "labelsTr").is_dir():
        found = _nifti_files(path / "labelsTr")
    for case_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for suffix in _LABEL_SUFFIXES:
            for ext in _NIFTI_SUFFIXES:
                candidate = case_dir / f"{case_dir.name}{suffix}{ext}"
                if candidate.is_file():
                    found.append(candidate)
    return _index(found, "reference"), None


def _find_references(ref: str | os.PathLike[str]) -> tuple[dict[str, Path], str | None]:
    path = Path(ref)
    if not path.exists():
        raise FileNotFoundError(f"reference not found: {str(path)!r}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return _from_manifest(path)
        raise EvaluationError(
            f"reference {str(path)!r} is a file but not a manifest (.json); "
            "pass a folder of <case_id>.nii.gz label maps or a manifest"
        )
    top = _nifti_files(path)
    if top:
        return _index(top, "reference"), None
    found, conv = _from_dataset_folder(path)
    if found:
        return found, conv
    raise EvaluationError(
        f"no reference label maps in {str(path)!r}: expected <case_id>.nii.gz files, a "
        "BraTS/MSD dataset folder (<case>/<case>_seg.nii.gz, labelsTr/) or a manifest"
    )


def find_references(ref: str | os.PathLike[str]) -> dict[str, Path]:
    """Reference label maps by case id, from a folder, a dataset folder or a manifest.

    Raises:
        FileNotFoundError: when ``ref`` does not exist.
        EvaluationError: when no reference label map is found.
    """
    return _find_references(ref)[0]


def _spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(s) for s in shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims = dims[:-1]
    return dims


def _check_geometry(case_id: str, pred_path: Path, ref_path: Path) -> None:
    import nibabel as nib

    try:
        pred = nib.load(str(pred_path))
        ref = nib.load(str(ref_path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise EvaluationError(f"case {case_id!r}: cannot read the label maps: {err}") from None
    pred_shape = _spatial_shape(pred.shape)  # type: ignore[attr-defined]
    ref_shape = _spatial_shape(ref.shape)  # type: ignore[attr-defined]
    if pred_shape != ref_shape:
        raise CaseMismatchError(
            f"case {case_id!r}: prediction {pred_path.name} has shape {pred_shape} but the "
            f"reference {ref_path.name} has shape {ref_shape}; resample the prediction to the "
            "reference grid"
        )
    pred_aff = np.asarray(pred.affine, dtype=np.float64)  # type: ignore[attr-defined]
    ref_aff = np.asarray(ref.affine, dtype=np.float64)  # type: ignore[attr-defined]
    if not np.allclose(pred_aff, ref_aff, rtol=0.0, atol=_AFFINE_ATOL_MM):
        diff = float(np.max(np.abs(pred_aff - ref_aff)))
        raise CaseMismatchError(
            f"case {case_id!r}: prediction {pred_path.name} and reference {ref_path.name} "
            f"have different affines (max difference {diff:.4g}; prediction "
            f"{np.round(pred_aff[:3], 4).tolist()}, reference {np.round(ref_aff[:3], 4).tolist()})"
        )
