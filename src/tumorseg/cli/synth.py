"""`tumorseg synth`: write a synthetic BraTS-like dataset (see :mod:`tumorseg.data.synthetic`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]

_LAYOUTS = "brats2021, brats2023, msd"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synth`` verb to the ``tumorseg`` sub-parsers."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic BraTS-like dataset (phantom brains with gliomas)",
        description="Write deterministic synthetic studies (FLAIR, T1, T1ce, T2 and a tumour "
        "label map) in a BraTS 2021, BraTS 2023 or MSD Task01 layout.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder (created if missing)")
    parser.add_argument("--num-cases", type=int, default=4, metavar="N", help="labelled cases")
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[64],
        metavar="N",
        help="voxels per axis: one value for a cube or three (X Y Z); default 64",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--layout", default="brats2021", help=f"{_LAYOUTS} (default brats2021)")
    parser.add_argument(
        "--label-convention",
        default=None,
        help=f"label numbers ({_LAYOUTS}); default: the layout's own",
    )
    parser.add_argument(
        "--orientation", default="LPS", help="voxel axis codes, e.g. LPS, RAS (default LPS)"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=[1.0, 1.0, 1.0],
        metavar=("SX", "SY", "SZ"),
        help="voxel size in mm (default 1 1 1)",
    )
    parser.add_argument(
        "--oblique-degrees",
        type=float,
        default=0.0,
        help="tilt the affine about the left-right axis, in (-45, 45) (default 0)",
    )
    parser.add_argument(
        "--num-unlabelled", type=int, default=0, metavar="N", help="extra cases without labels"
    )
    parser.add_argument("--case-prefix", default=None, help="replace the default case-id prefix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing cases")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Generate the dataset described by the parsed arguments; returns the exit code."""
    from pathlib import Path

    from tumorseg.cli import CliError
    from tumorseg.conventions import get_convention, get_layout
    from tumorseg.data.synthetic import generate_dataset

    size = list(args.size)
    if len(size) == 1:
        size *= 3
    if len(size) != 3:
        raise CliError(f"--size takes 1 or 3 values, got {len(size)}: {args.size}")
    layout = get_layout(args.layout)
    convention = get_convention(args.label_convention or layout.label_convention)
    try:
        ids = generate_dataset(
            args.out_dir,
            num_cases=args.num_cases,
            shape=(size[0], size[1], size[2]),
            seed=args.seed,
            layout=layout.name,
            label_convention=convention.name,
            orientation=args.orientation,
            spacing=tuple(args.spacing),
            oblique_degrees=args.oblique_degrees,
            num_unlabelled=args.num_unlabelled,
            case_prefix=args.case_prefix,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except FileExistsError as err:
        raise CliError(str(err)) from None
    unlabelled = f" ({args.num_unlabelled} without labels)" if args.num_unlabelled else ""
    print(
        f"wrote {len(ids)} synthetic cases{unlabelled} to {Path(args.out_dir).resolve()} "
        f"({layout.name} layout, {convention.name} labels, {'x'.join(map(str, size))} voxels)"
    )
    return 0
