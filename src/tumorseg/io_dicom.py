"""DICOM series in: a folder's series found, told apart by description, read into RAS voxels.

A hospital's study arrives as DICOM series (one file per slice, or an enhanced multi-frame
file). This module reads them with ITK's GDCM reader, the reader MONAI's ``ITKReader`` uses,
and gives what the NIfTI path of the pipeline starts from: the voxels as ``(X, Y, Z)``
float32, ``X`` along a row (DICOM columns), ``Y`` down the rows, ``Z`` through the slices in
ITK's stacking order, and the voxel-to-world affine in RAS millimetres (DICOM's LPS patient
coordinates with the first two axes negated, as nibabel's). Rescale slope and intercept are
applied by GDCM (the voxels are the real values, not the stored integers).

* :func:`find_dicom_series`: every series under a folder (``SeriesInstanceUID``, description,
  files in slice order);
* :func:`read_dicom_series`: one series' voxels and affine;
* :func:`is_dicom_file`, :func:`holds_dicom`: cheap checks (the ``DICM`` marker).

ITK is a dependency of the project, so reading DICOM needs no extra; writing DICOM-SEG does
(:mod:`tumorseg.inference.dicom_seg`, ``pip install 'tumorseg[dicom]'``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LPS_TO_RAS",
    "DicomSeries",
    "find_dicom_series",
    "holds_dicom",
    "is_dicom_file",
    "read_dicom_series",
]

#: DICOM's patient coordinates (LPS) to nibabel's world coordinates (RAS), homogeneous.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_PREAMBLE = 128
_MAGIC = b"DICM"
_SERIES_DESCRIPTION = "0008|103e"


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file with the DICOM Part 10 marker (``DICM`` after 128 bytes)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_PREAMBLE)
            return fh.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def holds_dicom(folder: str | os.PathLike[str]) -> bool:
    """True when some file under ``folder`` (any depth) is a DICOM file."""
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if is_dicom_file(Path(root) / name):
                return True
    return False


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series of a folder.

    Attributes:
        series_uid: its ``SeriesInstanceUID``.
        description: its ``SeriesDescription`` (``""`` when absent), which tells the
            modalities of a study apart.
        files: its files in the order ITK stacks them (slice ``Z = k`` is ``files[k]``).
    """

    series_uid: str
    description: str
    files: tuple[Path, ...]


def _itk() -> Any:
    import itk

    return itk


def _description(itk: Any, file: Path) -> str:
    """The series description of one file, from its header (GDCM reads no voxels)."""
    io = itk.GDCMImageIO.New()
    io.SetFileName(str(file))
    io.ReadImageInformation()
    found, value = io.GetValueFromTag(_SERIES_DESCRIPTION, "")
    return str(value).strip() if found else ""


def find_dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """Every DICOM series under ``folder`` (any depth), in ``SeriesInstanceUID`` order.

    Args:
        folder: a folder holding the files of one or more series.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: it holds no DICOM series (the folder is named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder {str(folder)!r} does not exist")
    itk = _itk()
    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(False)  # one series per SeriesInstanceUID
    names.SetGlobalWarningDisplay(False)
    names.SetRecursive(True)
    names.SetDirectory(str(folder))
    series = []
    for uid in sorted(str(u) for u in names.GetSeriesUIDs()):
        files = tuple(Path(f) for f in names.GetFileNames(uid))
        if files:
            series.append(DicomSeries(uid, _description(itk, files[0]), files))
    if not series:
        raise ValueError(
            f"no DICOM series in {str(folder)!r} (no readable DICOM image file at any depth)"
        )
    return series


def read_dicom_series(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and the RAS affine of one series, as the NIfTI path of the pipeline has them.

    Args:
        series: from :func:`find_dicom_series`.

    Returns:
        ``(voxels, affine)``: ``(X, Y, Z)`` float32 real values (rescale slope and intercept
        applied; ``X`` along a row, ``Y`` down the rows, ``Z`` through ``series.files``) and
        the 4x4 voxel-to-world affine in RAS mm.

    Raises:
        ValueError: the files cannot be read as one 3D volume (the first file and ITK's
            reason are named).
    """
    itk = _itk()
    files = [str(f) for f in series.files]
    try:
        # The files in our order (not re-sorted by ITK): slice k is files[k], which the
        # DICOM-SEG writer relies on.
        reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New()
        reader.SetImageIO(itk.GDCMImageIO.New())
        reader.SetFileNames(files)
        reader.Update()
        image = reader.GetOutput()
    except (RuntimeError, OSError) as err:
        reason = str(err).strip().splitlines()
        raise ValueError(
            f"cannot read DICOM series {series.series_uid} ({series.description!r}, "
            f"{len(files)} files from {files[0]!r}): "
            f"{reason[-1] if reason else type(err).__name__}"
        ) from None
    voxels = np.asarray(itk.array_view_from_image(image), dtype=np.float32).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing  # column j: the world step of index j
    lps[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return np.ascontiguousarray(voxels), LPS_TO_RAS @ lps
