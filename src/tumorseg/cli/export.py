"""`tumorseg export`: a bundle's network to ONNX or TorchScript (:mod:`tumorseg.inference.export`).

The network is built from the bundle's configs and the checkpoint loaded by the same code as
``tumorseg infer``; the export is checked against PyTorch before it is kept.

Exit codes: 0 exported and checked, 2 usage or configuration error, a missing extra, or an
export that does not match PyTorch (nothing written).
"""

from __future__ import annotations

import argparse
from typing import Any

from tumorseg.conventions import CHANNEL_ORDER, DEFAULT_BUNDLE

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``export`` verb."""
    p = subparsers.add_parser(
        "export",
        help="export a bundle's network to ONNX or TorchScript (checked against PyTorch)",
        description=(
            "Export the bundle's network with the checkpoint's weights. ONNX keeps the batch "
            "and spatial axes dynamic (run it with tumorseg infer --backend onnxruntime "
            "--model FILE); TorchScript is traced. The sigmoid probabilities of the file are "
            "compared with PyTorch's on random and study-like windows of roi_size (and of a "
            "second size); beyond --atol nothing is written."
        ),
    )
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle folder (default %(default)s)")
    p.add_argument("--checkpoint", help="network weights (default <bundle>/models/model.pt)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"], dest="format")
    p.add_argument(
        "--output", help="file to write (default <bundle>/models/model.onnx or model.ts)"
    )
    p.add_argument(
        "--roi-size", type=int, nargs="+", metavar="N", help="window of the parity check"
    )
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest probability difference to PyTorch accepted (default %(default)s)",
    )
    p.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="JSON",
        help="extra bundle config merged after train.json, e.g. a network file (repeatable)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ID=VALUE",
        help="bundle config value, VALUE as JSON, e.g. filters=[16,32,64,128,256] (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg export``; returns the exit code."""
    from pathlib import Path

    from tumorseg.cli import CliError
    from tumorseg.cli.infer import _overrides
    from tumorseg.inference import Predictor, load_bundle
    from tumorseg.inference.backends import import_onnxruntime
    from tumorseg.inference.export import export_network

    if args.format == "onnx":
        try:
            import_onnxruntime()
            import onnx  # noqa: F401  (torch.onnx.export writes through it)
        except ImportError as err:
            message = str(err) if "tumorseg[onnx]" in str(err) else ""
            raise CliError(
                message or "ONNX export needs onnx; install it with: pip install 'tumorseg[onnx]'"
            ) from None
    if not args.atol > 0:
        raise CliError(f"--atol must be > 0, got {args.atol}")
    config = load_bundle(
        args.bundle, config_files=args.config_file, overrides=_overrides(args.override)
    )
    predictor = Predictor.from_config(
        config, checkpoint=args.checkpoint, device="cpu", roi_size=args.roi_size
    )
    roi_size = args.roi_size or config.get_parsed_content("roi_size")
    in_channels = (
        config.get_parsed_content("network_def#in_channels")
        if "network_def#in_channels" in config
        else len(CHANNEL_ORDER)
    )
    suffix = ".onnx" if args.format == "onnx" else ".ts"
    output = Path(args.output or Path(args.bundle) / "models" / f"model{suffix}")
    report = export_network(
        predictor.network,
        output,
        export_format=args.format,
        roi_size=roi_size,
        in_channels=int(in_channels),
        atol=args.atol,
    )
    print(f"tumorseg export: {report.summary()}")
    return 0
