"""Dataset manifests: which cases a dataset holds, where their files are, and their folds.

A manifest is a JSON file that the bundle (training) and inference read::

    {"name": "...", "description": "...", "layout": "brats2021", "label_convention": "brats2021",
     "channel_order": ["flair", "t1", "t1ce", "t2"], "num_folds": 5, "seed": 0,
     "tumorseg_version": "0.1.0",
     "training": [{"case_id": "X", "image": ["X/X_flair.nii.gz", ...], "label": "X/X_seg.nii.gz",
                   "fold": 0}],
     "testing": [{"case_id": "Y", "image": [...]}]}

Paths are relative to the dataset folder with POSIX separators, so a manifest is portable:
whoever has a copy of the dataset only points ``dataset_dir`` at it. A manifest tumorseg
writes also records where its dataset was (``dataset_dir``, absolute, and
``dataset_dir_relative`` when the dataset lies inside the manifest's folder), so a training
given only the manifest (``make finetune DATASET=manifest.json``) finds the cases. ``image``
lists the four modalities in :data:`tumorseg.conventions.CHANNEL_ORDER`, or is one string
for a 4D MSD file. Cases with a label map go to ``training`` (with a cross-validation fold),
the others to ``testing``. A manifest built with ``skip_bad=True`` also records the cases it
left out under ``skipped``.

Folds are assigned per patient (:func:`assign_folds`), so the timepoints of one patient never
straddle training and validation. The patient of a case is, by default, its BraTS 2023+ id
without the timepoint (``BraTS-GLI-00001-001`` -> ``BraTS-GLI-00001``), else the case id;
custom datasets pass a ``patient_id`` key (a function, a case -> patient mapping or a regular
expression, see :func:`patient_key`). Items whose patient differs from their case id record it
as ``patient_id``, and a manifest whose patient spans two folds is refused when read.

The package is split by concern: :mod:`~tumorseg.data.manifest.folds` (patients and folds),
:mod:`~tumorseg.data.manifest.files` (reading, checking and writing manifest files),
:mod:`~tumorseg.data.manifest.build` (manifests from a dataset folder or case ids) and
:mod:`~tumorseg.data.manifest.datalist` (MONAI datalists from manifests).
"""

from tumorseg.data.manifest.build import build_manifest, manifest_from_case_ids
from tumorseg.data.manifest.datalist import (
    SPLITS,
    datalist_from_directory,
    load_datalist,
    select_split,
    validate_manifest_against,
)
from tumorseg.data.manifest.files import (
    MANIFEST_KEYS,
    ManifestError,
    load_manifest,
    recorded_dataset_dir,
    write_manifest,
)
from tumorseg.data.manifest.folds import (
    PatientKey,
    assign_folds,
    brats_patient_id,
    patient_key,
)

__all__ = [
    "MANIFEST_KEYS",
    "SPLITS",
    "ManifestError",
    "PatientKey",
    "assign_folds",
    "brats_patient_id",
    "build_manifest",
    "datalist_from_directory",
    "load_datalist",
    "load_manifest",
    "manifest_from_case_ids",
    "patient_key",
    "select_split",
    "validate_manifest_against",
    "recorded_dataset_dir",
    "write_manifest",
]
