"""Checkpoints that survive a kill, resume from them, and early stopping on validation.

MONAI's ``CheckpointSaver`` writes in place (non-atomic), so a kill during a save can leave a
truncated newest checkpoint; :class:`Checkpointer` writes to a temporary file and renames it,
so ``checkpoint_latest.pt`` is always either the previous or the new complete state. Both
files describe themselves: the network weights sit under ``network`` beside a
:class:`~tumorseg.checkpoint_meta.CheckpointMeta` (see :mod:`tumorseg.checkpoint_meta` for
why the description lives inside the file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from tumorseg.checkpoint_meta import (
    CheckpointMeta,
    checkpoint_with_meta,
    describe_network,
    load_checkpoint,
    meta_of,
)
from tumorseg.io import atomic_path
from tumorseg.networks import ensemble_of_checkpoint
from tumorseg.ranks import is_rank0

__all__ = [
    "Checkpointer",
    "EarlyStopOnValidation",
    "atomic_torch_save",
    "load_checkpoint",
    "load_network_weights",
    "network_state_dict",
]

logger = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pt"
BEST = "model.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def network_state_dict(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The network weights of a checkpoint: a bare state dict or a training state's part.

    ``checkpoint_latest.pt`` of :class:`Checkpointer` keeps them under ``network``; ``model``
    and ``state_dict`` are common elsewhere. DDP's ``module.`` prefix is removed.
    """
    state = obj
    if not all(torch.is_tensor(v) for v in obj.values()):
        for key in ("network", "model", "state_dict"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(torch.is_tensor(v) for v in inner.values())
            ):
                state = inner
                break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _listing(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_network_weights(
    network: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    settings: str = "",
    hint: str = "pass the same settings (--override ...) or the matching --checkpoint",
    packed_members: bool = False,
) -> torch.nn.Module:
    """Load a bundle checkpoint into ``network``; every key must fit. Returns the network.

    Takes ``model.pt`` (the weights alone) or ``checkpoint_latest.pt`` (training state), saved
    with or without DDP (see :func:`network_state_dict`); read with ``weights_only=True``.

    Args:
        network: the bundle's network, built with the settings the weights should match.
        path: the checkpoint.
        settings: the network settings to name in an error (e.g. ``"filters=[...]"``).
        hint: what to do when the weights do not fit.
        packed_members: a file of :func:`tumorseg.networks.pack_members` is loaded into an
            ensemble of copies of ``network`` (:func:`tumorseg.networks.ensemble_of_checkpoint`),
            which is returned: use the return value. Off, ``network`` itself is loaded.

    Raises:
        FileNotFoundError: no such file; the message says how to get one.
        ValueError: not a checkpoint, or weights of another network or other settings: the
            missing, unexpected and mis-shaped keys are listed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}; train the bundle first (make train, or make demo "
            "for a synthetic model) or pass the weights with --checkpoint"
        )
    obj = load_checkpoint(path, map_location="cpu")
    if packed_members:
        network = ensemble_of_checkpoint(network, meta_of(obj, source=f"checkpoint {path}"))
    state = network_state_dict(obj)
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, network {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        what = type(network).__name__ + (f" with {settings}" if settings else "")
        lines = [f"checkpoint {path} does not fit the bundle's network ({what}):"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
        meta = meta_of(obj, source=f"checkpoint {path}")
        if meta is not None:
            lines.append(f"  the checkpoint says it was trained as {meta.summary()}; {hint}")
        else:
            lines.append(f"  was it trained with other bundle settings? {hint}")
        raise ValueError("\n".join(lines))
    network.load_state_dict(state, strict=True)
    return network


class Checkpointer:
    """Save the latest training state each epoch, the best model on validation, and resume.

    Attach to the trainer *after* the ``ValidationHandler`` (handler order in ``train.json``),
    so the validation of an epoch has run when this handler looks at its metric.

    Args:
        save_dir: folder of ``checkpoint_latest.pt`` (full state) and ``model.pt`` (best
            network weights only, the model-zoo convention).
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer,
            lr scheduler ...). The engine this handler is attached to is added as ``trainer``
            (a config cannot name the trainer inside its own handler list: circular reference).
        validator: the evaluator whose key metric selects the best model; None saves no best.
        key_metric: name of the metric in ``validator.state.metrics`` (higher is better).
        resume: load ``checkpoint_latest.pt`` when it exists at the start of training.
        map_location: ``torch.load`` map location when resuming.
        save_interval: save the latest state every this many epochs.
        meta: what the network was trained with (:class:`~tumorseg.checkpoint_meta.CheckpointMeta`
            or its dict, declared by the bundle's ``checkpoint_meta``); stored in both files,
            ``model.pt`` then holding ``{"network": weights, "tumorseg_meta": meta}``. None
            writes ``model.pt`` as bare weights, as before.
        run_record: returns the tracking run record (``{"run_id": ...}``) at save time, for the
            description's ``run_id`` (the run starts after this handler is built).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        *,
        validator: Engine | None = None,
        key_metric: str = "val_mean_dice",
        resume: bool = True,
        map_location: Any = "cpu",
        save_interval: int = 1,
        meta: CheckpointMeta | Mapping[str, Any] | None = None,
        run_record: Callable[[], Mapping[str, str] | None] | None = None,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.validator = validator
        self.key_metric = key_metric
        self.resume = resume
        self.map_location = map_location
        self.save_interval = save_interval
        self.best_metric = -float("inf")
        self.best_metric_epoch = -1
        self.resumed_from: Path | None = None
        self.meta = (
            None
            if meta is None
            else meta
            if isinstance(meta, CheckpointMeta)
            else CheckpointMeta.from_dict(meta, source="Checkpointer meta")
        )
        self.run_record = run_record

    @property
    def latest_path(self) -> Path:
        return self.save_dir / LATEST

    @property
    def best_path(self) -> Path:
        return self.save_dir / BEST

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self._resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_metric_epoch": self.best_metric_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_metric_epoch = int(state["best_metric_epoch"])

    def _resume(self, engine: Engine) -> None:
        if not (self.resume and self.latest_path.exists()):
            return
        state = load_checkpoint(self.latest_path, map_location=self.map_location)
        missing = sorted(set(self.save_dict) - set(state))
        if missing:
            raise ValueError(
                f"checkpoint {self.latest_path} lacks {missing}; it was not written by this "
                "bundle's trainer. Move it away or set resume=false."
            )
        self._check_same_network(state)
        max_epochs = engine.state.max_epochs
        for name, obj in self.save_dict.items():
            obj.load_state_dict(state[name])
        if "checkpointer" in state:
            self.load_state_dict(state["checkpointer"])
        # The checkpoint restores the old max_epochs; a resumed run may ask for more epochs.
        engine.state.max_epochs = max_epochs
        if self.validator is not None and self.best_metric_epoch >= 0:
            # MONAI's evaluator keeps its best metric on the ignite state; restore it too.
            setattr(self.validator.state, "best_metric", self.best_metric)  # noqa: B010
            setattr(self.validator.state, "best_metric_epoch", self.best_metric_epoch)  # noqa: B010
        self.resumed_from = self.latest_path
        logger.info(
            "resumed from %s at epoch %d (best %s %.4f at epoch %d)",
            self.latest_path,
            engine.state.epoch,
            self.key_metric,
            self.best_metric,
            self.best_metric_epoch,
        )

    def _check_same_network(self, state: Mapping[str, Any]) -> None:
        """Refuse the latest state of another network (another network file, same folder):
        its weights would fail deep in ``load_state_dict`` or, worse, half fit."""
        saved = meta_of(state, source=str(self.latest_path))
        if self.meta is None or saved is None:
            return
        before = (saved.network_name, saved.network_settings)
        now = (self.meta.network_name, self.meta.network_settings)
        if before != now:
            raise ValueError(
                f"{self.latest_path} holds the training state of network {before[0]!r} "
                f"{before[1]}, but this training builds {now[0]!r} {now[1]}; train it into its "
                "own folder (--ckpt_dir <bundle>/models/<name>) or move that file away."
            )

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if self.validator is not None and self.validator.state.epoch == epoch:
            value = self.validator.state.metrics.get(self.key_metric)
            if value is not None and float(value) > self.best_metric:
                self.best_metric, self.best_metric_epoch = float(value), epoch
                if is_rank0():
                    network = _unwrap(self.save_dict.get("network", self.save_dict.get("model")))
                    if network is not None:
                        best = network.state_dict()
                        if self.meta is not None:
                            best = {"network": best}
                        atomic_torch_save(checkpoint_with_meta(best, self._meta()), self.best_path)
                        logger.info(
                            "epoch %d: new best %s %.4f -> %s",
                            epoch,
                            self.key_metric,
                            value,
                            self.best_path,
                        )
        due = epoch % self.save_interval == 0 or epoch == engine.state.max_epochs
        if due and is_rank0():
            state = {name: obj.state_dict() for name, obj in self.save_dict.items()}
            state["checkpointer"] = self.state_dict()
            atomic_torch_save(checkpoint_with_meta(state, self._meta()), self.latest_path)

    def _meta(self) -> CheckpointMeta | None:
        """The description with what is known only now: the network class and the run id."""
        if self.meta is None:
            return None
        meta = self.meta
        network = _unwrap(self.save_dict.get("network", self.save_dict.get("model")))
        if not meta.network_class and network is not None:
            meta = replace(meta, network_class=describe_network(network))
        record = self.run_record() if self.run_record is not None else None
        if record and record.get("run_id"):
            meta = replace(meta, run_id=str(record["run_id"]))
        return meta


def _unwrap(network: Any) -> Any:
    """The bare module of a DDP / DataParallel wrapper, so weights load without ``module.``."""
    return getattr(network, "module", network)


class EarlyStopOnValidation:
    """Stop training when the validation key metric has not improved for ``patience`` rounds.

    Attach to the trainer after the ``ValidationHandler``.

    Args:
        validator: the evaluator run by the ``ValidationHandler``.
        patience: validation rounds without improvement before stopping; 0 disables.
        key_metric: metric name in ``validator.state.metrics`` (higher is better).
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(
        self,
        validator: Engine,
        *,
        patience: int = 0,
        key_metric: str = "val_mean_dice",
        min_delta: float = 0.0,
    ) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.validator = validator
        self.patience = patience
        self.key_metric = key_metric
        self.min_delta = min_delta
        self.best = -float("inf")
        self.bad_rounds = 0

    def attach(self, engine: Engine) -> None:
        if self.patience > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.validator.state.epoch != engine.state.epoch:
            return  # no validation this epoch
        value = self.validator.state.metrics.get(self.key_metric)
        if value is None:
            return
        if float(value) > self.best + self.min_delta:
            self.best, self.bad_rounds = float(value), 0
            return
        self.bad_rounds += 1
        if self.bad_rounds >= self.patience:
            logger.info(
                "early stop at epoch %d: %s has not improved on %.4f for %d validations",
                engine.state.epoch,
                self.key_metric,
                self.best,
                self.patience,
            )
            engine.terminate()
