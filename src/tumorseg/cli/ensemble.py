"""`tumorseg ensemble`: average saved probability folders (:mod:`tumorseg.inference.ensemble`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``ensemble`` verb."""
    p = subparsers.add_parser(
        "ensemble",
        help="average saved probability folders into label maps",
        description=(
            "Average the probabilities/<case_id>.npz of two or more folders (tumorseg infer "
            "--save-probabilities, or a cross-validation's oof/) case by case, one file in "
            "memory at a time, into <output>/probabilities/<case_id>.npz and "
            "<output>/<case_id>.nii.gz."
        ),
    )
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="probability folders")
    p.add_argument("--output", required=True, help="folder for the results (created)")
    p.add_argument(
        "--label-convention",
        default="brats2021",
        choices=["brats2021", "brats2023", "msd"],
        help="output label numbers (default %(default)s)",
    )
    p.add_argument(
        "--postprocess", metavar="RULES", help="post-processing rule file (postprocess.json)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg ensemble``; returns the exit code."""
    from tumorseg.inference.ensemble import ensemble_probability_folders
    from tumorseg.inference.postprocess import load_rules

    rules = load_rules(args.postprocess) if args.postprocess else None
    report = ensemble_probability_folders(
        args.folders, args.output, label_convention=args.label_convention, rules=rules
    )
    print(
        f"tumorseg ensemble: {len(report.cases)} case(s) from {len(args.folders)} folders "
        f"written to {report.output_dir}"
    )
    return 0
