"""The validation metrics of the BraTS bundles: the project's region Dice, or a challenge's own.

``train.json`` declares its evaluator's metrics with one expression,
``$tumorseg.metrics.validation_metrics(@regions, @challenge, @challenge_key)``, and the best
model, early stopping and the evaluation table follow the returned
:attr:`ValidationMetrics.key_name`:

* ``challenge`` empty (the default): the key metric is ``val_mean_dice``, the BraTS-rule mean
  Dice over the region channels of :class:`~tumorseg.metrics.handlers.RegionMetricHandler`
  (``wt``, ``tc``, ``et`` and ``rc`` when the network predicts the resection cavity), with
  ``val_hd95_mean`` beside it;
* ``challenge`` a configuration of the official package (``gli``, ``mets``, ``ped``,
  ``MenPre``, ``GoAT``): the key metric is that configuration's ``challenge_key`` from
  :class:`~tumorseg.metrics.handlers.ChallengeMetricHandler`, by default
  ``val_mean_lesionwise_dsc_mean`` (lesion-wise DSC averaged over the groups), and the region
  metrics are still reported beside it, so runs stay comparable.

A model is kept when its key metric is *higher*, so only DSC and NSD columns can be keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from monai.handlers import from_engine

from tumorseg.conventions import check_regions
from tumorseg.metrics.challenge import CHALLENGE_METRIC_COLUMNS, CHALLENGES
from tumorseg.metrics.handlers import ChallengeMetricHandler, RegionMetricHandler, published_name

__all__ = [
    "DEFAULT_CHALLENGE_KEY",
    "VALIDATION_CHALLENGES",
    "VALIDATION_PREFIX",
    "ValidationMetrics",
    "check_challenge_key",
    "check_validation_challenge",
    "validation_metrics",
]

#: Prefix of every validation metric in ``engine.state.metrics`` and in MLflow.
VALIDATION_PREFIX = "val_"
#: The challenge metric a model is selected on by default: lesion-wise DSC, mean over groups.
DEFAULT_CHALLENGE_KEY = "mean_lesionwise_dsc_mean"
#: The configurations a region network can be validated on (``MenRT`` scores a GTV label).
VALIDATION_CHALLENGES: tuple[str, ...] = tuple(c for c in CHALLENGES if c != "MenRT")
_HIGHER_IS_BETTER = ("dsc", "nsd")


class ValidationMetrics(NamedTuple):
    """The evaluator's metrics: ``key_val_metric`` and ``additional_metrics`` of MONAI's
    ``SupervisedEvaluator``, and the name the best model is selected on.

    Attributes:
        key_name: name of the key metric in ``engine.state.metrics`` (``val_mean_dice``).
        key: ``{key_name: handler}``.
        additional: the other metric handlers, by name.
        reported: the names an evaluation table lists (MONAI's ``MetricsSaver``): the key
            metric, the mean Dice and the Dice of each region.
    """

    key_name: str
    key: dict[str, Any]
    additional: dict[str, Any]
    reported: tuple[str, ...]


def check_validation_challenge(challenge: str) -> str:
    """The configuration name as the package spells it, for validation during training.

    Raises:
        ValueError: one line naming the value and listing :data:`VALIDATION_CHALLENGES`.
    """
    for name in VALIDATION_CHALLENGES:
        if str(challenge).strip().lower() == name.lower():
            return name
    raise ValueError(
        f"unknown challenge {challenge!r} to validate on (--challenge); expected one of "
        f"{list(VALIDATION_CHALLENGES)}, or '' for the project's region Dice"
    )


def check_challenge_key(key: str) -> str:
    """A challenge value a model can be selected on: a DSC or NSD (higher is better).

    Args:
        key: an aggregated value of :class:`~tumorseg.metrics.handlers.ChallengeMetric`,
            ``mean_<column>`` or ``<column>_<group>`` (``mean_global_dsc``, ``global_nsd_wt``).

    Raises:
        ValueError: for an HD95 or count column, or a name of no such column (the valid means
            are listed).
    """
    column = key[len("mean_") :] if key.startswith("mean_") else key.rsplit("_", 1)[0]
    if column not in CHALLENGE_METRIC_COLUMNS or not any(t in column for t in _HIGHER_IS_BETTER):
        valid = [f"mean_{c}" for c in CHALLENGE_METRIC_COLUMNS if "hd95" not in c]
        raise ValueError(
            f"challenge_key {key!r} cannot select a model (the best model has the highest key "
            f"metric); choose a DSC or NSD value, e.g. one of {valid} or '<column>_<group>'"
        )
    return key


def validation_metrics(
    regions: Sequence[str],
    challenge: str | None = "",
    challenge_key: str = DEFAULT_CHALLENGE_KEY,
    *,
    prefix: str = VALIDATION_PREFIX,
) -> ValidationMetrics:
    """The validation metric handlers of a region network, keyed on the chosen metric.

    Args:
        regions: the network's channels (``["WT", "TC", "ET"]``, optionally ``"RC"``).
        challenge: empty or None for the project's region Dice, else a configuration of the
            official ``brats-evaluation`` package (``gli``, ``mets``, ``ped``, ``MenPre``,
            ``GoAT``; needs ``tumorseg[brats]``).
        challenge_key: with ``challenge``, the value selected on (:func:`check_challenge_key`).
        prefix: prepended to every metric name.

    Returns:
        The key metric's name, the key handler and the others.

    Raises:
        ValueError: unknown regions, challenge (the valid ones are listed) or challenge key.
        tumorseg.metrics.challenge.ChallengePackageMissing: a challenge without the package.
    """
    names = [r.lower() for r in check_regions(regions)]
    output = from_engine(["pred", "label"])
    region_key = published_name("dice_mean", prefix)
    dice = RegionMetricHandler(
        regions=names, key="dice_mean", include_hd95=False, prefix=prefix, output_transform=output
    )
    hd95 = RegionMetricHandler(
        regions=names, key="hd95_mean", prefix=prefix, output_transform=output
    )
    additional = {f"{prefix}hd95_mean": hd95}
    per_region = tuple(published_name(f"dice_{r}", prefix) for r in names)
    if not challenge:
        reported = (region_key, *per_region)
        return ValidationMetrics(region_key, {region_key: dice}, additional, reported)
    name = check_validation_challenge(challenge)
    key = check_challenge_key(challenge_key)
    handler = ChallengeMetricHandler(
        challenge=name, regions=regions, key=key, prefix=prefix, output_transform=output
    )
    key_name = f"{prefix}{key}"
    return ValidationMetrics(
        key_name,
        {key_name: handler},
        {region_key: dice, **additional},
        (key_name, region_key, *per_region),
    )
