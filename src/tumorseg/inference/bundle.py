"""Load a bundle's inference configuration the model-zoo way, and the folder it segments.

Every bundle's ``configs/inference.json`` is merged after its ``configs/train.json`` and
declares the inference pipeline by MONAI's ids (:data:`monai.bundle.properties.InferProperties`):

* ``network_def`` (from ``train.json``) and ``network``;
* ``preprocessing``: the validation preprocessing of ``train.json``, referenced
  (``@validate#preprocessing``); its label transforms find no label and do nothing;
* ``inferer``: the validation inferer (sliding window, slice-wise) or the direct call;
* ``postprocessing``: what undoes the preprocessing's geometry (3D) or cleans a patient's
  stacked slices (LGG);
* ``data`` / ``dataset``: the folder to segment (:class:`InferenceData`, read as
  ``data_format`` says) as a MONAI ``Dataset`` with ``preprocessing``;
* ``evaluator``: the :class:`tumorseg.inference.Predictor` built from the ids above;
* ``initialize``, ``run`` (``inferring`` is an alias).

:func:`load_bundle` reads those files for :meth:`Predictor.from_bundle` and ``tumorseg infer``;
``python -m monai.bundle run --config_file "['<b>/configs/train.json','<b>/configs/inference.json']"
--bundle_root <b>`` reads the same ones, so both build the same predictor.

:func:`apply_checkpoint_meta` then takes what a self-describing checkpoint
(:mod:`tumorseg.checkpoint_meta`) says it was trained with: its network (settings such as
``filters``, and the bundle's ``configs/networks/`` file of its ``network_name``), ``pixdim``,
``roi_size`` and its output ``regions`` (a checkpoint trained with a resection-cavity channel
then writes RC without further options), unless the caller set them explicitly; an explicit
value that contradicts the checkpoint is refused with both values named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from tumorseg.checkpoint_meta import (
    CheckpointMeta,
    network_config_file,
    read_meta,
    resolve_settings,
)
from tumorseg.data.discovery import discover_cases, parse_modality_suffixes
from tumorseg.data.lgg import discover_kaggle_3m

__all__ = [
    "BundleConfig",
    "DATA_FORMATS",
    "DEFAULT_CONVENTION",
    "InferenceData",
    "apply_checkpoint_meta",
    "bundle_root_of",
    "load_bundle",
]

#: What a bundle reads and writes, its ``data_format`` id: NIfTI studies (BraTS 2020/2021,
#: 2023, MSD, custom naming) to NIfTI label maps, or kaggle_3m TIF slices to mask TIFs.
DATA_FORMATS = ("nifti", "kaggle_3m")
#: Default output label convention where the input's layout does not name one.
DEFAULT_CONVENTION = "brats2021"
_DEFAULT_FILES = ("train.json", "inference.json")


def bundle_root_of(config_files: Sequence[str | os.PathLike[str]]) -> Path:
    """The bundle folder of config files given by path: ``<bundle>/configs/<name>.json``.

    Args:
        config_files: the config files, first one decisive (a bundle's own files sit in its
            ``configs/`` folder; a network file in ``configs/networks/`` counts too).

    Raises:
        ValueError: no file given, or the first one is not in a bundle's ``configs/``.
    """
    if not config_files:
        raise ValueError("no config file given: cannot tell which bundle to load")
    folder = Path(config_files[0]).expanduser().resolve().parent
    for candidate in (folder, *folder.parents):
        if candidate.name == "configs" and (candidate / "train.json").is_file():
            return candidate.parent
    raise ValueError(
        f"config file {str(config_files[0])!r} is not in a bundle's configs/ folder (one that "
        "holds train.json); pass the bundle folder"
    )


def _config_path(root: Path, name: str | os.PathLike[str]) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    in_bundle = root / "configs" / path
    if in_bundle.is_file():
        return in_bundle
    raise FileNotFoundError(
        f"config file {str(name)!r} not found (also looked in {root / 'configs'})"
    )


class BundleConfig(ConfigParser):
    """A bundle's config that remembers what its caller chose explicitly.

    Attributes:
        explicit: config ids the caller overrode (``load_bundle(overrides=...)``) -> values.
        extra_files: config files merged after the bundle's own (network files ...).
    """

    def __init__(self) -> None:
        super().__init__()
        self.explicit: dict[str, Any] = {}
        self.extra_files: list[Path] = []


def load_bundle(
    bundle_root: str | os.PathLike[str] | None = None,
    *,
    config_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ConfigParser:
    """Read a bundle's inference configuration: ``train.json``, ``inference.json``, extras.

    The one place that turns a bundle folder into a config (:meth:`Predictor.from_bundle`,
    ``tumorseg infer``). ``bundle_root`` is set to the bundle folder, so relative ids
    (``ckpt_dir`` ...) resolve there whatever the current folder.

    Args:
        bundle_root: the bundle folder (holding ``configs/train.json``); None derives it from
            the first of ``config_files`` (:func:`bundle_root_of`).
        config_files: more configs merged after ``train.json`` and ``inference.json`` (paths,
            or names in the bundle's ``configs/`` such as ``networks/transunet.json``). With
            ``bundle_root`` None they are the full list, read in order.
        overrides: config ids -> values set after reading (``{"filters": [...]}``,
            ``{"network_def#res_block": False}``); None values are skipped, so a caller can
            forward optional settings.

    Returns:
        The parser (a :class:`BundleConfig`), not yet instantiated.

    Raises:
        FileNotFoundError: no ``configs/train.json`` in the bundle, or a config not found.
        ValueError: no bundle folder given and none derivable from ``config_files``.
    """
    if bundle_root is None:
        root = bundle_root_of(config_files)
        files = [_config_path(root, f) for f in config_files]
    else:
        root = Path(bundle_root).expanduser()
        if not (root / "configs" / "train.json").is_file():
            raise FileNotFoundError(
                f"bundle folder {str(root)!r} has no configs/train.json; pass the bundle "
                "folder (tumorseg infer --bundle, monai.bundle --bundle_root)"
            )
        files = [root / "configs" / name for name in _DEFAULT_FILES]
        files += [_config_path(root, f) for f in config_files]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path} (bundle {str(root)!r})")
    parser = BundleConfig()
    parser.extra_files = list(files)
    parser.read_config([str(f) for f in files])
    meta = root / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        if value is not None:
            parser[key] = value
            parser.explicit[key] = value
    return parser


def apply_checkpoint_meta(
    config: ConfigParser,
    checkpoint: str | os.PathLike[str] | None,
    *,
    explicit: Mapping[str, Any] | None = None,
) -> CheckpointMeta | None:
    """Set a config's network and preprocessing from a self-describing checkpoint.

    Values the checkpoint records (:meth:`CheckpointMeta.config_values`) replace the bundle's
    defaults; values the caller chose explicitly (``explicit``, plus the overrides recorded by
    :func:`load_bundle`) are kept when they agree and refused when they do not, except the
    sliding-window ``roi_size`` (an inference choice). A checkpoint of another network than
    the config's is matched to the bundle's ``configs/networks/`` file of that
    ``network_name`` when the caller gave no network file.

    Args:
        config: a config from :func:`load_bundle`, not yet instantiated.
        checkpoint: the weights; None uses the config's ``checkpoint`` id when it has one.
        explicit: more ids -> values the caller set (command-line options).

    Returns:
        The checkpoint's description, or None for plain weights, a missing file (the loader
        reports it later) or a config without a checkpoint.

    Raises:
        ValueError: an explicit value or network file that contradicts the checkpoint (both
            named), or a checkpoint of a network this bundle has no file for.
    """
    if checkpoint is None:
        if "checkpoint" not in config:
            return None
        checkpoint = config.get_parsed_content("checkpoint")
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        return None
    meta = read_meta(path)
    if meta is None:
        return None
    chosen = dict(getattr(config, "explicit", {}))
    chosen.update(explicit or {})
    for key, value in resolve_settings(meta, chosen, checkpoint=path, outputs=True).items():
        if key in config:
            config[key] = value
    _match_network(config, meta, path)
    return meta


def _match_network(config: ConfigParser, meta: CheckpointMeta, path: Path) -> None:
    """Make the config build the checkpoint's network (its ``network_name``)."""
    current = config.get_parsed_content("network_name") if "network_name" in config else None
    if current is None or current == meta.network_name:
        return
    files = [Path(f) for f in getattr(config, "extra_files", [])]
    root = Path(str(config.get("bundle_root", ".")))
    given_network = any(f.parent.name == "networks" for f in files)
    net_file = None if given_network else network_config_file(root, meta.network_name)
    if net_file is None:
        given = ", ".join(str(f) for f in files if f.parent.name == "networks")
        given = given or "the bundle's default network"
        raise ValueError(
            f"checkpoint {path} holds a {meta.network_name} network but the config builds "
            f"{current} ({given}); pass the network file of {meta.network_name} "
            "(--config-file networks/<name>.json) or a checkpoint of that network"
        )
    extra = ConfigParser()
    extra.read_config(str(net_file))
    raw = extra.get()
    for key, value in (raw if isinstance(raw, dict) else {}).items():
        config[key] = value
    for key, value in meta.network_settings.items():
        config[key] = value


class InferenceData:
    """The folder an inference run segments: ``data`` of a bundle's ``inference.json``.

    Plays the part ``train.json``'s training data (``tumorseg.training.BundleData``,
    ``LGGData``) plays there, so the shared preprocessing finds its settings: its label
    transforms take ``@data.label_convention``, which here is the output convention (there
    is no label to convert). Nothing is read until :meth:`files` is called.

    Args:
        dataset_dir: the folder; empty for none yet (a predictor built before any folder).
        data_format: one of :data:`DATA_FORMATS`.
        label_convention: output label numbers; empty means each input layout's own.
        modality_suffixes: custom file naming for NIfTI studies (see
            :func:`tumorseg.data.parse_modality_suffixes`).
        layout: force a NIfTI layout instead of detecting it.

    Raises:
        ValueError: an unknown ``data_format`` (the value is named).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str] = "",
        *,
        data_format: str = "nifti",
        label_convention: str | None = "",
        modality_suffixes: str | Mapping[str, str] | None = None,
        layout: str | None = None,
    ) -> None:
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
        self.dataset_dir = str(dataset_dir or "")
        self.data_format = data_format
        self._label_convention = label_convention or ""
        self.modality_suffixes = modality_suffixes
        self.layout = layout

    @property
    def label_convention(self) -> str:
        """The output label convention (the default where none was asked for)."""
        return self._label_convention or DEFAULT_CONVENTION

    def files(self) -> list[dict[str, Any]]:
        """One item per usable study (NIfTI) or slice (kaggle_3m): ``{"image", "case_id"}``.

        Studies with problems are left out here; :meth:`Predictor.predict_folder` reports
        them. An empty ``dataset_dir`` gives no items.
        """
        if not self.dataset_dir:
            return []
        if self.data_format == "kaggle_3m":
            found = discover_kaggle_3m(self.dataset_dir)
            return [
                {"image": str(s.image), "case_id": s.case_id}
                for patient in found.patients
                for s in patient.slices
            ]
        cases = discover_cases(
            Path(self.dataset_dir),
            layout=self.layout,
            modality_suffixes=parse_modality_suffixes(self.modality_suffixes),
        )
        return [
            {
                "image": [str(p) for p in c.images] if len(c.images) > 1 else str(c.images[0]),
                "case_id": c.case_id,
            }
            for c in cases
            if not c.issues
        ]
