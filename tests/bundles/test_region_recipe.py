"""The training recipe of both BraTS region bundles, read from their ``train.json``.

Negative patch centres are drawn from the whole brain (not only from voxels brighter than
their channel's mean after z-scoring), and the trainer's log does not call the highest
training loss its "best". The loss and the validation key metric: ``tests/test_losses.py``
and ``tests/metrics/test_metrics_handlers.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from _bundle_utils import BUNDLES

REGION_BUNDLES = ("brats_mri_segmentation", "brats_slice_segmentation_2d")
ALL_BUNDLES = (*REGION_BUNDLES, "lgg_flair_segmentation_2d")
SHAPE = (40, 40, 48)
DARK, BRIGHT = -1.0, 1.5  # z-scored brain tissue below / above its channel's mean


def _parser(bundle: str, **overrides: Any) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update({"num_workers": 0, **overrides})
    return parser


def _sampler(bundle: str, num_samples: int) -> Compose:
    """The bundle's random transforms up to (and with) the patch sampler."""
    overrides: dict[str, Any] = {"num_samples": num_samples}
    if bundle == "brats_mri_segmentation":
        overrides["roi_size"] = [9, 9, 9]  # odd: the centre voxel is the patch's middle
    parser = _parser(bundle, **overrides)
    chain = parser.get_parsed_content("train#random_transforms")
    names = [type(t).__name__ for t in chain]
    return Compose(chain[: names.index("RandCropByPosNegLabeld") + 1])


def _tumour_free_study() -> dict[str, MetaTensor]:
    """A z-scored brain block, 0 outside it; its lower axial half is dark in every channel."""
    image = np.zeros((4, *SHAPE), np.float32)
    image[:, 6:34, 6:34, 6:42] = BRIGHT
    image[:, 6:34, 6:34, 6:24] = DARK
    label = np.zeros((3, *SHAPE), np.float32)
    return {"image": MetaTensor(image), "label": MetaTensor(label)}


@pytest.mark.parametrize("bundle", REGION_BUNDLES)
def test_negative_centres_cover_the_whole_brain_and_nothing_outside(bundle: str) -> None:
    sampler = _sampler(bundle, num_samples=200)
    sampler.set_random_state(seed=0)
    samples = sampler(_tumour_free_study())
    centres = []
    for s in samples:
        image = np.asarray(s["image"])
        if bundle == "brats_mri_segmentation":
            centres.append(float(image[0, 4, 4, 4]))
        else:  # one axial slice: its brain values tell which half it came from
            values = image[0][image[0] != 0]
            centres.append(float(values[0]) if values.size else 0.0)
    centres_arr = np.asarray(centres)
    assert not np.any(centres_arr == 0.0), "a negative centre outside the brain"
    dark_share = float(np.mean(centres_arr == DARK))
    # The dark half is 18 of 36 brain slices (3D: half the brain's voxels); with the former
    # image_threshold on the z-scored image it was never a centre.
    assert 0.3 <= dark_share <= 0.7, dark_share


@pytest.mark.parametrize("bundle", REGION_BUNDLES)
def test_sampler_masks_do_not_reach_the_batch(bundle: str) -> None:
    parser = _parser(bundle, num_samples=2, roi_size=[16, 16, 16][: 3 if "mri" in bundle else 2])
    transforms = Compose(parser.get_parsed_content("train#random_transforms"))
    transforms.set_random_state(seed=0)
    for sample in transforms(_tumour_free_study()):
        assert set(sample) == {"image", "label"}


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_training_log_names_the_lowest_loss_as_the_best(bundle: str) -> None:
    from monai.engines import SupervisedTrainer
    from monai.handlers import StatsHandler

    parser = _parser(bundle)
    key_metric = parser.get_parsed_content("train#trainer#key_train_metric")
    cmp_fn = parser.get_parsed_content("train#trainer#metric_cmp_fn")
    losses = iter([0.9, 0.9, 0.5, 0.5, 0.7, 0.7])  # epoch means 0.9, 0.5, 0.7

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 0 + self.w

    network = Fixed()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=[{"image": torch.zeros(1, 1), "label": torch.zeros(1, 1)}] * 2,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        loss_function=lambda pred, label: pred.sum() * 0 + next(losses),
        key_train_metric=key_metric,
        metric_cmp_fn=cmp_fn,
        train_handlers=[StatsHandler(iteration_log=False, name=f"recipe-test-{bundle}")],
    )
    records: list[logging.LogRecord] = []
    capture = logging.Handler(logging.INFO)
    capture.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(f"recipe-test-{bundle}")  # MONAI's loggers do not propagate
    logger.addHandler(capture)
    try:
        trainer.run()
    finally:
        logger.removeHandler(capture)
    assert trainer.state.best_metric == pytest.approx(0.5)
    assert trainer.state.best_metric_epoch == 2
    lines = [r.getMessage() for r in records if "Key metric" in r.getMessage()]
    assert lines and "best value: 0.5 at epoch: 2" in lines[-1], lines
