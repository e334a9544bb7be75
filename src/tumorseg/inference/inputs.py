"""Checks that tell which file of a study is unusable, and why, before and after loading it.

A bad study must be reported by file and reason and skipped without stopping the batch. The
checks here are cheap: file headers before loading (missing file, wrong dimensionality,
modalities of different shapes or not co-registered), the loaded voxels after (NaN or
infinite values, an empty image). A file whose voxels cannot be decompressed is found by
:func:`unreadable_file_error`, which only runs once loading has already failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import CHANNEL_ORDER

__all__ = ["CaseError", "check_headers", "check_voxels", "describe_error", "unreadable_file_error"]

# Same tolerance as tumorseg.data.discovery.validate_case: real co-registered BraTS modalities
# agree to float precision, misregistered ones differ by voxels.
_AFFINE_ATOL = 1e-4
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


class CaseError(ValueError):
    """One study cannot be segmented: which file, and why.

    Attributes:
        case_id: the study.
        file: the offending file (or the study's first file when no single file is to blame).
        reason: what is wrong, with the values found.
    """

    def __init__(self, case_id: str, file: str | Path, reason: str) -> None:
        self.case_id = case_id
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{case_id}: {self.file}: {reason}")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    out = list(shape)
    while len(out) > 3 and out[-1] == 1:
        out.pop()
    return tuple(out)


def check_headers(case_id: str, paths: Sequence[Path]) -> Any | None:
    """Check the files of a study from their headers alone.

    Args:
        case_id: the study, for messages.
        paths: four files in :data:`~tumorseg.conventions.CHANNEL_ORDER`, or one 4D file.

    Returns:
        The nibabel header of the first file (the geometry every output copies), or None when
        the inputs are not NIfTI.

    Raises:
        CaseError: a file is missing, unreadable, not 3D (not 4D with 4 channels for a single
            file), or differs in shape or affine from the first modality.
    """
    import nibabel as nib

    four_d = len(paths) == 1
    roles = ["image"] if four_d else list(CHANNEL_ORDER)
    reference: tuple[str, tuple[int, ...], np.ndarray] | None = None
    first_header = None
    for role, path in zip(roles, paths, strict=True):
        if not path.is_file():
            raise CaseError(case_id, path, f"missing {role} image")
        if not _is_nifti(path):
            continue  # read by ITK through the bundle's LoadImaged; it reports its own errors
        try:
            img: Any = nib.load(str(path))
        except Exception as err:  # nibabel raises many types for bad headers
            raise CaseError(
                case_id, path, f"cannot read the header ({describe_error(err)})"
            ) from None
        shape = _spatial(tuple(int(s) for s in img.shape))
        if four_d:
            if len(shape) != 4 or shape[3] != len(CHANNEL_ORDER):
                raise CaseError(
                    case_id,
                    path,
                    f"expected a 4D image with {len(CHANNEL_ORDER)} channels "
                    f"({', '.join(CHANNEL_ORDER)}), got shape {tuple(img.shape)}",
                )
            shape = shape[:3]
        elif len(shape) != 3:
            raise CaseError(case_id, path, f"expected a 3D volume, got shape {tuple(img.shape)}")
        affine = np.asarray(img.affine, dtype=np.float64)
        if reference is None:
            reference = (role, shape, affine)
            first_header = img.header
            continue
        ref_role, ref_shape, ref_affine = reference
        if shape != ref_shape:
            raise CaseError(case_id, path, f"shape {shape} differs from {ref_role} {ref_shape}")
        diff = float(np.max(np.abs(affine - ref_affine)))
        if diff > _AFFINE_ATOL:
            raise CaseError(
                case_id,
                path,
                f"affine differs from {ref_role} by up to {diff:.4g} (tolerance "
                f"{_AFFINE_ATOL}); the modalities are not co-registered",
            )
    return first_header


def check_voxels(case_id: str, paths: Sequence[Path], image: Any) -> None:
    """Check loaded voxels: every channel finite and with some brain (a voxel above 0).

    Args:
        case_id: the study, for messages.
        paths: its files (four, or one 4D file).
        image: the loaded ``(C, X, Y, Z)`` tensor, channels in ``CHANNEL_ORDER``.

    Raises:
        CaseError: NaN or infinite voxels, or a channel (or the whole study) without any voxel
            above 0, which is what the bundle's foreground crop takes as the brain.
    """
    import torch

    data = torch.as_tensor(image)
    names = list(CHANNEL_ORDER)
    if data.shape[0] != len(names):
        raise CaseError(
            case_id, paths[0], f"expected {len(names)} channels, loaded shape {tuple(data.shape)}"
        )

    def blame(channel: int) -> tuple[Path, str]:
        if len(paths) == 1:
            return paths[0], f"channel {channel} ({names[channel]}): "
        return paths[channel], ""

    empty = []
    for c in range(data.shape[0]):
        channel = data[c]
        bad = int((~torch.isfinite(channel)).sum())
        if bad:
            path, where = blame(c)
            raise CaseError(
                case_id, path, f"{where}{bad} NaN or infinite voxel(s) of {channel.numel()}"
            )
        if not bool((channel > 0).any()):
            empty.append(c)
    if len(empty) == data.shape[0]:
        raise CaseError(
            case_id, paths[0], "empty brain: no voxel above 0 in any modality (blank study?)"
        )
    if empty:
        path, where = blame(empty[0])
        raise CaseError(
            case_id,
            path,
            f"{where}empty image: no voxel above 0 in {names[empty[0]]} (missing modality?)",
        )


def unreadable_file_error(case_id: str, paths: Sequence[Path], err: BaseException) -> CaseError:
    """The file to blame for a failed load: the first one whose voxels cannot be read.

    Only called after loading failed, so reading each file again costs nothing in a good run.
    """
    import nibabel as nib

    for path in paths:
        if not _is_nifti(path):
            continue
        try:
            img: Any = nib.load(str(path))
            np.asanyarray(img.dataobj)
        except Exception as file_err:  # gzip, zlib, EOF and nibabel errors alike
            return CaseError(case_id, path, f"cannot read the voxels ({describe_error(file_err)})")
    return CaseError(case_id, paths[0], f"cannot load the study ({describe_error(err)})")


def describe_error(err: BaseException) -> str:
    """``<ExceptionType>: <first line of its message>``, for a one-line reason."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
