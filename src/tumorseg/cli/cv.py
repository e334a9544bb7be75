"""`tumorseg cv`: train every fold of a manifest, resumable, then predict each fold's
validation cases (see :mod:`tumorseg.training.cv` and :mod:`tumorseg.inference.oof`)."""

from __future__ import annotations

import argparse
import functools
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``cv`` verb."""
    from tumorseg.conventions import DEFAULT_BUNDLE

    p = subparsers.add_parser(
        "cv",
        help="cross-validation: train every fold (resumable), store out-of-fold probabilities",
        description=(
            "Train each fold of a manifest through monai.bundle (one MLflow child run per fold "
            "under one parent run), then segment each fold's validation cases with that fold's "
            "model into <output>/oof/ (label maps and probabilities/<case_id>.npz). Rerun the "
            "same command to continue: finished folds (fold<k>/done.json) are skipped, an "
            "unfinished one resumes from its checkpoint. Arguments after `--` are bundle "
            "overrides (--epochs 300 --roi_size [128,128,128])."
        ),
        epilog="example: tumorseg cv --datalist my_brats.json --output cv/dynunet -- --epochs 300",
    )
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle folder (default %(default)s)")
    p.add_argument("--datalist", required=True, help="manifest with folds (tumorseg manifest)")
    p.add_argument("--dataset-dir", default="", help="dataset folder (default: the manifest's)")
    p.add_argument("--output", default="cv", help="cross-validation folder (default %(default)s)")
    p.add_argument(
        "--folds", type=int, nargs="+", metavar="K", help="folds to train (default: all)"
    )
    p.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="JSON",
        help="config merged after train.json, e.g. a network file (repeatable)",
    )
    p.add_argument("--tracking-uri", default="", help="MLflow store (default as the bundle)")
    p.add_argument("--experiment", default="", help="MLflow experiment (default the bundle's)")
    p.add_argument(
        "--nproc-per-node",
        default=None,
        metavar="N",
        help="train each fold on N processes with torchrun, as `tumorseg launch` (one per GPU)",
    )
    p.add_argument("--device", help="device of the out-of-fold inference (default: cuda if any)")
    p.add_argument("--no-oof", action="store_true", help="train only; no out-of-fold predictions")
    p.add_argument(
        "bundle_args",
        nargs=argparse.REMAINDER,
        metavar="-- BUNDLE_ARGS",
        help="monai.bundle run overrides, e.g. --epochs 300",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg cv``; returns the exit code."""
    from tumorseg.data.manifest import load_manifest
    from tumorseg.inference.oof import predict_out_of_fold
    from tumorseg.training.cv import bundle_overrides, run_cv

    rest = list(args.bundle_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    predict = None
    if not args.no_oof:
        predict = functools.partial(
            _predict,
            predict_out_of_fold,
            bundle=args.bundle,
            label_convention=str(load_manifest(args.datalist)["label_convention"]),
            config_files=args.config_file,
            overrides=bundle_overrides(rest),
            device=args.device,
        )
    report = run_cv(
        args.bundle,
        args.datalist,
        args.output,
        folds=args.folds,
        dataset_dir=args.dataset_dir,
        config_files=args.config_file,
        bundle_args=rest,
        tracking_uri=args.tracking_uri,
        experiment_name=args.experiment,
        nproc_per_node=args.nproc_per_node,
        predict_fold=predict,
        log=lambda line: print(f"tumorseg cv: {line}", flush=True),
    )
    print(
        f"tumorseg cv: folds trained now {report.trained}, finished before {report.skipped}; "
        f"parent run {report.parent_run_id}; folder {report.folder}"
    )
    return 0


def _predict(predict: Any, fold: int, model: Any, items: Any, oof: Any, **kwargs: Any) -> Any:
    print(f"tumorseg cv: fold {fold}: predicting {len(items)} validation case(s)", flush=True)
    return predict(fold, model, items, oof, **kwargs)
