"""What a checkpoint was trained with, stored inside the checkpoint file itself.

Every ``model.pt`` and ``checkpoint_latest.pt`` tumorseg writes is a dict with the network
weights under ``network`` and a :class:`CheckpointMeta` (plain JSON types) under
:data:`META_KEY`: the network (its bundle name, class and the config ids that define it, e.g.
``filters``), the preprocessing that matters at inference (``pixdim``, ``roi_size``, the
channel order, the data format), the label convention of the training data and the output
regions, the bundle's name and version and the MLflow run id.

Why inside the file and not a JSON beside it:

* one atomic write (:func:`tumorseg.io.atomic_path`) covers weights and description, so a
  kill can never leave new weights beside an old description (two files cannot be replaced
  together);
* the description travels with the weights when a user copies, renames or uploads the one
  file (``--checkpoint ~/models/best.pt``, the viewer's checkpoint list);
* the file stays loadable by everything that reads this project's checkpoints: ``torch.load``
  with ``weights_only=True`` (only str/int/float/list/dict are added), MONAI's
  ``CheckpointLoader`` with ``load_dict={"network": net}``, MONAI's
  ``python -m monai.bundle ckpt_export network_def ... --key_in_ckpt network``, and
  :func:`tumorseg.networks.read_state_dict`.

Files without the entry (older ``model.pt`` files, weights from elsewhere) still load as plain
weights: :func:`read_meta` returns None and the bundle's own settings apply, as before.

This module is the lowest layer of the package (torch only) so that training writes, and
networks, inference and the viewer read, one definition.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "META_KEY",
    "META_VERSION",
    "WINDOW_IDS",
    "CheckpointMeta",
    "checkpoint_with_meta",
    "describe_network",
    "load_checkpoint",
    "meta_of",
    "network_config_file",
    "read_meta",
    "resolve_settings",
]

#: The entry of a checkpoint dict that holds its :class:`CheckpointMeta`.
META_KEY = "tumorseg_meta"
#: Version of the stored description; a newer file is read, unknown keys ignored.
META_VERSION = 1
#: Config ids an inference may set differently from training without being refused: the
#: sliding-window size is a speed/memory choice of the inference, not a property of the weights.
WINDOW_IDS: frozenset[str] = frozenset({"roi_size"})


def load_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a clear error names a bad file.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a readable checkpoint (truncated, not torch, pickled code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(
            f"checkpoint {path} is empty (0 bytes): a copy or save that never finished (full "
            "disk?); delete it (a training then starts over, or resumes from another copy) "
            "or pass another checkpoint"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        first = (str(err).strip().splitlines() or ["no message"])[0]
        raise ValueError(
            f"cannot load checkpoint {path}: {type(err).__name__}: {first}; the file is "
            "truncated, corrupt or not a weights-only torch checkpoint"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def describe_network(network: Any) -> str:
    """The importable class name of a network (DDP/compile wrappers removed)."""
    inner = getattr(network, "module", network)
    inner = getattr(inner, "_orig_mod", inner)
    cls = type(inner)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class CheckpointMeta:
    """The settings a checkpoint was trained with (see the module docstring).

    Args:
        network_name: the bundle's ``network_name`` (``dynunet``, ``segresnet``, ...).
        network_class: the network's class, e.g. ``monai.networks.nets.dynunet.DynUNet``.
        network_settings: the config ids that define the network, with their values
            (``{"filters": [8, 16, 32, 64, 128]}``); an inference sets them.
        preprocessing_settings: config ids of the input preprocessing the weights were trained
            with, beyond ``pixdim`` (``{"intensity_mode": "uint8"}``); an inference sets them.
        pixdim: voxel spacing of the preprocessing (mm), or None where the bundle resamples
            nothing (kaggle_3m slices).
        roi_size: the training patch, the default sliding window of an inference.
        channel_order: the input channels, in order.
        data_format: what the bundle reads (``nifti``, ``kaggle_3m``).
        label_convention: label numbers of the training data (``brats2021`` ...).
        regions: the network's output channels (``["WT", "TC", "ET"]``).
        bundle_name: the bundle that trained it.
        bundle_version: that bundle's ``metadata.json`` version.
        run_id: the MLflow run of the training; empty when not tracked.
        version: :data:`META_VERSION` of the writer.
    """

    network_name: str
    network_class: str = ""
    network_settings: dict[str, Any] = field(default_factory=dict)
    preprocessing_settings: dict[str, Any] = field(default_factory=dict)
    pixdim: list[float] | None = None
    roi_size: list[int] | None = None
    channel_order: list[str] = field(default_factory=list)
    data_format: str = "nifti"
    label_convention: str = ""
    regions: list[str] = field(default_factory=list)
    bundle_name: str = ""
    bundle_version: str = ""
    run_id: str = ""
    version: int = META_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only, so the file loads with ``weights_only=True``."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "checkpoint") -> CheckpointMeta:
        """Read a stored description; unknown keys (a newer writer) are ignored.

        Raises:
            ValueError: not a mapping, or without ``network_name`` (the source is named).
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("network_name"), str):
            raise ValueError(
                f"{source}: its {META_KEY!r} entry is not a tumorseg checkpoint description "
                f"(got {str(data)[:120]}); re-save the weights alone or retrain"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def config_values(self, *, outputs: bool = False) -> dict[str, Any]:
        """Bundle config ids -> values an inference or fine-tuning takes from this file.

        The network itself (``network_name``) is chosen by a network config file, not a
        value: see :func:`network_config_file`.

        Args:
            outputs: also the output channels (``regions``): an inference must read the
                weights' channels as they were trained (a fourth one is the resection cavity);
                a fine-tuning may train other channels on its own labels.
        """
        values: dict[str, Any] = {**self.network_settings, **self.preprocessing_settings}
        if self.pixdim is not None:
            values["pixdim"] = list(self.pixdim)
        if self.roi_size is not None:
            values["roi_size"] = list(self.roi_size)
        if outputs and self.regions:
            values["regions"] = list(self.regions)
        return values

    def summary(self) -> str:
        """One line for logs: network, settings and the bundle."""
        settings = ", ".join(f"{k}={_text(v)}" for k, v in self.network_settings.items())
        bundle = f"{self.bundle_name} {self.bundle_version}".strip()
        return (
            f"{self.network_name}({settings}) roi_size={_text(self.roi_size)} "
            f"pixdim={_text(self.pixdim)}" + (f", bundle {bundle}" if bundle else "")
        )


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and tensors/numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return _plain(value.tolist())
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _text(value: Any) -> str:
    return str(_plain(value)).replace(" ", "")


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: ``[1, 1, 1] == (1.0, 1.0, 1.0)``."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def checkpoint_with_meta(
    state: Mapping[str, Any], meta: CheckpointMeta | Mapping[str, Any] | None
) -> dict[str, Any]:
    """A checkpoint dict with ``meta`` added under :data:`META_KEY` (as given when None)."""
    out = dict(state)
    if meta is not None:
        out[META_KEY] = meta.to_dict() if isinstance(meta, CheckpointMeta) else _plain(meta)
    return out


def meta_of(obj: Mapping[str, Any], *, source: str = "checkpoint") -> CheckpointMeta | None:
    """The description of a loaded checkpoint dict, or None for plain weights."""
    data = obj.get(META_KEY)
    return None if data is None else CheckpointMeta.from_dict(data, source=source)


def read_meta(path: str | os.PathLike[str]) -> CheckpointMeta | None:
    """The description stored in a checkpoint file; None for plain weights.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable checkpoint, or a malformed description.
    """
    return meta_of(load_checkpoint(path), source=f"checkpoint {path}")


def resolve_settings(
    meta: CheckpointMeta,
    requested: Mapping[str, Any],
    *,
    checkpoint: str | os.PathLike[str] = "checkpoint",
    allowed: frozenset[str] = WINDOW_IDS,
    outputs: bool = False,
) -> dict[str, Any]:
    """The config values to take from ``meta``, given what the user asked for explicitly.

    Args:
        meta: the checkpoint's description.
        requested: config ids the user set explicitly (overrides, options) -> their values.
        checkpoint: the file, named in an error.
        allowed: ids a user may set differently (:data:`WINDOW_IDS`): the user's value wins.
        outputs: include the output channels (see :meth:`CheckpointMeta.config_values`).

    Returns:
        The ids of :meth:`CheckpointMeta.config_values` the user did not set.

    Raises:
        ValueError: a requested value that contradicts the checkpoint, naming both values
            (the weights would not fit, or would see other inputs than they were trained on).
    """
    values = meta.config_values(outputs=outputs)
    conflicts = [
        f"{key}={_text(requested[key])} (the checkpoint has {key}={_text(value)})"
        for key, value in values.items()
        if key in requested and key not in allowed and not _same(requested[key], value)
    ]
    if conflicts:
        raise ValueError(
            f"checkpoint {checkpoint} was trained with other settings than asked for: "
            + "; ".join(conflicts)
            + ". Drop the override (the checkpoint's values are used by default) or pass a "
            "checkpoint trained with those settings"
        )
    return {k: v for k, v in values.items() if k not in requested}


def network_config_file(bundle_root: str | os.PathLike[str], network_name: str) -> Path | None:
    """The bundle's ``configs/networks/*.json`` whose ``network_name`` is ``network_name``.

    Only a literal ``network_name`` counts (a file that derives it with an expression names
    no network of its own). None when no file declares it.
    """
    for path in sorted((Path(bundle_root) / "configs" / "networks").glob("*.json")):
        try:
            declared = json.loads(path.read_text()).get("network_name")
        except (OSError, ValueError, AttributeError):
            continue
        if declared == network_name:
            return path
    return None
