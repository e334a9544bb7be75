"""Segment new studies with a bundle's network: one case in memory, or a whole folder to files.

:class:`Predictor` is built once from a bundle and a checkpoint and then segments any number of
studies. It is the one implementation behind every entry point:

* ``tumorseg infer --bundle bundles/brats_mri_segmentation --input DIR --output DIR``
  (:mod:`tumorseg.cli.infer`);
* ``python -m monai.bundle run --config_file "['<bundle>/configs/train.json',
  '<bundle>/configs/inference.json']" --bundle_root <bundle> --dataset_dir DIR --output_dir OUT``
  (the MONAI model-zoo way);
* the API: ``Predictor.from_bundle("bundles/brats_mri_segmentation").predict_case(files)``.

Design: each bundle's ``inference.json`` is merged after its ``train.json`` and declares the
pipeline by MONAI's inference ids (:mod:`tumorseg.inference.bundle`): ``network_def``,
``preprocessing`` (``@validate#preprocessing``: inference preprocesses exactly as validation
did), ``inferer`` (``@validate#inferer``), ``postprocessing``, ``dataset`` and ``evaluator``,
which is this class built from the others. :meth:`Predictor.from_bundle` loads the same two
files (:func:`~tumorseg.inference.bundle.load_bundle`) and instantiates the same
``evaluator``, so both entry points make the same masks. The bundle's ``data_format`` says what
it reads and writes: NIfTI studies (3D and slice-wise 2D bundles), or kaggle_3m TIF slices
(:mod:`tumorseg.inference.lgg`). What this class adds to MONAI's pieces is what a folder run of
real studies needs: the checks of each study, the next study loaded while the current one is
in the network, resuming a killed run, ``failures.csv`` and ``volumes.csv``, and output on the
input's exact grid and header. The bundle run ends with :meth:`FolderReport.raise_for_failures`,
so it exits non-zero when a study failed, after segmenting all the others, like
``tumorseg infer`` (exit code 1).

What one case goes through:

1. headers checked (files present, 3D, same shape and affine; :mod:`.inputs`), then the
   bundle's load transforms (``LoadImaged``, ``EnsureChannelFirstd``), then the voxels checked
   (no NaN, some brain in every modality);
2. the rest of the bundle's preprocessing: orientation to RAS, resampling to ``pixdim``,
   **crop to the brain's non-zero bounding box** (``CropForegroundd``, so the sliding window
   never runs over background), z-score normalisation. Its label transforms find no label
   and do nothing (``allow_missing_keys``);
3. sliding-window inference with Gaussian blending on the cropped volume (a slice-wise
   bundle's ``SliceInferer`` runs its 2D network over every axial slice instead; optionally
   averaged over the 8 mirrorings, ``tta``; autocast on CUDA), sigmoid;
4. the bundle's ``postprocessing`` (MONAI's :class:`~monai.transforms.Invertd`) undoes crop,
   resampling and orientation on the region probabilities, which lands them on the input's
   own voxel grid (the geometry is then checked against the input's); ``> 0.5`` per region and
   :func:`tumorseg.transforms.regions_to_labels` give the label map (innermost region wins);
5. :meth:`PredictionResult.save` writes ``<case_id>.nii.gz`` with the first modality's header
   (same shape, affine, qform/sform and codes) atomically; the optional probabilities go to
   ``probabilities/<case_id>.npz`` as float16 (NIfTI has no float16 type), on the same grid.

In :meth:`Predictor.predict_folder` steps 1-2 of the next study run in a background thread
while the current one is in the network.

This module holds the :class:`Predictor` itself; around it are :mod:`.results` (one study
loaded and segmented), :mod:`.folder` (the folder run, its tables and report) and
:mod:`.settings` (checks of the settings and of the bundle's pieces).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from tumorseg.conventions import (
    CHANNEL_ORDER,
    REGIONS,
    LabelConvention,
    check_regions,
    get_convention,
)
from tumorseg.inference.bundle import (
    DATA_FORMATS,
    DEFAULT_CONVENTION,
    apply_checkpoint_meta,
    load_bundle,
)
from tumorseg.inference.dicom_input import DICOM_STUDY_KEY, find_dicom_study, load_dicom_study
from tumorseg.inference.dicom_seg import SegAlgorithm
from tumorseg.inference.folder import (
    FolderReport,
    InferenceFailed,
    OutputError,
    segment_nifti_folder,
)
from tumorseg.inference.inputs import (
    CaseError,
    check_headers,
    check_voxels,
    describe_error,
    unreadable_file_error,
)
from tumorseg.inference.lgg import LGGInferenceReport, segment_kaggle_3m_folder
from tumorseg.inference.postprocess import PostprocessRules, label_map, rules_next_to
from tumorseg.inference.results import LoadedCase, PredictionResult, region_volumes_ml
from tumorseg.inference.settings import (
    check_inferer_settings,
    check_overlap,
    check_roi_size,
    check_sw_batch_size,
    check_tiled_settings,
    resolve_device,
    root_cause,
    split_after_loading,
)
from tumorseg.training.checkpoint import load_network_weights

__all__ = [
    "FolderReport",
    "InferenceFailed",
    "LoadedCase",
    "OutputError",
    "PredictionResult",
    "Predictor",
    "region_volumes_ml",
]

_THRESHOLD = 0.5
_AFFINE_ATOL = 1e-4
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


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


def _mirror_axes(tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes to flip, per pass: just the identity, or all 8 mirrorings."""
    if not tta:
        return [()]
    spatial = (2, 3, 4)
    return [c for n in range(4) for c in itertools.combinations(spatial, n)]


# --------------------------------------------------------------------------------------------
# the predictor
# --------------------------------------------------------------------------------------------


class Predictor:
    """A bundle's network, preprocessing and inferer, loaded once, for many studies.

    Built from the components a bundle's ``inference.json`` declares (it is that config's
    ``evaluator``); :meth:`from_bundle` loads a bundle folder and builds it from there, so
    ``tumorseg infer``, the API and ``python -m monai.bundle run`` use one object. What it
    adds to MONAI's pieces: the checks of each study, prefetching the next study, resuming a
    folder, ``failures.csv`` / ``volumes.csv``, and the exact input geometry on output.

    Args:
        network: the bundle's network (``@network``).
        preprocessing: the bundle's preprocessing (``@preprocessing``), a ``Compose`` that
            starts with ``LoadImaged`` (and ``EnsureChannelFirstd``).
        inferer: ``@inferer``: a ``SlidingWindowInferer`` (or ``SliceInferer``) for NIfTI
            studies; any ``inferer(inputs, network)`` callable for kaggle_3m slices.
        postprocessing: ``@postprocessing``: for NIfTI studies a callable on
            ``{"pred": probabilities, image_key: image}`` that puts ``pred`` back on the input's
            grid (``Invertd`` of the preprocessing); for kaggle_3m a callable on one patient's
            stacked binary masks (the 3D clean-up), or None.
        data_format: what the bundle reads and writes, one of
            :data:`tumorseg.inference.bundle.DATA_FORMATS`.
        checkpoint: network weights to load (a state dict, or a training checkpoint holding
            one under ``network``; ``weights_only=True``); None uses ``network`` as it is.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        tta: average the probabilities over the 8 mirrorings of a study (NIfTI), or over each
            slice and its left-right mirror image (kaggle_3m).
        amp: autocast to float16 in the network (NIfTI); default on for CUDA, off for CPU.
        image_key: the image key of the preprocessing.
        threshold: probability threshold of a region or mask.
        batch_size: slices per network call (kaggle_3m).
        network_settings: the network's settings, named when a checkpoint does not fit
            (``"filters=[...]"``).
        regions: the network's output channels (``@regions``: ``WT, TC, ET``, optionally
            ``RC``, which a label map gets only in a convention with a resection cavity; see
            :func:`tumorseg.transforms.regions_to_labels`).

    Raises:
        FileNotFoundError: no checkpoint at ``checkpoint``.
        ValueError: bad settings (the value is shown), or a checkpoint that does not fit the
            network (missing, unexpected and mis-shaped keys are listed).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Any,
        inferer: Callable[..., Any],
        *,
        postprocessing: Callable[..., Any] | None = None,
        data_format: str = "nifti",
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        tta: bool = False,
        amp: bool | None = None,
        image_key: str = "image",
        threshold: float = _THRESHOLD,
        batch_size: int = 16,
        network_settings: str = "",
        regions: Sequence[str] = REGIONS,
    ) -> None:
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
        self.data_format = data_format
        self.device = resolve_device(device)
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)
        self.tta = bool(tta)
        self.image_key = image_key
        self.threshold = float(threshold)
        self.regions = check_regions(regions)
        self.batch_size = check_sw_batch_size(batch_size, "batch_size")
        self.preprocessing = preprocessing
        self.inferer: Any = inferer  # a SlidingWindowInferer for NIfTI studies
        self.postprocessing = postprocessing
        if data_format == "nifti":
            self._load, self._preprocess = split_after_loading(preprocessing)
            if not isinstance(inferer, SlidingWindowInferer):
                raise ValueError(
                    f"the bundle's inferer is a {type(inferer).__name__}; inference of NIfTI "
                    "studies needs a SlidingWindowInferer"
                )
            if postprocessing is None:
                raise ValueError(
                    "the bundle declares no postprocessing; NIfTI inference needs one that "
                    "puts the prediction back on the input's grid (Invertd)"
                )
        self.checkpoint = Path(checkpoint) if checkpoint else None
        if self.checkpoint is not None:
            network = load_network_weights(
                network,
                self.checkpoint,
                packed_members=True,
                settings=network_settings,
                hint="pass the same ones (e.g. --override ID=VALUE, a network file such as "
                "networks/<name>.json) or the matching --checkpoint",
            )
        self.network = network.to(self.device).eval()
        #: Rules applied to every label map (:mod:`.postprocess`); default those beside the
        #: checkpoint; None applies none.
        self.postprocess_rules: PostprocessRules | None = rules_next_to(self.checkpoint)

    @classmethod
    def from_bundle(
        cls,
        bundle: str | os.PathLike[str] | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        config_files: Sequence[str | os.PathLike[str]] = (),
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        tta: bool | None = None,
        amp: bool | None = None,
        network: torch.nn.Module | None = None,
        precision: str | None = None,
        tiling: str | None = None,
    ) -> Predictor:
        """Load one bundle (:func:`~tumorseg.inference.bundle.load_bundle`) and build its predictor.

        Args:
            bundle: the bundle folder; None derives it from ``config_files``' paths.
            checkpoint: network weights; default the bundle's ``checkpoint``
                (``<ckpt_dir>/model.pt``). With ``network`` given, loaded only when passed.
            config_files: more config files merged after ``inference.json`` (paths, or
                names in the bundle's ``configs/``).
            overrides: config ids -> values (``{"filters": [8, 16, 32, 64, 128]}``); None
                values are ignored.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
            roi_size: sliding-window size; default the bundle's ``roi_size``.
            sw_batch_size: windows per network call; default the bundle's.
            overlap: window overlap in [0, 1); default the bundle's.
            tta: test-time mirroring; None keeps the bundle's ``tta``.
            amp: autocast; default on for CUDA, off for CPU.
            network: a ready network to use instead of the bundle's (tests, custom models).
            precision: the network's autocast, one of
                :data:`tumorseg.networks.INFERENCE_PRECISIONS`; default the bundle's.
            tiling: windows or the whole crop in one pass, one of
                :data:`tumorseg.inference.TILINGS`; default the bundle's.

        Raises:
            FileNotFoundError: no ``configs/train.json`` in ``bundle``, or no checkpoint.
            ValueError: bad settings (the value is shown), a network the configs cannot
                build, or a checkpoint that does not fit it.
        """
        config = load_bundle(bundle, config_files=config_files, overrides=overrides)
        return cls.from_config(
            config,
            checkpoint=checkpoint,
            device=device,
            roi_size=roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            tta=tta,
            amp=amp,
            network=network,
            precision=precision,
            tiling=tiling,
        )

    @classmethod
    def from_config(
        cls,
        config: ConfigParser,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        tta: bool | None = None,
        amp: bool | None = None,
        network: torch.nn.Module | None = None,
        precision: str | None = None,
        tiling: str | None = None,
    ) -> Predictor:
        """Build the ``evaluator`` of a loaded bundle config, with explicit settings applied.

        See :meth:`from_bundle` for the arguments; ``config`` comes from
        :func:`~tumorseg.inference.bundle.load_bundle`. A checkpoint that describes itself
        sets the network and preprocessing it was trained with
        (:func:`~tumorseg.inference.bundle.apply_checkpoint_meta`); a contradicting explicit
        setting is refused.
        """
        if "evaluator" not in config:
            raise ValueError(
                f"bundle {config.get('bundle_root')!r} declares no 'evaluator' in its "
                "inference.json; inference builds the Predictor from there"
            )
        explicit: dict[str, Any] = {}
        if roi_size is not None:
            bundle_roi = config.get_parsed_content("roi_size") if "roi_size" in config else ()
            explicit["roi_size"] = check_roi_size(roi_size, len(bundle_roi) or 3)
        if sw_batch_size is not None:
            explicit["sw_batch_size"] = check_sw_batch_size(sw_batch_size)
        if overlap is not None:
            explicit["overlap"] = check_overlap(overlap)
        explicit.update(check_tiled_settings(precision=precision, tiling=tiling))
        if network is None:
            # A self-describing checkpoint sets the network and preprocessing it needs.
            apply_checkpoint_meta(config, checkpoint, explicit=explicit)
        for key, value in explicit.items():
            config[key] = value
        config["device"] = resolve_device(device)
        if tta is not None:
            config["tta"] = bool(tta)
        if amp is not None:
            config["evaluator#amp"] = bool(amp)
        if network is not None:
            config["evaluator#network"] = network
            config["evaluator#checkpoint"] = str(checkpoint) if checkpoint else None
        elif checkpoint:
            config["checkpoint"] = str(checkpoint)
        try:
            predictor = config.get_parsed_content("evaluator")
        except RuntimeError as err:
            # MONAI says only "Failed to instantiate component"; the cause says what is wrong.
            cause = root_cause(err)
            if isinstance(cause, FileNotFoundError | ValueError):
                raise cause from None
            raise ValueError(
                f"cannot build the network of bundle {config.get('bundle_root')!r}"
                f"{f': {cause}' if cause is not None else ''}"
            ) from None
        if not isinstance(predictor, Predictor):
            raise ValueError(
                f"the bundle's evaluator is a {type(predictor).__name__}, not a Predictor"
            )
        if predictor.data_format == "nifti":
            check_inferer_settings(predictor.inferer, explicit)
        return predictor

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
        dicom_map: str | Mapping[str, str] | None = None,
    ) -> LoadedCase:
        """Check, load and preprocess one study (the part that runs ahead in a folder run).

        ``images`` may also be one folder holding the study's four DICOM series
        (:mod:`tumorseg.inference.dicom_input`; ``dicom_map`` names their series
        descriptions).

        Raises:
            CaseError: the study cannot be used (file and reason given).
        """
        paths = _as_paths(images)
        case_id = case_id or _default_case_id(paths)
        start = time.perf_counter()
        if len(paths) == 1 and paths[0].is_dir():  # a folder of four DICOM series
            study = find_dicom_study(case_id, paths[0], dicom_map)
            header = None
            data = {self.image_key: load_dicom_study(study), DICOM_STUDY_KEY: study}
        else:
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
            raise CaseError(
                case_id, paths[0], f"preprocessing failed ({describe_error(err)})"
            ) from err
        done = time.perf_counter()
        timings = {"load": loaded - start, "preprocess": done - loaded}
        return LoadedCase(case_id, paths, header, data, timings)

    def predict_loaded(
        self, loaded: LoadedCase, *, label_convention: str | LabelConvention = DEFAULT_CONVENTION
    ) -> PredictionResult:
        """Network and postprocessing for a study from :meth:`load_case`."""
        conv = get_convention(label_convention)
        image = loaded.data[self.image_key]
        start = time.perf_counter()
        probs = self._probabilities(image)
        network_done = time.perf_counter()

        pred = MetaTensor(probs, meta=dict(image.meta))
        assert self.postprocessing is not None  # checked in __init__ for NIfTI studies
        inverted = self.postprocessing({"pred": pred, self.image_key: image})["pred"]
        original_affine = np.asarray(image.meta.get("original_affine"), dtype=np.float64)
        affine = (
            np.asarray(loaded.header.get_best_affine(), dtype=np.float64)
            if loaded.header is not None
            else original_affine
        )
        probabilities = np.asarray(inverted.detach().cpu().numpy(), dtype=np.float32)
        self._check_geometry(loaded, probabilities.shape[1:], inverted, affine)
        label = label_map(
            probabilities, conv, self.threshold, self.postprocess_rules, affine, self.regions
        )
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
            regions=self.regions,
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
        """Sigmoid region probabilities ``(C, *spatial)`` of a preprocessed image, on the CPU."""
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
        if total.shape[1] != len(self.regions):
            raise ValueError(
                f"the network gives {total.shape[1]} output channels; expected "
                f"{len(self.regions)} region logits {self.regions}"
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
        output_formats: Sequence[str] = ("nifti",),
        dicom_map: str | Mapping[str, str] | None = None,
        algorithm: SegAlgorithm | None = None,
    ) -> FolderReport | LGGInferenceReport:
        """Segment every study of a folder into ``<output_dir>/<case_id>.nii.gz``.

        That is for a ``nifti`` bundle; a ``kaggle_3m`` bundle (``data_format`` of its
        config) segments every slice of a kaggle_3m folder into
        ``<output_dir>/<patient>/<patient>_<n>_mask.tif`` instead
        (:func:`tumorseg.inference.lgg.segment_kaggle_3m_folder`, which returns its own report),
        and takes only ``overwrite`` of the options below.

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
            output_formats: ``nifti`` and/or ``dicom-seg`` (``<case_id>.seg.dcm``, DICOM
                input only; :mod:`tumorseg.inference.dicom_seg`).
            dicom_map: series descriptions of the modalities of DICOM cases (a folder of
                case folders of four DICOM series is found without it).
            algorithm: the algorithm a DICOM-SEG names.

        Returns:
            What was written, skipped and failed; check ``report.ok`` or call
            ``report.raise_for_failures()``.

        Raises:
            tumorseg.data.DatasetError: the folder holds no recognisable study at all.
            ValueError: an unknown label convention or bad suffix mapping.
        """
        if self.data_format == "kaggle_3m":
            return self._predict_kaggle_3m_folder(
                input_dir,
                output_dir,
                overwrite=overwrite,
                refused={
                    "label_convention": label_convention,
                    "modality_suffixes": modality_suffixes,
                    "layout": layout,
                    "save_probabilities": save_probabilities or None,
                    "dicom_map": dicom_map,
                    "output_formats": None if list(output_formats) == ["nifti"] else output_formats,
                },
            )
        return segment_nifti_folder(
            input_dir,
            output_dir,
            load_case=self.load_case,
            predict_loaded=self.predict_loaded,
            label_convention=label_convention,
            modality_suffixes=modality_suffixes,
            layout=layout,
            overwrite=overwrite,
            save_probabilities=save_probabilities,
            progress=progress,
            output_formats=output_formats,
            dicom_map=dicom_map,
            algorithm=algorithm,
        )

    def _predict_kaggle_3m_folder(
        self,
        input_dir: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        *,
        overwrite: bool,
        refused: Mapping[str, Any],
    ) -> LGGInferenceReport:
        """Segment a kaggle_3m folder slice by slice into ``<patient>/<patient>_<n>_mask.tif``."""
        for name, value in refused.items():
            if value:
                raise ValueError(
                    f"{name} does not apply to a kaggle_3m bundle (TIF slices), got {value!r}"
                )
        if not str(input_dir):
            raise ValueError("no input folder given (tumorseg infer --input, --dataset_dir)")
        return segment_kaggle_3m_folder(
            input_dir,
            output_dir,
            network=self.network,
            preprocessing=self.preprocessing,
            inferer=self.inferer,
            postprocessing=self.postprocessing,
            device=self.device,
            threshold=self.threshold,
            flip_tta=self.tta,
            batch_size=self.batch_size,
            overwrite=overwrite,
        )
