"""Segment new studies with a bundle: :class:`Predictor` (one case or a folder, resumable).

See :mod:`tumorseg.inference.predictor` for the design shared by ``tumorseg infer`` and the
bundle's ``inference.json``.
"""

from tumorseg.inference.inputs import CaseError
from tumorseg.inference.predictor import (
    FolderReport,
    InferenceFailed,
    LoadedCase,
    OutputError,
    PredictionResult,
    Predictor,
    locate_bundle,
    region_volumes_ml,
)

__all__ = [
    "CaseError",
    "FolderReport",
    "InferenceFailed",
    "LoadedCase",
    "OutputError",
    "PredictionResult",
    "Predictor",
    "locate_bundle",
    "region_volumes_ml",
]
