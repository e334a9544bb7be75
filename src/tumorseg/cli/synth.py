"""`tumorseg synth`: write a synthetic BraTS-like dataset (see :mod:`tumorseg.data.synthetic`),
or a synthetic LGG kaggle_3m slice set (``--layout kaggle_3m``,
:mod:`tumorseg.data.synthetic_lgg`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]

_LAYOUTS = "brats2021, brats2023, msd"
_KAGGLE = "kaggle_3m"
#: (height, width, slices) of a kaggle_3m patient when --size is not given.
_KAGGLE_SIZE = (64, 64, 24)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synth`` verb to the ``tumorseg`` sub-parsers."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic BraTS-like dataset (phantom brains with gliomas)",
        description="Write deterministic synthetic studies (FLAIR, T1, T1ce, T2 and a tumour "
        "label map) in a BraTS 2021, BraTS 2023 or MSD Task01 layout, or LGG-like patients "
        "cut into kaggle_3m slices (<patient>/<patient>_<n>.tif RGB pre-contrast/FLAIR/"
        "post-contrast and <patient>_<n>_mask.tif) with --layout kaggle_3m.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder (created if missing)")
    parser.add_argument(
        "--num-cases", type=int, default=4, metavar="N", help="labelled cases (patients)"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="voxels per axis: one value for a cube or three (X Y Z); default 64; for "
        "kaggle_3m (height width slices), default 64 64 24",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument(
        "--layout", default="brats2021", help=f"{_LAYOUTS}, {_KAGGLE} (default brats2021)"
    )
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
    parser.add_argument(
        "--resection-cavity",
        action="store_true",
        help="post-operative cases: a resection cavity labelled RC (--label-convention brats2024)",
    )
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

    size = list(args.size or ([64] if args.layout.lower() != _KAGGLE else _KAGGLE_SIZE))
    if len(size) == 1:
        size *= 3
    if len(size) != 3:
        raise CliError(f"--size takes 1 or 3 values, got {len(size)}: {args.size}")
    if args.layout.lower() == _KAGGLE:
        return _run_kaggle_3m(args, (size[0], size[1], size[2]))
    try:
        layout = get_layout(args.layout)
    except ValueError:
        raise CliError(
            f"unknown layout {args.layout!r}; expected one of {_LAYOUTS}, {_KAGGLE}"
        ) from None
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
            resection_cavity=args.resection_cavity,
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


def _run_kaggle_3m(args: argparse.Namespace, shape: tuple[int, int, int]) -> int:
    """``--layout kaggle_3m``: labelled and unlabelled synthetic LGG patients, as slice TIFs."""
    from pathlib import Path

    from tumorseg.cli import CliError
    from tumorseg.data.synthetic_lgg import generate_kaggle_3m, kaggle_3m_patient_id

    # Options of the 3D layouts only: refusing them beats silently writing something else.
    defaults = {
        "--label-convention": (args.label_convention, None),
        "--orientation": (args.orientation, "LPS"),
        "--spacing": (list(args.spacing), [1.0, 1.0, 1.0]),
        "--oblique-degrees": (args.oblique_degrees, 0.0),
    }
    for option, (value, default) in defaults.items():
        if value != default:
            raise CliError(
                f"{option} does not apply to --layout kaggle_3m (2D slices), got {value}"
            )
    prefix = args.case_prefix or "TCGA_SY"
    if args.num_unlabelled < 0:
        raise CliError(f"--num-unlabelled must be >= 0, got {args.num_unlabelled}")
    out = Path(args.out_dir).expanduser()
    labelled = [kaggle_3m_patient_id(prefix, i) for i in range(max(args.num_cases, 0))]
    unlabelled = [kaggle_3m_patient_id(f"{prefix}U", i) for i in range(args.num_unlabelled)]
    if not args.overwrite:
        existing = [out / p for p in labelled + unlabelled if (out / p).exists()]
        if existing:
            raise CliError(
                f"{existing[0]} exists ({len(existing)} patient folder(s) in all); pass "
                "--overwrite to replace them"
            )
    ids = generate_kaggle_3m(
        out, num_patients=args.num_cases, shape=shape, seed=args.seed, prefix=prefix
    )
    if args.num_unlabelled:
        # Another seed: the unlabelled patients are new brains, not the labelled ones again.
        ids += generate_kaggle_3m(
            out,
            num_patients=args.num_unlabelled,
            shape=shape,
            seed=args.seed + 1,
            with_masks=False,
            prefix=f"{prefix}U",
        )
    extra = f" ({args.num_unlabelled} without masks)" if args.num_unlabelled else ""
    print(
        f"wrote {len(ids)} synthetic patients{extra} to {out.resolve()} (kaggle_3m layout, "
        f"{shape[2]} slices of {shape[0]}x{shape[1]} each)"
    )
    return 0
