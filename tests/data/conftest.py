"""Tiny on-disk datasets for the discovery and manifest tests (8x8x8 volumes, written here).

The fixtures return factories so that each test builds exactly the cases it needs in its own
``tmp_path``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tumorseg.conventions import CHANNEL_ORDER, LAYOUTS

SHAPE = (8, 8, 8)

#: The real studies shared by the project (absent in a user's clone).
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

#: Label values per convention used by the factories (NCR, ED, ET).
LABEL_VALUES = {"brats2021": (1, 2, 4), "brats2023": (1, 2, 3), "msd": (2, 1, 3)}


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (``.nii`` or ``.nii.gz`` from the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def label_volume(convention: str = "brats2021", shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A label map holding each class of ``convention`` in a small block."""
    ncr, ed, et = LABEL_VALUES[convention]
    label = np.zeros(shape, dtype=np.uint8)
    label[2:6, 2:6, 2:6] = ed
    label[3:5, 3:5, 3:5] = ncr
    label[3, 3, 3] = et
    return label


MakeCase = Callable[..., Path]


@pytest.fixture
def make_case() -> MakeCase:
    """Factory: write one BraTS-style case folder and return it.

    Keyword arguments: ``layout`` (brats2021/brats2023), ``label`` (write a label map),
    ``skip`` (modalities not to write), ``shapes``/``affines`` (per-modality or ``label``
    overrides), ``label_data`` (array), ``ext`` (``.nii.gz`` or ``.nii``), ``suffixes``
    (custom naming).
    """

    def factory(
        root: Path,
        case_id: str,
        *,
        layout: str = "brats2021",
        label: bool = True,
        skip: Iterable[str] = (),
        shapes: dict[str, tuple[int, ...]] | None = None,
        affines: dict[str, np.ndarray] | None = None,
        label_data: np.ndarray | None = None,
        ext: str = ".nii.gz",
        suffixes: dict[str, str] | None = None,
        label_suffix: str | None = None,
    ) -> Path:
        spec = LAYOUTS[layout]
        names = dict(suffixes or spec.modality_suffixes)
        folder = root / case_id
        folder.mkdir(parents=True, exist_ok=True)
        shapes = shapes or {}
        affines = affines or {}
        rng = np.random.default_rng(len(case_id))
        for modality in CHANNEL_ORDER:
            if modality in skip:
                continue
            shape = shapes.get(modality, SHAPE)
            data = rng.integers(0, 1000, size=shape).astype(np.int16)
            write_nifti(folder / f"{case_id}{names[modality]}{ext}", data, affines.get(modality))
        if label:
            data = label_volume(spec.label_convention) if label_data is None else label_data
            data = np.zeros(shapes["label"], np.uint8) if "label" in shapes else data
            seg = label_suffix or spec.label_suffix
            write_nifti(folder / f"{case_id}{seg}{ext}", data, affines.get("label"))
        return folder

    return factory


MakeMsd = Callable[..., Path]


@pytest.fixture
def make_msd() -> MakeMsd:
    """Factory: write an MSD Task01-style folder with 4D images; returns the task folder.

    ``train``/``test`` are the case ids; ``dataset_json`` writes the lists; ``extra_train``
    adds images on disk that dataset.json does not list.
    """

    def factory(
        task: Path,
        *,
        train: Iterable[str] = ("BRATS_001", "BRATS_002"),
        test: Iterable[str] = ("BRATS_485",),
        dataset_json: bool = True,
        extra_train: Iterable[str] = (),
        image_shape: tuple[int, ...] = (*SHAPE, 4),
    ) -> Path:
        train, test = list(train), list(test)
        rng = np.random.default_rng(0)
        for case_id in [*train, *extra_train]:
            image = rng.normal(size=image_shape).astype(np.float32)
            write_nifti(task / "imagesTr" / f"{case_id}.nii.gz", image)
            write_nifti(task / "labelsTr" / f"{case_id}.nii.gz", label_volume("msd"))
        for case_id in test:
            image = rng.normal(size=image_shape).astype(np.float32)
            write_nifti(task / "imagesTs" / f"{case_id}.nii.gz", image)
        if dataset_json:
            spec: dict[str, Any] = {
                "name": "BRATS",
                "numTraining": len(train),
                "numTest": len(test),
                "training": [
                    {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                    for c in train
                ],
                "test": [f"./imagesTs/{c}.nii.gz" for c in test],
            }
            (task / "dataset.json").write_text(json.dumps(spec))
        return task

    return factory


@pytest.fixture
def real_studies() -> Path:
    """The project's real studies; skips the test when ``../shared/data`` is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real studies not found at {SHARED_DATA.resolve()} (../shared/data)")
    return SHARED_DATA.resolve()


@pytest.fixture
def nifti() -> Callable[..., Path]:
    """:func:`write_nifti` as a fixture, for tests that write odd files."""
    return write_nifti


@pytest.fixture
def labels() -> Callable[..., np.ndarray]:
    """:func:`label_volume` as a fixture."""
    return label_volume
