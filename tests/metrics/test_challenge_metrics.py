"""The project's NSD against the package's global NSD, and validation on a challenge metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tumorseg.metrics.challenge import parse_challenge_results, score_challenge_arrays
from tumorseg.metrics.handlers import ChallengeMetric, ChallengeMetricHandler
from tumorseg.metrics.regions import case_metrics, region_metrics
from tumorseg.metrics.surface import normalised_surface_dice


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).astype(np.float64)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return dist <= radius


def _label(shape=(40, 36, 32), shift=0) -> np.ndarray:
    """brats2024 map: edema ball, core and enhancing shell, a second small lesion."""
    lab = np.zeros(shape, np.uint8)
    lab[_ball(shape, (20 + shift, 18, 16), 10)] = 2
    lab[_ball(shape, (20 + shift, 18, 16), 6)] = 3
    lab[_ball(shape, (20 + shift, 18, 16), 3)] = 1
    lab[_ball(shape, (6, 6 + shift, 6), 2)] = 3
    return lab


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_nsd_equals_the_package_global_nsd(shift: int) -> None:
    pred, ref = _label(shift=shift), _label()
    result = score_challenge_arrays(pred, ref, challenge="gli", convention="brats2024")
    regions = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,), "netc": (1,), "snfh": (2,)}
    for group, values in regions.items():
        ours = normalised_surface_dice(np.isin(pred, values), np.isin(ref, values))
        assert ours == pytest.approx(result[group]["global_bin_nsd"], abs=1e-12), group
    # In the project's metric set, with the anisotropic spacing ignored as the package does.
    metrics = case_metrics(
        pred, ref, spacing=(0.5, 0.5, 1.5), convention="brats2024", lesionwise=False
    )
    assert metrics["nsd_WT"] == pytest.approx(result["wt"]["global_bin_nsd"], abs=1e-12)
    assert metrics["nsd_ET"] == pytest.approx(result["et"]["global_bin_nsd"], abs=1e-12)


def test_nsd_on_the_real_case_equals_the_package(real_study: dict[str, np.ndarray]) -> None:
    ref = real_study["ref"]
    pred = real_study["isen-20"]
    box = tuple(
        slice(max(int(i.min()) - 3, 0), int(i.max()) + 4) for i in np.nonzero((ref | pred) != 0)
    )
    result = score_challenge_arrays(pred[box], ref[box], challenge="gli", convention="brats2021")
    wt = region_metrics(np.isin(pred, (1, 2, 4)), np.isin(ref, (1, 2, 4)))
    assert 0.0 < wt["nsd"] < 1.0
    assert wt["nsd"] == pytest.approx(result["wt"]["global_bin_nsd"], abs=1e-12)


def test_nsd_empty_masks_and_tolerance() -> None:
    empty = np.zeros((8, 8, 8), bool)
    cube = empty.copy()
    cube[2:6, 2:6, 2:6] = True
    assert normalised_surface_dice(empty, empty) == 1.0
    assert normalised_surface_dice(cube, empty) == 0.0
    assert normalised_surface_dice(cube, cube) == 1.0
    shifted = np.roll(cube, 1, axis=0)
    # One voxel apart: outside the 0.5-voxel tolerance, inside a 1 mm one.
    assert normalised_surface_dice(shifted, cube) < 1.0
    assert normalised_surface_dice(shifted, cube, spacing=(1, 1, 1)) == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        normalised_surface_dice(cube, cube, tolerance=-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        normalised_surface_dice(cube, cube[:4])


def _regions(label: np.ndarray) -> torch.Tensor:
    wt = np.isin(label, (1, 2, 3))
    tc = np.isin(label, (1, 3))
    et = label == 3
    return torch.from_numpy(np.stack([wt, tc, et]).astype(np.float32))


def test_challenge_metric_reports_the_package_numbers() -> None:
    refs = [_label(), _label(shift=2)]
    preds = [_label(shift=1), _label(shift=2)]
    metric = ChallengeMetric(challenge="gli", spacing=(1.0, 1.0, 1.0))
    metric(torch.stack([_regions(p) for p in preds]), torch.stack([_regions(r) for r in refs]))
    out = metric.aggregate()
    direct = parse_challenge_results(
        [
            score_challenge_arrays(p, r, challenge="gli", convention="brats2024", case_id=str(i))
            for i, (p, r) in enumerate(zip(preds, refs, strict=True))
        ]
    ).set_index("subject_id")
    for column in metric.columns:
        assert out[column] == pytest.approx(direct.loc["mean", column], abs=1e-9), column
    assert out["lesionwise_dsc_mean_et"] < 1.0
    expected = np.mean([out[f"lesionwise_dsc_mean_{g}"] for g in ("wt", "tc", "et")])
    assert out["mean_lesionwise_dsc_mean"] == pytest.approx(expected)


def test_challenge_handler_publishes_on_an_engine() -> None:
    from ignite.engine import Engine

    batches = [
        {"pred": _regions(_label(shift=1))[None], "label": _regions(_label())[None]},
        {"pred": _regions(_label())[None], "label": _regions(_label())[None]},
    ]
    engine = Engine(lambda e, batch: batch)
    handler = ChallengeMetricHandler(
        challenge="gli",
        metrics=("global_dsc", "lesionwise_dsc_mean"),
        prefix="val_",
        output_transform=lambda out: (out["pred"], out["label"]),
    )
    handler.attach(engine, "val_challenge")
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    assert 0.0 < metrics["val_challenge"] < 1.0
    assert metrics["val_challenge"] == metrics["val_mean_lesionwise_dsc_mean"]
    assert {"val_global_dsc_wt", "val_lesionwise_dsc_mean_et"} <= set(metrics)
    assert not any(math.isnan(v) for k, v in metrics.items() if k.startswith("val_global"))


def test_challenge_metric_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown challenge"):
        ChallengeMetric(challenge="brats2021")
    with pytest.raises(ValueError, match="GTV"):
        ChallengeMetric(challenge="MenRT")
    with pytest.raises(ValueError, match=r"groups \['xx'\]"):
        ChallengeMetric(challenge="gli", groups=["xx"])
    with pytest.raises(ValueError, match="not an aggregated value"):
        ChallengeMetricHandler(challenge="gli", key="global_dsc_rc")
    metric = ChallengeMetric(challenge="gli")
    with pytest.raises(ValueError, match="region channels"):
        metric(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="before any data"):
        metric.aggregate()
