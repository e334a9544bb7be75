"""Out-of-fold predictions of a cross-validation: each fold's validation cases, its own model.

:func:`predict_out_of_fold` is the ``predict_fold`` step of
:func:`tumorseg.training.cv.run_cv`: the bundle's predictor with the fold's ``model.pt``
segments the fold's validation cases into ``<oof>/<case_id>.nii.gz`` and keeps the region
probabilities in ``<oof>/probabilities/<case_id>.npz``, untouched by any post-processing rule
(they are what ``tumorseg postprocess --search`` chooses rules on).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tumorseg.data.manifest import load_datalist, load_manifest
from tumorseg.inference.ensemble import read_probabilities
from tumorseg.inference.postprocess import RULES_FILE, PostprocessRules, voxel_volume_mm3
from tumorseg.inference.predictor import Predictor
from tumorseg.inference.results import PROBABILITIES_DIR
from tumorseg.training.cv import CVError, CVFolder
from tumorseg.transforms import labels_to_regions

__all__ = ["out_of_fold_cases", "predict_out_of_fold"]

_THRESHOLD = 0.5


def predict_out_of_fold(
    fold: int,
    model: str | os.PathLike[str],
    items: Sequence[Mapping[str, Any]],
    oof_dir: str | os.PathLike[str],
    *,
    bundle: str | os.PathLike[str],
    label_convention: str,
    config_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> list[Path]:
    """Segment one fold's validation ``items`` with that fold's ``model``.

    Args:
        fold: the fold (for messages).
        model: the fold's ``model.pt``.
        items: its validation items (``case_id``, ``image``) with absolute paths.
        oof_dir: the cross-validation's out-of-fold folder.
        bundle: the bundle folder.
        label_convention: numbers of the written labels (the manifest's).
        config_files: config files merged after the bundle's (the training's network file).
        overrides: bundle config values (the training's, e.g. ``filters``).
        device: ``cpu``, ``cuda`` ...; default CUDA when available.

    Returns:
        The label maps written.

    Raises:
        tumorseg.inference.CaseError: a validation study cannot be read (file named).
    """
    predictor = Predictor.from_bundle(
        bundle, checkpoint=model, config_files=config_files, overrides=overrides, device=device
    )
    predictor.postprocess_rules = None  # the search needs the raw out-of-fold prediction
    written = []
    for item in items:
        result = predictor.predict_case(
            item["image"], case_id=str(item["case_id"]), label_convention=label_convention
        )
        written.append(result.save(oof_dir, save_probabilities=True))
    return written


def out_of_fold_cases(
    cv_dir: str | os.PathLike[str],
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """``(prediction, reference, voxel_mm3)`` region masks of every out-of-fold case of a
    cross-validation folder, for :func:`tumorseg.inference.postprocess.search_rules`.

    The prediction is the stored probabilities ``> 0.5``; the reference the manifest's label
    map of the case.

    Raises:
        tumorseg.training.cv.CVError: not a cross-validation folder, or no finished fold.
        ValueError: an out-of-fold case missing from the manifest, or on another grid.
    """
    cv = CVFolder(Path(cv_dir))
    state = cv.read_state()
    manifest = load_manifest(state["datalist"])
    convention = str(manifest["label_convention"])
    done = [int(k) for k in state["folds"] if cv.is_done(int(k))]
    if not done:
        raise CVError(f"{cv.root}: no finished fold; finish it with the same `tumorseg cv`")
    cases = []
    for fold in done:
        items = load_datalist(
            manifest, dataset_dir=state["dataset_dir"] or None, fold=fold, split="val"
        )
        for item in items:
            path = cv.oof / PROBABILITIES_DIR / f"{item['case_id']}.npz"
            if not path.is_file():
                raise ValueError(
                    f"{path} is missing: fold {fold} has no out-of-fold probabilities for "
                    f"{item['case_id']} (was it run with --no-oof?)"
                )
            probs, affine = read_probabilities(path)
            reference: Any = nib.load(item["label"])
            ref = np.asarray(reference.dataobj)
            if ref.shape != probs.shape[1:]:
                raise ValueError(
                    f"{item['case_id']}: reference {item['label']} has shape {ref.shape}, the "
                    f"out-of-fold probabilities {probs.shape[1:]}"
                )
            regions = np.asarray(labels_to_regions(ref, convention), dtype=bool)
            cases.append((probs > _THRESHOLD, regions, voxel_volume_mm3(affine)))
    return cases


def write_rules(cv_dir: str | os.PathLike[str], rules: PostprocessRules) -> list[Path]:
    """Write ``rules`` into a cross-validation folder and beside each finished fold's model,
    where inference finds them by default (:func:`~tumorseg.inference.postprocess.rules_next_to`).

    Returns:
        The files written, the folder's first.
    """
    cv = CVFolder(Path(cv_dir))
    state = cv.read_state()
    targets = [cv.root / RULES_FILE]
    targets += [cv.ckpt_dir(int(k)) / RULES_FILE for k in state["folds"] if cv.is_done(int(k))]
    return [rules.save(path) for path in targets]
