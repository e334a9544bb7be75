"""`tumorseg compare`: rank the runs of an MLflow experiment, show what differs, plot curves."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``compare`` verb to the top-level parser."""
    parser = subparsers.add_parser(
        "compare",
        help="rank the MLflow runs of an experiment by a metric, with the params that differ",
        description=(
            "A table of runs sorted by the best value of a metric over their validations, with "
            "the best value of every validation metric (Dice and HD95 per region), the epoch of "
            "the best sorting value, the duration and the params that differ between the runs. "
            "Reads the local mlflow.db or the server of MLFLOW_TRACKING_URI / --tracking-uri."
        ),
    )
    parser.add_argument("--experiment", default="", metavar="NAME", help="experiment name")
    parser.add_argument(
        "--metric",
        default=None,
        help="metric to sort by (default val_mean_dice, with --challenge "
        "val_mean_lesionwise_dsc_mean; e.g. val_dice_et, val_hd95_et)",
    )
    parser.add_argument("--top", type=int, default=None, metavar="N", help="show the best N")
    parser.add_argument(
        "--runs", default="", metavar="ID,...", help="compare only these run ids (comma-separated)"
    )
    parser.add_argument(
        "--order",
        choices=("auto", "max", "min"),
        default="auto",
        help="sort direction (auto: lower is better for HD95, losses and times)",
    )
    parser.add_argument(
        "--kind",
        choices=("all", "training", "evaluation", "cross-validation"),
        default="all",
        help="only runs of this kind (default all)",
    )
    parser.add_argument(
        "--tracking-uri",
        default="",
        metavar="URI",
        help="store to read (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.add_argument(
        "--challenge",
        action="store_true",
        help="show the BraTS 2024+ challenge columns a ChallengeMetricHandler logged "
        "(val_lesionwise_dsc_mean_wt, val_global_nsd_et, ...) and sort by "
        "val_mean_lesionwise_dsc_mean unless --metric is given",
    )
    parser.add_argument(
        "--params",
        default=None,
        metavar="NAME,...",
        help="param columns to show (e.g. network,fold); default: the params that differ",
    )
    parser.add_argument("--csv", default=None, metavar="PATH", help="also write the table as CSV")
    parser.add_argument(
        "--plot", default=None, metavar="PNG", help="overlay the runs' validation curves"
    )
    parser.set_defaults(func=run)


def _names(text: str) -> list[str]:
    from tumorseg.cli import CliError

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CliError(f"--params must name at least one param (NAME,...), got {text!r}")
    return names


def run(args: argparse.Namespace) -> int:
    """Run the comparison described by the parsed arguments; returns the exit code."""
    from tumorseg.cli import CliError
    from tumorseg.tracking import TrackingUnavailableError
    from tumorseg.tracking.compare import CHALLENGE_METRIC_ORDER, compare_runs, plot_curves

    run_ids = [r.strip() for r in str(args.runs).split(",") if r.strip()]
    if not args.experiment and not run_ids:
        raise CliError("give --experiment NAME, --runs ID,... or both")
    metric = args.metric or (CHALLENGE_METRIC_ORDER[0] if args.challenge else "val_mean_dice")
    try:
        comparison = compare_runs(
            experiment=args.experiment,
            metric=metric,
            metrics=list(CHALLENGE_METRIC_ORDER) if args.challenge else None,
            top=args.top,
            run_ids=run_ids,
            tracking_uri=args.tracking_uri,
            order=args.order,
            kind="" if args.kind == "all" else args.kind,
            params=None if args.params is None else _names(args.params),
        )
    except TrackingUnavailableError as err:
        raise CliError(str(err)) from None
    print(comparison.format_table())
    if args.csv:
        print(f"table written to {comparison.write_csv(args.csv)}")
    if args.plot:
        import matplotlib.pyplot as plt

        fig = plot_curves(comparison, args.plot)
        plt.close(fig)
        print(f"curves of {comparison.metric} written to {args.plot}")
    return 0
