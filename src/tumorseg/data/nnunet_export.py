"""nnU-Net v2 raw data from a manifest, on exactly the manifest's folds.

:func:`export_nnunet` (``tumorseg export-nnunet``) writes ``<out>/Dataset<NNN>_<name>/``::

    imagesTr/<case_id>_0000.nii.gz .. _0003   FLAIR, T1, T1ce, T2 (tumorseg's channel order)
    labelsTr/<case_id>.nii.gz                 labels in nnU-Net's BraTS numbering (below)
    imagesTs/<case_id>_000X.nii.gz            the manifest's testing cases, if any
    dataset.json                              channels, the WT/TC/ET regions, numTraining
    splits_final.json                         one {"train", "val"} per manifest fold

nnU-Net's BraTS numbering (its ``Dataset137_BraTS2021`` conversion) is 1 edema, 2 necrosis /
non-enhancing core, 3 enhancing tumour, trained as the regions whole tumour ``[1, 2, 3]``,
tumour core ``[2, 3]`` and enhancing tumour ``3`` (``regions_class_order [1, 2, 3]``). Those
are the numbers of tumorseg's ``msd`` convention (:data:`NNUNET_CONVENTION`), so nnU-Net's
predicted label maps are scored with
``tumorseg evaluate --pred <nnunet predictions> --ref <dataset>/labelsTr --convention msd``.

nnU-Net reads ``splits_final.json`` from ``$nnUNet_preprocessed/Dataset<NNN>_<name>/``: copy it
there after ``nnUNetv2_plan_and_preprocess`` (or pass ``preprocessed_dir`` here).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tumorseg.conventions import CHANNEL_ORDER, get_convention
from tumorseg.data.manifest import load_datalist, load_manifest
from tumorseg.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "NNUNET_CHANNEL_NAMES",
    "NNUNET_CONVENTION",
    "NNUNET_REGIONS",
    "dataset_folder_name",
    "export_nnunet",
    "nnunet_dataset_json",
    "nnunet_splits",
    "to_nnunet_labels",
]

#: tumorseg's convention with nnU-Net's BraTS label numbers (1 ED, 2 NCR, 3 ET).
NNUNET_CONVENTION = "msd"
#: The region labels of nnU-Net's ``dataset.json``: WT, TC, ET in nnU-Net's numbers.
NNUNET_REGIONS: dict[str, Any] = {
    "background": 0,
    "whole_tumor": [1, 2, 3],
    "tumor_core": [2, 3],
    "enhancing_tumor": 3,
}
#: nnU-Net channel names, in tumorseg's channel order (not "CT": every channel is z-scored).
NNUNET_CHANNEL_NAMES: dict[str, str] = {
    str(i): name for i, name in enumerate(("FLAIR", "T1", "T1ce", "T2"))
}
_FILE_ENDING = ".nii.gz"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset<NNN>_<name>``, as nnU-Net names a dataset folder.

    Raises:
        ValueError: an id outside 1..999 or a name without letters or digits.
    """
    if isinstance(dataset_id, bool) or not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id!r}")
    clean = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    if not clean:
        raise ValueError(f"dataset name {name!r} has no letter or digit")
    return f"Dataset{int(dataset_id):03d}_{clean}"


def to_nnunet_labels(label: np.ndarray, convention: str) -> np.ndarray:
    """A label map of ``convention`` in nnU-Net's BraTS numbers (uint8).

    Raises:
        ValueError: values the convention does not define (listed).
    """
    src = get_convention(convention)
    dst = get_convention(NNUNET_CONVENTION)
    values = np.asarray(label)
    illegal = sorted({int(v) for v in np.unique(values)} - src.legal_values)
    if illegal:
        raise ValueError(
            f"label values {illegal} are not legal in convention {src.name!r} "
            f"(legal: {sorted(src.legal_values)})"
        )
    lut = np.zeros(max(src.legal_values) + 1, dtype=np.uint8)
    for name, value in src.classes.items():
        lut[value] = dst.classes[name]
    return lut[values.astype(np.int64)]


def nnunet_splits(manifest: Mapping[str, Any]) -> list[dict[str, list[str]]]:
    """``splits_final.json``: per manifest fold, the training and validation case ids."""
    training = list(manifest["training"])
    return [
        {
            "train": sorted(str(t["case_id"]) for t in training if int(t["fold"]) != fold),
            "val": sorted(str(t["case_id"]) for t in training if int(t["fold"]) == fold),
        }
        for fold in range(int(manifest["num_folds"]))
    ]


def nnunet_dataset_json(manifest: Mapping[str, Any], num_training: int) -> dict[str, Any]:
    """nnU-Net v2 ``dataset.json`` of the export (region-based WT/TC/ET training)."""
    return {
        "name": str(manifest.get("name", "")),
        "description": f"exported by tumorseg export-nnunet from manifest {manifest.get('name')!r}"
        f"; labels: nnU-Net BraTS numbering (1 edema, 2 necrosis/non-enhancing, 3 enhancing)",
        "channel_names": NNUNET_CHANNEL_NAMES,
        "labels": NNUNET_REGIONS,
        "regions_class_order": [1, 2, 3],
        "numTraining": num_training,
        "file_ending": _FILE_ENDING,
    }


def _write_image(source: str, target: Path) -> None:
    """Copy a NIfTI file as ``.nii.gz`` (compressing a ``.nii``) atomically."""
    data = Path(source).read_bytes()
    if not source.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)
    atomic_write_bytes(target, data)


def _write_channels(image: Any, folder: Path, case_id: str) -> None:
    """Four channel files of one case (four files, or one 4D file split)."""
    if isinstance(image, str):  # MSD: one 4D file, channels on the last axis
        img: Any = nib.load(image)
        if len(img.shape) != 4 or img.shape[3] != len(CHANNEL_ORDER):
            raise ValueError(f"{case_id}: {image} has shape {img.shape}, expected 4 channels")
        data = np.asarray(img.dataobj)
        header = img.header.copy()
        header.set_data_shape(img.shape[:3])
        header.set_intent("none")
        for c in range(len(CHANNEL_ORDER)):
            channel = nib.Nifti1Image(data[..., c], None, header=header)
            target = folder / f"{case_id}_{c:04d}{_FILE_ENDING}"
            atomic_write_bytes(target, gzip.compress(channel.to_bytes(), 1, mtime=0))
        return
    if len(image) != len(CHANNEL_ORDER):
        raise ValueError(f"{case_id}: expected {len(CHANNEL_ORDER)} image files, got {image}")
    for c, path in enumerate(image):
        _write_image(str(path), folder / f"{case_id}_{c:04d}{_FILE_ENDING}")


def _write_label(source: str, target: Path, convention: str, case_id: str) -> None:
    img: Any = nib.load(source)
    try:
        values = to_nnunet_labels(np.asarray(img.dataobj), convention)
    except ValueError as err:
        raise ValueError(f"{case_id}: {source}: {err}") from None
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(None, None)
    out = type(img)(values, None, header=header)
    atomic_write_bytes(target, gzip.compress(out.to_bytes(), 1, mtime=0))


def export_nnunet(
    datalist: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dataset_id: int,
    *,
    dataset_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    preprocessed_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a manifest's cases as an nnU-Net v2 raw dataset with the manifest's folds.

    Files are written atomically; a rerun rewrites the same folder.

    Args:
        datalist: the manifest.
        out: the ``nnUNet_raw`` folder; the dataset goes into ``Dataset<NNN>_<name>/``.
        dataset_id: nnU-Net dataset id (1..999).
        dataset_dir: the dataset folder (default: the manifest's folder).
        name: dataset name (default the manifest's ``name``).
        preprocessed_dir: an ``nnUNet_preprocessed`` folder to put ``splits_final.json`` in too.

    Returns:
        The dataset folder.

    Raises:
        ValueError: a bad id or name, another dataset with this id in ``out``, or a case
            whose files or labels cannot be exported (the case and file named).
    """
    manifest = load_manifest(Path(datalist))
    root_dir = Path(dataset_dir) if dataset_dir is not None else None
    folder_name = dataset_folder_name(dataset_id, name or str(manifest.get("name") or "tumorseg"))
    root = Path(out).expanduser()
    if root.is_dir():
        clash = [
            p.name
            for p in root.glob(f"Dataset{int(dataset_id):03d}_*")
            if p.is_dir() and p.name != folder_name
        ]
        if clash:
            raise ValueError(
                f"{root} already holds dataset id {dataset_id} as {clash[0]}; nnU-Net needs "
                "unique ids: choose another --dataset-id"
            )
    target = root / folder_name
    convention = str(manifest["label_convention"])
    training = load_datalist(manifest, dataset_dir=root_dir, fold=None, split="train")
    testing = load_datalist(manifest, dataset_dir=root_dir, fold=None, split="test")
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for item in training:
        case_id = str(item["case_id"])
        if not item.get("label"):
            raise ValueError(f"{case_id}: a training case without a label cannot be exported")
        _write_channels(item["image"], target / "imagesTr", case_id)
        label = target / "labelsTr" / f"{case_id}{_FILE_ENDING}"
        _write_label(item["label"], label, convention, case_id)
    if testing:
        (target / "imagesTs").mkdir(exist_ok=True)
        for item in testing:
            _write_channels(item["image"], target / "imagesTs", str(item["case_id"]))
    dataset = nnunet_dataset_json(manifest, len(training))
    atomic_write_text(target / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    splits = json.dumps(nnunet_splits(manifest), indent=2) + "\n"
    atomic_write_text(target / "splits_final.json", splits)
    if preprocessed_dir is not None:
        atomic_write_text(Path(preprocessed_dir) / folder_name / "splits_final.json", splits)
    return target
