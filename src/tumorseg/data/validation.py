"""Check one discovered case: files present and readable, same geometry, 3D, legal labels.

NIfTI files are read with nibabel, the other formats of a ``modality_suffixes`` dataset with
ITK; a gzip file is streamed in full so that truncation shows.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumorseg.conventions import CHANNEL_ORDER, get_convention
from tumorseg.data.cases import NIFTI_EXTENSIONS, Case, CaseProblem, _short, split_extension

__all__ = ["validate_case"]

_AFFINE_ATOL = 1e-4
_GZIP_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Geometry:
    shape: tuple[int, ...]
    affine: Any  # 4x4 numpy array


def _ras_affine_from_itk(image_io: Any) -> Any:
    import numpy as np

    ndim = min(int(image_io.GetNumberOfDimensions()), 3)
    direction = np.eye(3)
    spacing = np.ones(3)
    origin = np.zeros(3)
    for i in range(ndim):
        spacing[i] = image_io.GetSpacing(i)
        origin[i] = image_io.GetOrigin(i)
        for j, value in enumerate(image_io.GetDirection(i)[:ndim]):
            direction[j, i] = value
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = origin
    # ITK is LPS, NIfTI (and nibabel) RAS: flip x and y so mixed formats compare.
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _read_itk(path: Path, *, load_data: bool) -> tuple[_Geometry, Any]:
    import itk
    import numpy as np

    image_io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if image_io is None:
        raise ValueError("no ITK reader for this file")
    image_io.SetFileName(str(path))
    image_io.ReadImageInformation()
    shape = tuple(int(image_io.GetDimensions(i)) for i in range(image_io.GetNumberOfDimensions()))
    ncomp = int(image_io.GetNumberOfComponents())
    if ncomp > 1:
        shape = (*shape, ncomp)
    geometry = _Geometry(shape, _ras_affine_from_itk(image_io))
    # Reading the pixels is what catches a truncated or corrupt file.
    image = itk.imread(str(path))
    data = (
        np.asarray(itk.array_from_image(image)) if load_data else None
    )  # a copy: a view dies with image
    if data is not None and ncomp == 1:
        data = data.transpose()  # ITK arrays are z,y,x; match the i,j,k of nibabel
    return geometry, data


def _read_nifti(path: Path, *, load_data: bool) -> tuple[_Geometry, Any]:
    import nibabel as nib
    import numpy as np

    img: Any = nib.load(str(path))
    geometry = _Geometry(tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=float))
    if load_data:
        return geometry, np.asanyarray(img.dataobj)
    if path.name.lower().endswith(".gz"):
        # Stream through the whole gzip member: a truncated download or a bad CRC shows up
        # here, without holding the decompressed volume in memory.
        with gzip.open(path, "rb") as stream:
            while stream.read(_GZIP_CHUNK):
                pass
    else:
        # The loaded header's vox_offset reads 0; the array proxy knows where the data starts.
        offset = int(getattr(img.dataobj, "offset", 0))
        needed = offset + int(np.prod(img.shape)) * int(img.get_data_dtype().itemsize)
        size = path.stat().st_size
        if size < needed:
            raise ValueError(f"file is truncated: {size} bytes, the header needs {needed}")
    return geometry, None


def _read(path: Path, *, load_data: bool) -> tuple[_Geometry, Any]:
    ext = split_extension(path.name)[1].lower()
    if ext in NIFTI_EXTENSIONS:
        return _read_nifti(path, load_data=load_data)
    return _read_itk(path, load_data=load_data)


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton axes (``(240, 240, 155, 1)`` is 3D)."""
    out = list(shape)
    while len(out) > 3 and out[-1] == 1:
        out.pop()
    return tuple(out)


def _illegal_label_values(
    data: Any, legal: frozenset[int], seen: set[int] | None = None
) -> list[float]:
    import numpy as np

    values = np.unique(data)
    if seen is not None:
        seen.update(int(v) for v in values if float(v).is_integer())
    return [float(v) for v in values if not (float(v).is_integer() and int(v) in legal)]


def validate_case(
    case: Case,
    *,
    label_convention: str,
    check_readable: bool = True,
    label_values: set[int] | None = None,
) -> list[CaseProblem]:
    """Check one case: files present, readable, same geometry, 3D, legal label values.

    Args:
        case: a case from :func:`discover_cases`.
        label_convention: ``brats2021``, ``brats2023`` or ``msd`` (aliases accepted): the
            label values allowed in the label map.
        check_readable: open the files. False checks only that the files exist, which costs
            one ``stat`` per file.
        label_values: when given, the integer values found in the label map are added to it
            (for recognising a dataset's label convention).

    Returns:
        The problems found, each naming the case and the file; empty when the case is good.
        A gzip file is decompressed in full to catch truncation; the label map is read to
        check its values; image voxels are streamed but not kept.
    """
    convention = get_convention(label_convention)
    problems = list(case.issues)
    files = [*case.images, *([case.label] if case.label is not None else [])]
    modalities = ["image"] if len(case.images) == 1 else list(CHANNEL_ORDER)
    roles = [*modalities, *(["label"] if case.label is not None else [])]

    present: list[tuple[str, Path]] = []
    for role, path in zip(roles, files, strict=True):
        if path.is_file():
            present.append((role, path))
        else:
            what = "label map" if role == "label" else f"{role} image"
            problems.append(CaseProblem(case.case_id, _short(path), f"missing {what}"))
    if not check_readable:
        return problems

    import numpy as np

    reference: tuple[str, _Geometry] | None = None
    for role, path in present:
        try:
            geometry, data = _read(path, load_data=role == "label")
        except Exception as err:  # noqa: BLE001 - any failure to read means an unusable file
            # nibabel, gzip, zlib and ITK each raise their own types (ImageFileError,
            # EOFError, BadGzipFile, zlib.error, RuntimeError ...).
            reason = f"cannot read ({type(err).__name__}: {err})".replace("\n", " ")
            problems.append(CaseProblem(case.case_id, _short(path), reason))
            continue
        short = _short(path)
        shape = _spatial(geometry.shape)
        if case.layout == "msd" and role == "image":
            if len(shape) != 4 or shape[3] != len(CHANNEL_ORDER):
                problems.append(
                    CaseProblem(
                        case.case_id,
                        short,
                        f"expected a 4D image with {len(CHANNEL_ORDER)} channels "
                        f"({', '.join(CHANNEL_ORDER)}), got shape {geometry.shape}",
                    )
                )
                continue
            shape = shape[:3]
        elif len(shape) != 3:
            problems.append(
                CaseProblem(
                    case.case_id, short, f"expected a 3D volume, got shape {geometry.shape}"
                )
            )
            continue
        if reference is None:
            reference = (role, _Geometry(shape, geometry.affine))
        else:
            ref_role, ref = reference
            if shape != ref.shape:
                problems.append(
                    CaseProblem(
                        case.case_id, short, f"shape {shape} differs from {ref_role} {ref.shape}"
                    )
                )
            else:
                diff = float(np.max(np.abs(geometry.affine - ref.affine)))
                if diff > _AFFINE_ATOL:
                    problems.append(
                        CaseProblem(
                            case.case_id,
                            short,
                            f"affine differs from {ref_role} by up to {diff:.4g} "
                            f"(tolerance {_AFFINE_ATOL}); the volumes are not co-registered",
                        )
                    )
        if data is not None:
            illegal = _illegal_label_values(data, convention.legal_values, label_values)
            if illegal:
                shown = ", ".join(f"{v:g}" for v in illegal[:10])
                problems.append(
                    CaseProblem(
                        case.case_id,
                        short,
                        f"label values {{{shown}}} are not legal in the {convention.name} "
                        f"convention (allowed {sorted(convention.legal_values)})",
                    )
                )
    return problems
