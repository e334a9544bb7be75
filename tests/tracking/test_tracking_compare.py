"""`tumorseg compare` over a real SQLite store filled with known histories."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import pytest
from _tracking_utils import free_port
from mlflow.entities import Metric, Param, RunTag

from tumorseg.cli import main
from tumorseg.tracking import compare_runs, plot_curves

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# run name -> (learning rate, val_dice_et per epoch, val_hd95_et per epoch)
RUNS = {
    "lr-high": ("0.01", [0.30, 0.50, 0.45], [30.0, 12.0, 14.0]),
    "lr-mid": ("0.003", [0.40, 0.60, 0.70], [25.0, 20.0, 9.0]),
    "lr-low": ("0.001", [0.20, 0.25, 0.35], [40.0, 35.0, 5.0]),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("cmp")
    for name, (lr, dice, hd) in RUNS.items():
        run_id = client.create_run(experiment, run_name=name).info.run_id
        metrics = [Metric("val_dice_et", v, 0, step) for step, v in enumerate(dice, start=1)]
        metrics += [Metric("val_hd95_et", v, 0, step) for step, v in enumerate(hd, start=1)]
        metrics += [Metric("train_loss", 1.0, 0, 1)]
        params = [Param("learning_rate", lr), Param("fold", "0"), Param("network", "dynunet")]
        tags = [RunTag("tumorseg.kind", "training")]
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run_id, "FINISHED")
    running = client.create_run(experiment, run_name="just-started").info.run_id
    client.log_batch(running, params=[Param("learning_rate", "0.02"), Param("fold", "0")])
    return uri


def test_runs_sort_by_their_best_value_with_per_metric_bests(store: str) -> None:
    cmp = compare_runs(experiment="cmp", metric="val_dice_et", tracking_uri=store)
    assert [r.run_name for r in cmp.runs] == ["lr-mid", "lr-high", "lr-low", "just-started"]
    best = {r.run_name: r for r in cmp.runs}
    assert best["lr-high"].best["val_dice_et"] == 0.50 and best["lr-high"].best_epoch == 2
    # HD95: the lowest value, independently of the Dice epoch.
    assert best["lr-high"].best["val_hd95_et"] == 12.0
    assert math.isnan(best["just-started"].best["val_dice_et"])
    assert best["just-started"].status == "RUNNING"
    assert cmp.metrics == ["val_dice_et", "val_hd95_et"]  # val_* only, sorting metric first
    # fold is 0 everywhere; network is missing on one run, so it differs.
    assert cmp.differing_params == ["learning_rate", "network"]


def test_hd95_sorts_ascending_and_top_and_run_filters_apply(store: str) -> None:
    cmp = compare_runs(experiment="cmp", metric="val_hd95_et", top=2, tracking_uri=store)
    assert cmp.lower_is_better
    assert [r.run_name for r in cmp.runs] == ["lr-low", "lr-mid"]
    ids = [r.run_id for r in cmp.runs]
    picked = compare_runs(run_ids=ids[::-1], metric="val_dice_et", tracking_uri=store)
    assert [r.run_name for r in picked.runs] == ["lr-mid", "lr-low"]
    trained = compare_runs(experiment="cmp", kind="training", tracking_uri=store)
    assert len(trained.runs) == 3


def test_cli_prints_the_table_and_writes_csv_and_a_plot_with_one_curve_per_run(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_csv, out_png = tmp_path / "table.csv", tmp_path / "curves.png"
    argv = ["compare", "--experiment", "cmp", "--metric", "val_dice_et", "--tracking-uri", store]
    code = main([*argv, "--csv", str(out_csv), "--plot", str(out_png)])
    printed = capsys.readouterr().out
    assert code == 0
    lines = printed.splitlines()
    assert "sorted by best val_dice_et (higher is better)" in lines[0]
    assert lines[1].split()[:5] == ["#", "run", "status", "val_dice_et", "val_hd95_et"]
    assert lines[2].split()[:5] == ["1", "lr-mid", "FINISHED", "0.7000", "9.0000"]
    assert "learning_rate" in lines[1]

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["run_name"] for r in rows] == ["lr-mid", "lr-high", "lr-low", "just-started"]
    assert float(rows[1]["val_dice_et"]) == 0.5 and rows[3]["val_dice_et"] == ""
    assert rows[0]["learning_rate"] == "0.003"

    # The PNG itself: one colour of matplotlib's cycle per run with a curve, no more (the
    # cycle's grey is left out: anti-aliased text and frames produce it too).
    image = plt.imread(out_png)[..., :3]
    cycle = [matplotlib.colors.to_rgb(c) for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
    cycle = [c for c in cycle if len(set(c)) > 1]
    found = [
        colour
        for colour in cycle
        if (np.abs(image - np.array(matplotlib.colors.to_rgb(colour))).max(axis=-1) < 0.02).sum()
        > 50
    ]
    assert found == cycle[:3]


def test_plot_returns_a_figure_with_a_line_per_run_that_logged_the_metric(
    store: str, tmp_path: Path
) -> None:
    cmp = compare_runs(experiment="cmp", metric="val_hd95_et", tracking_uri=store)
    fig = plot_curves(cmp, tmp_path / "hd.png")
    try:
        lines = fig.axes[0].get_lines()
        assert [line.get_label() for line in lines] == ["lr-low", "lr-mid", "lr-high"]
        assert list(lines[0].get_ydata()) == RUNS["lr-low"][2]
    finally:
        plt.close(fig)
    assert (tmp_path / "hd.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="'val_dice_tc'"):
        plot_curves(cmp, tmp_path / "none.png", metric="val_dice_tc")


def test_cli_errors_name_what_was_received(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "--experiment", "nope", "--tracking-uri", store]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    assert main(["compare", "--experiment", "cmp", "--tracking-uri", missing]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["compare", "--experiment", "cmp", "--tracking-uri", dead]) == 2
    err = capsys.readouterr().err
    assert dead in err and "not reachable" in err
    assert main(["compare", "--experiment", "cmp", "--top", "0", "--tracking-uri", store]) == 2
    assert "top must be >= 1, got 0" in capsys.readouterr().err
