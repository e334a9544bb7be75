"""Progress bar / periodic log and the data-wait vs compute split, on a fake clock."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
import torch
from ignite.engine import Engine

from tumorseg.training import TrainingProgress, batch_patches

DATA_S, COMPUTE_S = 0.3, 0.7


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(progress: TrainingProgress, clock: list[float], *, epochs: int = 2) -> Engine:
    def batches() -> Any:
        for _ in range(5):
            clock[0] += DATA_S  # the loader takes DATA_S per batch
            yield {"image": torch.zeros(2, 1, 2, 2, 2)}

    class Loader:
        def __iter__(self) -> Any:
            return batches()

        def __len__(self) -> int:
            return 5

    def step(engine: Engine, batch: Any) -> dict[str, float]:
        clock[0] += COMPUTE_S
        return {"loss": 0.25}

    engine = Engine(step)
    progress.attach(engine)
    engine.run(Loader(), max_epochs=epochs)
    return engine


def test_epoch_summary_splits_data_wait_from_compute(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    progress = TrainingProgress(stream=io.StringIO(), log_interval_s=1e6, clock=lambda: clock[0])
    with caplog.at_level(logging.INFO, logger="tumorseg.training.progress"):
        engine = _run(progress, clock)
    metrics = engine.state.metrics
    assert metrics["train_data_wait_s"] == pytest.approx(5 * DATA_S)
    assert metrics["train_compute_s"] == pytest.approx(5 * COMPUTE_S)
    assert metrics["train_patches_per_s"] == pytest.approx(10 / 5.0)
    assert metrics["train_data_wait_share"] == pytest.approx(0.3)
    # Other loggers may log too when an earlier test configured the root logger.
    summaries = [r.getMessage() for r in caplog.records if r.name == "tumorseg.training.progress"]
    assert len(summaries) == 2  # one per epoch, no per-iteration lines
    assert summaries[0].startswith("epoch 1/2: 10 patches in 5.0 s, 2.00 patches/s")
    assert "data wait 1.5 s (30%), compute 3.5 s" in summaries[0]
    assert summaries[0].endswith("run ETA 0:00:05")
    assert summaries[1].endswith("run ETA 0:00:00")


def test_without_a_terminal_logs_periodically_instead_of_drawing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [0.0]
    stream = io.StringIO()
    progress = TrainingProgress(stream=stream, log_interval_s=2.0, clock=lambda: clock[0])
    assert not progress.progress_bar
    with caplog.at_level(logging.INFO, logger="tumorseg.training.progress"):
        _run(progress, clock, epochs=1)
    lines = [r.getMessage() for r in caplog.records if "iteration" in r.getMessage()]
    # 1 s per iteration and a 2 s interval: iterations 2 and 4 of 5 are logged.
    assert [line.split(":")[0] for line in lines] == [
        "epoch 1/1 iteration 2/5",
        "epoch 1/1 iteration 4/5",
    ]
    assert "2.00 patches/s, loss 0.2500, data wait 30%, epoch ETA 0:00:03" in lines[0]
    assert stream.getvalue() == ""


def test_on_a_terminal_draws_a_bar_with_patches_per_second() -> None:
    clock = [0.0]
    stream = _Tty()
    progress = TrainingProgress(stream=stream, refresh_s=0.0, clock=lambda: clock[0])
    assert progress.progress_bar
    _run(progress, clock, epochs=1)
    out = stream.getvalue()
    assert "epoch 1/1" in out and "patches/s" in out and "5/5" in out


def test_batch_patches_counts_the_first_dimension() -> None:
    assert batch_patches({"image": torch.zeros(4, 4, 8, 8, 8)}) == 4
    assert batch_patches([{"image": 1}, {"image": 2}, {"image": 3}]) == 3
    with pytest.raises(ValueError, match="-1"):
        TrainingProgress(log_interval_s=-1)
