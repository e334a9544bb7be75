"""`tumorseg launch`: run a bundle workflow on several processes, GPUs or nodes with torchrun.

A thin wrapper over :func:`tumorseg.training.distributed.torchrun_command`: it builds the
``torchrun`` command (``--dry-run`` prints it) and replaces this process with it, so signals
from a terminal or a scheduler (Ctrl-C, SLURM's SIGTERM) reach torchrun directly.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["register", "run"]


def _nproc(value: str) -> int | str:
    if value in ("gpu", "auto"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or 'gpu', got {value!r}") from None


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``launch`` verb to the ``tumorseg`` sub-parsers."""
    from tumorseg.conventions import DEFAULT_BUNDLE

    parser = subparsers.add_parser(
        "launch",
        help="train a bundle on several GPUs or nodes (torchrun)",
        description="Run a bundle workflow under torchrun with the bundle's train.json and "
        "multi_gpu_train.json. Arguments after `--` go to `monai.bundle run` (e.g. "
        "--dataset_dir, --epochs). Every node of a multi-node job runs the same command.",
        epilog="example: tumorseg launch --nproc-per-node 4 -- --dataset_dir /data/BraTS2021 "
        "--datalist data_manifests/brats2021.json --epochs 300",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=_nproc,
        default=1,
        metavar="N",
        help="processes per node: one per GPU, or 'gpu' for all visible GPUs (default 1)",
    )
    parser.add_argument("--nnodes", type=int, default=1, metavar="M", help="nodes (default 1)")
    parser.add_argument(
        "--node-rank",
        type=int,
        default=None,
        metavar="R",
        help="this node's rank (needed with --rdzv-backend static)",
    )
    parser.add_argument(
        "--rdzv-endpoint",
        default="",
        metavar="HOST:PORT",
        help="rendezvous address shared by all nodes (required with --nnodes > 1)",
    )
    parser.add_argument(
        "--rdzv-backend",
        default="c10d",
        choices=["c10d", "static"],
        help="c10d assigns node ranks on arrival (default); static uses --node-rank",
    )
    parser.add_argument(
        "--rdzv-id",
        default=os.environ.get("SLURM_JOB_ID", "tumorseg"),
        metavar="ID",
        help="job id shared by the nodes (default $SLURM_JOB_ID, else 'tumorseg')",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="restart all workers up to K times after a failure; each restart resumes from "
        "the latest checkpoint (default 0)",
    )
    parser.add_argument(
        "--bundle", default=DEFAULT_BUNDLE, help=f"bundle folder (default {DEFAULT_BUNDLE})"
    )
    parser.add_argument("--workflow", default="training", help="bundle workflow (default training)")
    parser.add_argument(
        "--config-file",
        action="append",
        default=None,
        metavar="FILE",
        help="config file, repeatable, merged in order (default: the bundle's "
        "configs/train.json and configs/multi_gpu_train.json)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument(
        "bundle_args",
        nargs=argparse.REMAINDER,
        metavar="-- BUNDLE_ARGS",
        help="arguments of `monai.bundle run` (overrides such as --epochs 300)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the torchrun command; print it (``--dry-run``) or replace this process with it."""
    from pathlib import Path

    from tumorseg.cli import CliError
    from tumorseg.training.distributed import DDP_CONFIGS, format_command, torchrun_command

    bundle = Path(args.bundle)
    rest = list(args.bundle_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.config_file is None:
        missing = [f for f in DDP_CONFIGS if not (bundle / f).is_file()]
        if missing:
            raise CliError(f"bundle folder {str(bundle)!r} has no {', '.join(missing)}")
    cmd = torchrun_command(
        rest,
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        rdzv_endpoint=args.rdzv_endpoint,
        rdzv_backend=args.rdzv_backend,
        rdzv_id=args.rdzv_id,
        max_restarts=args.max_restarts,
        bundle=bundle,
        workflow=args.workflow,
        config_files=args.config_file,
    )
    if args.dry_run:
        print(format_command(cmd))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return
