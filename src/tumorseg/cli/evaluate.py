"""`tumorseg evaluate`: score a folder of predictions against references (BraTS metrics)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "format_challenge_summary", "format_summary"]

_CONVENTIONS = ("brats2021", "brats2023", "msd", "brats2024", "brats2024ped", "brats2024menrt")
# Keep in step with tumorseg.conventions.CHALLENGE_CONVENTIONS (checked by the CLI tests);
# importing it here would load numpy for `--help`.
_CHALLENGES = ("gli", "mets", "ped", "MenRT", "MenPre", "GoAT")


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` verb to the top-level parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted label maps against references (Dice, HD95, lesion-wise, ...)",
        description=(
            "Match <case_id>.nii.gz predictions to references by case id and write "
            "per_case.csv, summary.csv and summary.json. HD95 follows the BraTS 2023 code "
            "(DeepMind surface-distance); a missing prediction scores Dice 0 and HD95 373.13. "
            "Exit codes: 0 done, 1 some predictions missing (reports written; "
            "--allow-missing makes that 0), 2 error (including no prediction at all)."
        ),
    )
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predictions")
    parser.add_argument(
        "--ref",
        required=True,
        metavar="DIR_OR_MANIFEST",
        help="folder of <case_id>.nii.gz references, a BraTS/MSD dataset folder or a manifest",
    )
    parser.add_argument(
        "--convention",
        default=None,
        help=f"label convention of both ({', '.join(_CONVENTIONS)}); default: the manifest's "
        "or dataset layout's, else brats2021",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="folder for the reports"
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, metavar="N", help="worker processes"
    )
    parser.add_argument(
        "--per-label",
        action="store_true",
        help="also write per_label.csv: sensitivity/specificity of edema, non-enhancing, enhancing",
    )
    parser.add_argument(
        "--no-lesionwise", action="store_true", help="skip the BraTS 2023 lesion-wise scores"
    )
    parser.add_argument(
        "--lesion-task",
        default="BraTS-GLI",
        help="BraTS 2023 task of the lesion-wise parameters (default BraTS-GLI: dilation 3, "
        "50 mm^3)",
    )
    parser.add_argument(
        "--hd-variant",
        choices=("surface-distance", "monai"),
        default="surface-distance",
        help="HD95 definition (default: surface-distance, as BraTS 2023)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="reference cases without a prediction are scored Dice 0 / HD95 373.13 (the BraTS "
        "rule) and the exit code is 0; without it they are listed and the exit code is 1 (2 "
        "when no prediction matches any reference)",
    )
    parser.add_argument(
        "--challenge",
        choices=_CHALLENGES,
        default=None,
        help="score with that configuration of the official BraTS 2024+ package "
        "brats-evaluation (panoptica; pip install 'tumorseg[brats]') instead: both label maps "
        "are converted to its numbering, and per_case.csv/summary.csv carry its parser's "
        "columns (global_dsc_wt, lesionwise_nsd_mean_et, ...)",
    )
    parser.add_argument(
        "--pred-convention",
        default=None,
        help="with --challenge: label convention of the predictions when it differs from the "
        "references' (e.g. brats2021 predictions against brats2024 references)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    folds = parser.add_argument_group(
        "folds and MLflow",
        "score one fold's validation cases and record the scores as an MLflow run named as the "
        "bundles' validation (val_mean_dice, val_dice_wt, val_hd95_et, ...), so that `tumorseg "
        "compare` shows e.g. an nnU-Net baseline beside a `tumorseg cv` on the same folds",
    )
    folds.add_argument(
        "--fold",
        type=int,
        default=None,
        metavar="K",
        help="score only the validation cases of fold K of the manifest (--datalist, or --ref "
        "when it is a manifest); other predictions are ignored",
    )
    folds.add_argument("--datalist", default=None, metavar="MANIFEST", help="manifest of --fold")
    folds.add_argument(
        "--log-mlflow",
        action="store_true",
        help="record the evaluation as an MLflow run (tag tumorseg.kind=evaluation)",
    )
    folds.add_argument("--experiment", default="", metavar="NAME", help="its MLflow experiment")
    folds.add_argument(
        "--run-name", default="", metavar="NAME", help="its name (default eval-<pred>-fold<K>-...)"
    )
    folds.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag of the run, e.g. source=nnunet (repeatable)",
    )
    folds.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a param of the run, e.g. network=nnunet-3d_fullres (repeatable)",
    )
    folds.add_argument(
        "--tracking-uri",
        default="",
        metavar="URI",
        help="store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.set_defaults(func=run)


def _fmt(stats: dict[str, Any] | None, digits: int) -> str:
    if stats is None or stats["n"] == 0:
        return "-"
    mean, std = stats["mean"], stats["std"]
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}±{std:.{digits}f}"


def format_summary(result: Any) -> str:
    """A compact per-structure table (mean ± std) of an ``EvaluationResult``."""
    from tumorseg.metrics.regions import STRUCTURES, metric_key

    hd_key = result.info.get("hd95_key", "hd95")
    cols = [
        ("Dice", "dice", 3),
        ("HD95 mm", hd_key, 2),
        ("Sens", "sensitivity", 3),
        ("Spec", "specificity", 4),
        ("LesDice", "lesion_dice", 3),
        ("LesHD95", "lesion_hd95", 2),
    ]
    cols = [c for c in cols if metric_key(c[1], "WT") in result.summary]
    header = ["", *(c[0] for c in cols)]
    lines = [
        [s, *(_fmt(result.summary.get(metric_key(m, s)), d) for _, m, d in cols)]
        for s in STRUCTURES
    ]
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths, strict=True)).rstrip()]
    out += [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    ]
    gd = result.summary.get("generalised_dice")
    if gd:
        out.append(f"generalised Dice: {_fmt(gd, 3)}")
    if result.per_label:
        out.append("")
        out.append("per label            sensitivity   specificity")
        for row in result.per_label:
            sens = _fmt(
                {"mean": row["sensitivity_mean"], "std": row["sensitivity_std"], "n": row["n"]}, 3
            )
            spec = _fmt(
                {"mean": row["specificity_mean"], "std": row["specificity_std"], "n": row["n"]}, 4
            )
            out.append(f"{row['class']:<20} {sens:<13} {spec}")
    return "\n".join(out)


#: Columns of the challenge table shown on screen, per region group.
_CHALLENGE_SHOWN = (
    ("DSC", "global_dsc", 3),
    ("NSD", "global_nsd", 3),
    ("HD95", "global_hd95", 2),
    ("LesDSC", "lesionwise_dsc_mean", 3),
    ("LesNSD", "lesionwise_nsd_mean", 3),
    ("LesHD95", "lesionwise_hd95_mean", 2),
)


def format_challenge_summary(result: Any) -> str:
    """Mean per region group of the main columns of a ``ChallengeResult``."""
    stats = {row["subject_id"]: row for row in result.summary.to_dict("records")}
    mean = stats.get("mean", {})
    header = ["", *(c[0] for c in _CHALLENGE_SHOWN)]
    lines = []
    for group in result.groups:
        cells = []
        for _, prefix, digits in _CHALLENGE_SHOWN:
            value = mean.get(f"{prefix}_{group}")
            ok = isinstance(value, float) and math.isfinite(value)
            cells.append(f"{value:.{digits}f}" if ok else "-")
        lines.append([group, *cells])
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *lines]
    )


def _print_unpaired(result: Any, penalty: str) -> None:
    if result.missing:
        print(
            f"missing predictions ({len(result.missing)}, {penalty}): " + ", ".join(result.missing)
        )
    if result.unmatched:
        print(
            f"predictions without a reference ({len(result.unmatched)}, ignored): "
            + ", ".join(result.unmatched)
        )


def _check_challenge_options(args: argparse.Namespace) -> None:
    from tumorseg.cli import CliError

    if args.challenge is not None:
        fold_options = [
            flag
            for flag, used in (("--fold", args.fold is not None), ("--log-mlflow", args.log_mlflow))
            if used
        ]
        if fold_options:
            raise CliError(
                f"{', '.join(fold_options)} do(es) not apply with --challenge {args.challenge}"
                " yet: they score and record the BraTS 2021/2023 metrics; drop --challenge"
            )
    if args.challenge is None:
        if args.pred_convention is not None:
            raise CliError("--pred-convention applies only with --challenge")
        return
    ignored = [
        flag
        for flag, used in (
            ("--per-label", args.per_label),
            ("--no-lesionwise", args.no_lesionwise),
            ("--lesion-task", args.lesion_task != "BraTS-GLI"),
            ("--hd-variant", args.hd_variant != "surface-distance"),
        )
        if used
    ]
    if ignored:
        raise CliError(
            f"{', '.join(ignored)} do(es) not apply with --challenge {args.challenge}: the "
            "challenge's package fixes its own metrics; drop them or drop --challenge"
        )


def _run_challenge(args: argparse.Namespace) -> int:
    from tumorseg.cli import CliError
    from tumorseg.metrics.challenge import ChallengePackageMissing, evaluate_challenge

    try:
        result = evaluate_challenge(
            args.pred,
            args.ref,
            challenge=args.challenge,
            convention=args.convention,
            pred_convention=args.pred_convention,
            output_dir=args.output,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            allow_missing=args.allow_missing,
        )
    except ChallengePackageMissing as err:
        raise CliError(str(err)) from None
    n = len(result.per_case)
    info = result.info
    print(
        f"{n} case(s), --challenge {result.challenge} (brats-evaluation "
        f"{info['brats_evaluation_version']}, panoptica {info['panoptica_version']}), labels "
        f"in {info['label_numbering']} numbering; references {info['reference_convention']}, "
        f"predictions {info['prediction_convention']}"
    )
    print(format_challenge_summary(result))
    _print_unpaired(result, "scored by the package's rule: 0, HD95 373")
    print(f"reports written to {result.output_dir} (please cite panoptica: {info['citation']})")
    if result.missing and not args.allow_missing:
        print(
            f"tumorseg evaluate: {len(result.missing)} of {n} reference case(s) have no "
            f"prediction in {args.pred}; pass --allow-missing to accept the package's scores "
            "for them",
            file=sys.stderr,
        )
        return 1
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    from tumorseg.cli import CliError

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{flag} must look like KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _fold_manifest(args: argparse.Namespace) -> str | None:
    """The manifest whose fold ``--fold`` names (None without ``--fold``)."""
    from tumorseg.cli import CliError

    if args.fold is None:
        if args.datalist is not None:
            raise CliError("--datalist applies only with --fold K (the manifest of its folds)")
        return None
    if args.datalist is not None:
        return str(args.datalist)
    if str(args.ref).endswith(".json") and Path(args.ref).is_file():
        return str(args.ref)
    raise CliError(
        f"--fold {args.fold} needs the manifest of the folds: pass --datalist MANIFEST (--ref "
        f"{args.ref!r} is not a manifest)"
    )


def _fold_cases(manifest: str, fold: int) -> list[str]:
    from tumorseg.cli import CliError
    from tumorseg.data.manifest import load_manifest, select_split

    content = load_manifest(manifest)
    num_folds = int(content["num_folds"])
    if not 0 <= fold < num_folds:
        raise CliError(
            f"--fold {fold} is not a fold of {manifest} (num_folds={num_folds}: 0..{num_folds - 1})"
        )
    return [str(t["case_id"]) for t in select_split(content, fold=fold, split="val")]


def _check_tracking_options(args: argparse.Namespace) -> None:
    """Refuse MLflow options without --log-mlflow; reach the store before any case is scored."""
    from tumorseg.cli import CliError

    given = [
        flag
        for flag, value in (
            ("--experiment", args.experiment),
            ("--run-name", args.run_name),
            ("--tag", args.tag),
            ("--param", args.param),
            ("--tracking-uri", args.tracking_uri),
        )
        if value
    ]
    if not args.log_mlflow:
        if given:
            raise CliError(f"{', '.join(given)} apply only with --log-mlflow")
        return
    if not args.experiment:
        raise CliError(
            "--log-mlflow needs --experiment NAME: the experiment of the runs to compare with "
            "(the one `tumorseg cv --experiment` logged to)"
        )
    _pairs(args.tag, "--tag")
    _pairs(args.param, "--param")
    from tumorseg.tracking import TrackingUnavailableError, check_tracking_uri

    try:
        check_tracking_uri(args.tracking_uri)
    except TrackingUnavailableError as err:
        raise CliError(str(err)) from None


def _log_run(args: argparse.Namespace, result: Any, manifest: str | None) -> None:
    from tumorseg.tracking import file_sha256, run_name
    from tumorseg.tracking.evaluation import log_evaluation_run, validation_metrics

    params: dict[str, Any] = {
        "predictions": str(Path(args.pred).resolve()),
        "references": str(Path(args.ref).resolve()),
        "label_convention": result.info["convention"],
        "hd95_definition": result.info["hd95_key"],
        "eval_cases": len(result.rows),
        "missing_predictions": len(result.missing),
    }
    if manifest is not None:
        params.update(
            fold=args.fold,
            datalist=str(Path(manifest).resolve()),
            datalist_sha256=file_sha256(manifest),
        )
    params.update(_pairs(args.param, "--param"))
    outputs = [result.output_dir / name for name in ("per_case.csv", "summary.json")]
    fold = "" if args.fold is None else f"fold{args.fold}"
    run_id = log_evaluation_run(
        validation_metrics(result.summary, hd95=result.info["hd95_key"]),
        experiment_name=args.experiment,
        run_name=args.run_name or run_name("eval", Path(args.pred).resolve().name, fold),
        tracking_uri=args.tracking_uri,
        params=params,
        tags=_pairs(args.tag, "--tag"),
        artifacts=[p for p in outputs if p.is_file()],
    )
    print(f"MLflow: evaluation run {run_id} in experiment {args.experiment!r}")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by the parsed arguments; returns the exit code."""
    _check_challenge_options(args)
    if args.challenge is not None:
        return _run_challenge(args)
    manifest = _fold_manifest(args)
    _check_tracking_options(args)
    cases = _fold_cases(manifest, args.fold) if manifest is not None else None
    from tumorseg.metrics.evaluate import evaluate_folder

    result = evaluate_folder(
        args.pred,
        args.ref,
        convention=args.convention,
        output_dir=args.output,
        num_workers=args.num_workers,
        per_label=args.per_label,
        lesionwise=not args.no_lesionwise,
        hd_variant=args.hd_variant,
        lesion_task=args.lesion_task,
        progress=not args.no_progress,
        allow_missing=args.allow_missing,
        cases=cases,
    )
    n = len(result.rows)
    if args.fold is not None:
        print(f"fold {args.fold} of {manifest}: its {n} validation case(s)")
    print(f"{n} case(s), convention {result.info['convention']}, HD95: {result.info['hd95_key']}")
    print(format_summary(result))
    _print_unpaired(result, "scored Dice 0 / HD95 373.13")
    print(f"reports written to {result.output_dir}")
    if result.missing and not args.allow_missing:
        shown = ", ".join(result.missing[:10]) + (", ..." if len(result.missing) > 10 else "")
        print(
            f"tumorseg evaluate: {len(result.missing)} of {n} reference case(s) have no "
            f"prediction in {args.pred}: {shown}; pass --allow-missing to accept scoring them "
            "Dice 0",
            file=sys.stderr,
        )
        if args.log_mlflow:
            print("not logged to MLflow: predictions are missing", file=sys.stderr)
        return 1
    if args.log_mlflow:
        _log_run(args, result, manifest)
    return 0
