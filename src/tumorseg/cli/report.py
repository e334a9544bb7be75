"""`tumorseg report`: a static HTML page with PNG montages and GIFs of every case, and the
interactive NiiVue viewer of ``tumorseg view`` in the same folder (opens from disk)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``report`` verb."""
    p = subparsers.add_parser(
        "report",
        help="static HTML report with slice montages, GIFs and the 3D viewer (no server needed)",
        description=(
            "Write <dest>/index.html with, per case of the output folder, a PNG montage of "
            "axial slices through the tumour with the segmentation overlaid (and the reference "
            "with --data) and an animated GIF through all slices, and <dest>/viewer.html: the "
            "viewer of `tumorseg view` (NiiVue: crosshair, window/level, 3D) with every case's "
            "volumes, which opens from disk with no server and no network."
        ),
    )
    p.add_argument("--dir", required=True, help="output folder of <case_id>.nii.gz masks")
    p.add_argument("--data", help="dataset folder with the images and reference labels")
    p.add_argument("--dest", help="report folder (default <dir>/report)")
    p.add_argument("--modality", default="flair", help="image under the overlay (%(default)s)")
    p.add_argument("--slices", type=int, default=12, help="slices per montage (%(default)s)")
    p.add_argument("--no-gif", action="store_true", help="skip the animated GIFs")
    p.add_argument(
        "--no-viewer", action="store_true", help="skip viewer.html and the cases' volumes"
    )
    p.add_argument(
        "--label-convention",
        choices=["brats2021", "brats2023", "msd"],
        help="label numbers of the masks (default: the dataset's, else brats2021)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg report``; returns the exit code."""
    from tumorseg.viewer import build_report

    index = build_report(
        args.dir,
        data_dir=args.data,
        dest=args.dest,
        label_convention=args.label_convention,
        modality=args.modality,
        montage_slices=args.slices,
        gif=not args.no_gif,
        viewer=not args.no_viewer,
    )
    print(f"tumorseg report: wrote {index}")
    return 0
