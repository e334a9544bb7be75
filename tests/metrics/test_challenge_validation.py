"""Validation during training on the region Dice or a challenge's own metric (issue 16 item 3),
with the resection cavity as a fourth channel; the bundles' choice of key metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from tumorseg.config_errors import format_config_error
from tumorseg.metrics import validation_metrics
from tumorseg.metrics.handlers import ChallengeMetricHandler, RegionMetricHandler
from tumorseg.metrics.validation import VALIDATION_CHALLENGES
from tumorseg.transforms import labels_to_regions

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
REGION_BUNDLES = ("brats_mri_segmentation", "brats_slice_segmentation_2d")
RC4 = ["WT", "TC", "ET", "RC"]


def _label(shift: int = 0, cavity: bool = True) -> np.ndarray:
    """A brats2024 map: edema, core, enhancing tumour and a resection cavity beside them."""
    lab = np.zeros((24, 24, 24), np.uint8)
    lab[4 + shift : 14 + shift, 4:14, 4:14] = 2
    lab[6 + shift : 12 + shift, 6:12, 6:12] = 3
    lab[8 + shift : 10 + shift, 8:10, 8:10] = 1
    if cavity:
        lab[16:21, 15:20, 15:20] = 4
    return lab


def _batch(pred: np.ndarray, ref: np.ndarray, regions: list[str]) -> dict[str, torch.Tensor]:
    as_tensor = lambda lab: torch.as_tensor(  # noqa: E731
        labels_to_regions(lab, "brats2024", regions=regions), dtype=torch.float32
    )[None]
    return {"pred": as_tensor(pred), "label": as_tensor(ref)}


def _run(handlers: dict, batches: list[dict]) -> dict[str, float]:
    engine = Engine(lambda e, batch: batch)
    for name, handler in handlers.items():
        handler.attach(engine, name)
    return engine.run(batches, max_epochs=1).metrics


def test_default_selects_on_the_region_dice_of_every_channel() -> None:
    chosen = validation_metrics(RC4)
    assert chosen.key_name == "val_mean_dice"
    assert isinstance(chosen.key["val_mean_dice"], RegionMetricHandler)
    assert set(chosen.additional) == {"val_hd95_mean"}
    assert chosen.reported == (
        "val_mean_dice",
        "val_dice_wt",
        "val_dice_tc",
        "val_dice_et",
        "val_dice_rc",
    )
    metrics = _run(
        {**chosen.key, **chosen.additional},
        [_batch(_label(), _label(), RC4), _batch(_label(), _label(cavity=False), RC4)],
    )
    # The cavity predicted where the reference has none: RC Dice 0 on that case.
    assert metrics["val_dice_rc"] == pytest.approx(0.5)
    assert metrics["val_dice_wt"] == pytest.approx(1.0)
    assert metrics["val_mean_dice"] == pytest.approx(np.mean([1, 1, 1, 0.5]))
    assert metrics["val_hd95_rc"] > 0


def test_the_challenge_choice_makes_the_package_metric_the_key() -> None:
    chosen = validation_metrics(RC4, "GLI")  # case as the package's CLI takes it
    assert chosen.key_name == "val_mean_lesionwise_dsc_mean"
    handler = chosen.key[chosen.key_name]
    assert isinstance(handler, ChallengeMetricHandler)
    assert handler.metric_fn.challenge == "gli"
    assert set(handler.metric_fn.groups) == {"wt", "tc", "et", "rc"}  # RC is a channel here
    assert isinstance(chosen.additional["val_mean_dice"], RegionMetricHandler)  # still logged
    assert chosen.reported[:2] == ("val_mean_lesionwise_dsc_mean", "val_mean_dice")
    metrics = _run(
        {**chosen.key, **chosen.additional},
        [_batch(_label(shift=1), _label(), RC4), _batch(_label(), _label(), RC4)],
    )
    assert metrics["val_lesionwise_dsc_mean_rc"] == pytest.approx(1.0)
    assert 0.5 < metrics["val_mean_lesionwise_dsc_mean"] < 1.0
    assert "val_mean_dice" in metrics and "val_hd95_mean" in metrics


def test_another_challenge_key_and_three_channels() -> None:
    chosen = validation_metrics(["WT", "TC", "ET"], "mets", "mean_global_nsd")
    assert chosen.key_name == "val_mean_global_nsd"
    assert set(chosen.key[chosen.key_name].metric_fn.groups) == {"wt", "tc", "et"}


@pytest.mark.parametrize("challenge", ["glx", "MenRT", "brats2024"])
def test_unknown_challenge_is_one_line_listing_the_valid_ones(challenge: str) -> None:
    with pytest.raises(ValueError) as err:
        validation_metrics(RC4[:3], challenge)
    message = str(err.value)
    assert "\n" not in message
    assert f"unknown challenge {challenge!r}" in message
    assert str(list(VALIDATION_CHALLENGES)) in message and "MenRT" not in message.split(";")[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"challenge": "gli", "challenge_key": "mean_global_hd95"}, "cannot select a model"),
        ({"challenge": "gli", "challenge_key": "all_instance_tp_et"}, "cannot select a model"),
        ({"challenge": "gli", "challenge_key": "global_dsc_cc"}, "not an aggregated value"),
        ({"challenge": "ped", "regions": RC4}, "convention 'brats2024ped'"),
        ({"regions": ["WT", "ET"]}, "not region channels"),
    ],
)
def test_bad_choices_are_refused(kwargs: dict, match: str) -> None:
    regions = kwargs.pop("regions", RC4[:3])
    with pytest.raises(ValueError, match=match):
        validation_metrics(regions, **kwargs)


def _parser(bundle: str, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update(dict(overrides))
    return parser


def _handler_config(parser: ConfigParser, target: str) -> str:
    (index,) = [
        i for i, h in enumerate(parser["train"]["handlers"]) if h["_target_"].endswith(target)
    ]
    return f"train#handlers#{index}"


@pytest.mark.parametrize("bundle", REGION_BUNDLES)
def test_bundle_selects_and_stops_on_the_chosen_metric(bundle: str) -> None:
    default = _parser(bundle)
    for target in ("Checkpointer", "EarlyStopOnValidation"):
        key = default.get_parsed_content(f"{_handler_config(default, target)}#key_metric")
        assert key == "val_mean_dice"

    parser = _parser(bundle, challenge="gli", regions=RC4)
    key_metric = parser.get_parsed_content("validate#evaluator#key_val_metric")
    (name, handler), *_ = key_metric.items()
    assert name == "val_mean_lesionwise_dsc_mean"
    assert isinstance(handler, ChallengeMetricHandler) and handler.metric_fn.challenge == "gli"
    additional = parser.get_parsed_content("validate#evaluator#additional_metrics")
    assert isinstance(additional["val_mean_dice"], RegionMetricHandler)
    for target in ("Checkpointer", "EarlyStopOnValidation"):
        key = parser.get_parsed_content(f"{_handler_config(parser, target)}#key_metric")
        assert key == name, target
    assert parser.get_parsed_content("tracking_params#validation_metric") == name
    assert parser.get_parsed_content("tracking_params#regions") == "WT,TC,ET,RC"


def test_bundle_reports_an_unknown_challenge_in_one_line() -> None:
    parser = _parser(REGION_BUNDLES[0], challenge="glx")
    with pytest.raises(RuntimeError) as err:
        parser.get_parsed_content("validate#evaluator#key_val_metric")
    message = format_config_error(err.value, prefix="bundle run: error")
    assert message is not None
    first = message.splitlines()[0]
    assert "unknown challenge 'glx'" in first and "'gli'" in first
