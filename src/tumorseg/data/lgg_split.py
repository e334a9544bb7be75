"""A fixed patient split of the LGG kaggle_3m dataset: a published held-out test set.

A split file (``../shared/data/lgg_kaggle_3m_split.json`` is the project's) names the test and
the development patients and the SHA-256 of every file of the dataset::

    {"dataset": ..., "source": ..., "test_patients": [...], "development_patients": [...],
     "n_files": 7858, "sha256": {"<patient>/<file>.tif": "<hex>", ...}}

Applied to an LGG manifest, the development patients are the ``training`` items, with
patient-level folds drawn among them only, and the test patients become ``testing`` items that
keep their masks: they are scored once per finished model and never used for training,
early stopping or any choice, so no fold or datalist split other than ``test`` reaches them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumorseg.data.lgg import LGGDatasetError, resolve_kaggle_3m_root
from tumorseg.data.manifest import assign_folds
from tumorseg.io import read_json

__all__ = ["PatientSplit", "apply_patient_split", "load_patient_split", "verify_split_hashes"]

_SPLIT_KEYS = ("test_patients", "development_patients", "sha256")


@dataclass(frozen=True)
class PatientSplit:
    """A fixed test / development split of patients.

    Attributes:
        path: the split file.
        sha256: the split file's own SHA-256 (recorded in manifests and model metadata).
        test_patients: patients held out for the final score.
        development_patients: patients for training, folds and every choice.
        file_hashes: dataset-relative file path to its expected SHA-256.
    """

    path: str
    sha256: str
    test_patients: tuple[str, ...]
    development_patients: tuple[str, ...]
    file_hashes: Mapping[str, str]


def load_patient_split(path: str | os.PathLike[str]) -> PatientSplit:
    """Read and check a split file.

    Raises:
        FileNotFoundError: no such file.
        LGGDatasetError: not JSON, a key missing, or a patient in both lists; names the file.
    """
    path = Path(path).expanduser()
    data = read_json(path, what="LGG split file", error=LGGDatasetError)
    source = f"LGG split file {str(path)!r}"
    if not isinstance(data, dict):
        raise LGGDatasetError(f"{source}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in _SPLIT_KEYS if k not in data]
    if missing:
        raise LGGDatasetError(f"{source}: missing key(s) {missing}")
    test, dev = data["test_patients"], data["development_patients"]
    for key, value in (("test_patients", test), ("development_patients", dev)):
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise LGGDatasetError(f"{source}: {key} must be a list of patient ids, got {value!r}")
    both = sorted(set(test) & set(dev))
    if both:
        raise LGGDatasetError(f"{source}: patient(s) in both test and development: {both}")
    if not isinstance(data["sha256"], dict):
        raise LGGDatasetError(f"{source}: sha256 must map file paths to hashes")
    return PatientSplit(
        path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        test_patients=tuple(test),
        development_patients=tuple(dev),
        file_hashes=dict(data["sha256"]),
    )


def apply_patient_split(
    manifest: Mapping[str, Any], split: PatientSplit, *, num_folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """``manifest`` re-partitioned by ``split``: folds among development patients only.

    Args:
        manifest: an LGG manifest of the whole dataset (:func:`build_lgg_manifest`).
        split: the fixed split.
        num_folds: patient-level folds of the development patients.
        seed: changes the fold assignment.

    Returns:
        A new manifest: ``training`` holds the development patients' slices with their folds,
        ``testing`` the test patients' slices with their masks, and ``split_file`` /
        ``split_sha256`` record where the split came from.

    Raises:
        LGGDatasetError: a patient of the dataset is in neither list, or a patient of the
            split is missing from the dataset (a partial copy would change the test score).
    """
    items = [*manifest["training"], *manifest["testing"]]
    present = {str(t["patient"]) for t in items}
    test, dev = set(split.test_patients), set(split.development_patients)
    stray = sorted(present - test - dev)
    if stray:
        raise LGGDatasetError(
            f"{len(stray)} patient(s) of the dataset are not in the split file "
            f"{split.path}: {stray[:10]}"
        )
    absent = sorted((test | dev) - present)
    if absent:
        raise LGGDatasetError(
            f"{len(absent)} patient(s) of the split file {split.path} are missing from the "
            f"dataset (is the copy complete?): {absent[:10]}"
        )
    unlabelled = sorted({str(t["patient"]) for t in items if "label" not in t})
    if unlabelled:
        raise LGGDatasetError(
            f"patient(s) without masks cannot be split for training and scoring: {unlabelled[:10]}"
        )
    folds = assign_folds(sorted(dev), num_folds=num_folds, seed=seed, patient_id=str)
    training, testing = [], []
    for item in sorted(items, key=lambda t: (str(t["patient"]), int(t["slice"]))):
        out = {k: v for k, v in item.items() if k != "fold"}
        if out["patient"] in dev:
            training.append({**out, "fold": folds[str(out["patient"])]})
        else:
            testing.append(out)
    return {
        **manifest,
        "num_folds": num_folds,
        "seed": seed,
        "split_file": Path(split.path).name,
        "split_sha256": split.sha256,
        "training": training,
        "testing": testing,
    }


def verify_split_hashes(root: str | os.PathLike[str], split: PatientSplit) -> list[str]:
    """Files of ``root`` that differ from the split's published hashes, one line each.

    Args:
        root: the kaggle_3m folder (or its parent).
        split: the split with the expected hashes.

    Returns:
        ``"<path>: missing"`` or ``"<path>: sha256 <got>, expected <want>"`` lines, sorted;
        empty when every file matches.
    """
    base = resolve_kaggle_3m_root(root)
    out = []
    for rel, want in sorted(split.file_hashes.items()):
        path = base / rel
        if not path.is_file():
            out.append(f"{path}: missing")
            continue
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            out.append(f"{path}: sha256 {got}, expected {want}")
    return out
