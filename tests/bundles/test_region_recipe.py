"""The training recipe of both BraTS region bundles, read from their ``train.json``.

The trainer's log does not call the highest training loss its "best". The loss and the
validation key metric: ``tests/test_losses.py`` and ``tests/metrics/test_metrics_handlers.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from monai.bundle import ConfigParser

from _bundle_utils import BUNDLES

REGION_BUNDLES = ("brats_mri_segmentation", "brats_slice_segmentation_2d")


def _parser(bundle: str, **overrides: Any) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update({"num_workers": 0, **overrides})
    return parser


@pytest.mark.parametrize("bundle", REGION_BUNDLES)
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
