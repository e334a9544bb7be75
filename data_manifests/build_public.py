"""Regenerate the committed manifests of public datasets from their published case lists.

Run from anywhere: ``python data_manifests/build_public.py``. The folds come from
:func:`tumorseg.data.assign_folds` (seed 0, 5 folds), so a rerun gives the same files unless
that function changes; ``tests/data/test_manifest.py`` checks that the committed files match.
Where each list comes from is in ``data_manifests/README.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumorseg.data.manifest import manifest_from_case_ids, write_manifest

HERE = Path(__file__).resolve().parent


def read_ids(name: str) -> list[str]:
    """Case ids of ``case_lists/<name>``, one per line; ``#`` starts a comment line."""
    lines = (HERE / "case_lists" / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def public_specs() -> dict[str, dict[str, Any]]:
    """File name to :func:`manifest_from_case_ids` arguments, for each public dataset."""
    return {
        "brats2020.json": {
            "case_ids": [f"BraTS20_Training_{i:03d}" for i in range(1, 370)],
            "layout": "brats2021",
            "name": "brats2020",
            "description": "BraTS 2020 training data (369 labelled cases). Set dataset_dir to "
            "MICCAI_BraTS2020_TrainingData, the folder holding BraTS20_Training_001 ... 369.",
        },
        "brats2021.json": {
            "case_ids": read_ids("brats2021_training.txt"),
            "layout": "brats2021",
            "name": "brats2021",
            "description": "RSNA-ASNR-MICCAI BraTS 2021 training data (1251 labelled cases). "
            "Set dataset_dir to the folder holding the BraTS2021_XXXXX case folders.",
        },
        "brats2023_gli.json": {
            "case_ids": read_ids("brats2023_gli_training.txt"),
            "layout": "brats2023",
            "name": "brats2023_gli",
            "description": "BraTS 2023 adult glioma (GLI) training data (1251 labelled cases; "
            "timepoints of one patient share a fold). Set dataset_dir to "
            "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData.",
        },
        "msd_task01.json": {
            "case_ids": [f"BRATS_{i:03d}" for i in range(1, 485)],
            "testing_ids": [f"BRATS_{i:03d}" for i in range(485, 751)],
            "layout": "msd",
            "name": "msd_task01",
            "description": "Medical Segmentation Decathlon Task01_BrainTumour: 484 labelled 4D "
            "cases (imagesTr/labelsTr) and 266 unlabelled ones (imagesTs). Set dataset_dir to "
            "Task01_BrainTumour.",
        },
    }


def build_all() -> dict[str, dict[str, Any]]:
    """File name to manifest dict, without writing anything."""
    return {
        name: manifest_from_case_ids(**spec, num_folds=5, seed=0)
        for name, spec in public_specs().items()
    }


def main(out_dir: Path = HERE) -> None:
    """Write every manifest into ``out_dir``."""
    for name, manifest in build_all().items():
        path = write_manifest(manifest, out_dir / name)
        n_train, n_test = len(manifest["training"]), len(manifest["testing"])
        print(f"wrote {path} ({n_train} training, {n_test} testing)")


if __name__ == "__main__":
    main()
