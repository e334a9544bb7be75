"""Segment new studies with a bundle: :class:`Predictor` (one case or a folder, resumable).

:func:`load_bundle` reads a bundle's ``train.json`` and ``inference.json`` (see
:mod:`tumorseg.inference.bundle` for the ids); :meth:`Predictor.from_bundle` builds the
predictor that config declares, the same one ``python -m monai.bundle run`` builds.
"""

from tumorseg.inference.bundle import DATA_FORMATS, InferenceData, bundle_root_of, load_bundle
from tumorseg.inference.inputs import CaseError
from tumorseg.inference.predictor import (
    FolderReport,
    InferenceFailed,
    LoadedCase,
    OutputError,
    PredictionResult,
    Predictor,
    region_volumes_ml,
)
from tumorseg.inference.tiling import TILINGS, TiledInferer

__all__ = [
    "DATA_FORMATS",
    "CaseError",
    "FolderReport",
    "InferenceData",
    "InferenceFailed",
    "LoadedCase",
    "OutputError",
    "PredictionResult",
    "Predictor",
    "TILINGS",
    "TiledInferer",
    "bundle_root_of",
    "load_bundle",
    "region_volumes_ml",
]
