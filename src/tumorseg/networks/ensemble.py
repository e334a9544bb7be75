"""Several trained copies of one network as one network, and as one checkpoint file.

* :class:`ProbabilityMeanEnsemble`: members averaged in probability space (the mean of their
  sigmoids, the rule of :class:`tumorseg.inference.EnsemblePredictor`), returned as the logit
  of that mean so that everything downstream of a network (threshold, mirroring, metrics)
  works on it unchanged.
* :func:`pack_members`: member checkpoints written as one self-describing ``model.pt`` of that
  ensemble, weights in float16 by default so that two members of the LGG bundle's U-Net fit
  the 25 MB a bundle may commit. The file's description names ``<member network>_ensemble``,
  the bundle's ``configs/networks/`` file that builds it, so ``tumorseg infer`` picks it with
  no option.
* :func:`ensemble_of_checkpoint`: a config's one-member network made the ensemble a packed
  file holds, so a predictor built from the bundle's own network loads it too.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tumorseg.checkpoint_meta import (
    CheckpointMeta,
    checkpoint_with_meta,
    load_checkpoint,
    meta_of,
)
from tumorseg.io import atomic_path
from tumorseg.networks.pretrained import weights_of

__all__ = [
    "ENSEMBLE_SETTING",
    "ProbabilityMeanEnsemble",
    "ensemble_of_checkpoint",
    "pack_members",
]

logger = logging.getLogger(__name__)

#: The config id (and network setting) holding the number of members.
ENSEMBLE_SETTING = "ensemble_members"

#: Description fields every member must share; ``run_id`` and the bundle version may differ.
_SHARED_FIELDS = (
    "network_name",
    "network_settings",
    "preprocessing_settings",
    "pixdim",
    "roi_size",
    "channel_order",
    "data_format",
    "regions",
)


class ProbabilityMeanEnsemble(nn.Module):
    """The mean of the members' sigmoid probabilities, returned as its logit.

    Args:
        member: the network of one member; copied ``num_members`` times (the copies' weights
            are then loaded from a packed checkpoint).
        num_members: how many members, at least 1.
        eps: probabilities are clamped to ``[eps, 1 - eps]`` before the logit, so a member
            certain of a pixel gives a finite logit.

    Raises:
        ValueError: ``num_members`` below 1 (the value is shown).
    """

    def __init__(self, member: nn.Module, num_members: int, eps: float = 1e-6) -> None:
        super().__init__()
        if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
            raise ValueError(f"num_members must be an integer >= 1, got {num_members!r}")
        self.members = nn.ModuleList(copy.deepcopy(member) for _ in range(num_members))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member in self.members:
            # float32 before the sigmoid: under bfloat16 autocast the members' logits are bf16.
            probs = torch.sigmoid(member(x).float())
            total = probs if total is None else total + probs
        assert total is not None
        return torch.logit(total / len(self.members), eps=self.eps)


def pack_members(
    checkpoints: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float16,
) -> CheckpointMeta:
    """Write member checkpoints as one checkpoint of a :class:`ProbabilityMeanEnsemble`.

    The weights of member ``i`` are stored under ``members.<i>.``, floating-point tensors cast
    to ``dtype`` (loading casts them back to the network's float32), except a tensor with a
    value ``dtype`` cannot hold, which stays float32. The description is the
    members' (those that carry one must agree) with ``network_name`` ``<name>_ensemble`` and
    the member count in ``network_settings`` as :data:`ENSEMBLE_SETTING`. Members without a
    description (plain weights) must fit the same network; their preprocessing cannot be
    checked and is taken to be the described members'. The file is replaced atomically.

    Args:
        checkpoints: two or more member checkpoints of the same network.
        output: the file to write (e.g. a bundle's ``models/model.pt``).
        dtype: storage type of floating-point weights (``torch.float16`` or
            ``torch.float32``).

    Returns:
        The description written.

    Raises:
        FileNotFoundError: a member that does not exist.
        ValueError: fewer than two members, no member with a description, members of other
            networks, keys or shapes, or with other settings (the files and values named), or
            an unsupported ``dtype``.
    """
    paths = [Path(c).expanduser() for c in checkpoints]
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs two or more member checkpoints, got {len(paths)}")
    if dtype not in (torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
    loaded = [load_checkpoint(p) for p in paths]  # each file read once: weights and description
    states = [
        weights_of(obj, source=f"checkpoint {p}") for p, obj in zip(paths, loaded, strict=True)
    ]
    metas = [meta_of(obj, source=f"checkpoint {p}") for p, obj in zip(paths, loaded, strict=True)]
    shapes = {k: tuple(v.shape) for k, v in states[0].items()}
    for path, state in zip(paths[1:], states[1:], strict=True):
        other = {k: tuple(v.shape) for k, v in state.items()}
        if other != shapes:
            differ = sorted(set(shapes) ^ set(other)) or sorted(
                k for k in shapes if shapes[k] != other[k]
            )
            raise ValueError(
                f"{path} is not the same network as {paths[0]} (e.g. {', '.join(differ[:3])}); "
                "an ensemble's members must share the network and its settings"
            )
    meta = _shared_meta(paths, metas)
    packed: dict[str, torch.Tensor] = {}
    for i, state in enumerate(states):
        for key, value in state.items():
            if value.is_floating_point():
                cast = value.to(dtype)
                # A tensor float16 cannot hold (BatchNorm running variances reach 1e5) stays
                # float32; it is small.
                value = cast if torch.isfinite(cast).all() else value.float()
            packed[f"members.{i}.{key}"] = value.contiguous()
    settings = {**meta.network_settings, ENSEMBLE_SETTING: len(paths)}
    packed_meta = replace(
        meta, network_name=f"{meta.network_name}_ensemble", network_settings=settings, run_id=""
    )
    with atomic_path(output) as tmp:
        torch.save(checkpoint_with_meta({"network": packed}, packed_meta), tmp)
    return packed_meta


def ensemble_of_checkpoint(network: nn.Module, meta: CheckpointMeta | None) -> nn.Module:
    """``network`` as the member of the ensemble a packed checkpoint holds, else unchanged.

    Lets a config that builds one member (``python -m monai.bundle run inferring`` with the
    bundle's own network) load a :func:`pack_members` file without its network file.

    Args:
        network: the network the config built.
        meta: the description of the checkpoint to load next (None for plain weights).

    Returns:
        A :class:`ProbabilityMeanEnsemble` of copies of ``network`` when ``meta`` says the file
        holds that many members and ``network`` is not one already; ``network`` otherwise.
    """
    members = meta.network_settings.get(ENSEMBLE_SETTING) if meta is not None else None
    if members is None or isinstance(network, ProbabilityMeanEnsemble):
        return network
    return ProbabilityMeanEnsemble(network, int(members))


def _shared_meta(paths: Sequence[Path], metas: Sequence[CheckpointMeta | None]) -> CheckpointMeta:
    """The one description the members agree on (see :func:`pack_members`)."""
    described = [(p, m) for p, m in zip(paths, metas, strict=True) if m is not None]
    if not described:
        raise ValueError(
            f"none of {', '.join(str(p) for p in paths)} says what it was trained with (a "
            "tumorseg checkpoint description); pack at least one model.pt written by a "
            "tumorseg training"
        )
    first_path, first = described[0]
    for path, meta in described[1:]:
        for name in _SHARED_FIELDS:
            if getattr(meta, name) != getattr(first, name):
                raise ValueError(
                    f"{path} was trained with {name}={getattr(meta, name)!r} but {first_path} "
                    f"with {getattr(first, name)!r}; an ensemble's members must share them"
                )
    if first.network_settings.get(ENSEMBLE_SETTING) is not None:
        raise ValueError(f"{first_path} is already an ensemble; pack its members instead")
    plain = [str(p) for p, m in zip(paths, metas, strict=True) if m is None]
    if plain:
        logger.warning(
            "%s carry no description: taken to share %s's preprocessing", plain, first_path
        )
    return first
