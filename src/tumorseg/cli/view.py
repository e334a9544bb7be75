"""`tumorseg view`: browse segmentations in a local web app, and segment uploaded studies."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

from tumorseg.conventions import DEFAULT_BUNDLE


def register(subparsers: Any) -> None:
    """Add the ``view`` verb."""
    p = subparsers.add_parser(
        "view",
        help="web viewer of segmentations (NiiVue: crosshair, window/level, 3D; uploads)",
        description=(
            "Serve a web app on 127.0.0.1 listing the masks of an output folder with their "
            "region volumes (from volumes.csv) and Dice (from evaluate's per_case.csv, or "
            "computed with --data references), drawing each case in the browser with NiiVue "
            "(linked axial, coronal and sagittal views, window/level, 3D, the reference side "
            "by side or as outline on fill), and segmenting uploaded studies with the bundle's "
            "network."
        ),
    )
    p.add_argument("--dir", required=True, help="output folder of <case_id>.nii.gz masks")
    p.add_argument("--data", help="dataset folder with the images and reference labels")
    p.add_argument(
        "--metrics",
        help="per-case table with dice_WT, dice_TC, dice_ET columns for the case list "
        "(default <dir>/per_case.csv when present, as written by `tumorseg evaluate -o <dir>`)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8050, help="TCP port (default %(default)s)")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle for uploads (%(default)s)")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="PATH",
        help="weights offered for uploads; repeat to offer several (default the bundle's)",
    )
    p.add_argument("--device", help="cpu, cuda ... for uploads (default: cuda when available)")
    p.add_argument("--no-upload", action="store_true", help="view only; refuse uploads")
    p.add_argument(
        "--max-upload-mb", type=float, default=512, help="largest upload (default %(default)s)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the browser may use for this server (with --host, e.g. the "
        "machine's DNS name); requests naming any other host are refused",
    )
    p.add_argument(
        "--label-convention",
        choices=["brats2021", "brats2023", "msd"],
        help="label numbers of the masks (default: the dataset's, else brats2021)",
    )
    p.set_defaults(func=run)


def _predictor(bundle: str, checkpoint: str | None, device: str | None) -> Any:
    from tumorseg.inference import Predictor

    return Predictor.from_bundle(bundle, checkpoint=checkpoint, device=device)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg view`` until interrupted; returns the exit code."""
    from tumorseg.cli import CliError
    from tumorseg.viewer import make_server

    # The predictor is built on the first upload; a wrong path must fail now, not then.
    for ckpt in args.checkpoint:
        if not Path(ckpt).is_file():
            raise CliError(f"checkpoint {ckpt!r} does not exist")
    factories: dict[str, Any] = {}
    if not args.no_upload:
        checkpoints = args.checkpoint or [None]
        for ckpt in checkpoints:
            name = Path(ckpt).name if ckpt else f"{Path(args.bundle).name} (default weights)"
            factories[name] = functools.partial(_predictor, args.bundle, ckpt, args.device)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"tumorseg view: warning: binding {args.host}: anyone who can reach this address "
            "can see these images and upload studies; there is no authentication",
            file=sys.stderr,
        )
    server = make_server(
        args.dir,
        data_dir=args.data,
        host=args.host,
        port=args.port,
        factories=factories,
        max_upload_mb=args.max_upload_mb,
        label_convention=args.label_convention,
        allowed_hosts=args.allowed_host,
        metrics_csv=args.metrics,
    )
    print(f"tumorseg view: serving {args.dir} at {server.url}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
