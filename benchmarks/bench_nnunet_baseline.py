"""tumorseg and an nnU-Net v2 baseline on identical folds, in one ``tumorseg compare`` table.

Every step is the command a user runs (issue #17), on synthetic BraTS-like data here:

1. ``tumorseg synth`` + ``tumorseg manifest --folds 2``: the dataset and its folds;
2. ``tumorseg export-nnunet --preprocessed``: nnU-Net raw data, ``splits_final.json`` = the
   manifest's folds, also put where nnU-Net's training reads it;
3. ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``;
4. per fold: nnU-Net's training (``nnUNetv2_train``'s entry point, CPU) and
   ``nnUNetv2_predict`` on that fold's validation cases, through ``_nnunet_cli.py`` (see there
   why: the short trainers are not reachable without timm/torchvision);
5. per fold: ``tumorseg evaluate --fold K --log-mlflow``: nnU-Net's label maps (its numbering,
   ``--convention msd``) scored and recorded in the experiment as ``nnunet-fold<K>``;
6. ``tumorseg cv`` into the same experiment, then ``tumorseg evaluate --fold K --log-mlflow``
   of its out-of-fold maps (``tumorseg-fold<K>``): both sides scored by the same code against
   the same references;
7. ``tumorseg compare --experiment E``: one table.

The nnU-Net environment variables (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``) are set for nnU-Net's processes only. Settings: ``TRAINER`` (default
``nnUNetTrainer_smoke``: one epoch of 10 iterations; ``nnUNetTrainer_1epoch`` is nnU-Net's own,
250 iterations), ``CASES`` (4), ``SIZE`` (32), ``WORK`` (a temporary folder). Both models are
trained for a moment only: the table shows that the two pipelines line up on the same folds,
not which is better.

``make bench BENCH=nnunet_baseline``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NNUNET_CLI = Path(__file__).resolve().parent / "_nnunet_cli.py"
DATASET_ID = 517
EXPERIMENT = "nnunet-baseline"
FOLDS = (0, 1)
#: tumorseg's side: 1 epoch of a tiny DynUNet on 32^3 patches, on the CPU.
TUMORSEG_ARGS = [
    "--epochs",
    "1",
    "--roi_size",
    "[32,32,32]",
    "--filters",
    "[4,8,16,32,32]",
    "--batch_size",
    "1",
    "--num_samples",
    "1",
    "--num_workers",
    "0",
    "--sw_batch_size",
    "2",
    "--cache_rate",
    "0",
    "--device",
    "cpu",
]


@dataclass
class Baseline:
    """What :func:`baseline` ran and produced.

    Attributes:
        work: the working folder.
        tracking_uri: the MLflow store of the experiment.
        nnunet_dataset: the exported ``Dataset<N>_<name>`` folder.
        commands: ``(step, shell line, seconds)`` in order.
        outputs: step -> its output (stdout and stderr).
        table: the output of ``tumorseg compare --experiment``.
    """

    work: Path
    tracking_uri: str
    nnunet_dataset: Path
    commands: list[tuple[str, str, float]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    table: str = ""


def _tumorseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "tumorseg", *args]


def _run(result: Baseline, step: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> str:
    start = time.perf_counter()
    done = subprocess.run(
        list(cmd), cwd=result.work, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    result.outputs[step] = output
    shown = [Path(c).name if c in (sys.executable, str(NNUNET_CLI)) else c for c in cmd]
    result.commands.append((step, shlex.join(shown), seconds))
    if done.returncode != 0:
        raise RuntimeError(
            f"{step} failed (exit {done.returncode}): {shlex.join(cmd)}\n{output[-4000:]}"
        )
    return output


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return {**env, **more}


def _fold_inputs(dataset: Path, fold: int, target: Path) -> list[str]:
    """Links to the four channels of fold ``fold``'s validation cases (nnU-Net's split file)."""
    cases = json.loads((dataset / "splits_final.json").read_text())[fold]["val"]
    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for channel in sorted((dataset / "imagesTr").glob(f"{case}_0*.nii.gz")):
            (target / channel.name).unlink(missing_ok=True)
            (target / channel.name).symlink_to(channel)
    return list(cases)


def baseline(
    work: str | os.PathLike[str],
    *,
    folds: Sequence[int] = FOLDS,
    cases: int = 4,
    size: int = 32,
    trainer: str = "nnUNetTrainer_smoke",
) -> Baseline:
    """Run the whole sequence in ``work`` (see the module docstring); raises on a failed step."""
    root = Path(work).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    raw, pre, res = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    manifest = root / "manifest.json"
    result = Baseline(root, uri, raw)
    env = _env()
    _run(
        result,
        "synth",
        _tumorseg(
            "synth",
            "data",
            "--num-cases",
            str(cases),
            "--size",
            str(size),
            "--layout",
            "brats2021",
            "--seed",
            "11",
        ),
        env,
    )
    _run(
        result,
        "manifest",
        _tumorseg("manifest", "data", "-o", str(manifest), "--folds", "2", "--seed", "0"),
        env,
    )
    out = _run(
        result,
        "export-nnunet",
        _tumorseg(
            "export-nnunet",
            "--datalist",
            str(manifest),
            "--out",
            str(raw),
            "--dataset-id",
            str(DATASET_ID),
            "--preprocessed",
            str(pre),
        ),
        env,
    )
    result.nnunet_dataset = next(raw.glob(f"Dataset{DATASET_ID:03d}_*"))
    assert result.nnunet_dataset.name in out
    nnunet = {
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(pre),
        "nnUNet_results": str(res),
        "nnUNet_def_n_proc": "1",
    }
    _run(
        result,
        "nnUNetv2_plan_and_preprocess",
        [
            str(BIN / "nnUNetv2_plan_and_preprocess"),
            "-d",
            str(DATASET_ID),
            "-c",
            "3d_fullres",
            "--verify_dataset_integrity",
            "-npfp",
            "1",
            "-np",
            "1",
        ],
        _env(**nnunet, nnUNet_n_proc_DA="1"),
    )
    log = ["--log-mlflow", "--experiment", EXPERIMENT, "--tracking-uri", uri]
    quiet = ["--no-progress", "--num-workers", "1"]
    for fold in folds:
        _run(
            result,
            f"nnunet train fold {fold}",
            [
                sys.executable,
                str(NNUNET_CLI),
                "train",
                str(DATASET_ID),
                "3d_fullres",
                str(fold),
                "-tr",
                trainer,
                "-device",
                "cpu",
            ],
            _env(**nnunet, nnUNet_n_proc_DA="0"),
        )
        _fold_inputs(result.nnunet_dataset, fold, root / "nnunet_in" / f"fold{fold}")
        _run(
            result,
            f"nnunet predict fold {fold}",
            [
                sys.executable,
                str(NNUNET_CLI),
                "predict",
                "-i",
                f"nnunet_in/fold{fold}",
                "-o",
                f"nnunet_pred/fold{fold}",
                "-d",
                str(DATASET_ID),
                "-c",
                "3d_fullres",
                "-f",
                str(fold),
                "-tr",
                trainer,
                "-device",
                "cpu",
                "-npp",
                "1",
                "-nps",
                "1",
            ],
            _env(**nnunet),
        )
        _run(
            result,
            f"evaluate nnunet fold {fold}",
            _tumorseg(
                "evaluate",
                "--pred",
                f"nnunet_pred/fold{fold}",
                "--ref",
                str(result.nnunet_dataset / "labelsTr"),
                "--convention",
                "msd",
                "--fold",
                str(fold),
                "--datalist",
                str(manifest),
                "-o",
                f"eval/nnunet_fold{fold}",
                *quiet,
                *log,
                "--run-name",
                f"nnunet-fold{fold}",
                "--tag",
                "source=nnunet",
                "--param",
                f"network=nnunet-3d_fullres-{trainer}",
            ),
            env,
        )
    _run(
        result,
        "tumorseg cv",
        _tumorseg(
            "cv",
            "--bundle",
            str(REPO / "bundles" / "brats_mri_segmentation"),
            "--datalist",
            str(manifest),
            "--output",
            "cv",
            "--folds",
            *map(str, folds),
            "--experiment",
            EXPERIMENT,
            "--tracking-uri",
            uri,
            "--device",
            "cpu",
            "--",
            *TUMORSEG_ARGS,
        ),
        env,
    )
    for fold in folds:
        _run(
            result,
            f"evaluate tumorseg fold {fold}",
            _tumorseg(
                "evaluate",
                "--pred",
                "cv/oof",
                "--ref",
                str(manifest),
                "--fold",
                str(fold),
                "-o",
                f"eval/tumorseg_fold{fold}",
                *quiet,
                *log,
                "--run-name",
                f"tumorseg-fold{fold}",
                "--tag",
                "source=tumorseg",
                "--param",
                "network=dynunet",
            ),
            env,
        )
    result.table = _run(
        result,
        "tumorseg compare",
        _tumorseg(
            "compare",
            "--experiment",
            EXPERIMENT,
            "--tracking-uri",
            uri,
            "--params",
            "network,fold,datalist_sha256",
        ),
        env,
    )
    return result


def run() -> str:
    """The markdown section: the commands, their times and the compare table."""
    trainer = os.environ.get("TRAINER", "nnUNetTrainer_smoke")
    cases, size = int(os.environ.get("CASES", "4")), int(os.environ.get("SIZE", "32"))
    work = os.environ.get("WORK") or tempfile.mkdtemp(prefix="nnunet_baseline_")
    try:
        result = baseline(work, cases=cases, size=size, trainer=trainer)
    finally:
        if not os.environ.get("WORK"):
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        "## tumorseg and nnU-Net v2 on identical folds (`make bench BENCH=nnunet_baseline`)",
        "",
        f"{cases} synthetic cases of {size}^3 voxels, 2 folds; nnU-Net trainer `{trainer}`, "
        "tumorseg 1 epoch of a tiny DynUNet; CPU.",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {step} | {seconds:.0f} |" for step, _, seconds in result.commands),
        "",
        "```text",
        result.table.strip(),
        "```",
    ]
    return "\n".join(lines)
