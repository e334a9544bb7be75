"""`tumorseg export-nnunet`: a manifest as nnU-Net v2 raw data on the same folds
(see :mod:`tumorseg.data.nnunet_export`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``export-nnunet`` verb."""
    p = subparsers.add_parser(
        "export-nnunet",
        help="write a manifest's cases as nnU-Net v2 raw data with the manifest's folds",
        description=(
            "Write <out>/Dataset<NNN>_<name>/ with imagesTr/<case>_0000..0003 (FLAIR, T1, "
            "T1ce, T2), labelsTr/ in nnU-Net's BraTS numbering (1 edema, 2 necrosis, "
            "3 enhancing), dataset.json (regions WT [1,2,3], TC [2,3], ET 3) and "
            "splits_final.json equal to the manifest's folds (nnU-Net reads it from "
            "$nnUNet_preprocessed/Dataset<NNN>_<name>/). Score nnU-Net's predictions with "
            "`tumorseg evaluate --ref <dataset>/labelsTr --convention msd`."
        ),
    )
    p.add_argument("--datalist", required=True, help="manifest with folds")
    p.add_argument("--out", required=True, help="the nnUNet_raw folder")
    p.add_argument("--dataset-id", type=int, required=True, metavar="N", help="1..999")
    p.add_argument("--dataset-dir", help="dataset folder (default: the manifest's folder)")
    p.add_argument("--name", help="dataset name (default: the manifest's name)")
    p.add_argument(
        "--preprocessed", metavar="DIR", help="nnUNet_preprocessed folder: put the splits there too"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg export-nnunet``; returns the exit code."""
    from tumorseg.data.nnunet_export import export_nnunet

    folder = export_nnunet(
        args.datalist,
        args.out,
        args.dataset_id,
        dataset_dir=args.dataset_dir,
        name=args.name,
        preprocessed_dir=args.preprocessed,
    )
    print(f"tumorseg export-nnunet: wrote {folder}")
    return 0
