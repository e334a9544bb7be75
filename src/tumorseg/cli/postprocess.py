"""`tumorseg postprocess --search`: choose post-processing rules on a cross-validation's
out-of-fold predictions (see :mod:`tumorseg.inference.postprocess`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``postprocess`` verb."""
    p = subparsers.add_parser(
        "postprocess",
        help="choose post-processing rules on out-of-fold predictions (--search)",
        description=(
            "With --search: try minimum component volumes and keep-largest per region (WT, TC, "
            "ET) and an ET->NCR volume on the out-of-fold probabilities of a `tumorseg cv` "
            "folder, keep the rules that raise the mean BraTS-rule Dice, and write them as "
            "postprocess.json into the folder and beside every fold's model.pt, where "
            "`tumorseg infer` applies them by default. Prints the out-of-fold Dice with and "
            "without them."
        ),
    )
    p.add_argument("--search", action="store_true", required=True, help="search the rules")
    p.add_argument("--cv", required=True, metavar="DIR", help="a `tumorseg cv` folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg postprocess``; returns the exit code."""
    from tumorseg.conventions import REGIONS
    from tumorseg.inference.oof import out_of_fold_cases, write_rules
    from tumorseg.inference.postprocess import search_rules

    rules = search_rules(out_of_fold_cases(args.cv))
    written = write_rules(args.cv, rules)
    print(f"tumorseg postprocess: {rules.describe()}")
    print(f"out-of-fold BraTS-rule Dice over {rules.oof['cases']} case(s):")
    print(f"{'':16}{'mean':>8}" + "".join(f"{r:>8}" for r in REGIONS))
    for name in ("without", "with"):
        values = [rules.oof[f"dice_{name}"], *(rules.oof[f"dice_{r}_{name}"] for r in REGIONS)]
        print(f"{name + ' rules':16}" + "".join(f"{v:8.4f}" for v in values))
    print(f"tumorseg postprocess: wrote {written[0]} (and beside each fold's model)")
    return 0
