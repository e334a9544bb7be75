"""Atomic checkpoints, resume, best-model selection and early stopping on a real ignite loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from tumorseg.training import (
    Checkpointer,
    EarlyStopOnValidation,
    atomic_torch_save,
    load_checkpoint,
)


def _loop(scores: list[float], ckpt_dir: Path, *, max_epochs: int, patience: int = 0):
    """A trainer that steps a linear model, and a 'validator' replaying ``scores`` per epoch."""
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine: Engine, batch: torch.Tensor) -> float:
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    validator = Engine(lambda e, b: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine: Engine) -> None:
        validator.state.epoch = engine.state.epoch
        validator.state.metrics = {"val_mean_dice": scores[engine.state.epoch - 1]}

    saver = Checkpointer(ckpt_dir, {"network": net, "optimizer": opt}, validator=validator)
    saver.attach(trainer)
    EarlyStopOnValidation(validator, patience=patience).attach(trainer)
    data = [torch.ones(4, 2)] * 3
    return trainer, net, saver, data


def test_best_model_and_latest_state(tmp_path: Path) -> None:
    trainer, net, saver, data = _loop([0.2, 0.7, 0.5], tmp_path, max_epochs=3)
    trainer.run(data, max_epochs=3)
    latest = load_checkpoint(tmp_path / "checkpoint_latest.pt")
    assert latest["trainer"]["iteration"] == 9  # 3 epochs x 3 batches
    assert latest["checkpointer"] == {"best_metric": 0.7, "best_metric_epoch": 2}
    best = load_checkpoint(tmp_path / "model.pt")
    assert set(best) == {"weight", "bias"}  # bare state dict, the model-zoo convention
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_continues_from_the_saved_epoch(tmp_path: Path) -> None:
    scores = [0.1, 0.9, 0.3, 0.4, 0.5]
    trainer, net, _, data = _loop(scores, tmp_path, max_epochs=2)
    trainer.run(data, max_epochs=2)
    weights_after_2 = net.weight.detach().clone()

    trainer2, net2, saver2, data = _loop(scores, tmp_path, max_epochs=5)
    epochs_run: list[int] = []
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    trainer2.add_event_handler(
        Events.STARTED, lambda e: torch.testing.assert_close(net2.weight, weights_after_2)
    )
    trainer2.run(data, max_epochs=5)
    assert epochs_run == [3, 4, 5]
    assert saver2.resumed_from == tmp_path / "checkpoint_latest.pt"
    # The best (0.9 at epoch 2) survives the restart: later, lower scores do not replace it.
    assert saver2.best_metric == 0.9 and saver2.best_metric_epoch == 2


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pt"
    atomic_torch_save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot load checkpoint .*checkpoint_latest.pt"):
        load_checkpoint(path)


def test_foreign_checkpoint_is_refused_with_the_missing_keys(tmp_path: Path) -> None:
    atomic_torch_save({"network": {}}, tmp_path / "checkpoint_latest.pt")
    trainer, _, _, data = _loop([0.1], tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=r"lacks \['optimizer', 'trainer'\]"):
        trainer.run(data, max_epochs=1)


def test_failed_save_leaves_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    atomic_torch_save({"v": torch.tensor(1)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"v": Boom()}, path)
    assert load_checkpoint(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_early_stop_after_patience_without_improvement(tmp_path: Path) -> None:
    trainer, *_, data = _loop([0.5, 0.6, 0.6, 0.55, 0.9, 0.9], tmp_path, max_epochs=6, patience=2)
    trainer.run(data, max_epochs=6)
    assert trainer.state.epoch == 4


def test_network_weights_load_from_any_bundle_checkpoint_form(tmp_path: Path) -> None:
    from tumorseg.training import load_network_weights

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    weights = source.state_dict()
    forms = {
        "model.pt": weights,
        "checkpoint_latest.pt": {"network": weights, "trainer": {"epoch": 3}},
        "ddp.pt": {f"module.{k}": v for k, v in weights.items()},
    }
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        target = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        load_network_weights(target, tmp_path / name)
        for key, value in target.state_dict().items():
            assert torch.equal(value, weights[key]), (name, key)


def test_weights_that_do_not_fit_are_listed_and_the_network_is_untouched(tmp_path: Path) -> None:
    from tumorseg.training import load_network_weights

    torch.save(torch.nn.Linear(3, 4).state_dict() | {"extra": torch.zeros(1)}, tmp_path / "w.pt")
    target = torch.nn.Sequential(torch.nn.Linear(3, 2))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_network_weights(target, tmp_path / "w.pt", settings="width=2", hint="use width=4")
    message = str(err.value)
    assert f"checkpoint {tmp_path / 'w.pt'} does not fit" in message and "width=2" in message
    assert "2 missing key(s): 0.bias, 0.weight" in message
    assert "3 unexpected key(s): bias, extra, weight" in message and "use width=4" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*--checkpoint"):
        load_network_weights(target, tmp_path / "none.pt")
