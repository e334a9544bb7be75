"""`tumorseg infer`: segment a folder of studies with a bundle (see :mod:`tumorseg.inference`).

The bundle's ``train.json`` and ``inference.json`` are loaded once
(:func:`tumorseg.inference.load_bundle`) and its ``evaluator`` (a
:class:`tumorseg.inference.Predictor`) segments the folder. The bundle's ``data_format`` says
what it reads and writes: a ``kaggle_3m`` bundle (``bundles/lgg_flair_segmentation_2d``)
segments a kaggle_3m folder instead of NIfTI studies, writing
``<patient>/<patient>_<n>_mask.tif``.

Exit codes: 0 all studies segmented (or already done), 1 some studies failed (the others were
still segmented; see ``failures.csv``; kaggle_3m: the bad files are listed on stderr), 2 usage
or configuration error, or an output that cannot be written (a read-only folder, a full disk:
one line names the path and the fix; the batch stops, what was written is kept and a rerun
skips it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

__all__ = ["register", "run"]

from tumorseg.conventions import DEFAULT_BUNDLE, region_output_conventions

if TYPE_CHECKING:
    from tumorseg.inference.lgg import LGGInferenceReport


def register(subparsers: Any) -> None:
    """Add the ``infer`` verb."""
    p = subparsers.add_parser(
        "infer",
        help="segment a folder of studies (BraTS 2020/2021/2023, MSD or custom naming) or of "
        "LGG kaggle_3m slices",
        description=(
            "Segment every study of a folder into <output>/<case_id>.nii.gz (uint8 labels, same "
            "shape, affine and qform/sform as the input), with volumes.csv and failures.csv. "
            "Studies already segmented are skipped, so a killed run can be rerun to finish. "
            "With an LGG 2D bundle (--bundle bundles/lgg_flair_segmentation_2d) the input is a "
            "kaggle_3m folder and the output <patient>/<patient>_<n>_mask.tif (0/255) in the "
            "same layout; only --checkpoint, --overwrite, --device, --config-file and "
            "--override apply then."
        ),
    )
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle folder (default %(default)s)")
    p.add_argument("--input", required=True, help="folder of studies")
    p.add_argument("--output", required=True, help="folder for the masks (created)")
    p.add_argument(
        "--checkpoint",
        action="append",
        help="network weights (default <bundle>/models/model.pt); repeat it, or give a "
        "`tumorseg cv` folder, to average several models' probabilities",
    )
    p.add_argument(
        "--postprocess",
        metavar="RULES",
        help="post-processing rule file (default: postprocess.json beside the checkpoint or "
        "in the cv folder, when there is one)",
    )
    p.add_argument("--no-postprocess", action="store_true", help="apply no post-processing rules")
    p.add_argument(
        "--label-convention",
        choices=region_output_conventions(),
        help="output label numbers (default: the input layout's own; brats2021 for custom "
        "naming); brats2024 writes a resection-cavity channel as label 4 (RC)",
    )
    p.add_argument(
        "--modality-suffixes",
        metavar="MAP",
        help="custom file naming, e.g. flair=_FLAIR,t1=_T1,t1ce=_T1CE,t2=_T2",
    )
    p.add_argument("--layout", choices=["brats2021", "brats2023", "msd"], help="force a layout")
    p.add_argument(
        "--roi-size",
        type=int,
        nargs="+",
        metavar="N",
        help="window: X Y Z (3D), X Y (slice-wise 2D)",
    )
    p.add_argument("--sw-batch-size", type=int, metavar="N")
    p.add_argument("--overlap", type=float, metavar="F", help="sliding-window overlap in [0, 1)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="network arithmetic: auto (default: bfloat16 where the CPU or GPU has it, float16 "
        "on older GPUs, else float32), fp32, bf16, fp16 (CUDA)",
    )
    p.add_argument(
        "--tiling",
        choices=["auto", "windows", "whole"],
        help="auto (default: the whole brain crop in one pass when it is small enough, else "
        "windows), windows (sliding windows, --overlap the least overlap), whole",
    )
    p.add_argument("--tta", action="store_true", help="average over the 8 mirrorings (8x slower)")
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write probabilities/<case_id>.npz (float16 WT, TC, ET)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo studies already segmented")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="JSON",
        help="extra bundle config merged after train.json (repeatable)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ID=VALUE",
        help="bundle config value, VALUE as JSON, e.g. filters=[16,32,64,128,256] (repeatable)",
    )
    p.add_argument(
        "--dicom-map",
        metavar="MAP",
        help="DICOM input: series descriptions of the modalities, e.g. "
        "'flair=Ax FLAIR,t1=T1 pre,t1ce=T1 post,t2=Ax T2' (default: common names; a folder of "
        "case folders of DICOM series is recognised without it)",
    )
    p.add_argument(
        "--output-format",
        default="nifti",
        metavar="FORMATS",
        help="nifti, dicom-seg (<case_id>.seg.dcm, DICOM input only) or both, comma-separated "
        "(default %(default)s)",
    )
    p.add_argument(
        "--backend",
        choices=["pytorch", "onnxruntime"],
        default="pytorch",
        help="what runs the network: the bundle's PyTorch network, or ONNX Runtime on --model "
        "(from tumorseg export); the rest of the pipeline is the same",
    )
    p.add_argument("--model", metavar="ONNX", help="the exported network for --backend onnxruntime")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _overrides(items: list[str]) -> dict[str, Any]:
    from tumorseg.cli import CliError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--override must look like ID=VALUE (JSON value), got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text  # a bare string
    return out


def _raise_interrupt(signum: int, frame: Any) -> None:
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C, so temporary files are removed.
    raise KeyboardInterrupt


#: Options of 3D inference only, and their defaults (an LGG bundle refuses other values).
_3D_ONLY = {
    "label_convention": None,
    "modality_suffixes": None,
    "layout": None,
    "roi_size": None,
    "sw_batch_size": None,
    "overlap": None,
    "precision": None,
    "tiling": None,
    "tta": False,
    "save_probabilities": False,
    "dicom_map": None,
    "output_format": "nifti",
    "backend": "pytorch",
}


def _check_kaggle_3m_options(args: argparse.Namespace) -> None:
    """Options of NIfTI inference only are refused for a kaggle_3m bundle (the value named)."""
    from tumorseg.cli import CliError

    for name, default in _3D_ONLY.items():
        value = getattr(args, name)
        if value != default:
            option = "--" + name.replace("_", "-")
            raise CliError(
                f"{option} does not apply to the 2D bundle {args.bundle} (kaggle_3m slices), "
                f"got {value!r}"
            )


def _report_kaggle_3m(report: LGGInferenceReport, output: str) -> int:
    """Print what a kaggle_3m run wrote; exit 1 when some files failed."""
    patients = len({path.parent for path in report.written})
    print(f"tumorseg infer: wrote {len(report.written)} masks of {patients} patient(s) to {output}")
    if report.failures:
        print(
            f"tumorseg infer: {len(report.failures)} problem(s); the other slices were written:",
            file=sys.stderr,
        )
        for failure in report.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


def _backend_network(args: argparse.Namespace) -> Any:
    """The ONNX Runtime network for ``--backend onnxruntime`` (None: the bundle's own)."""
    from tumorseg.cli import CliError

    if args.backend == "pytorch":
        if args.model:
            raise CliError(f"--model {args.model!r} needs --backend onnxruntime")
        return None
    if not args.model:
        raise CliError("--backend onnxruntime needs --model model.onnx (from tumorseg export)")
    if args.checkpoint:
        raise CliError(
            f"--checkpoint {args.checkpoint!r} does not apply to --backend onnxruntime: the "
            "weights are in --model"
        )
    from tumorseg.inference.backends import OnnxRuntimeNetwork

    return OnnxRuntimeNetwork(args.model, device=args.device)


def run(args: argparse.Namespace) -> int:
    """Run ``tumorseg infer``; returns the exit code."""
    # Imported here: `tumorseg --help` must not wait for torch and MONAI.
    from tumorseg.inference import Predictor, load_bundle
    from tumorseg.inference.dicom_input import parse_dicom_map
    from tumorseg.inference.dicom_seg import SegAlgorithm
    from tumorseg.inference.ensemble import ensemble_from_config
    from tumorseg.inference.folder import check_output_formats
    from tumorseg.inference.lgg import LGGInferenceReport
    from tumorseg.inference.postprocess import load_rules
    from tumorseg.inference.settings import use_all_cores

    config = load_bundle(
        args.bundle, config_files=args.config_file, overrides=_overrides(args.override)
    )
    kaggle_3m = config.get_parsed_content("data_format") == "kaggle_3m"
    if kaggle_3m:
        _check_kaggle_3m_options(args)
    extra: dict[str, Any] = {}
    if not kaggle_3m:  # checked before the network is built: a typo fails at once
        extra = {
            "output_formats": check_output_formats(args.output_format),
            "dicom_map": args.dicom_map,
            "algorithm": SegAlgorithm.from_bundle(args.bundle, backend=args.backend),
        }
        parse_dicom_map(args.dicom_map)
    network = _backend_network(args)
    try:
        previous: Any = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    try:
        settings: dict[str, Any] = {
            "device": args.device,
            "roi_size": args.roi_size,
            "sw_batch_size": args.sw_batch_size,
            "overlap": args.overlap,
            "tta": None if kaggle_3m else args.tta,
            "network": network,
            "precision": args.precision,
            "tiling": args.tiling,
        }
        predictor = (
            ensemble_from_config(config, args.checkpoint, **settings)
            if args.checkpoint
            else Predictor.from_config(config, **settings)
        )
        if args.no_postprocess or args.postprocess:
            predictor.postprocess_rules = load_rules(args.postprocess) if args.postprocess else None
        use_all_cores()
        report = predictor.predict_folder(
            args.input,
            args.output,
            label_convention=args.label_convention,
            modality_suffixes=args.modality_suffixes,
            layout=args.layout,
            overwrite=args.overwrite,
            save_probabilities=args.save_probabilities,
            progress=not args.no_progress,
            **extra,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if isinstance(report, LGGInferenceReport):
        return _report_kaggle_3m(report, args.output)
    print(f"tumorseg infer: {report.summary()}")
    if report.failed:
        print(
            f"tumorseg infer: {len(report.failed)} studies failed, listed in "
            f"{report.output_dir / 'failures.csv'}",
            file=sys.stderr,
        )
        return 1
    return 0
