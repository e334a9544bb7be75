"""The one loader of pretrained weights, for every network of the bundle.

:func:`load_pretrained` reads a local checkpoint (``torch.load(..., weights_only=True)``,
never code from the file), finds the network weights in it and loads every tensor that fits
into the network, adapting the first convolution to the network's input channels. It reports
what matched and refuses, before touching the network, when less than ``min_matched`` of the
encoder would be loaded: a checkpoint of another architecture must fail loudly, not leave a
randomly initialised encoder that trains as if nothing were wrong.

Sources it handles:

* this project's own checkpoints (``models/model.pt``, ``checkpoint_latest.pt`` whose
  ``network`` entry holds the weights): all matching keys load, decoder included;
* MedicalNet 3D ResNets (``{"state_dict": {"module.conv1.weight": ...}}``, 1 input channel)
  into :class:`~tumorseg.networks.ResEncUNet` (``encoder_prefix="encoder."``);
* self-supervised Swin encoders (``model_swinvit.pt`` of Tang et al. 2022:
  ``module.patch_embed.proj.weight``, ``module.layers1.0.blocks.0.mlp.fc1.weight``, 1 input
  channel) into MONAI ``SwinUNETR`` (``encoder_prefix="swinViT."``,
  ``name_map=NAME_MAPS["swinvit"]``).

How a checkpoint key finds its network key: wrappers are removed (a ``state_dict``,
``network``, ``model`` or ``state`` entry; ``module.`` of DataParallel/DDP and
``_orig_mod.`` of ``torch.compile`` on each key), ``name_map`` rewrites it, then it is used as
it is when the network has that key, else with ``encoder_prefix`` prepended.

First convolution (``first_conv_key``, default the encoder's first convolution weight):

* ``channel_order`` names the checkpoint's input modalities (``["t1ce", "t1", "t2",
  "flair"]`` for the MONAI model zoo's BraTS bundle; BraTS 2023 names ``t2f``/``t1n``/
  ``t1c``/``t2w`` are understood): its input-channel slices are permuted into tumorseg's
  :data:`~tumorseg.conventions.CHANNEL_ORDER` (FLAIR, T1, T1ce, T2). A modality the
  checkpoint lacks gets the mean of the checkpoint's slices.
* otherwise, when the checkpoint has ``C`` input channels and the network ``N`` (a MedicalNet
  or Swin checkpoint: ``C = 1``, ``N = 4``), ``in_channels_strategy`` decides:
  ``"repeat"`` (default) tiles the slices to ``N`` and multiplies by ``C / N``: with ``C = 1``
  each of the 4 channels gets the pretrained filter divided by 4, so an input whose 4
  channels are identical gives exactly the pretrained response, and the activation scale the
  rest of the encoder was trained on is kept; ``"mean"`` averages the ``C`` slices into one
  filter and then does the same; ``"copy"`` tiles without scaling (each channel alone gives
  the pretrained response, their sum 4 times it); ``"skip"`` keeps the network's own random
  first convolution (reported as shape-mismatched).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tumorseg.conventions import CHANNEL_ORDER

__all__ = [
    "NAME_MAPS",
    "LoadReport",
    "PretrainedMismatchError",
    "load_pretrained",
    "read_state_dict",
    "weights_of",
]

logger = logging.getLogger(__name__)

InChannelsStrategy = Literal["repeat", "mean", "copy", "skip"]
NameMap = Sequence[Sequence[str]] | Callable[[str], str | None] | str | None

#: Named key rewrites (regex, replacement), applied in order; pass the name as ``name_map``.
NAME_MAPS: dict[str, tuple[tuple[str, str], ...]] = {
    # model_swinvit.pt (research-contributions SwinUNETR/Pretrain) -> MONAI SwinUNETR.swinViT;
    # the same rewrite MONAI's SwinTransformerBlock.load_from hard-codes for the MLP.
    "swinvit": (
        (r"^swin_vit\.", ""),
        (r"\.mlp\.fc1\.", ".mlp.linear1."),
        (r"\.mlp\.fc2\.", ".mlp.linear2."),
    ),
    # MedicalNet names are already the encoder's names (ResEncUNet): nothing to rewrite.
    "medicalnet": (),
}

_WRAPPER_KEYS = ("state_dict", "network", "model", "state")
_KEY_PREFIXES = ("module.", "_orig_mod.")
_MODALITY_ALIASES = {
    "t2f": "flair",
    "t2flair": "flair",
    "t1n": "t1",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t1w": "t1",
    "t2w": "t2",
}
_STRATEGIES = ("repeat", "mean", "copy", "skip")


class PretrainedMismatchError(ValueError):
    """The checkpoint does not fit the network well enough; ``report`` says what matched."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadReport:
    """What :func:`load_pretrained` loaded.

    Attributes:
        path: the checkpoint.
        matched: network keys loaded from the checkpoint.
        missing: encoder keys of the network the checkpoint did not provide.
        unexpected: checkpoint keys (after unwrapping and renaming) with no network key.
        shape_mismatched: ``(network key, checkpoint shape, network shape)`` not loaded.
        adapted: network keys loaded after adaptation (first convolution), with how.
        encoder_share: share of the encoder's floating-point elements loaded (0-1).
        encoder_prefix: the prefixes that define the encoder ("" = the whole network).
    """

    path: Path
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    adapted: dict[str, str] = field(default_factory=dict)
    encoder_share: float = 0.0
    encoder_prefix: tuple[str, ...] = ("",)

    def summary(self, *, limit: int = 8) -> str:
        """Multi-line human summary: counts, then the first ``limit`` keys of each list."""
        prefixes = ", ".join(repr(p) for p in self.encoder_prefix)
        lines = [
            f"pretrained weights {self.path}: {len(self.matched)} tensors loaded, "
            f"{self.encoder_share:.1%} of the encoder ({prefixes}); "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatched)} shape-mismatched",
        ]
        if self.adapted:
            lines.append("  adapted: " + "; ".join(f"{k} ({v})" for k, v in self.adapted.items()))
        if self.missing:
            lines.append("  missing (encoder): " + _listing(self.missing, limit))
        if self.unexpected:
            lines.append("  unexpected (checkpoint): " + _listing(self.unexpected, limit))
        if self.shape_mismatched:
            shown = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.shape_mismatched]
            lines.append("  shape-mismatched (checkpoint vs network): " + _listing(shown, limit))
        return "\n".join(lines)


def _listing(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The network weights of a local checkpoint, wrappers removed.

    Loaded on the CPU with ``weights_only=True``. A ``state_dict`` / ``network`` / ``model`` /
    ``state`` entry holding tensors is taken as the weights (nested once more if needed);
    ``module.`` and ``_orig_mod.`` are stripped from every key; non-tensor entries dropped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable weights-only checkpoint, or no tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"cannot load pretrained checkpoint {path}: {type(err).__name__}: {first}"
        ) from None
    return weights_of(obj, source=f"pretrained checkpoint {path}")


def weights_of(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The network weights of a loaded checkpoint object, as :func:`read_state_dict` finds them.

    Raises:
        ValueError: no weights in it (``source`` named).
    """
    for _ in range(2):  # e.g. {"state_dict": {"model": {...}}}
        if not isinstance(obj, Mapping) or _has_tensors(obj):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not weights")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            continue
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _KEY_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        state[name] = value
    if not state:
        keys = list(obj)[:8]
        raise ValueError(f"{source} has no tensors (top-level keys {keys})")
    return state


def _has_tensors(obj: Mapping[Any, Any]) -> bool:
    values = list(obj.values())
    return bool(values) and sum(torch.is_tensor(v) for v in values) >= len(values) / 2


def _key_mapper(name_map: NameMap) -> Callable[[str], str | None]:
    if name_map is None:
        return lambda k: k
    if isinstance(name_map, str):
        if name_map not in NAME_MAPS:
            raise ValueError(f"name_map must be one of {sorted(NAME_MAPS)}, got {name_map!r}")
        name_map = NAME_MAPS[name_map]
    if callable(name_map):
        return name_map
    rules = []
    for rule in name_map:
        if len(rule) != 2:
            raise ValueError(f"name_map rules are (regex, replacement) pairs, got {rule!r}")
        rules.append((re.compile(rule[0]), rule[1]))

    def apply(key: str) -> str:
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        return key

    return apply


def _modality(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = _MODALITY_ALIASES.get(key, key)
    if key not in CHANNEL_ORDER:
        raise ValueError(
            f"unknown modality {name!r} in channel_order; known: {list(CHANNEL_ORDER)} "
            f"and aliases {sorted(_MODALITY_ALIASES)}"
        )
    return key


def _adapt_first_conv(
    weight: torch.Tensor,
    target: tuple[int, ...],
    *,
    channel_order: Sequence[str] | None,
    strategy: str,
) -> tuple[torch.Tensor | None, str]:
    """The checkpoint's first-conv weight fitted to ``target`` shape, and how; None = not."""
    src_c, dst_c = weight.shape[1], target[1]
    if weight.shape[0] != target[0] or weight.shape[2:] != target[2:]:
        return None, ""
    if channel_order is not None:
        order = [_modality(m) for m in channel_order]
        if len(order) != src_c:
            raise ValueError(
                f"channel_order names {len(order)} modalities ({list(channel_order)}) but the "
                f"checkpoint's first convolution has {src_c} input channels"
            )
        if dst_c != len(CHANNEL_ORDER):
            raise ValueError(
                f"channel_order needs a network with {len(CHANNEL_ORDER)} input channels "
                f"({list(CHANNEL_ORDER)}), got {dst_c}"
            )
        mean = weight.mean(dim=1)
        slices = [weight[:, order.index(m)] if m in order else mean for m in CHANNEL_ORDER]
        absent = [m for m in CHANNEL_ORDER if m not in order]
        how = f"input channels reordered from {order} to {list(CHANNEL_ORDER)}"
        if absent:
            how += f", {absent} set to the mean of the checkpoint's channels"
        return torch.stack(slices, dim=1), how
    if src_c == dst_c:
        return weight, ""
    if strategy == "skip":
        return None, ""
    if strategy == "mean":
        # Scaled by the checkpoint's own channel count: N identical inputs then give the
        # response of C identical inputs, the scale the rest of the encoder was trained on.
        mean = weight.mean(dim=1, keepdim=True).repeat(1, dst_c, *([1] * (weight.ndim - 2)))
        return mean * (src_c / dst_c), (
            f"{src_c} -> {dst_c} input channels, mean filter x {src_c}/{dst_c}"
        )
    reps = -(-dst_c // src_c)  # ceil
    tiled = weight.repeat(1, reps, *([1] * (weight.ndim - 2)))[:, :dst_c]
    if strategy == "copy":
        return tiled, f"{src_c} -> {dst_c} input channels, tiled unscaled"
    return tiled * (src_c / dst_c), f"{src_c} -> {dst_c} input channels, tiled x {src_c}/{dst_c}"


def load_pretrained(
    network: nn.Module,
    path: str | os.PathLike[str],
    *,
    encoder_prefix: str | Sequence[str] = "",
    min_matched: float = 0.5,
    channel_order: Sequence[str] | None = None,
    first_conv_key: str | None = None,
    in_channels_strategy: InChannelsStrategy = "repeat",
    name_map: NameMap = None,
) -> LoadReport:
    """Load pretrained weights from a local checkpoint into ``network`` (in place).

    See the module docstring for the sources handled and the first-convolution rules.

    Args:
        network: the built network.
        path: the checkpoint (local file; read with ``weights_only=True``).
        encoder_prefix: network key prefix(es) of the encoder, e.g. ``"encoder."``,
            ``"swinViT."`` or ``["input_block.", "downsamples.", "bottleneck."]``; ``""``
            makes the whole network the encoder. Checkpoint keys that are not network keys
            are tried with the first prefix prepended (encoder-only checkpoints).
        min_matched: refuse when less than this share (0-1) of the encoder's floating-point
            elements would be loaded.
        channel_order: the checkpoint's input modalities, in its channel order; its first
            convolution is reordered to :data:`~tumorseg.conventions.CHANNEL_ORDER`.
        first_conv_key: network key of the first convolution's weight; default the first
            convolution weight of the encoder.
        in_channels_strategy: how a first convolution with another number of input channels
            is adapted: ``"repeat"``, ``"mean"``, ``"copy"`` or ``"skip"``.
        name_map: key rewrites applied after unwrapping: ``(regex, replacement)`` pairs, a
            name from :data:`NAME_MAPS` (``"swinvit"``), or a callable (None drops the key).

    Returns:
        The :class:`LoadReport`; its summary is also logged.

    Raises:
        FileNotFoundError: no such checkpoint.
        PretrainedMismatchError: less than ``min_matched`` of the encoder matched; the message
            lists the missing, unexpected and shape-mismatched keys. The network is unchanged.
        ValueError: bad arguments (the value received is shown) or an unreadable file.
    """
    if not 0.0 <= min_matched <= 1.0:
        raise ValueError(f"min_matched must be within [0, 1], got {min_matched}")
    if in_channels_strategy not in _STRATEGIES:
        raise ValueError(
            f"in_channels_strategy must be one of {_STRATEGIES}, got {in_channels_strategy!r}"
        )
    prefixes = (encoder_prefix,) if isinstance(encoder_prefix, str) else tuple(encoder_prefix)
    if not prefixes:
        raise ValueError("encoder_prefix must name at least one prefix, got an empty list")
    mapper = _key_mapper(name_map)
    source = read_state_dict(path)
    target = network.state_dict()
    encoder = [k for k in target if k.startswith(prefixes)]
    if not encoder:
        raise ValueError(
            f"no network key starts with encoder_prefix {list(prefixes)}; network keys begin "
            f"{_listing(list(target), 5)}"
        )
    if first_conv_key is None:
        first_conv_key = next(
            (k for k in encoder if k.endswith("weight") and target[k].ndim >= 3), None
        )
    elif first_conv_key not in target:
        raise ValueError(f"first_conv_key {first_conv_key!r} is not a key of the network")

    report = LoadReport(path=Path(path), encoder_prefix=prefixes)
    loaded: dict[str, torch.Tensor] = {}
    for ckpt_key, value in source.items():
        mapped = mapper(ckpt_key)
        if mapped is None:
            continue
        key = mapped if mapped in target else prefixes[0] + mapped
        if key not in target:
            report.unexpected.append(mapped)
            continue
        if key in loaded:  # two checkpoint keys mapped onto one network key
            raise ValueError(f"checkpoint keys map twice onto network key {key!r}; fix name_map")
        want = tuple(target[key].shape)
        if key == first_conv_key and (channel_order is not None or tuple(value.shape) != want):
            fitted, how = _adapt_first_conv(
                value, want, channel_order=channel_order, strategy=in_channels_strategy
            )
            if fitted is not None:
                loaded[key] = fitted
                if how:
                    report.adapted[key] = how
                continue
        if tuple(value.shape) != want:
            report.shape_mismatched.append((key, tuple(value.shape), want))
            continue
        loaded[key] = value
    report.matched = list(loaded)
    report.missing = [k for k in encoder if k not in loaded]
    total = sum(target[k].numel() for k in encoder if target[k].is_floating_point())
    got = sum(target[k].numel() for k in encoder if k in loaded and target[k].is_floating_point())
    report.encoder_share = got / total if total else 0.0
    if report.encoder_share < min_matched:
        raise PretrainedMismatchError(
            f"refusing pretrained weights {path}: {report.encoder_share:.1%} of the encoder "
            "matched, "
            f"less than min_matched={min_matched:.0%} (wrong architecture, depth or prefix?)\n"
            + report.summary(),
            report,
        )
    # load_state_dict copies in place, casting dtype and keeping the parameters' device.
    network.load_state_dict(loaded, strict=False)
    logger.info("%s", report.summary())
    return report
