"""One study between the predictor's stages: :class:`LoadedCase` in, :class:`PredictionResult` out.

A :class:`LoadedCase` is a study checked, loaded and preprocessed by
:meth:`tumorseg.inference.Predictor.load_case`; a :class:`PredictionResult` is its
segmentation on the study's own voxel grid, which :meth:`PredictionResult.save` writes
atomically (``<case_id>.nii.gz`` with the input's header, optionally
``probabilities/<case_id>.npz``). :func:`region_volumes_ml` measures a label map's regions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import REGIONS, LabelConvention, get_convention
from tumorseg.inference.writer import label_image, write_label_atomic, write_probabilities_atomic

__all__ = ["PROBABILITIES_DIR", "LoadedCase", "PredictionResult", "region_volumes_ml"]

#: Folder under the output folder that holds the probability maps.
PROBABILITIES_DIR = "probabilities"


def region_volumes_ml(
    label: np.ndarray, affine: np.ndarray, convention: str | LabelConvention
) -> dict[str, float]:
    """Volume of each region (``WT``, ``TC``, ``ET``) of a label map, in mL.

    Args:
        label: integer label map.
        affine: its voxel-to-world affine (mm); the voxel volume is ``|det(affine[:3, :3])|``.
        convention: the convention of the label values.
    """
    conv = get_convention(convention)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
    return {r: float(counts[list(conv.region_values(r))].sum()) * voxel_ml for r in REGIONS}


@dataclass
class PredictionResult:
    """The segmentation of one study, on the study's own voxel grid.

    Attributes:
        case_id: the study.
        images: its input files (four in ``CHANNEL_ORDER`` or one 4D file).
        label: ``(X, Y, Z)`` uint8 label map in ``label_convention``, in the voxel order of the
            input files.
        probabilities: ``(C, X, Y, Z)`` float32 region probabilities, channels ``regions``.
        affine: voxel-to-world affine of the input (nibabel's, RAS mm).
        header: nibabel header of the first input file (copied into the output), or None
            for non-NIfTI inputs.
        label_convention: the convention of ``label``.
        timings: seconds spent per stage: ``load``, ``preprocess``, ``network``,
            ``postprocess`` (and ``write`` once saved).
        regions: the channels of ``probabilities`` (``WT``, ``TC``, ``ET``, optionally ``RC``).
    """

    case_id: str
    images: tuple[Path, ...]
    label: np.ndarray
    probabilities: np.ndarray
    affine: np.ndarray
    header: Any | None
    label_convention: str
    timings: dict[str, float] = field(default_factory=dict)
    regions: tuple[str, ...] = REGIONS

    def volumes_ml(self) -> dict[str, float]:
        """Volume of ``WT``, ``TC`` and ``ET`` in mL."""
        return region_volumes_ml(self.label, self.affine, self.label_convention)

    def to_nifti(self) -> Any:
        """The label map as a nibabel image with the input's header (type and shape changed)."""
        return label_image(self.label, self.header, self.affine)

    def save(self, output_dir: str | os.PathLike[str], *, save_probabilities: bool = False) -> Path:
        """Write ``<output_dir>/<case_id>.nii.gz`` (and the probabilities) atomically.

        The probabilities, when asked for, go to ``probabilities/<case_id>.npz`` (float16,
        see :func:`tumorseg.inference.writer.write_probabilities_atomic`) and are written
        before the mask, so an existing mask means the case is complete.

        Returns:
            The mask's path.
        """
        start = time.perf_counter()
        out = Path(output_dir)
        if save_probabilities:
            write_probabilities_atomic(
                out / PROBABILITIES_DIR / f"{self.case_id}.npz",
                self.probabilities,
                affine=self.affine,
                regions=self.regions,
            )
        path = write_label_atomic(out / f"{self.case_id}.nii.gz", self.to_nifti())
        self.timings["write"] = time.perf_counter() - start
        return path


@dataclass
class LoadedCase:
    """A study after loading and preprocessing, ready for :meth:`Predictor.predict_loaded`.

    Attributes:
        case_id: the study.
        paths: its input files.
        header: nibabel header of the first file (None for non-NIfTI inputs).
        data: the bundle's preprocessing output (``data[image_key]`` is the cropped,
            normalised MetaTensor that remembers how to invert its geometry).
        timings: seconds of ``load`` and ``preprocess``.
    """

    case_id: str
    paths: tuple[Path, ...]
    header: Any | None
    data: dict[str, Any]
    timings: dict[str, float]
