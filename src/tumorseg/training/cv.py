"""Cross-validation in one command: every fold of a manifest trained through ``monai.bundle``.

:func:`run_cv` (``tumorseg cv``) trains each fold of a manifest (``datalist``) as its own
``python -m monai.bundle run training`` process (or ``torchrun`` with ``nproc_per_node``, the
command of ``tumorseg launch``), each an MLflow child run of one parent run
(:func:`tumorseg.tracking.fold_parent`), then hands the fold's model and validation cases to
``predict_fold`` (the CLI passes :func:`tumorseg.inference.oof.predict_out_of_fold`, which
stores the out-of-fold probabilities), and only then marks the fold finished. The folder::

    <output>/cv.json                 the settings and the parent run (written first)
    <output>/fold<k>/models/         the fold's ckpt_dir: checkpoint_latest.pt, model.pt,
                                     mlflow_run.json
    <output>/fold<k>/train.log       the training's output
    <output>/fold<k>/done.json       written atomically once the fold is trained and predicted
    <output>/oof/                    out-of-fold label maps, probabilities/<case_id>.npz

A rerun with the same settings skips the folds that have ``done.json`` and resumes the others:
a fold with a checkpoint continues its training (and its MLflow run); a fold killed before
its first checkpoint restarts, and its abandoned MLflow run (RUNNING, no epoch logged, its
process gone) is marked KILLED and deleted, so the parent ends with one child run per fold.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumorseg.data.manifest import load_datalist, load_manifest
from tumorseg.io import atomic_write_text, read_json
from tumorseg.tracking import check_tracking_uri, fold_parent
from tumorseg.tracking.lifecycle import RUN_RECORD, end_abandoned_run, read_run_record
from tumorseg.tracking.runs import summarise_children
from tumorseg.training.checkpoint import BEST, LATEST
from tumorseg.training.finetune_args import parse_overrides
from tumorseg.training.torchrun import DDP_CONFIGS, torchrun_command

__all__ = [
    "CV_STATE",
    "DONE_MARKER",
    "OOF_DIR",
    "RESERVED_OVERRIDES",
    "CVError",
    "CVFolder",
    "CVReport",
    "bundle_overrides",
    "fold_checkpoints",
    "run_cv",
    "training_command",
]

#: The settings file of a cross-validation folder.
CV_STATE = "cv.json"
#: A fold's "finished" marker.
DONE_MARKER = "done.json"
#: Folder of the out-of-fold predictions.
OOF_DIR = "oof"
#: Bundle overrides ``tumorseg cv`` sets itself per fold.
RESERVED_OVERRIDES = (
    "fold",
    "datalist",
    "dataset_dir",
    "ckpt_dir",
    "parent_run_id",
    "tracking_uri",
    "experiment_name",
    "bundle_root",
    "config_file",
    "meta_file",
    "logging_file",
)
#: Settings that must match when a folder is rerun.
_SAME_ON_RERUN = ("bundle", "datalist", "dataset_dir", "config_files", "bundle_args")


class CVError(ValueError):
    """A cross-validation that cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class CVFolder:
    """The paths of a cross-validation folder."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / CV_STATE

    @property
    def oof(self) -> Path:
        return self.root / OOF_DIR

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold{fold}"

    def ckpt_dir(self, fold: int) -> Path:
        return self.fold_dir(fold) / "models"

    def model(self, fold: int) -> Path:
        return self.ckpt_dir(fold) / BEST

    def done(self, fold: int) -> Path:
        return self.fold_dir(fold) / DONE_MARKER

    def is_done(self, fold: int) -> bool:
        return self.done(fold).is_file()

    def read_state(self) -> dict[str, Any]:
        """``cv.json``.

        Raises:
            CVError: the folder is not a cross-validation folder.
        """
        if not self.state.is_file():
            raise CVError(
                f"{str(self.root)!r} is not a cross-validation folder (no {CV_STATE}); "
                "create one with `tumorseg cv --output DIR`"
            )
        state = read_json(self.state, what="cross-validation settings", error=CVError)
        if not isinstance(state, dict) or not isinstance(state.get("folds"), list):
            raise CVError(f"{self.state}: not a tumorseg cv settings file")
        return state


def fold_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``model.pt`` of every finished fold of a cross-validation folder, by fold.

    Raises:
        CVError: not a cross-validation folder, or no fold finished yet.
    """
    cv = CVFolder(Path(folder))
    folds = [int(k) for k in cv.read_state()["folds"]]
    done = [cv.model(k) for k in folds if cv.is_done(k)]
    if not done:
        raise CVError(
            f"cross-validation folder {str(cv.root)!r} has no finished fold yet "
            f"(folds {folds}); finish it with the same `tumorseg cv` command"
        )
    return done


@dataclass
class CVReport:
    """What :func:`run_cv` did.

    Attributes:
        folder: the cross-validation folder.
        parent_run_id: the MLflow parent run.
        trained: folds trained (or finished) by this call.
        skipped: folds already finished before this call.
        seconds: wall seconds per fold trained here.
    """

    folder: Path
    parent_run_id: str
    trained: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)


def _check_bundle_args(bundle_args: Sequence[str]) -> None:
    for arg in bundle_args:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if key in RESERVED_OVERRIDES:
                raise CVError(
                    f"--{key} is set by tumorseg cv for every fold, got it among the bundle "
                    f"overrides {list(bundle_args)}; leave it out (cv's own options: --datalist, "
                    "--dataset-dir, --output, --tracking-uri, --experiment)"
                )


def bundle_overrides(bundle_args: Sequence[str]) -> dict[str, Any]:
    """``monai.bundle run`` overrides (``["--filters", "[4,8]", "--epochs=1"]``) as config
    values, parsed as ``monai.bundle`` parses them, for the inference of the same bundle.

    Raises:
        CVError: an argument that is not ``--key value`` or ``--key=value``.
    """
    try:
        return parse_overrides(bundle_args, where="the bundle overrides")
    except ValueError as err:
        raise CVError(str(err)) from None


def _experiment_of(bundle: Path) -> str:
    """The bundle's default MLflow experiment (``experiment_name`` of its train.json)."""
    try:
        value = json.loads((bundle / "configs" / "train.json").read_text()).get("experiment_name")
    except (OSError, ValueError):
        value = None
    return value if isinstance(value, str) and value and not value.startswith("$") else "tumorseg"


def training_command(
    bundle: str | os.PathLike[str],
    *,
    fold: int,
    datalist: str | os.PathLike[str],
    ckpt_dir: str | os.PathLike[str],
    dataset_dir: str = "",
    parent_run_id: str = "",
    tracking_uri: str = "",
    experiment_name: str = "",
    config_files: Sequence[str | os.PathLike[str]] = (),
    bundle_args: Sequence[str] = (),
    nproc_per_node: int | str | None = None,
) -> list[str]:
    """The command that trains one fold: ``python -m monai.bundle run training ...``, or the
    ``torchrun`` command of ``tumorseg launch`` when ``nproc_per_node`` is given.

    Args:
        bundle: the bundle folder.
        fold: the validation fold.
        datalist: the manifest.
        ckpt_dir: the fold's checkpoint folder.
        dataset_dir: the dataset folder (default: the manifest's folder).
        parent_run_id: MLflow parent run.
        tracking_uri: MLflow store.
        experiment_name: MLflow experiment (the parent's).
        config_files: more config files merged after ``train.json`` (e.g. a network file).
        bundle_args: more ``monai.bundle run`` overrides (``--epochs 300``).
        nproc_per_node: processes per node under torchrun (None: one plain process).
    """
    root = Path(bundle)
    args = ["--fold", str(fold), "--datalist", str(datalist), "--ckpt_dir", str(ckpt_dir)]
    if dataset_dir:
        args += ["--dataset_dir", str(dataset_dir)]
    if parent_run_id:
        args += ["--parent_run_id", parent_run_id]
    if tracking_uri:
        args += ["--tracking_uri", tracking_uri]
    if experiment_name:
        args += ["--experiment_name", experiment_name]
    args += list(bundle_args)
    base = DDP_CONFIGS if nproc_per_node is not None else DDP_CONFIGS[:1]
    files = [root / f for f in base] + [Path(f) for f in config_files]
    if nproc_per_node is not None:
        return torchrun_command(
            args, nproc_per_node=nproc_per_node, bundle=root, config_files=files
        )
    config = str(files[0]) if len(files) == 1 else json.dumps([str(f) for f in files])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training"]
    cmd += ["--meta_file", str(root / "configs" / "metadata.json"), "--config_file", config]
    cmd += ["--logging_file", str(root / "configs" / "logging.conf"), "--bundle_root", str(root)]
    return cmd + args


@contextlib.contextmanager
def _parent_run(cv: CVFolder, state: dict[str, Any], uri: str) -> Iterator[str]:
    """The parent run: opened once (its id saved in ``cv.json`` before any fold trains),
    reopened by a rerun, summarised and ended when the folds are done or one fails."""
    if state.get("parent_run_id"):
        import mlflow

        client = mlflow.MlflowClient(uri)
        run_id = str(state["parent_run_id"])
        client.update_run(run_id, status="RUNNING")
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        finally:
            with contextlib.suppress(Exception):  # the folds' runs are intact either way
                summarise_children(client, run_id)
            client.set_terminated(run_id, status)
        return
    with fold_parent(
        experiment_name=state["experiment_name"],
        run_name=f"cv-{cv.root.name}",
        tracking_uri=uri,
        params={"bundle": state["bundle"], "datalist": state["datalist"], "folds": state["folds"]},
    ) as run_id:
        state["parent_run_id"] = run_id
        atomic_write_text(cv.state, json.dumps(state, indent=2) + "\n")
        yield run_id


def _restart_if_no_checkpoint(cv: CVFolder, fold: int, uri: str) -> None:
    """A fold killed before its first checkpoint starts again: its abandoned run goes."""
    ckpt = cv.ckpt_dir(fold)
    if (ckpt / LATEST).is_file():
        return  # the training resumes from there and continues its own MLflow run
    record = read_run_record(ckpt)
    if record is None:
        return
    import mlflow

    client = mlflow.MlflowClient(uri)
    if end_abandoned_run(client, record, uri):
        client.delete_run(record["run_id"])
    (ckpt / RUN_RECORD).unlink(missing_ok=True)


def _new_state(
    bundle: Path,
    datalist: Path,
    folds: list[int],
    *,
    dataset_dir: str,
    config_files: Sequence[str | os.PathLike[str]],
    bundle_args: Sequence[str],
    experiment_name: str,
    tracking_uri: str,
) -> dict[str, Any]:
    return {
        "format": "tumorseg-cv/1",
        "bundle": str(bundle),
        "datalist": str(datalist),
        "dataset_dir": dataset_dir,
        "config_files": [str(Path(f).resolve()) for f in config_files],
        "bundle_args": list(bundle_args),
        "folds": folds,
        "experiment_name": experiment_name,
        "tracking_uri": tracking_uri,
        "parent_run_id": "",
    }


def _merge_state(cv: CVFolder, new: dict[str, Any]) -> dict[str, Any]:
    """The saved settings of a rerun (they must match), or ``new`` for a fresh folder."""
    if not cv.state.is_file():
        return new
    old = cv.read_state()
    for key in _SAME_ON_RERUN:
        if old.get(key) != new[key]:
            raise CVError(
                f"{cv.state} was started with {key}={old.get(key)!r}, this run has "
                f"{new[key]!r}; rerun with the same settings to continue, or pass another --output"
            )
    extra = sorted(set(new["folds"]) - {int(k) for k in old["folds"]})
    if extra:
        old["folds"] = sorted({int(k) for k in old["folds"]} | set(extra))
    return old


def run_cv(
    bundle: str | os.PathLike[str],
    datalist: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    folds: Sequence[int] | None = None,
    dataset_dir: str = "",
    config_files: Sequence[str | os.PathLike[str]] = (),
    bundle_args: Sequence[str] = (),
    tracking_uri: str = "",
    experiment_name: str = "",
    nproc_per_node: int | str | None = None,
    predict_fold: Callable[[int, Path, list[dict[str, Any]], Path], Any] | None = None,
    log: Callable[[str], Any] = print,
) -> CVReport:
    """Train (or finish) every fold of a cross-validation; see the module docstring.

    Args:
        bundle: the bundle folder.
        datalist: a manifest with folds (``tumorseg manifest``).
        output: the cross-validation folder (created).
        folds: folds to train; default every fold of the manifest.
        dataset_dir: the dataset folder; default the manifest's folder.
        config_files: config files merged after the bundle's ``train.json``.
        bundle_args: ``monai.bundle run`` overrides (``["--epochs", "300"]``).
        tracking_uri: MLflow store (default as the bundle: ``$MLFLOW_TRACKING_URI`` or
            ``mlflow.db`` here).
        experiment_name: MLflow experiment; default the bundle's.
        nproc_per_node: train each fold on this many processes with torchrun (``tumorseg
            launch``), e.g. one per GPU.
        predict_fold: ``(fold, model, validation_items, oof_dir)`` called after a fold's
            training, before it is marked finished (out-of-fold predictions).
        log: where progress lines go.

    Returns:
        What was trained and skipped.

    Raises:
        CVError: a bad fold or override, settings that differ from the folder's, or a fold
            whose training failed (its log named; a rerun continues).
        tumorseg.tracking.TrackingUnavailableError: the MLflow store cannot be reached.
    """
    root = Path(bundle).resolve()
    if not (root / "configs" / "train.json").is_file():
        raise CVError(f"bundle folder {str(bundle)!r} has no configs/train.json")
    manifest_path = Path(datalist).expanduser().resolve()
    manifest = load_manifest(manifest_path)
    num_folds = int(manifest["num_folds"])
    chosen = list(range(num_folds)) if not folds else [int(k) for k in folds]
    bad = [k for k in chosen if not 0 <= k < num_folds]
    if bad or len(set(chosen)) != len(chosen):
        raise CVError(
            f"folds {chosen} are not distinct folds of {manifest_path} (num_folds={num_folds}: "
            f"0..{num_folds - 1})"
        )
    _check_bundle_args(bundle_args)
    bundle_overrides(bundle_args)  # a malformed override fails here, before anything runs
    uri = check_tracking_uri(tracking_uri)
    cv = CVFolder(Path(output).resolve())
    state = _merge_state(
        cv,
        _new_state(
            root,
            manifest_path,
            sorted(chosen),
            dataset_dir=str(Path(dataset_dir).resolve()) if dataset_dir else "",
            config_files=config_files,
            bundle_args=bundle_args,
            experiment_name=experiment_name or _experiment_of(root),
            tracking_uri=uri,
        ),
    )
    cv.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cv.state, json.dumps(state, indent=2) + "\n")
    report = CVReport(cv.root, "")
    with _parent_run(cv, state, uri) as parent:
        report.parent_run_id = parent
        for fold in chosen:
            if cv.is_done(fold):
                report.skipped.append(fold)
                log(f"fold {fold}: finished before, skipped")
                continue
            start = time.perf_counter()
            _train_fold(cv, fold, state, parent, nproc_per_node, log)
            if predict_fold is not None:
                items = load_datalist(
                    manifest, dataset_dir=state["dataset_dir"] or None, fold=fold, split="val"
                )
                predict_fold(fold, cv.model(fold), items, cv.oof)
            record = {"fold": fold, "model": str(cv.model(fold)), "finished": time.time()}
            atomic_write_text(cv.done(fold), json.dumps(record, indent=2) + "\n")
            report.seconds[fold] = time.perf_counter() - start
            report.trained.append(fold)
            log(f"fold {fold}: finished in {report.seconds[fold]:.0f} s")
    return report


def _train_fold(
    cv: CVFolder,
    fold: int,
    state: Mapping[str, Any],
    parent: str,
    nproc_per_node: int | str | None,
    log: Callable[[str], Any],
) -> None:
    uri = str(state["tracking_uri"])
    _restart_if_no_checkpoint(cv, fold, uri)
    cv.ckpt_dir(fold).mkdir(parents=True, exist_ok=True)
    cmd = training_command(
        state["bundle"],
        fold=fold,
        datalist=state["datalist"],
        ckpt_dir=cv.ckpt_dir(fold),
        dataset_dir=state["dataset_dir"],
        parent_run_id=parent,
        tracking_uri=uri,
        experiment_name=state["experiment_name"],
        config_files=state["config_files"],
        bundle_args=state["bundle_args"],
        nproc_per_node=nproc_per_node,
    )
    log_path = cv.fold_dir(fold) / "train.log"
    resumed = (cv.ckpt_dir(fold) / LATEST).is_file()
    log(f"fold {fold}: training{' (resumed)' if resumed else ''}, log {log_path}")
    with log_path.open("a") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise CVError(
            f"fold {fold}: training failed (exit {done.returncode}); log {log_path}; rerun the "
            f"same command to continue the unfinished folds. Last lines:\n{tail}"
        )
    if not cv.model(fold).is_file():
        raise CVError(f"fold {fold}: training ended without {cv.model(fold)}; see {log_path}")
