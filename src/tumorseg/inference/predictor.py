"""Segment new studies with a bundle's network: one case in memory, or a whole folder to files.

:class:`Predictor` is built once from a bundle folder and a checkpoint and then segments any
number of studies. It is the one implementation behind both entry points:

* ``tumorseg infer --bundle bundles/brats_mri_segmentation --input DIR --output DIR``
  (:mod:`tumorseg.cli.infer`), and
* ``python -m monai.bundle run --config_file bundles/brats_mri_segmentation/configs/inference.json
  --dataset_dir DIR --output_dir OUT``.

Design of ``inference.json``: it is thin. It declares the inference settings (``dataset_dir``,
``output_dir``, ``checkpoint``, ``label_convention``, ``roi_size``, ``tta`` ...), instantiates a
``Predictor`` on ``@bundle_root`` and runs ``predict_folder``. The Predictor reads the bundle's
``train.json`` itself (with :class:`monai.bundle.ConfigParser`) and takes from it the
preprocessing (``preprocessing_transforms``), the network (``network_def``) and the sliding
window (``validate#inferer``), so nothing of training is re-declared and inference always
preprocesses exactly as training did. This is what lets ``inference.json`` run alone, as
above, and also merged after ``train.json`` (``--config_file "['.../train.json',
'.../inference.json']"``, the MONAI model-zoo way): either way the same Predictor code makes
the masks. Bundle settings given on the ``monai.bundle`` command line reach the Predictor
through ``inference.json``: ``--roi_size``, ``--sw_batch_size``, ``--overlap``, ``--filters``,
``--pixdim`` directly, anything else through ``--bundle_overrides "{'id': value}"``.
``bundle_root`` defaults to the bundle that holds the ``inference.json`` given on the command
line (:func:`locate_bundle`), so ``--bundle_root`` is only needed to point elsewhere. (Booleans
on that command line are Python's: ``--tta True``, ``--progress False``.) The bundle run ends
with :meth:`FolderReport.raise_for_failures`, so it exits non-zero when a study failed, after
segmenting all the others, like ``tumorseg infer`` (exit code 1).

What one case goes through:

1. headers checked (files present, 3D, same shape and affine; :mod:`.inputs`), then the
   bundle's load transforms (``LoadImaged``, ``EnsureChannelFirstd``), then the voxels checked
   (no NaN, some brain in every modality);
2. the rest of the bundle's preprocessing: orientation to RAS, resampling to ``pixdim``,
   **crop to the brain's non-zero bounding box** (``CropForegroundd``, so the sliding window
   never runs over background), z-score normalisation. Transforms that touch only the label
   key are left out: inference has no label;
3. sliding-window inference with Gaussian blending on the cropped volume (a slice-wise
   bundle's ``SliceInferer`` runs its 2D network over every axial slice instead; optionally
   averaged over the 8 mirrorings, ``tta``; autocast on CUDA), sigmoid;
4. MONAI's :class:`~monai.transforms.Invertd` undoes crop, resampling and orientation on the
   region probabilities, which lands them on the input's own voxel grid (the geometry is then
   checked against the input's); ``> 0.5`` per region and
   :func:`tumorseg.transforms.regions_to_labels` give the label map (innermost region wins);
5. :meth:`PredictionResult.save` writes ``<case_id>.nii.gz`` with the first modality's header
   (same shape, affine, qform/sform and codes) atomically; the optional probabilities go to
   ``probabilities/<case_id>.npz`` as float16 (NIfTI has no float16 type), on the same grid.

In :meth:`Predictor.predict_folder` steps 1-2 of the next study run in a background thread
while the current one is in the network.
"""

from __future__ import annotations

import ast
import csv
import errno
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorseg.conventions import CHANNEL_ORDER, REGIONS, LabelConvention, get_convention, get_layout
from tumorseg.data.discovery import CaseProblem, parse_modality_suffixes
from tumorseg.inference.inputs import (
    CaseError,
    check_headers,
    check_voxels,
    unreadable_file_error,
)
from tumorseg.inference.writer import (
    label_image,
    remove_stale_temporaries,
    write_csv_atomic,
    write_label_atomic,
    write_probabilities_atomic,
)

__all__ = [
    "FolderReport",
    "InferenceFailed",
    "LoadedCase",
    "OutputError",
    "PredictionResult",
    "Predictor",
    "locate_bundle",
    "region_volumes_ml",
]

logger = logging.getLogger(__name__)

#: Default output label convention where the input's layout does not name one.
DEFAULT_CONVENTION = "brats2021"
#: Folder under the output folder that holds the probability maps.
PROBABILITIES_DIR = "probabilities"
FAILURES_CSV = "failures.csv"
VOLUMES_CSV = "volumes.csv"
_VOLUME_COLUMNS = ("case_id", *(f"{r}_ml" for r in REGIONS))
_THRESHOLD = 0.5
_AFFINE_ATOL = 1e-4
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


def region_volumes_ml(
    label: np.ndarray, affine: np.ndarray, convention: str | LabelConvention
) -> dict[str, float]:
    """Volume of each region (``WT``, ``TC``, ``ET``) of a label map, in mL.

    Args:
        label: integer label map.
        affine: its voxel-to-world affine (mm); the voxel volume is ``|det(affine[:3, :3])|``.
        convention: the convention of the label values.
    """
    conv = get_convention(convention)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
    return {r: float(counts[list(conv.region_values(r))].sum()) * voxel_ml for r in REGIONS}


@dataclass
class PredictionResult:
    """The segmentation of one study, on the study's own voxel grid.

    Attributes:
        case_id: the study.
        images: its input files (four in ``CHANNEL_ORDER`` or one 4D file).
        label: ``(X, Y, Z)`` uint8 label map in ``label_convention``, in the voxel order of the
            input files.
        probabilities: ``(3, X, Y, Z)`` float32 region probabilities (``WT``, ``TC``, ``ET``).
        affine: voxel-to-world affine of the input (nibabel's, RAS mm).
        header: nibabel header of the first input file (copied into the output), or None
            for non-NIfTI inputs.
        label_convention: the convention of ``label``.
        timings: seconds spent per stage: ``load``, ``preprocess``, ``network``,
            ``postprocess`` (and ``write`` once saved).
    """

    case_id: str
    images: tuple[Path, ...]
    label: np.ndarray
    probabilities: np.ndarray
    affine: np.ndarray
    header: Any | None
    label_convention: str
    timings: dict[str, float] = field(default_factory=dict)

    def volumes_ml(self) -> dict[str, float]:
        """Volume of ``WT``, ``TC`` and ``ET`` in mL."""
        return region_volumes_ml(self.label, self.affine, self.label_convention)

    def to_nifti(self) -> Any:
        """The label map as a nibabel image with the input's header (type and shape changed)."""
        return label_image(self.label, self.header, self.affine)

    def save(self, output_dir: str | os.PathLike[str], *, save_probabilities: bool = False) -> Path:
        """Write ``<output_dir>/<case_id>.nii.gz`` (and the probabilities) atomically.

        The probabilities, when asked for, go to ``probabilities/<case_id>.npz`` (float16,
        see :func:`tumorseg.inference.writer.write_probabilities_atomic`) and are written
        before the mask, so an existing mask means the case is complete.

        Returns:
            The mask's path.
        """
        start = time.perf_counter()
        out = Path(output_dir)
        if save_probabilities:
            write_probabilities_atomic(
                out / PROBABILITIES_DIR / f"{self.case_id}.npz",
                self.probabilities,
                affine=self.affine,
                regions=REGIONS,
            )
        path = write_label_atomic(out / f"{self.case_id}.nii.gz", self.to_nifti())
        self.timings["write"] = time.perf_counter() - start
        return path


class InferenceFailed(RuntimeError):
    """Raised by :meth:`FolderReport.raise_for_failures` when studies failed (after the batch)."""

    def __init__(self, report: FolderReport) -> None:
        self.report = report
        lines = [
            f"{len(report.failed)} of {report.total} studies failed (see "
            f"{report.output_dir / FAILURES_CSV}):",
            *(str(f) for f in report.failed),
        ]
        super().__init__("\n".join(lines))


#: Write errors that will not go away by themselves: the batch stops at the first one.
_DISK_ERRNOS = {
    errno.ENOSPC: "free space on that disk (or choose another --output)",
    errno.EDQUOT: "free space within your quota (or choose another --output)",
    errno.EROFS: "choose a writable --output folder",
    errno.EACCES: "make the folder writable or choose a writable --output folder",
    errno.EPERM: "make the folder writable or choose a writable --output folder",
}


def _write_failure(err: OSError, path: Path) -> str:
    """``cannot write <path>: <reason> (<errno>); <fix>`` for an output that failed."""
    code = errno.errorcode.get(err.errno or 0, "")
    fix = _DISK_ERRNOS.get(err.errno or 0, "check the output folder")
    return f"cannot write {path}: {err.strerror or err}{f' ({code})' if code else ''}; {fix}"


class OutputError(OSError):
    """The output could not be written (full disk, read-only folder): the batch stopped.

    What was written before is complete and kept; rerunning the same command after the fix
    skips it.

    Attributes:
        report: what was done before the batch stopped (None when it stopped before any
            study).
    """

    def __init__(self, message: str, *, code: int | None, report: FolderReport | None) -> None:
        super().__init__(code, message)
        self.message = message
        self.report = report

    def __str__(self) -> str:
        return self.message


class _SaveFailed(Exception):
    def __init__(self, err: OSError, path: Path) -> None:
        self.err = err
        self.path = path


@dataclass
class FolderReport:
    """What :meth:`Predictor.predict_folder` did.

    Attributes:
        output_dir: where the masks, ``volumes.csv`` and ``failures.csv`` are.
        written: case ids segmented and written by this run.
        skipped: case ids whose mask already existed (not recomputed).
        failed: studies that could not be segmented, with file and reason.
        timings: seconds per stage summed over the written cases.
        seconds: wall-clock seconds of the whole run.
    """

    output_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseProblem] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.written) + len(self.skipped) + len(self.failed)

    @property
    def ok(self) -> bool:
        """True when no study failed."""
        return not self.failed

    def raise_for_failures(self) -> FolderReport:
        """Raise :class:`InferenceFailed` if any study failed; return ``self`` otherwise."""
        if self.failed:
            raise InferenceFailed(self)
        return self

    def summary(self) -> str:
        return (
            f"{len(self.written)} written, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed; in {self.seconds:.1f} s -> {self.output_dir}"
        )


@dataclass
class LoadedCase:
    """A study after loading and preprocessing, ready for :meth:`Predictor.predict_loaded`.

    Attributes:
        case_id: the study.
        paths: its input files.
        header: nibabel header of the first file (None for non-NIfTI inputs).
        data: the bundle's preprocessing output (``data[image_key]`` is the cropped,
            normalised MetaTensor that remembers how to invert its geometry).
        timings: seconds of ``load`` and ``preprocess``.
    """

    case_id: str
    paths: tuple[Path, ...]
    header: Any | None
    data: dict[str, Any]
    timings: dict[str, float]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def locate_bundle(default: str = ".") -> str:
    """The bundle folder to use when ``inference.json`` runs without ``--bundle_root``.

    ``python -m monai.bundle run --config_file <bundle>/configs/inference.json`` does not tell
    the config where it lives; this finds ``<bundle>`` from the command line's
    ``--config_file`` (a path or a list of paths), then tries the current folder (the MONAI
    convention: run from the bundle folder). An explicit ``--bundle_root`` overrides it.

    Returns:
        The bundle folder, or ``default`` when none is found.
    """
    argv = sys.argv[1:]
    values = []
    for i, arg in enumerate(argv):
        if arg in ("--config_file", "--config-file") and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(("--config_file=", "--config-file=")):
            values.append(arg.split("=", 1)[1])
    for value in values:
        try:
            parsed = ast.literal_eval(value) if value.strip().startswith(("[", "(")) else value
        except (ValueError, SyntaxError):
            parsed = value
        files = [parsed] if isinstance(parsed, str) else list(parsed)
        for f in reversed(files):
            folder = Path(str(f)).resolve().parent
            root = folder.parent if folder.name == "configs" else folder
            if (root / "configs" / "train.json").is_file():
                return str(root)
    if (Path.cwd() / "configs" / "train.json").is_file():
        return str(Path.cwd())
    return default


def _check_roi_size(value: Any, ndim: int) -> list[int]:
    """``ndim`` positive sizes: 3 for a 3D bundle, 2 for a slice-wise bundle's in-plane window."""
    try:
        sizes = [int(v) for v in value]
        ok = len(sizes) == ndim and all(s > 0 and s == v for s, v in zip(sizes, value, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"roi_size must be {ndim} positive integers for this bundle, got {value!r}"
        )
    return sizes


def _check_sw_batch_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"sw_batch_size must be an integer >= 1, got {value!r}")
    return int(value)


def _check_overlap(value: Any) -> float:
    try:
        overlap = float(value)
    except (TypeError, ValueError):
        overlap = -1.0
    if isinstance(value, bool) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be a number in [0, 1), got {value!r}")
    return overlap


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here")
    return dev


def _as_paths(
    images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
) -> tuple[Path, ...]:
    if isinstance(images, str | os.PathLike):
        paths: tuple[Path, ...] = (Path(images),)
    else:
        paths = tuple(Path(p) for p in images)
    if len(paths) not in (1, len(CHANNEL_ORDER)):
        raise ValueError(
            f"expected {len(CHANNEL_ORDER)} files ({', '.join(CHANNEL_ORDER)}) or one 4D file, "
            f"got {len(paths)}: {[str(p) for p in paths]}"
        )
    return paths


def _default_case_id(paths: Sequence[Path]) -> str:
    if len(paths) == 1:
        name = paths[0].name
        for ext in _NIFTI_SUFFIXES:
            if name.lower().endswith(ext):
                return name[: -len(ext)]
        return paths[0].stem
    return paths[0].parent.name


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _mirror_axes(tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes to flip, per pass: just the identity, or all 8 mirrorings."""
    if not tta:
        return [()]
    spatial = (2, 3, 4)
    return [c for n in range(4) for c in itertools.combinations(spatial, n)]


def _read_volume_rows(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError:
        return {}
    if not rows or tuple(rows[0]) != _VOLUME_COLUMNS:
        return {}
    return {r[0]: r for r in rows[1:] if len(r) == len(_VOLUME_COLUMNS)}


def _volume_row(case_id: str, volumes: Mapping[str, float]) -> list[str]:
    return [case_id, *(f"{volumes[r]:.4f}" for r in REGIONS)]


# --------------------------------------------------------------------------------------------
# the predictor
# --------------------------------------------------------------------------------------------


class Predictor:
    """A bundle's network, preprocessing and sliding window, loaded once, for many studies.

    Args:
        bundle: the bundle folder (holding ``configs/train.json``).
        checkpoint: network weights (a state dict, or a training checkpoint holding one under
            ``network``); default ``<ckpt_dir>/model.pt`` of the bundle. Loaded with
            ``weights_only=True``. With ``network`` given, loaded into it only when passed.
        config_files: more config files merged after ``train.json`` (paths, or names in the
            bundle's ``configs/``).
        overrides: config ids -> values set after reading the configs (e.g.
            ``{"filters": [8, 16, 32, 64, 128]}``, ``{"network_def#res_block": False}``); None
            values are ignored, so a config can forward optional settings.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        roi_size: sliding-window size; default the bundle's ``roi_size``.
        sw_batch_size: windows per network call; default the bundle's.
        overlap: window overlap in [0, 1); default the bundle's.
        tta: average the probabilities over the 8 mirrorings of the input (8x slower).
        amp: autocast to float16 in the network; default on for CUDA, off for CPU.
        network: a ready network to use instead of the bundle's ``network_def`` (tests,
            custom models); its weights are used as they are unless ``checkpoint`` is given.

    Raises:
        FileNotFoundError: no ``configs/train.json`` in ``bundle``, or no checkpoint.
        ValueError: bad settings (the value is shown), or a checkpoint that does not fit the
            network (missing, unexpected and mis-shaped keys are listed).
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        config_files: Sequence[str | os.PathLike[str]] = (),
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        tta: bool = False,
        amp: bool | None = None,
        network: torch.nn.Module | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        self.bundle = Path(bundle)
        train = self.bundle / "configs" / "train.json"
        if not train.is_file():
            raise FileNotFoundError(
                f"bundle folder {str(self.bundle)!r} has no configs/train.json; pass the bundle "
                "folder (tumorseg infer --bundle, monai.bundle --bundle_root)"
            )
        files = [train, *(self._config_path(f) for f in config_files)]
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        meta = self.bundle / "configs" / "metadata.json"
        if meta.is_file():
            parser.read_meta(str(meta))
        parser["bundle_root"] = str(self.bundle)
        for key, value in (overrides or {}).items():
            if value is not None:
                parser[key] = value
        explicit: dict[str, Any] = {}
        if roi_size is not None:
            bundle_roi = parser.get_parsed_content("roi_size") if "roi_size" in parser else (0,) * 3
            explicit["roi_size"] = _check_roi_size(roi_size, len(bundle_roi))
        if sw_batch_size is not None:
            explicit["sw_batch_size"] = _check_sw_batch_size(sw_batch_size)
        if overlap is not None:
            explicit["overlap"] = _check_overlap(overlap)
        for key, value in explicit.items():
            parser[key] = value
        self.config = parser
        self.device = _resolve_device(device)
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)
        self.tta = bool(tta)
        self.image_key = self._parsed("image_key", "image")
        self._label_key = self._parsed("label_key", "label")
        self._load, self._preprocess, self.preprocessing = self._build_preprocessing()
        self.inferer = self._build_inferer(explicit)

        from monai.transforms import Invertd

        # nearest_interp=False: probabilities are interpolated back (bilinear, as the image was
        # resampled) and thresholded on the input grid, which keeps region borders smooth.
        self._invert = Invertd(
            keys="pred",
            transform=self.preprocessing,
            orig_keys=self.image_key,
            nearest_interp=False,
            to_tensor=True,
        )
        if network is None:
            network = self.config.get_parsed_content("network_def")
            self.checkpoint: Path | None = Path(checkpoint) if checkpoint else self._default_ckpt()
        else:
            self.checkpoint = Path(checkpoint) if checkpoint else None
        if self.checkpoint is not None:
            self._load_weights(network, self.checkpoint)
        self.network = network.to(self.device).eval()

    # -- construction ----------------------------------------------------------------------

    def _config_path(self, name: str | os.PathLike[str]) -> Path:
        path = Path(name)
        if path.is_file():
            return path
        in_bundle = self.bundle / "configs" / path
        if in_bundle.is_file():
            return in_bundle
        raise FileNotFoundError(
            f"config file {str(name)!r} not found (also looked in {self.bundle / 'configs'})"
        )

    def _parsed(self, key: str, default: Any) -> Any:
        return self.config.get_parsed_content(key) if key in self.config else default

    def _default_ckpt(self) -> Path:
        ckpt_dir = self._parsed("ckpt_dir", str(self.bundle / "models"))
        return Path(ckpt_dir) / "model.pt"

    def _build_preprocessing(self) -> tuple[Callable, Callable, Any]:
        """The bundle's preprocessing without its label-only transforms, split after loading."""
        from monai.transforms import Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged
        from monai.utils import ensure_tuple

        if "preprocessing_transforms" not in self.config:
            raise ValueError(
                f"bundle {self.bundle} defines no 'preprocessing_transforms' in its configs; "
                "inference takes its preprocessing from there"
            )
        raw = self.config["preprocessing_transforms"]
        transforms = []
        for i, item in enumerate(raw):
            ref = f"preprocessing_transforms#{i}"
            if isinstance(item, dict) and "keys" in item:
                keys = set(ensure_tuple(self.config.get_parsed_content(f"{ref}#keys")))
                if keys <= {self._label_key}:
                    # Not instantiated at all: e.g. LabelsToRegionsd would need the training
                    # data's label convention, which means nothing for new studies.
                    continue
            transforms.append(self.config.get_parsed_content(ref))
        n_load = 0
        while n_load < len(transforms) and isinstance(
            transforms[n_load], LoadImaged | EnsureChannelFirstd
        ):
            n_load += 1
        if n_load == 0:
            raise ValueError(
                f"the bundle's preprocessing_transforms must start with LoadImaged; got "
                f"{type(transforms[0]).__name__ if transforms else 'an empty list'}"
            )
        if not any(isinstance(t, CropForegroundd) for t in transforms):
            logger.warning(
                "the bundle's preprocessing has no CropForegroundd: the sliding window will "
                "also run over the background around the brain"
            )
        full = Compose(transforms)
        return Compose(transforms[:n_load]), Compose(transforms[n_load:]), full

    def _build_inferer(self, explicit: Mapping[str, Any]) -> Any:
        from monai.inferers import SlidingWindowInferer

        for ref in ("inference#inferer", "validate#inferer", "inferer"):
            if ref in self.config:
                inferer = self.config.get_parsed_content(ref)
                break
        else:
            inferer = SlidingWindowInferer(
                roi_size=self._parsed("roi_size", [96, 96, 96]),
                sw_batch_size=self._parsed("sw_batch_size", 4),
                overlap=self._parsed("overlap", 0.5),
                mode="gaussian",
            )
        if not isinstance(inferer, SlidingWindowInferer):
            raise ValueError(
                f"the bundle's inferer is a {type(inferer).__name__}; inference needs a "
                "SlidingWindowInferer"
            )
        for key, value in explicit.items():
            got = getattr(inferer, key)
            same = list(got) == list(value) if key == "roi_size" else got == value
            if not same:
                raise ValueError(
                    f"the bundle's inferer does not take {key} from @{key} (it has {got!r}, "
                    f"asked for {value!r}); set it in the bundle config instead"
                )
        return inferer

    def _load_weights(self, network: torch.nn.Module, path: Path) -> None:
        from tumorseg.training import load_network_weights

        filters = self._parsed("filters", None)
        load_network_weights(
            network,
            path,
            settings=f"filters={filters}" if filters else "",
            hint="pass the same ones (e.g. --override filters=[...]) or the matching --checkpoint",
        )

    # -- settings, for reports ---------------------------------------------------------------

    @property
    def roi_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.inferer.roi_size)

    @property
    def sw_batch_size(self) -> int:
        return int(self.inferer.sw_batch_size)

    @property
    def overlap(self) -> float:
        return float(np.mean(self.inferer.overlap))

    # -- one case ----------------------------------------------------------------------------

    def load_case(
        self,
        images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        case_id: str | None = None,
    ) -> LoadedCase:
        """Check, load and preprocess one study (the part that runs ahead in a folder run).

        Raises:
            CaseError: the study cannot be used (file and reason given).
        """
        paths = _as_paths(images)
        case_id = case_id or _default_case_id(paths)
        start = time.perf_counter()
        header = check_headers(case_id, paths)
        item = {self.image_key: [str(p) for p in paths] if len(paths) > 1 else str(paths[0])}
        try:
            data = self._load(item)
        except Exception as err:  # readers raise many types; find the file to blame
            raise unreadable_file_error(case_id, paths, err) from err
        check_voxels(case_id, paths, data[self.image_key])
        loaded = time.perf_counter()
        try:
            data = self._preprocess(data)
        except Exception as err:
            raise CaseError(case_id, paths[0], f"preprocessing failed ({_describe(err)})") from err
        done = time.perf_counter()
        timings = {"load": loaded - start, "preprocess": done - loaded}
        return LoadedCase(case_id, paths, header, data, timings)

    def predict_loaded(
        self, loaded: LoadedCase, *, label_convention: str | LabelConvention = DEFAULT_CONVENTION
    ) -> PredictionResult:
        """Network and postprocessing for a study from :meth:`load_case`."""
        from monai.data import MetaTensor

        conv = get_convention(label_convention)
        image = loaded.data[self.image_key]
        start = time.perf_counter()
        probs = self._probabilities(image)
        network_done = time.perf_counter()

        pred = MetaTensor(probs, meta=dict(image.meta))
        inverted = self._invert({"pred": pred, self.image_key: image})["pred"]
        original_affine = np.asarray(image.meta.get("original_affine"), dtype=np.float64)
        affine = (
            np.asarray(loaded.header.get_best_affine(), dtype=np.float64)
            if loaded.header is not None
            else original_affine
        )
        probabilities = np.asarray(inverted.detach().cpu().numpy(), dtype=np.float32)
        self._check_geometry(loaded, probabilities.shape[1:], inverted, affine)
        label = _labels(probabilities, conv)
        done = time.perf_counter()
        timings = {
            **loaded.timings,
            "network": network_done - start,
            "postprocess": done - network_done,
        }
        return PredictionResult(
            case_id=loaded.case_id,
            images=loaded.paths,
            label=label,
            probabilities=probabilities,
            affine=affine,
            header=loaded.header,
            label_convention=conv.name,
            timings=timings,
        )

    def predict_case(
        self,
        images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        case_id: str | None = None,
        label_convention: str | LabelConvention = DEFAULT_CONVENTION,
    ) -> PredictionResult:
        """Segment one study, in memory.

        Args:
            images: the four modality files in ``CHANNEL_ORDER`` (flair, t1, t1ce, t2), or
                one 4D file (MSD).
            case_id: name of the study; default the folder name (4 files) or the file name.
            label_convention: numbers of the output labels (``brats2021``, ``brats2023``,
                ``msd``).

        Returns:
            The label map and probabilities on the input's voxel grid, with its header.

        Raises:
            CaseError: the study cannot be used (file and reason given).
        """
        return self.predict_loaded(
            self.load_case(images, case_id=case_id), label_convention=label_convention
        )

    def _probabilities(self, image: Any) -> torch.Tensor:
        """Sigmoid region probabilities ``(3, *spatial)`` of a preprocessed image, on the CPU."""
        x = torch.as_tensor(image).as_subclass(torch.Tensor)[None].to(self.device)
        passes = _mirror_axes(self.tta)
        total: torch.Tensor | None = None
        with (
            torch.no_grad(),
            torch.autocast(device_type=self.device.type, enabled=self.amp),
        ):
            for axes in passes:
                logits = self.inferer(torch.flip(x, axes) if axes else x, self.network)
                if isinstance(logits, tuple | list):
                    logits = logits[0]
                if axes:
                    logits = torch.flip(logits, axes)
                probs = torch.sigmoid(logits.float())
                total = probs if total is None else total.add_(probs)
        assert total is not None
        if total.shape[1] != len(REGIONS):
            raise ValueError(
                f"the network gives {total.shape[1]} output channels; expected "
                f"{len(REGIONS)} region logits {REGIONS}"
            )
        if len(passes) > 1:
            total /= len(passes)
        return total[0].cpu()

    def _check_geometry(
        self, loaded: LoadedCase, shape: tuple[int, ...], inverted: Any, affine: np.ndarray
    ) -> None:
        """The inverted prediction must sit exactly on the input's grid; anything else is a bug."""
        expected = (
            tuple(int(s) for s in loaded.header.get_data_shape()[:3])
            if loaded.header is not None
            else tuple(int(s) for s in loaded.data[self.image_key].meta["spatial_shape"][:3])
        )
        got_affine = np.asarray(inverted.affine, dtype=np.float64)
        diff = float(np.max(np.abs(got_affine - affine)))
        if tuple(shape) != expected or diff > _AFFINE_ATOL:
            raise RuntimeError(
                f"inverting the preprocessing gave shape {tuple(shape)} and an affine {diff:.3g} "
                f"away from the input's (shape {expected}); the bundle's preprocessing may hold "
                "a transform that cannot be inverted"
            )

    # -- a folder ----------------------------------------------------------------------------

    def predict_folder(
        self,
        input_dir: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        *,
        label_convention: str | None = None,
        modality_suffixes: str | Mapping[str, str] | None = None,
        layout: str | None = None,
        overwrite: bool = False,
        save_probabilities: bool = False,
        progress: bool = True,
    ) -> FolderReport:
        """Segment every study of a folder into ``<output_dir>/<case_id>.nii.gz``.

        Studies are found by :func:`tumorseg.data.discover_cases` (BraTS 2020/2021, BraTS
        2023, MSD 4D, or one folder per case with ``modality_suffixes``). A study whose mask
        exists is skipped unless ``overwrite``, so a killed run resumes where it stopped. A
        study that cannot be used is reported on stderr and in ``failures.csv`` (case id,
        file, reason) and the batch goes on. ``volumes.csv`` lists the mL of each region per
        case, for written and skipped cases. All files are written atomically.

        Args:
            input_dir: the dataset folder.
            output_dir: where masks and tables go (created).
            label_convention: output label numbers; None or ``""`` means each input layout's own
                (``brats2021`` for BraTS 2020/2021 and custom naming, ``brats2023``, ``msd``).
            modality_suffixes: custom file naming, ``{"flair": "_FLAIR", ...}`` or
                ``"flair=_FLAIR,t1=_T1,t1ce=_T1CE,t2=_T2"``.
            layout: force a layout instead of detecting it.
            overwrite: recompute studies whose mask exists.
            save_probabilities: also write ``probabilities/<case_id>.npz`` (float16).
            progress: show a progress bar with ETA on stderr.

        Returns:
            What was written, skipped and failed; check ``report.ok`` or call
            ``report.raise_for_failures()``.

        Raises:
            tumorseg.data.DatasetError: the folder holds no recognisable study at all.
            ValueError: an unknown label convention or bad suffix mapping.
        """
        from tqdm.auto import tqdm

        from tumorseg.data import discover_cases

        start = time.perf_counter()
        if not str(input_dir):
            raise ValueError(
                "no input folder given (tumorseg infer --input, inference.json --dataset_dir)"
            )
        fixed = get_convention(label_convention).name if label_convention else None
        suffixes = parse_modality_suffixes(modality_suffixes)
        cases = discover_cases(Path(input_dir), layout=layout, modality_suffixes=suffixes)
        out = Path(output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(_write_failure(err, out), code=err.errno, report=None) from None
        for folder in (out, out / PROBABILITIES_DIR):
            for stale in remove_stale_temporaries(folder):
                logger.info("removed %s, left by an interrupted run", stale)

        report = FolderReport(output_dir=out)
        old_rows = _read_volume_rows(out / VOLUMES_CSV)
        rows: dict[str, list[str]] = {}
        todo = []
        for case in cases:
            mask = out / f"{case.case_id}.nii.gz"
            probs = out / PROBABILITIES_DIR / f"{case.case_id}.npz"
            done = mask.is_file() and (not save_probabilities or probs.is_file())
            if done and not overwrite:
                report.skipped.append(case.case_id)
                rows[case.case_id] = old_rows.get(case.case_id) or self._volume_row_of(
                    case.case_id, mask, fixed or self._layout_convention(case.layout)
                )
            else:
                todo.append(case)

        def write_tables() -> None:
            order = [c.case_id for c in cases if c.case_id in rows]
            failed = [(f.case_id, f.file, f.reason) for f in report.failed]
            for name, header, table in (
                (VOLUMES_CSV, _VOLUME_COLUMNS, [rows[c] for c in order]),
                (FAILURES_CSV, ("case_id", "file", "reason"), failed),
            ):
                try:
                    write_csv_atomic(out / name, header, table)
                except OSError as err:
                    raise _SaveFailed(err, out / name) from None

        try:
            write_tables()
        except _SaveFailed as failed:  # nothing done yet: the folder cannot be used
            raise OutputError(
                _write_failure(failed.err, failed.path), code=failed.err.errno, report=None
            ) from None
        stopped: _SaveFailed | None = None
        bar = tqdm(
            total=len(todo), desc="infer", unit="case", disable=not progress, file=sys.stderr
        )
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tumorseg-load")
        try:

            def submit(i: int) -> Future | None:
                if i >= len(todo):
                    return None
                case = todo[i]
                if case.issues:
                    return None  # reported below without loading
                return pool.submit(self.load_case, case.images, case_id=case.case_id)

            upcoming = submit(0)
            for i, case in enumerate(todo):
                current, upcoming = upcoming, submit(i + 1)
                try:
                    if case.issues:
                        problem = case.issues[0]
                        raise CaseError(case.case_id, problem.file, problem.reason)
                    assert current is not None
                    loaded = current.result()
                    conv = fixed or self._layout_convention(case.layout)
                    result = self.predict_loaded(loaded, label_convention=conv)
                    try:
                        result.save(out, save_probabilities=save_probabilities)
                    except OSError as err:  # the output's fault, not the study's
                        raise _SaveFailed(err, out / f"{case.case_id}.nii.gz") from None
                    rows[case.case_id] = _volume_row(case.case_id, result.volumes_ml())
                    report.written.append(case.case_id)
                    for stage, seconds in result.timings.items():
                        report.timings[stage] = report.timings.get(stage, 0.0) + seconds
                except _SaveFailed as failed:
                    reason = _write_failure(failed.err, failed.path).split(": ", 1)[1]
                    self._fail(report, CaseProblem(case.case_id, str(failed.path), reason), bar)
                    if failed.err.errno in _DISK_ERRNOS:
                        stopped = failed
                except CaseError as err:
                    self._fail(report, CaseProblem(err.case_id, err.file, err.reason), bar)
                except Exception as err:  # one bad study must not stop the batch
                    logger.debug("case %s failed", case.case_id, exc_info=True)
                    file = str(case.images[0]) if case.images else ""
                    self._fail(report, CaseProblem(case.case_id, file, _describe(err)), bar)
                bar.update(1)
                try:
                    write_tables()
                except _SaveFailed as failed:
                    stopped = stopped or failed
                    _report_unrecorded(report, failed, bar)
                if stopped is not None:
                    break
        finally:
            bar.close()
            # A KeyboardInterrupt must not wait for the study being loaded ahead.
            pool.shutdown(wait=False, cancel_futures=True)
        report.seconds = time.perf_counter() - start
        if stopped is not None:
            left = len(todo) - len(report.written) - len(report.failed)
            raise OutputError(
                f"{_write_failure(stopped.err, stopped.path)}. The batch stopped: "
                f"{len(report.written)} studies written and kept, {len(report.failed)} failed, "
                f"{left} not done; rerun the same command once fixed (finished studies are "
                "skipped)",
                code=stopped.err.errno,
                report=report,
            )
        return report

    @staticmethod
    def _layout_convention(layout: str) -> str:
        try:
            return get_layout(layout).label_convention
        except ValueError:
            return DEFAULT_CONVENTION  # custom naming: the BraTS submission numbers

    @staticmethod
    def _volume_row_of(case_id: str, mask: Path, convention: str) -> list[str]:
        """Volumes of an existing mask (a case done by an earlier, interrupted run)."""
        import nibabel as nib

        img: Any = nib.load(str(mask))
        label = np.asanyarray(img.dataobj)
        return _volume_row(case_id, region_volumes_ml(label, img.affine, convention))

    @staticmethod
    def _fail(report: FolderReport, failure: CaseProblem, bar: Any) -> None:
        report.failed.append(failure)
        bar.write(f"FAILED {failure}", file=sys.stderr)


def _report_unrecorded(report: FolderReport, failed: _SaveFailed, bar: Any) -> None:
    """The tables cannot be written: the failures go to stderr instead (nothing is lost)."""
    bar.write(
        f"could not write {failed.path} ({failed.err.strerror or failed.err}); "
        f"{len(report.failed)} failure(s) not recorded in {FAILURES_CSV}"
        + (", listed above" if report.failed else ""),
        file=sys.stderr,
    )


def _labels(probabilities: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """``> 0.5`` per region, then the label map (innermost region wins)."""
    from tumorseg.transforms import regions_to_labels

    return np.asarray(
        regions_to_labels(probabilities, convention, threshold=_THRESHOLD), dtype=np.uint8
    )
