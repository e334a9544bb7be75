"""`tumorseg manifest`: build a dataset manifest, or check a copy of a dataset against one.

3D layouts go through :mod:`tumorseg.data.manifest`; a kaggle_3m folder of LGG slices
(``--layout kaggle_3m``, or detected) through :mod:`tumorseg.data.lgg`, with the same exit
codes: 2 listing every bad file unless ``--skip-bad``.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]

_LAYOUT_CHOICES = ("brats2021", "brats2023", "msd", "kaggle_3m")


def register(subparsers: Any) -> None:
    """Add the ``manifest`` verb to the ``tumorseg`` parser."""
    parser = subparsers.add_parser(
        "manifest",
        help="list, check and fold the cases of a dataset folder into a manifest JSON",
        description=(
            "Discover the cases of DATASET_DIR (BraTS 2018-2021, BraTS 2023+ or MSD Task01 "
            "layout, or custom suffixes; or the LGG kaggle_3m slices, one item per slice), "
            "check every file, assign patient-level folds and write a manifest. Exits 2 "
            "listing every bad case (kaggle_3m: every bad file) unless --skip-bad."
        ),
    )
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="dataset folder")
    parser.add_argument("-o", "--output", help="manifest file to write (required unless --check)")
    parser.add_argument("--layout", choices=_LAYOUT_CHOICES, help="file layout (default: detect)")
    parser.add_argument(
        "--label-convention",
        help="label values: brats2021, brats2023 or msd (default: the layout's)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    parser.add_argument("--seed", type=int, default=0, help="fold seed (0)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave bad cases out (listed under 'skipped'; kaggle_3m: bad files, under 'problems')",
    )
    parser.add_argument(
        "--modality-suffixes",
        metavar="MAP",
        help="custom file naming, e.g. flair=_FLAIR,t1=_T1,t1ce=_T1CE,t2=_T2",
    )
    parser.add_argument("--label-suffix", help="suffix of the label maps (default: _seg / -seg)")
    parser.add_argument("--name", help="manifest name (default: the folder name)")
    parser.add_argument("--description", help="manifest description")
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="only check that the files exist, do not open them (fast)",
    )
    parser.add_argument(
        "--check",
        metavar="MANIFEST",
        help="instead of building, check that DATASET_DIR holds every case of MANIFEST",
    )
    parser.add_argument(
        "--split-file",
        metavar="SPLIT",
        help="kaggle_3m: a fixed patient split (test / development patients and file hashes); "
        "folds are drawn among the development patients, the test patients become 'testing'",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="kaggle_3m with --split-file: check every file against the split's SHA-256 and "
        "exit 2 naming those that differ",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fold_sizes(manifest: dict[str, Any]) -> str:
    sizes = [0] * int(manifest["num_folds"])
    for item in manifest["training"]:
        sizes[item["fold"]] += 1
    return " ".join(f"{fold}:{n}" for fold, n in enumerate(sizes))


def run(args: argparse.Namespace) -> int:
    """Run the verb; returns the exit code (bad datasets raise ``DatasetError``, exit 2)."""
    from tumorseg.data.discovery import DatasetError, parse_modality_suffixes
    from tumorseg.data.manifest import (
        build_manifest,
        validate_manifest_against,
        write_manifest,
    )

    if _is_kaggle_3m(args):
        return _run_kaggle_3m(args)
    if args.split_file or args.verify:
        from tumorseg.cli import CliError

        raise CliError("--split-file and --verify apply to kaggle_3m slices (--layout kaggle_3m)")
    progress = not args.no_progress
    if args.check:
        problems = validate_manifest_against(
            args.dataset_dir, args.check, check_readable=not args.no_validate, progress=progress
        )
        if problems:
            raise DatasetError(
                problems,
                message=f"{args.dataset_dir} does not match {args.check}: {len(problems)} "
                f"problem(s) in {len({p.case_id for p in problems})} case(s):",
            )
        print(f"{args.dataset_dir} holds every case of {args.check}")
        return 0
    if not args.output:
        raise ValueError("-o/--output is required (the manifest file to write), or use --check")

    suffixes = parse_modality_suffixes(args.modality_suffixes or None)
    manifest = build_manifest(
        args.dataset_dir,
        layout=args.layout,
        label_convention=args.label_convention,
        num_folds=args.folds,
        seed=args.seed,
        skip_bad=args.skip_bad,
        validate=not args.no_validate,
        modality_suffixes=suffixes,
        label_suffix=args.label_suffix,
        name=args.name,
        description=args.description,
        progress=progress,
    )
    path = write_manifest(manifest, args.output)
    skipped = manifest.get("skipped", [])
    print(f"layout:           {manifest['layout']}")
    print(f"label convention: {manifest['label_convention']}")
    print(f"training cases:   {len(manifest['training'])}")
    print(f"testing cases:    {len(manifest['testing'])}")
    print(f"cases per fold:   {_fold_sizes(manifest)}")
    print(f"skipped cases:    {len({s['case_id'] for s in skipped})}")
    for problem in skipped:
        print(f"  {problem['case_id']}: {problem['file']}: {problem['reason']}")
    print(f"wrote {path}")
    return 0


def _is_kaggle_3m(args: argparse.Namespace) -> bool:
    """Whether this run is about LGG kaggle_3m slices: asked for, or detected."""
    from tumorseg.data.lgg import LGG_LAYOUT, looks_like_kaggle_3m
    from tumorseg.io import read_json

    if args.layout is not None:
        return bool(args.layout == LGG_LAYOUT)
    if args.check:
        manifest = read_json(args.check, what="manifest")
        return isinstance(manifest, dict) and manifest.get("layout") == LGG_LAYOUT
    return looks_like_kaggle_3m(args.dataset_dir)


def _run_kaggle_3m(args: argparse.Namespace) -> int:
    """The verb on a kaggle_3m folder; bad files raise ``LGGDatasetError`` (exit 2)."""
    from tumorseg.cli import CliError
    from tumorseg.data.lgg import (
        LGGDatasetError,
        build_lgg_manifest,
        check_lgg_dataset,
        load_lgg_manifest,
        write_lgg_manifest,
    )
    from tumorseg.data.lgg_split import (
        apply_patient_split,
        load_patient_split,
        verify_split_hashes,
    )

    # 3D naming options: refused rather than ignored, so a wrong --layout shows at once.
    for option, value in (
        ("--label-convention", args.label_convention),
        ("--modality-suffixes", args.modality_suffixes),
        ("--label-suffix", args.label_suffix),
    ):
        if value is not None:
            raise CliError(f"{option} does not apply to kaggle_3m slices, got {value!r}")
    if args.check:
        problems = check_lgg_dataset(args.dataset_dir, load_lgg_manifest(args.check))
        if problems:
            raise LGGDatasetError(
                f"{args.dataset_dir} does not match {args.check}: {len(problems)} problem(s):\n"
                + "\n".join(problems)
            )
        print(f"{args.dataset_dir} holds every slice of {args.check}")
        return 0
    if args.verify and not args.split_file:
        raise CliError("--verify checks files against a split file's hashes: add --split-file")
    split = load_patient_split(args.split_file) if args.split_file else None
    if split is not None and args.verify:
        wrong = verify_split_hashes(args.dataset_dir, split)
        if wrong:
            raise LGGDatasetError(
                f"{len(wrong)} file(s) of {args.dataset_dir} differ from {args.split_file}:\n"
                + "\n".join(wrong)
            )
        print(f"{len(split.file_hashes)} files match the hashes of {args.split_file}")
    if not args.output:
        if args.verify:
            return 0
        raise ValueError("-o/--output is required (the manifest file to write), or use --check")
    manifest = build_lgg_manifest(
        args.dataset_dir,
        num_folds=args.folds,
        seed=args.seed,
        name=args.name or "",
        description=args.description or "",
    )
    problems = manifest["problems"]
    if problems and not args.skip_bad:
        raise LGGDatasetError(
            f"{len(problems)} problem(s) in {args.dataset_dir}; fix them or leave the files out "
            "(--skip-bad):\n" + "\n".join(problems)
        )
    if split is not None:
        manifest = apply_patient_split(manifest, split, num_folds=args.folds, seed=args.seed)
    path = write_lgg_manifest(manifest, args.output)
    patients = {item["patient"]: item["fold"] for item in manifest["training"]}
    sizes = [0] * int(manifest["num_folds"])
    for fold in patients.values():
        sizes[fold] += 1
    testing = {item["patient"] for item in manifest["testing"]}
    print(f"layout:              {manifest['layout']}")
    print(f"training slices:     {len(manifest['training'])} of {len(patients)} patients")
    print(f"testing slices:      {len(manifest['testing'])} of {len(testing)} patients")
    print(f"patients per fold:   {' '.join(f'{f}:{n}' for f, n in enumerate(sizes))}")
    print(f"problems (skipped):  {len(problems)}")
    for problem in problems:
        print(f"  {problem}")
    print(f"wrote {path}")
    return 0
