"""Fine-tuning helpers: pretrained network for a config, encoder/decoder learning rates, freezing.

Used by the bundle's ``configs/finetune.json`` (merged after ``train.json`` and a network
file), but plain functions and one ignite handler, usable from any training loop:

* :func:`pretrained_network` calls :func:`~tumorseg.networks.load_pretrained` on the built
  network and returns it (a config ``$`` expression needs a value back);
* :func:`param_groups` splits the parameters into an encoder group (``encoder_lr``) and the
  rest (``lr``): pretrained features need small steps, the new decoder large ones. Schedulers
  of the ``LambdaLR`` family (the bundle's ``WarmupCosineSchedule``) scale each group's own
  base rate, so the ratio holds through warm-up and decay;
* :class:`FreezeEncoder` keeps the encoder frozen (``requires_grad=False``) for the first
  ``epochs`` epochs so the random decoder cannot wreck the pretrained features through large
  early gradients, then unfreezes it. Frozen parameters get no gradient, which AdamW skips
  (no weight decay on them either). Norm layers of a frozen encoder still update their
  running statistics in training mode, which is wanted on a shifted domain.

The MLflow tags that point a fine-tuned run to its source are tracking's:
:func:`tumorseg.tracking.pretrained_tags`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events
from torch import nn

from tumorseg.networks.pretrained import NameMap, load_pretrained

__all__ = [
    "FreezeEncoder",
    "ENCODER_PREFIXES",
    "encoder_parameters",
    "encoder_prefix_for",
    "name_map_for",
    "param_groups",
    "pretrained_network",
]

logger = logging.getLogger(__name__)


def _prefixes(encoder_prefix: str | Sequence[str]) -> tuple[str, ...]:
    prefixes = (encoder_prefix,) if isinstance(encoder_prefix, str) else tuple(encoder_prefix)
    if not prefixes or any(p == "" for p in prefixes):
        raise ValueError(
            f"encoder_prefix must name the encoder's key prefixes, got {list(prefixes)}"
        )
    return prefixes


def encoder_parameters(
    network: nn.Module, encoder_prefix: str | Sequence[str]
) -> list[nn.Parameter]:
    """The parameters whose names start with one of ``encoder_prefix``.

    Raises:
        ValueError: when none does (a wrong prefix would otherwise silently freeze nothing).
    """
    prefixes = _prefixes(encoder_prefix)
    params = [p for n, p in network.named_parameters() if n.startswith(prefixes)]
    if not params:
        names = [n for n, _ in network.named_parameters()][:5]
        raise ValueError(
            f"no parameter name starts with encoder_prefix {list(prefixes)}; names begin {names}"
        )
    return params


def param_groups(
    network: nn.Module,
    *,
    encoder_prefix: str | Sequence[str],
    lr: float,
    encoder_lr: float,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the encoder at ``encoder_lr``, everything else at ``lr``.

    Returns:
        ``[{"params": encoder, "lr": encoder_lr, "name": "encoder"}, {"params": rest, "lr":
        lr, "name": "decoder"}]`` for ``torch.optim`` optimizers.

    Raises:
        ValueError: no encoder parameter, or a negative rate (the value is shown).
    """
    if lr < 0 or encoder_lr < 0:
        raise ValueError(f"learning rates must be >= 0, got lr={lr}, encoder_lr={encoder_lr}")
    encoder = encoder_parameters(network, encoder_prefix)
    ids = {id(p) for p in encoder}
    rest = [p for p in network.parameters() if id(p) not in ids]
    return [
        {"params": encoder, "lr": float(encoder_lr), "name": "encoder"},
        {"params": rest, "lr": float(lr), "name": "decoder"},
    ]


class FreezeEncoder:
    """Freeze the encoder for the first ``epochs`` epochs of training, then unfreeze it.

    Attach to the trainer. On a resumed run past ``epochs`` nothing is frozen.

    Args:
        network: the network being trained.
        encoder_prefix: parameter-name prefix(es) of the encoder.
        epochs: epochs to keep it frozen; 0 disables the handler.

    Raises:
        ValueError: negative ``epochs`` or no encoder parameter.
    """

    def __init__(
        self, network: nn.Module, *, encoder_prefix: str | Sequence[str], epochs: int
    ) -> None:
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        self.epochs = int(epochs)
        self.params = encoder_parameters(network, encoder_prefix) if epochs else []
        self.frozen = False

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (ignite / MONAI handler protocol)."""
        if not self.epochs:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)

    def _set(self, frozen: bool) -> None:
        for p in self.params:
            p.requires_grad_(not frozen)
        self.frozen = frozen

    def _epoch_started(self, engine: Engine) -> None:
        # state.epoch is already the 1-based number of the epoch that starts.
        want = engine.state.epoch <= self.epochs
        if want != self.frozen:
            self._set(want)
            logger.info(
                "epoch %d: encoder %s (%d tensors)",
                engine.state.epoch,
                "frozen" if want else "unfrozen",
                len(self.params),
            )


def pretrained_network(
    network: nn.Module,
    path: str | os.PathLike[str],
    *,
    encoder_prefix: str | Sequence[str] = "",
    min_matched: float = 0.5,
    channel_order: Sequence[str] | None = None,
    first_conv_key: str | None = None,
    in_channels_strategy: str = "repeat",
    name_map: NameMap = None,
) -> nn.Module:
    """``network`` with pretrained weights loaded from ``path``; an empty path loads nothing.

    The arguments are those of :func:`~tumorseg.networks.load_pretrained`. For configs:
    ``"network": "$tumorseg.networks.pretrained_network(@network_def, @pretrained, ...)"``.
    """
    if not str(path or ""):
        logger.warning("no pretrained checkpoint given (pretrained=''): training from scratch")
        return network
    load_pretrained(
        network,
        path,
        encoder_prefix=encoder_prefix,
        min_matched=min_matched,
        channel_order=channel_order,
        first_conv_key=first_conv_key,
        in_channels_strategy=in_channels_strategy,  # type: ignore[arg-type]
        name_map=name_map,
    )
    return network


#: Network class name -> encoder key prefixes, for the networks of ``configs/networks/``.
ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "DynUNet": ("input_block.", "downsamples.", "bottleneck."),
    "SegResNet": ("convInit.", "down_layers."),
    "SwinUNETR": ("swinViT.",),
    "TransUNet": ("encoder.", "bottleneck."),
    "ResEncUNet": ("encoder.",),
    "FlexibleUNet": ("encoder.",),
}


def encoder_prefix_for(network: nn.Module) -> tuple[str, ...]:
    """The encoder key prefixes of a bundle network (see :data:`ENCODER_PREFIXES`).

    Raises:
        ValueError: an unknown network class; pass ``encoder_prefix`` explicitly then.
    """
    name = type(network).__name__
    if name not in ENCODER_PREFIXES:
        raise ValueError(
            f"no default encoder prefix for {name}; known: {sorted(ENCODER_PREFIXES)}. "
            "Set it: --encoder_prefix \"['prefix.']\""
        )
    return ENCODER_PREFIXES[name]


def name_map_for(network: nn.Module) -> str | None:
    """The :data:`~tumorseg.networks.NAME_MAPS` entry a network's public weights need."""
    # Own SwinUNETR checkpoints already use MONAI's names: the rewrite leaves them unchanged.
    return "swinvit" if type(network).__name__ == "SwinUNETR" else None
