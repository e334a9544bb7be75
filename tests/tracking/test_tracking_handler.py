"""MLflowTracker on tiny ignite engines over a real SQLite store: run identity, resume,
outages, cross-validation parents, the start-up check. No network training: seconds."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
from _tracking_utils import free_port
from ignite.engine import Engine, Events

from tumorseg.tracking import (
    MLflowTracker,
    TrackingUnavailableError,
    check_tracking_uri,
    fold_parent,
    read_run_record,
)


def _scores(epoch: int, base: float = 0.5) -> dict[str, float]:
    return {
        "val_mean_dice": base + 0.01 * epoch,
        "val_dice_et": base - 0.1 + 0.02 * epoch,
        "val_hd95_et": 20.0 - epoch,
    }


def _train(
    work: Path,
    uri: str,
    *,
    epochs: int = 2,
    run_name: str = "tiny",
    resume_from_epoch: int = 0,
    score: Callable[[int], dict[str, float]] = _scores,
    after_start: Callable[[MLflowTracker, Engine], None] | None = None,
    **kwargs: Any,
) -> MLflowTracker:
    """Train a do-nothing model with a validator whose metrics are ``score(epoch)``."""
    trainer = Engine(lambda engine, batch: 0.0)
    validator = Engine(lambda engine, batch: None)

    @validator.on(Events.EPOCH_COMPLETED)
    def _set_scores(engine: Engine) -> None:
        engine.state.metrics.update(score(trainer.state.epoch))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine: Engine) -> None:
        engine.state.metrics["train_loss"] = 1.0 / engine.state.epoch
        validator.run([0], max_epochs=1)

    tracker = MLflowTracker(
        tracking_uri=uri,
        experiment_name="unit",
        run_name=run_name,
        validator=validator,
        ckpt_dir=work / "models",
        artifact_dir=work / "artifacts",
        params={"learning_rate": 0.01, "nested": {"a": 1}},
        **kwargs,
    )
    tracker.attach(trainer)
    if after_start is not None:
        trainer.add_event_handler(Events.STARTED, lambda engine: after_start(tracker, engine))
    if resume_from_epoch:
        # What the bundle's Checkpointer does at STARTED: the engine carries on from there.
        trainer.load_state_dict(
            {"epoch": resume_from_epoch, "max_epochs": epochs, "epoch_length": 2}
        )
        trainer.run([0, 1])
    else:
        trainer.run([0, 1], max_epochs=epochs)
    return tracker


def _steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_new_training_never_reuses_a_running_run_of_the_same_name(
    tmp_path: Path, uri: str
) -> None:
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("unit")
    stale = client.create_run(experiment, run_name="same").info.run_id  # crashed, left RUNNING

    tracker = _train(tmp_path, uri, run_name="same")

    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    assert len(runs) == 2
    assert runs[stale].info.status == "RUNNING" and not runs[stale].data.metrics
    (ours,) = [r for r in runs.values() if r.info.run_id != stale]
    assert ours.info.status == "FINISHED"
    assert _steps(client, ours.info.run_id, "val_mean_dice") == [1, 2]
    assert _steps(client, ours.info.run_id, "train_loss") == [1, 2]
    assert _steps(client, ours.info.run_id, "epoch_seconds") == [1, 2]
    assert ours.data.params["learning_rate"] == "0.01"
    assert ours.data.params["nested.a"] == "1"
    assert ours.data.params["max_epochs"] == "2"
    assert ours.data.params["torch_version"].startswith("2.")
    assert ours.data.tags["tumorseg.kind"] == "training"
    record = read_run_record(tmp_path / "models")
    assert record is not None and record["run_id"] == ours.info.run_id
    assert tracker.run_id is None  # closed


def test_a_resumed_training_continues_its_run_and_a_fresh_one_opens_a_new_run(
    tmp_path: Path, uri: str
) -> None:
    _train(tmp_path, uri, epochs=2)
    record = read_run_record(tmp_path / "models")
    assert record is not None
    client = mlflow.MlflowClient(uri)

    resumed = _train(tmp_path, uri, epochs=3, resume_from_epoch=2)
    assert resumed.resumed
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id, "val_mean_dice") == [1, 2, 3]
    assert run.data.tags["tumorseg.resumed_at_epoch"] == "2"
    # MLflow forbids changing a param: the first value stays, the new one is a tag.
    assert run.data.params["max_epochs"] == "2"
    assert run.data.tags["resume.max_epochs"] == "3"

    fresh = _train(tmp_path, uri, epochs=1)
    assert not fresh.resumed
    new_record = read_run_record(tmp_path / "models")
    assert new_record is not None and new_record["run_id"] != record["run_id"]
    assert len(client.search_runs([run.info.experiment_id])) == 2


_KILLED_TRAINING = """
import os, signal, sys
from ignite.engine import Engine, Events
from tumorseg.tracking import MLflowTracker

trainer = Engine(lambda engine, batch: 0.0)
tracker = MLflowTracker(tracking_uri=sys.argv[1], experiment_name="unit", run_name="killed",
                        ckpt_dir=sys.argv[2], artifact_dir=sys.argv[3])
tracker.attach(trainer)
# Killed during the first epoch: the run is open, no checkpoint was written, no handler runs.
kill = lambda engine: os.kill(os.getpid(), signal.SIGKILL)
trainer.add_event_handler(Events.ITERATION_COMPLETED, kill)
trainer.run([0, 1], max_epochs=2)
"""


def _killed_training(work: Path, uri: str) -> str:
    """Run a training in a child process that SIGKILLs itself mid-epoch; its run id."""
    args = [uri, str(work / "models"), str(work / "killed-artifacts")]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_TRAINING, *args], capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    record = read_run_record(work / "models")
    assert record is not None
    return record["run_id"]


def test_a_run_killed_before_its_first_checkpoint_is_marked_killed_by_the_next_training(
    tmp_path: Path, uri: str
) -> None:
    killed = _killed_training(tmp_path, uri)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(killed).info.status == "RUNNING"  # nothing could end it

    rerun = _train(tmp_path, uri, run_name="killed")

    assert not rerun.resumed
    old = client.get_run(killed)
    assert old.info.status == "KILLED"
    assert "checkpoint folder" in old.data.tags["tumorseg.ended_by"]
    runs = client.search_runs([old.info.experiment_id])
    assert len(runs) == 2
    (new,) = [r for r in runs if r.info.run_id != killed]
    assert new.info.status == "FINISHED"
    assert _steps(client, new.info.run_id, "val_mean_dice") == [1, 2]  # a clean run
    record = read_run_record(tmp_path / "models")
    assert record is not None and record["run_id"] == new.info.run_id


def test_a_run_whose_process_still_runs_is_not_marked_killed(
    tmp_path: Path, uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    killed = _killed_training(tmp_path, uri)
    record_path = tmp_path / "models" / "mlflow_run.json"
    record = json.loads(record_path.read_text())
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # As if that training were still running, from the same folder.
        record["pid"] = str(alive.pid)
        record_path.write_text(json.dumps(record))
        with caplog.at_level(logging.WARNING, logger="tumorseg.tracking.lifecycle"):
            _train(tmp_path, uri)
    finally:
        alive.kill()
        alive.wait()
    assert mlflow.MlflowClient(uri).get_run(killed).info.status == "RUNNING"
    assert f"process {alive.pid}" in caplog.text


def test_metrics_of_an_outage_are_buffered_and_sent_when_the_store_answers(
    tmp_path: Path, uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    def break_epoch_two(tracker: MLflowTracker, trainer: Engine) -> None:
        assert tracker.client is not None
        real = tracker.client.log_batch

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if trainer.state.epoch == 2:
                raise ConnectionError("server gone")
            return real(*args, **kwargs)

        tracker.client.log_batch = flaky  # type: ignore[method-assign]

    with caplog.at_level(logging.WARNING, logger="tumorseg.tracking.handler"):
        tracker = _train(tmp_path, uri, epochs=3, retry_interval_s=0.0, after_start=break_epoch_two)
    assert "failed (ConnectionError: server gone)" in caplog.text
    assert "Training continues" in caplog.text
    assert "answers again" in caplog.text
    client = mlflow.MlflowClient(uri)
    record = read_run_record(tmp_path / "models")
    assert record is not None
    for key in ("val_mean_dice", "val_hd95_et", "train_loss", "epoch_seconds"):
        assert _steps(client, record["run_id"], key) == [1, 2, 3], key
    assert tracker.unsent == 0


def test_fold_runs_are_children_of_one_parent_with_a_summary(tmp_path: Path, uri: str) -> None:
    bases = (0.4, 0.6)
    with fold_parent(experiment_name="unit", run_name="cv", tracking_uri=uri) as parent:
        for fold, base in enumerate(bases):

            def score(epoch: int, base: float = base) -> dict[str, float]:
                return _scores(epoch, base)

            _train(
                tmp_path / f"fold{fold}",
                uri,
                run_name=f"fold{fold}",
                parent_run_id=parent,
                score=score,
            )
    client = mlflow.MlflowClient(uri)
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.tags["tumorseg.kind"] == "cross-validation"
    children = client.search_runs(
        [parent_run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert sorted(r.info.run_name for r in children) == ["fold0", "fold1"]
    metrics = parent_run.data.metrics
    assert metrics["cv_folds"] == 2
    # Best over 2 epochs: Dice at epoch 2 (base + 0.02), HD95 at epoch 2 (18).
    assert metrics["cv_mean_val_mean_dice"] == pytest.approx(sum(b + 0.02 for b in bases) / 2)
    assert metrics["cv_std_val_mean_dice"] == pytest.approx(0.1)
    assert metrics["cv_mean_val_hd95_et"] == pytest.approx(18.0)


def test_an_evaluation_run_links_the_training_run_of_its_checkpoint(
    tmp_path: Path, uri: str
) -> None:
    _train(tmp_path, uri, epochs=1)
    record = read_run_record(tmp_path / "models")
    assert record is not None
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(_scores(1))
    )
    MLflowTracker(
        tracking_uri=uri,
        experiment_name="unit",
        run_name="eval-tiny",
        kind="evaluation",
        ckpt_dir=tmp_path / "models",
    ).attach(evaluator)
    evaluator.run([0, 1])
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs(
        [record["experiment_id"]], filter_string="attributes.run_name = 'eval-tiny'"
    )
    assert run.data.tags["tumorseg.kind"] == "evaluation"
    assert run.data.tags["tumorseg.training_run_id"] == record["run_id"]
    assert run.data.metrics["val_dice_et"] == pytest.approx(_scores(1)["val_dice_et"])
    assert "max_epochs" not in run.data.params
    assert read_run_record(tmp_path / "models") == record  # an evaluation does not take it over


def test_an_unreachable_store_stops_the_engine_before_its_first_iteration(
    tmp_path: Path,
) -> None:
    iterations: list[int] = []
    trainer = Engine(lambda engine, batch: iterations.append(1))
    uri = f"http://127.0.0.1:{free_port()}"
    MLflowTracker(tracking_uri=uri, experiment_name="unit", ckpt_dir=tmp_path).attach(trainer)
    with pytest.raises(TrackingUnavailableError) as err:
        trainer.run([0, 1], max_epochs=1)
    assert uri in str(err.value)
    assert iterations == []
    assert not (tmp_path / "mlflow_run.json").exists()


@pytest.mark.parametrize("hang", [False, True], ids=["refused", "no-answer"])
def test_the_start_check_is_bounded_and_says_how_to_fall_back(hang: bool) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if hang:
            listener.listen(8)  # accepts connections, never answers
        else:
            listener.close()
        uri = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        with pytest.raises(TrackingUnavailableError) as err:
            check_tracking_uri(uri, timeout_s=1)
        elapsed = time.monotonic() - t0
    message = str(err.value)
    assert uri in message and "not reachable" in message
    assert "unset MLFLOW_TRACKING_URI" in message
    assert "--tracking_uri sqlite:///mlflow.db" in message
    assert "--log_mlflow false" in message
    assert elapsed < 10, elapsed


def test_a_tracker_rejects_bad_settings_naming_the_value() -> None:
    with pytest.raises(ValueError, match="'train'"):
        MLflowTracker(kind="train")
    with pytest.raises(ValueError, match="-1"):
        MLflowTracker(num_overlays=-1)


def test_a_relative_sqlite_uri_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--tracking_uri sqlite:///mlflow.db` (three slashes: relative) is what users type first.
    monkeypatch.chdir(tmp_path)
    _train(tmp_path, "sqlite:///mlflow.db", epochs=1)
    assert (tmp_path / "mlflow.db").is_file()
    record = read_run_record(tmp_path / "models")
    assert record is not None and record["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mlflow.MlflowClient(record["tracking_uri"]).get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
