"""Score a folder of predicted kaggle_3m mask TIFs against the dataset's own masks.

This is how a finished LGG model is scored on held-out patients, and how the published
anchor (Buda et al. 2019) scores: each patient's slices are stacked by slice index into a
volume and one 3D Dice is computed per patient; a patient whose reference and prediction are
both empty scores 1. The predictions are read from files, so what is scored is exactly what
``tumorseg infer`` wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.data.lgg import (
    LGGDatasetError,
    parse_slice_name,
    resolve_kaggle_3m_root,
    score_patients,
)

__all__ = ["institution_of", "read_mask_folder", "score_mask_folders", "summarise_patient_dice"]


def institution_of(patient: str) -> str:
    """The TCGA tissue-source site of a kaggle_3m patient id (``TCGA_CS_4941_...`` -> ``CS``)."""
    parts = patient.split("_")
    return parts[1] if len(parts) > 2 and parts[0] == "TCGA" else "?"


def read_mask_folder(
    root: str | os.PathLike[str], patients: Iterable[str]
) -> dict[str, dict[int, np.ndarray]]:
    """The binary masks ``<patient>/<patient>_<n>_mask.tif`` of ``patients`` under ``root``.

    Raises:
        LGGDatasetError: a patient folder without any mask, or an unreadable mask; the
            message names the path.
    """
    from PIL import Image, UnidentifiedImageError

    base = resolve_kaggle_3m_root(root)
    out: dict[str, dict[int, np.ndarray]] = {}
    for patient in patients:
        masks: dict[int, np.ndarray] = {}
        folder = base / patient
        for path in sorted(folder.glob("*_mask.tif*")) if folder.is_dir() else []:
            parsed = parse_slice_name(path.name)
            if parsed is None or parsed[0] != patient:
                continue
            try:
                with Image.open(path) as img:
                    masks[parsed[1]] = np.asarray(img) > 0
            except (OSError, UnidentifiedImageError) as err:
                raise LGGDatasetError(f"{path}: unreadable mask: {err}") from None
        if not masks:
            raise LGGDatasetError(f"{folder}: no {patient}_<n>_mask.tif found")
        out[patient] = masks
    return out


def score_mask_folders(
    pred_dir: str | os.PathLike[str],
    ref_dir: str | os.PathLike[str],
    patients: Iterable[str],
    *,
    min_slices: int = 0,
) -> dict[str, Any]:
    """Per-patient (3D) and per-slice Dice / IoU of predicted masks against references.

    Args:
        pred_dir: the predictions (``tumorseg infer`` output for a kaggle_3m folder).
        ref_dir: the kaggle_3m folder holding the reference masks.
        patients: the patients to score; each must be in both folders with the same slices.
        min_slices: > 0 applies the 3D clean-up to the predictions first (already applied by
            ``tumorseg infer`` unless its post-processing was turned off).

    Returns:
        :func:`tumorseg.data.lgg.score_patients`'s result.

    Raises:
        LGGDatasetError: a patient missing from either folder, or slices that differ.
    """
    chosen = sorted(set(patients))
    refs = read_mask_folder(ref_dir, chosen)
    preds = read_mask_folder(pred_dir, chosen)
    for patient in chosen:
        missing = sorted(set(refs[patient]) - set(preds[patient]))
        if missing:
            raise LGGDatasetError(
                f"{Path(pred_dir) / patient}: no prediction for slice(s) {missing[:10]}"
            )
        preds[patient] = {i: preds[patient][i] for i in refs[patient]}
    return score_patients(preds, refs, min_slices=min_slices)


def summarise_patient_dice(per_patient: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Mean, median, count, and the mean per institution, of per-patient Dice values."""
    dice = {p: v[0] for p, v in per_patient.items()}
    sites: dict[str, list[float]] = {}
    for patient, value in dice.items():
        sites.setdefault(institution_of(patient), []).append(value)
    return {
        "n": len(dice),
        "mean": float(np.mean(list(dice.values()))),
        "median": float(np.median(list(dice.values()))),
        "per_institution": {
            s: {"n": len(v), "mean": float(np.mean(v))} for s, v in sorted(sites.items())
        },
    }
