"""DICOM studies as predictor input: four MR series of a case folder, matched to the modalities.

A DICOM case is a folder holding the files of four series (at any depth, in any file
naming). Which series is which modality is told by its ``SeriesDescription``: the default
:data:`DEFAULT_DICOM_ALIASES` know the usual names (``FLAIR``, ``T2-FLAIR``, ``T1``,
``T1ce``, ``T1 post``, ``T2`` ...), and ``--dicom-map flair=Ax FLAIR,t1=T1 pre,...`` names a
site's own. Descriptions are compared ignoring case, spaces and punctuation.

:func:`load_dicom_study` reads the series with ITK (:mod:`tumorseg.io_dicom`) and builds the
``(4, X, Y, Z)`` :class:`~monai.data.MetaTensor` the bundle's ``LoadImaged`` +
``EnsureChannelFirstd`` would give for the same voxels stored as NIfTI (RAS affine as
``affine`` and ``original_affine``, ``spatial_shape``), so the rest of the preprocessing,
the network and the inversion run unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.data.cases import Case
from tumorseg.inference.inputs import CaseError
from tumorseg.io_dicom import (
    DicomSeries,
    find_dicom_series,
    holds_dicom,
    is_dicom_file,
    read_dicom_series,
)

__all__ = [
    "DEFAULT_DICOM_ALIASES",
    "DICOM_LAYOUT",
    "DICOM_STUDY_KEY",
    "DicomStudy",
    "find_dicom_cases",
    "find_dicom_study",
    "is_dicom_input",
    "load_dicom_study",
    "parse_dicom_map",
]

#: ``Case.layout`` of a DICOM case.
DICOM_LAYOUT = "dicom"

#: Key of the loaded data that carries the :class:`DicomStudy` (for the DICOM-SEG writer).
DICOM_STUDY_KEY = "dicom_study"

#: Series descriptions recognised per modality when no ``--dicom-map`` names them (normalised:
#: lower case, letters and digits only).
DEFAULT_DICOM_ALIASES: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2flair", "t2f", "axflair"),
    "t1": ("t1", "t1n", "t1pre", "t1native", "axt1"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post", "t1contrast", "t1postcontrast", "axt1post"),
    "t2": ("t2", "t2w", "axt2"),
}

_AFFINE_ATOL = 1e-4


def _normalise(description: str) -> str:
    return re.sub(r"[^a-z0-9]", "", description.lower())


def parse_dicom_map(text: str | Mapping[str, str] | None) -> dict[str, tuple[str, ...]]:
    """Modality -> accepted series descriptions, from ``"flair=Ax FLAIR,t1=T1 pre,..."``.

    Modalities not named keep their default aliases. None gives the defaults.

    Raises:
        ValueError: an unknown modality, an entry without ``=``, or an empty description
            (the entry is shown).
    """
    aliases = dict(DEFAULT_DICOM_ALIASES)
    if text is None:
        return aliases
    items = text.items() if isinstance(text, Mapping) else _split_map(str(text))
    for modality, description in items:
        key = modality.strip().lower()
        if key not in CHANNEL_ORDER:
            raise ValueError(
                f"--dicom-map names modality {modality!r}; expected some of {list(CHANNEL_ORDER)}"
            )
        if not _normalise(description):
            raise ValueError(f"--dicom-map gives {key} an empty series description")
        aliases[key] = (_normalise(description),)
    return aliases


def _split_map(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        modality, sep, description = item.partition("=")
        if not sep:
            raise ValueError(
                f"--dicom-map must look like flair=DESCRIPTION,t1=...,t1ce=...,t2=..., got "
                f"entry {item!r} in {text!r}"
            )
        pairs.append((modality, description))
    return pairs


@dataclass(frozen=True)
class DicomStudy:
    """The four series of one DICOM case.

    Attributes:
        case_id: the case (its folder name).
        folder: the case folder.
        series: modality -> its series, in :data:`~tumorseg.conventions.CHANNEL_ORDER`.
    """

    case_id: str
    folder: Path
    series: dict[str, DicomSeries]

    @property
    def reference(self) -> DicomSeries:
        """The series whose grid the mask shares (the first modality, FLAIR)."""
        return self.series[CHANNEL_ORDER[0]]


def find_dicom_study(
    case_id: str, folder: str | os.PathLike[str], dicom_map: str | Mapping[str, str] | None
) -> DicomStudy:
    """Match the series of a case folder to the four modalities by series description.

    Raises:
        CaseError: no DICOM series, or a modality matched by no series or by several (the
            descriptions found are listed, with the ``--dicom-map`` that would fix it).
    """
    folder = Path(folder)
    aliases = parse_dicom_map(dicom_map)
    try:
        found = find_dicom_series(folder)
    except (ValueError, FileNotFoundError) as err:
        raise CaseError(case_id, folder, str(err)) from None
    descriptions = sorted({s.description for s in found})
    series = {}
    for modality in CHANNEL_ORDER:
        matches = [s for s in found if _normalise(s.description) in aliases[modality]]
        if len(matches) != 1:
            what = "no series" if not matches else f"{len(matches)} series"
            raise CaseError(
                case_id,
                folder,
                f"{what} described as {modality} ({'/'.join(aliases[modality])}); series "
                f"descriptions found: {descriptions}; name them with --dicom-map "
                "flair=...,t1=...,t1ce=...,t2=...",
            )
        series[modality] = matches[0]
    return DicomStudy(case_id, folder, series)


def load_dicom_study(study: DicomStudy) -> Any:
    """The four series as one ``(4, X, Y, Z)`` MetaTensor, as ``LoadImaged`` gives a NIfTI study.

    Raises:
        CaseError: a series cannot be read, or differs from FLAIR in shape or geometry (the
            series is named).
    """
    import torch
    from monai.data import MetaTensor
    from monai.utils import SpaceKeys

    channels = []
    reference: tuple[tuple[int, ...], np.ndarray] | None = None
    for modality, series in study.series.items():
        where = series.files[0]
        try:
            voxels, affine = read_dicom_series(series)
        except ValueError as err:
            raise CaseError(study.case_id, where, str(err)) from None
        if reference is None:
            reference = (voxels.shape, affine)
        elif voxels.shape != reference[0]:
            raise CaseError(
                study.case_id,
                where,
                f"{modality} series {series.description!r} has shape {voxels.shape}, FLAIR "
                f"{reference[0]}; the series must share one grid",
            )
        else:
            diff = float(np.max(np.abs(affine - reference[1])))
            if diff > _AFFINE_ATOL:
                raise CaseError(
                    study.case_id,
                    where,
                    f"{modality} series {series.description!r} differs from FLAIR in position "
                    f"or orientation by up to {diff:.4g} mm; the series are not co-registered",
                )
        channels.append(voxels)
    assert reference is not None
    affine = reference[1]
    meta = {
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(reference[0]),
        "original_channel_dim": 0,
        "space": SpaceKeys.RAS,
        "filename_or_obj": str(study.folder),
    }
    return MetaTensor(
        np.stack(channels), affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta
    )


def is_dicom_input(input_dir: str | os.PathLike[str]) -> bool:
    """True for a folder that holds DICOM files and no NIfTI file (at any depth)."""
    root = Path(input_dir)
    if not root.is_dir():
        return False
    if any(root.rglob("*.nii")) or any(root.rglob("*.nii.gz")):
        return False
    return holds_dicom(root)


def find_dicom_cases(input_dir: str | os.PathLike[str]) -> list[Case]:
    """The DICOM cases of a folder: each sub-folder holding DICOM files, by name.

    ``input_dir`` itself is the one case when its DICOM files lie in it directly (not in
    sub-folders).

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
        ValueError: no DICOM file under ``input_dir``.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {str(root)!r} does not exist")
    if any(p.is_file() and is_dicom_file(p) for p in root.iterdir()):
        return [Case(root.name, (root,), None, DICOM_LAYOUT)]
    cases = [
        Case(p.name, (p,), None, DICOM_LAYOUT)
        for p in sorted(root.iterdir())
        if p.is_dir() and holds_dicom(p)
    ]
    if not cases:
        raise ValueError(
            f"no DICOM case in {str(root)!r}: expected one sub-folder per case holding its "
            "four MR series"
        )
    return cases
