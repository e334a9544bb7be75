"""`tumorseg demo`: the end-to-end run behind `make demo`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="synthesise data, train, segment a held-out folder and score it (make demo)",
        description="End to end on built-in synthetic data: train the 3D bundle briefly, "
        "segment held-out studies, print per-region Dice, log to MLflow.",
    )
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="output folder")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--num-train", type=int, default=None, help="synthetic training cases")
    p.add_argument("--size", type=int, default=None, help="edge of the synthetic volumes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tumorseg.demo import DemoSettings, run_demo

    settings = DemoSettings(workdir=args.workdir, seed=args.seed)
    for name in ("epochs", "num_train", "size"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    run_demo(settings)
    return 0
