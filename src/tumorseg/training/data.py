"""Which cases a bundle trains, validates and infers on.

The bundle configs declare ``dataset_dir``, ``datalist`` and ``fold``; :class:`BundleData`
(3D studies) and :class:`LGGData` (kaggle_3m slices) turn them into MONAI datalists through
the discovery modules of :mod:`tumorseg.data`, so a manifest file, a bare dataset folder and
the built-in synthetic demo set all go through the same code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tumorseg.data.lgg import (
    LGGDatasetError,
    build_lgg_manifest,
    lgg_datalist,
    load_lgg_manifest,
)
from tumorseg.data.manifest import build_manifest, load_datalist, load_manifest
from tumorseg.data.synthetic import generate_dataset
from tumorseg.data.synthetic_lgg import generate_kaggle_3m
from tumorseg.ranks import ensure_generated

__all__ = [
    "BundleData",
    "DEMO_DATASET",
    "LGGData",
    "LGG_DEMO_DATASET",
    "ensure_demo_dataset",
    "ensure_lgg_demo_dataset",
]

logger = logging.getLogger(__name__)

#: The synthetic set a bundle generates when no dataset is given.
DEMO_DATASET: dict[str, Any] = {
    "num_cases": 24,
    "shape": (64, 64, 64),
    "seed": 2021,
    "layout": "brats2021",
    "num_unlabelled": 0,
}

#: The synthetic kaggle_3m set the LGG bundle generates when no dataset is given.
LGG_DEMO_DATASET: dict[str, Any] = {"num_patients": 8, "shape": (64, 64, 24), "seed": 2019}


class BundleData:
    """Resolve a bundle's data settings once, then hand out splits.

    Args:
        dataset_dir: root of the dataset; empty means the synthetic demo set in ``demo_dir``.
        datalist: a manifest JSON (see :mod:`tumorseg.data.manifest`); empty means discover
            the cases of ``dataset_dir`` on the fly.
        fold: validation fold; the other folds train. ``-1`` trains on every labelled case.
        num_folds: folds used when discovering on the fly.
        demo_dir: where the demo set is generated when ``dataset_dir`` is empty.
        label_convention: override the convention recorded by the manifest / layout.
    """

    def __init__(
        self,
        *,
        dataset_dir: str | os.PathLike = "",
        datalist: str | os.PathLike = "",
        fold: int = 0,
        num_folds: int = 5,
        demo_dir: str | os.PathLike = "",
        label_convention: str = "",
    ) -> None:
        self.fold: int | None = None if int(fold) < 0 else int(fold)
        self.num_folds = int(num_folds)
        self.datalist = str(datalist or "")
        if not str(dataset_dir or "") and not self.datalist:
            if not str(demo_dir or ""):
                raise ValueError("no dataset_dir, datalist or demo_dir given: nothing to train on")
            dataset_dir = ensure_demo_dataset(demo_dir)
        self.dataset_dir = str(dataset_dir or "")
        if self.dataset_dir and not Path(self.dataset_dir).is_dir():
            raise FileNotFoundError(
                f"dataset_dir {self.dataset_dir!r} is not a folder; pass --dataset_dir "
                "pointing at your BraTS / MSD copy"
            )
        self._manifest: dict[str, Any] | None = None
        if self.datalist:
            self._manifest = load_manifest(self.datalist)
        self._label_convention = label_convention

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest, loaded from ``datalist`` or built (without validation) from the folder."""
        if self._manifest is None:
            self._manifest = build_manifest(
                self.dataset_dir, num_folds=self.num_folds, validate=False
            )
        return self._manifest

    @property
    def label_convention(self) -> str:
        """The label convention of the data: explicit override, else the manifest's."""
        return self._label_convention or str(self.manifest["label_convention"])

    def files(self, split: str, *, images_only: bool = False) -> list[dict[str, Any]]:
        """Items of ``split`` (``train``, ``val``, ``test``, ``all``) with absolute paths.

        Args:
            split: which items.
            images_only: drop the label (inference reads only the images).
        """
        root = self.dataset_dir or None
        items = load_datalist(self.manifest, dataset_dir=root, fold=self.fold, split=split)
        if images_only:
            items = [{k: v for k, v in item.items() if k != "label"} for item in items]
        if not items and split in ("train", "val"):
            logger.warning("split %r of fold %s is empty", split, self.fold)
        return items


def ensure_demo_dataset(demo_dir: str | os.PathLike[str]) -> str:
    """The synthetic demo set in ``demo_dir`` (:data:`DEMO_DATASET`), generated once."""
    return ensure_generated(
        demo_dir,
        settings=DEMO_DATASET,
        generate=lambda root: generate_dataset(root, overwrite=True, **DEMO_DATASET),
        marker=".tumorseg_demo.json",
        what="the synthetic demo set",
    )


class LGGData:
    """The LGG bundle's data settings, resolved once; hands out splits.

    Args:
        dataset_dir: the kaggle_3m folder; empty means the synthetic demo set in ``demo_dir``.
        datalist: an LGG manifest JSON; empty means discover ``dataset_dir`` now.
        fold: validation fold; ``-1`` trains on every labelled slice.
        num_folds: folds used when discovering on the fly.
        seed: fold seed used when discovering on the fly.
        demo_dir: where the demo set is generated when ``dataset_dir`` is empty.

    Raises:
        LGGDatasetError: nothing to train on or an unusable folder / manifest.
    """

    def __init__(
        self,
        *,
        dataset_dir: str | os.PathLike[str] = "",
        datalist: str | os.PathLike[str] = "",
        fold: int = 0,
        num_folds: int = 5,
        seed: int = 0,
        demo_dir: str | os.PathLike[str] = "",
    ) -> None:
        self.fold: int | None = None if int(fold) < 0 else int(fold)
        self.datalist = str(datalist or "")
        dataset = str(dataset_dir or "")
        if not dataset:
            if not str(demo_dir or ""):
                raise LGGDatasetError("no dataset_dir or demo_dir given: nothing to train on")
            dataset = ensure_lgg_demo_dataset(demo_dir)
        self.dataset_dir = dataset
        if self.datalist:
            self.manifest = load_lgg_manifest(self.datalist)
        else:
            self.manifest = build_lgg_manifest(dataset, num_folds=int(num_folds), seed=int(seed))

    def files(self, split: str) -> list[dict[str, Any]]:
        """Items of ``split`` (``train``, ``val``, ``test``, ``all``) with absolute paths."""
        items = lgg_datalist(
            self.manifest, dataset_dir=self.dataset_dir, fold=self.fold, split=split
        )
        if not items and split in ("train", "val"):
            logger.warning("split %r of fold %s is empty", split, self.fold)
        return items


def ensure_lgg_demo_dataset(demo_dir: str | os.PathLike[str]) -> str:
    """The synthetic kaggle_3m demo set in ``demo_dir`` (:data:`LGG_DEMO_DATASET`), generated
    once (by rank 0 only in a multi-process job; see
    :func:`tumorseg.ranks.ensure_generated`)."""
    return ensure_generated(
        demo_dir,
        settings=LGG_DEMO_DATASET,
        generate=lambda root: generate_kaggle_3m(root, **LGG_DEMO_DATASET),
        marker=".tumorseg_lgg_demo.json",
        what="the synthetic kaggle_3m demo set",
    )
