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


#: The one patient group of the BraTS 2021 cases whose pairing with BraTS 2023 is not known:
#: see :func:`brats2021_patients`.
BRATS2021_UNPAIRED = "BraTS2021-unpaired-timepoints"


def brats2021_patients(brats2021_ids: list[str], brats2023_ids: list[str]) -> dict[str, str]:
    """BraTS 2021 case id -> patient, from the BraTS 2023 GLI ids (``BraTS-GLI-PPPPP-TTT``).

    BraTS 2023 GLI is the BraTS 2021 training set renamed: every ``-000`` patient number
    ``PPPPP`` is a BraTS 2021 id ``BraTS2021_PPPPP``, and the 118 BraTS 2021 ids left over are
    the 118 second timepoints ``BraTS-GLI-PPPPP-001``. Which leftover id is which patient's
    second timepoint cannot be read from the names, so those 118 ids and the first timepoints
    of the 118 patients with a ``-001`` form one conservative group (:data:`BRATS2021_UNPAIRED`,
    one fold); every other case is the BraTS 2023 patient of its number, alone.
    """
    first = {c.split("-")[2] for c in brats2023_ids if c.endswith("-000")}
    second = {c.split("-")[2] for c in brats2023_ids if c.endswith("-001")}
    out: dict[str, str] = {}
    for case_id in brats2021_ids:
        number = case_id.removeprefix("BraTS2021_")
        if number in first and number not in second:
            out[case_id] = f"BraTS-GLI-{number}"
        else:  # a first timepoint with an unknown second one, or an unpaired later one
            out[case_id] = BRATS2021_UNPAIRED
    unpaired = sum(1 for p in out.values() if p == BRATS2021_UNPAIRED)
    if unpaired != 2 * len(second):
        raise ValueError(
            f"expected {2 * len(second)} BraTS 2021 cases without a known pairing (the "
            f"{len(second)} patients with a second timepoint and as many leftover ids), "
            f"found {unpaired}: do the two case lists describe the same data?"
        )
    return out


def public_specs() -> dict[str, dict[str, Any]]:
    """File name to :func:`manifest_from_case_ids` arguments, for each public dataset."""
    brats2021 = read_ids("brats2021_training.txt")
    brats2023 = read_ids("brats2023_gli_training.txt")
    return {
        "brats2020.json": {
            "case_ids": [f"BraTS20_Training_{i:03d}" for i in range(1, 370)],
            "layout": "brats2021",
            "name": "brats2020",
            "description": "BraTS 2020 training data (369 labelled cases). Set dataset_dir to "
            "MICCAI_BraTS2020_TrainingData, the folder holding BraTS20_Training_001 ... 369.",
        },
        "brats2021.json": {
            "case_ids": brats2021,
            "layout": "brats2021",
            "name": "brats2021",
            "description": "RSNA-ASNR-MICCAI BraTS 2021 training data (1251 labelled cases; "
            "patient_id is the BraTS 2023 GLI patient, and the 236 cases of patients with two "
            "timepoints share one fold: data_manifests/README.md). Set dataset_dir to the "
            "folder holding the BraTS2021_XXXXX case folders.",
            "patient_id": brats2021_patients(brats2021, brats2023),
        },
        "brats2023_gli.json": {
            "case_ids": brats2023,
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
