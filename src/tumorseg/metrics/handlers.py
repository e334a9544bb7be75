"""MONAI metric and ignite handler: per-region Dice and HD95 during validation.

:class:`RegionMetric` is a MONAI ``CumulativeIterationMetric``: every call scores each
sample of a batch of binary region channels ``(B, 3, H, W, D)`` (``WT, TC, ET``) with the same
functions as the offline evaluator (:func:`tumorseg.metrics.regions.dice` and
:func:`tumorseg.metrics.surface.hd95`, BraTS empty-mask rules), so validation during training
reports the numbers ``tumorseg evaluate`` would. The per-sample scores go into MONAI's
cumulative buffers, which are all-gathered across ranks when a ``torch.distributed`` process
group is initialised (and used as they are without one), so the averages are over the whole
validation set under DDP.

:class:`RegionMetricHandler` attaches it to an ignite engine: the engine's key metric (its
``name``, e.g. ``val_mean_dice``) is one scalar (mean Dice over regions by default), and every
per-region value (``dice_WT``, ``hd95_ET``, ..., ``hd95_mean``, and the mean Dice as
``mean_dice``), with the handler's ``prefix``, is also put into ``engine.state.metrics``.

The BraTS bundles select their best model and stop early on ``val_mean_dice`` of this handler:
the BraTS rule for empty masks (both empty: 1; empty reference, non-empty prediction: 0), the
number ``tumorseg evaluate`` reports. MONAI's ``MeanDice``, which they used before, leaves
empty references out, so predicting ET on every ET-free case cost nothing there.

:class:`ChallengeMetric` and :class:`ChallengeMetricHandler` are the same for a BraTS 2024+
configuration of the official ``brats-evaluation`` package (``tumorseg[brats]``): each sample's
region channels become a label map in that configuration's numbering and are scored by the
package, so a model can be selected on, say, ``val_mean_lesionwise_dsc_mean`` (lesion-wise DSC
over WT, TC and ET), the numbers ``tumorseg evaluate --challenge`` gives.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from tumorseg.conventions import CHALLENGE_CONVENTIONS, REGIONS, check_regions, get_convention
from tumorseg.metrics.challenge import (
    CHALLENGE_METRIC_COLUMNS,
    CHALLENGES,
    challenge_groups,
    check_challenge,
    parse_challenge_results,
    score_challenge_arrays,
)
from tumorseg.metrics.regions import dice, hd95_key
from tumorseg.metrics.surface import hd95
from tumorseg.transforms.labels import regions_to_labels

__all__ = [
    "ChallengeMetric",
    "ChallengeMetricHandler",
    "RegionMetric",
    "RegionMetricHandler",
    "published_name",
    "spacing_from_affine",
]


def spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    """Voxel size (mm) along the array axes: the column norms of the affine's 3x3 block."""
    a = np.asarray(affine.detach().cpu() if torch.is_tensor(affine) else affine, dtype=np.float64)
    if a.shape[-2:] != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {a.shape}")
    norms = np.sqrt((a[..., :3, :3] ** 2).sum(axis=-2))
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def _sample_spacings(
    y_pred: torch.Tensor, y: torch.Tensor, spacing: tuple[float, ...] | None
) -> list[tuple[float, ...]]:
    """Voxel size of each sample: ``spacing``, else the label's (or prediction's) affine."""
    batch = int(y_pred.shape[0])
    if spacing is not None:
        return [spacing] * batch
    for source in (y, y_pred):
        affine = getattr(source, "affine", None)
        if affine is None or not hasattr(source, "meta"):
            continue
        if affine.ndim == 2:
            return [spacing_from_affine(affine)] * batch
        if affine.ndim == 3 and affine.shape[0] == batch:
            return [spacing_from_affine(a) for a in affine]
    return [(1.0, 1.0, 1.0)] * batch


def _check_region_batch(y_pred: torch.Tensor, y: torch.Tensor | None, regions: tuple) -> None:
    if y is None:
        raise ValueError("the metric needs the labels y, got None")
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y must have one shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}"
        )
    if y_pred.ndim != 5 or y_pred.shape[1] != len(regions):
        raise ValueError(
            f"expected (B, {len(regions)}, H, W, D) region channels {regions}, "
            f"got shape {tuple(y_pred.shape)}"
        )


def _buffer_rows(metric: CumulativeIterationMetric, n_columns: int) -> np.ndarray:
    """The per-sample rows a metric accumulated (every rank), ``(n_samples, n_columns)``.

    Raises:
        ValueError: when nothing has been accumulated yet.
    """
    buffer = metric.get_buffer()
    if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
        raise ValueError(
            f"{type(metric).__name__}.aggregate() called before any data was accumulated"
        )
    return np.asarray(buffer.reshape(-1, n_columns).double().cpu().numpy())


class RegionMetric(CumulativeIterationMetric):
    """Per-region Dice and HD95 of binary region channels, cumulated over iterations.

    Args:
        regions: names of the channels, in order (default ``WT, TC, ET``).
        spacing: voxel size in mm; when ``None`` it is read per sample from the label's (or
            else the prediction's) MetaTensor affine, and is 1 mm for plain tensors.
        include_hd95: also compute HD95 (the costlier part).
        hd_variant: ``"surface-distance"`` (BraTS, keys ``hd95_*``) or ``"monai"``
            (keys ``hd95_monai_*``).
        threshold: values above it are foreground (inputs should already be binary).

    ``aggregate()`` returns ``{"dice_WT": ..., "hd95_WT": ..., "dice_mean": ...,
    "hd95_mean": ...}`` averaged over every sample seen (on every rank).
    """

    def __init__(
        self,
        *,
        regions: Sequence[str] = REGIONS,
        spacing: Sequence[float] | None = None,
        include_hd95: bool = True,
        hd_variant: str = "surface-distance",
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.regions = tuple(regions)
        if not self.regions:
            raise ValueError("regions must name at least one channel, got an empty sequence")
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.include_hd95 = include_hd95
        self.hd_name = hd95_key(hd_variant)
        self.hd_variant = hd_variant
        self.threshold = float(threshold)

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Scores of one batch: ``(B, 2 * n_regions)``, Dice columns then HD95 columns."""
        _check_region_batch(y_pred, y, self.regions)
        assert y is not None
        spacings = _sample_spacings(y_pred, y, self.spacing)
        pred = (y_pred.detach().float() > self.threshold).cpu().numpy()
        ref = (y.detach().float() > self.threshold).cpu().numpy()
        rows = []
        for b in range(pred.shape[0]):
            dices = [dice(pred[b, c], ref[b, c]) for c in range(len(self.regions))]
            hds = [
                hd95(pred[b, c], ref[b, c], spacing=spacings[b], variant=self.hd_variant)
                if self.include_hd95
                else math.nan
                for c in range(len(self.regions))
            ]
            rows.append(dices + hds)
        return torch.tensor(rows, dtype=torch.float64, device=y_pred.device)

    def aggregate(self) -> dict[str, float]:
        """Mean of every per-region score over all samples (all ranks).

        Raises:
            ValueError: when nothing has been accumulated yet.
        """
        means = _buffer_rows(self, 2 * len(self.regions)).mean(axis=0).tolist()
        n = len(self.regions)
        out: dict[str, float] = {}
        for i, region in enumerate(self.regions):
            out[f"dice_{region}"] = means[i]
        if self.include_hd95:
            for i, region in enumerate(self.regions):
                out[f"{self.hd_name}_{region}"] = means[n + i]
        out["dice_mean"] = float(np.mean(means[:n]))
        if self.include_hd95:
            out[f"{self.hd_name}_mean"] = float(np.mean(means[n:]))
        return out


def published_name(key: str, prefix: str = "") -> str:
    """Name of an aggregated value of :class:`RegionMetric` in ``engine.state.metrics``.

    ``dice_mean`` -> ``<prefix>mean_dice`` (``val_mean_dice``, the key metric of the BraTS
    bundles); every other key is ``<prefix><key>`` (``val_dice_wt``, ``val_hd95_mean``).
    """
    return f"{prefix}mean_dice" if key == "dice_mean" else f"{prefix}{key}"


class _DictMetricHandler(IgniteMetricHandler):
    """Ignite handler of a metric whose ``aggregate()`` is a dict: one key metric, the rest
    published beside it (``publish(key, prefix)`` names each)."""

    def __init__(
        self,
        metric: CumulativeIterationMetric,
        *,
        key: str,
        valid: set[str],
        prefix: str,
        publish: Callable[[str, str], str],
        output_transform: Callable,
        save_details: bool,
    ) -> None:
        if key not in valid:
            raise ValueError(
                f"key {key!r} is not an aggregated value; expected one of {sorted(valid)}"
            )
        self.key = key
        self.prefix = prefix
        self._publish = publish
        self._results: dict[str, float] = {}
        super().__init__(
            metric_fn=metric, output_transform=output_transform, save_details=save_details
        )

    def compute(self) -> float:
        """The key metric; the full result dict is kept for :meth:`completed`."""
        self._results = self.metric_fn.aggregate()
        self._is_reduced = True
        if self.save_details and self._engine is not None and self._name is not None:
            self._engine.state.metric_details[self._name] = self.metric_fn.get_buffer()  # type: ignore[attr-defined]
        return float(self._results[self.key])

    def completed(self, engine: Any, name: str) -> None:
        """Store the key metric under ``name`` and every other aggregated value beside it."""
        super().completed(engine, name)
        for key, value in self._results.items():
            engine.state.metrics[self._publish(key, self.prefix)] = value


class RegionMetricHandler(_DictMetricHandler):
    """Ignite handler of :class:`RegionMetric`: one key metric plus per-region details.

    Args:
        regions: channel names, in order.
        spacing: voxel size in mm, or ``None`` to read it from the MetaTensor affines.
        include_hd95: also compute HD95.
        hd_variant: HD95 definition (see :class:`RegionMetric`).
        key: which aggregated value is reported under the handler's name (the engine's key
            metric), e.g. ``"dice_mean"`` or ``"dice_ET"``.
        prefix: prepended to the per-region keys put into ``engine.state.metrics``
            (e.g. ``"val_"`` gives ``val_dice_WT``; the mean Dice is ``val_mean_dice``, see
            :func:`published_name`). The mean Dice over regions is stored as
            ``<prefix>mean_dice`` (``val_mean_dice``), the bundles' one name for it, not also
            as ``<prefix>dice_mean``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: store the per-sample scores in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        *,
        regions: Sequence[str] = REGIONS,
        spacing: Sequence[float] | None = None,
        include_hd95: bool = True,
        hd_variant: str = "surface-distance",
        key: str = "dice_mean",
        prefix: str = "",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric = RegionMetric(
            regions=regions, spacing=spacing, include_hd95=include_hd95, hd_variant=hd_variant
        )
        valid = {f"dice_{r}" for r in metric.regions} | {"dice_mean"}
        if include_hd95:
            valid |= {f"{metric.hd_name}_{r}" for r in metric.regions} | {f"{metric.hd_name}_mean"}
        super().__init__(
            metric,
            key=key,
            valid=valid,
            prefix=prefix,
            publish=published_name,
            output_transform=output_transform,
            save_details=save_details,
        )


class ChallengeMetric(CumulativeIterationMetric):
    """A BraTS 2024+ challenge's own metrics of region channels, cumulated over iterations.

    Each sample's ``WT, TC, ET`` (and ``RC``) channels (prediction and label) are turned into
    a label map in the configuration's numbering
    (:func:`tumorseg.transforms.labels.regions_to_labels`) and scored by the official package
    (:func:`tumorseg.metrics.challenge.score_challenge_arrays` and
    :func:`~tumorseg.metrics.challenge.parse_challenge_results`), so validation reports the
    numbers ``tumorseg evaluate --challenge`` would for the same maps. The default groups are
    ``wt``, ``tc`` and ``et``, and ``rc`` when the channels include the resection cavity.

    Args:
        challenge: ``gli``, ``mets``, ``ped``, ``MenPre`` or ``GoAT`` (``MenRT``'s GTV is
            not a WT/TC/ET channel).
        metrics: column prefixes of the package's table to report (default
            :data:`CHALLENGE_METRIC_COLUMNS`).
        groups: region groups of the configuration (``wt``, ``tc``, ``et``, ``netc``,
            ``snfh``, ``rc``, ...); default ``wt``, ``tc``, ``et`` (and ``rc``, see above).
        regions: the channels of ``y_pred`` and ``y`` (``WT, TC, ET``, optionally ``RC``:
            :func:`tumorseg.conventions.check_regions`; ``RC`` only for a configuration whose
            numbering has a resection cavity, ``gli`` and ``mets``).
        spacing: voxel size in mm, or ``None`` to read it from the MetaTensor affines.
        threshold: values above it are foreground.

    ``aggregate()`` returns ``{"<metric>_<group>": mean over samples}`` (NaN samples left
    out, as the package's summary does) and ``{"mean_<metric>": mean over the groups}``.
    """

    def __init__(
        self,
        *,
        challenge: str = "gli",
        metrics: Sequence[str] = CHALLENGE_METRIC_COLUMNS,
        groups: Sequence[str] | None = None,
        regions: Sequence[str] = REGIONS,
        spacing: Sequence[float] | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.challenge = check_challenge(challenge)
        self.convention = get_convention(CHALLENGE_CONVENTIONS[self.challenge])
        if self.challenge == "MenRT":
            raise ValueError(
                "challenge 'MenRT' scores a GTV label, not WT/TC/ET region channels; choose one "
                f"of {[c for c in CHALLENGES if c != 'MenRT']}"
            )
        self.regions = check_regions(regions, self.convention)
        available = challenge_groups(self.challenge)
        default = [g for g in available if g in {"wt", "tc", "et", *map(str.lower, self.regions)}]
        self.groups = tuple(default if groups is None else groups)
        unknown = sorted(set(self.groups) - set(available))
        if unknown or not self.groups:
            raise ValueError(
                f"groups {list(self.groups)} are not region groups of {self.challenge!r}; "
                f"expected a non-empty subset of {available}"
            )
        self.metrics = tuple(metrics)
        if not self.metrics:
            raise ValueError("metrics must name at least one column prefix, got none")
        self.columns = tuple(f"{m}_{g}" for m in self.metrics for g in self.groups)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.threshold = float(threshold)

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Scores of one batch: ``(B, n_columns)`` in the order of :attr:`columns`."""
        _check_region_batch(y_pred, y, self.regions)
        assert y is not None
        spacings = _sample_spacings(y_pred, y, self.spacing)
        pred = (y_pred.detach().float() > self.threshold).cpu().numpy()
        ref = (y.detach().float() > self.threshold).cpu().numpy()
        results = [
            score_challenge_arrays(
                regions_to_labels(pred[b], self.convention, region_names=self.regions),
                regions_to_labels(ref[b], self.convention, region_names=self.regions),
                challenge=self.challenge,
                convention=self.convention,
                spacing=spacings[b],
                case_id=f"sample{b}",
            )
            for b in range(pred.shape[0])
        ]
        table = parse_challenge_results(results)
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise ValueError(
                f"the package's table has no column(s) {missing}; its columns are "
                f"{list(table.columns)}"
            )
        rows = table.iloc[: len(results)][list(self.columns)].to_numpy(dtype=np.float64)
        return torch.as_tensor(rows, dtype=torch.float64, device=y_pred.device)

    def aggregate(self) -> dict[str, float]:
        """Mean of every column over all samples (all ranks), NaN samples left out.

        Raises:
            ValueError: when nothing has been accumulated yet.
        """
        values = _buffer_rows(self, len(self.columns))
        out: dict[str, float] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
            means = np.nanmean(values, axis=0)
            for column, value in zip(self.columns, means, strict=True):
                out[column] = float(value)
            for metric in self.metrics:
                out[f"mean_{metric}"] = float(
                    np.nanmean([out[f"{metric}_{g}"] for g in self.groups])
                )
        return out


class ChallengeMetricHandler(_DictMetricHandler):
    """Ignite handler of :class:`ChallengeMetric`: select a model on a challenge's metric.

    Args:
        challenge: configuration name (see :class:`ChallengeMetric`).
        metrics: column prefixes to report.
        groups: region groups to report.
        regions: the channels of the engine's ``pred`` and ``label`` (see :class:`ChallengeMetric`).
        spacing: voxel size in mm, or ``None`` to read it from the MetaTensor affines.
        key: the aggregated value reported under the handler's name (the engine's key
            metric), e.g. ``"mean_lesionwise_dsc_mean"`` (the default: lesion-wise DSC
            averaged over the groups) or ``"global_nsd_wt"``.
        prefix: prepended to every other aggregated value put into ``engine.state.metrics``
            (``"val_"`` gives ``val_lesionwise_dsc_mean_et``).
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        save_details: store the per-sample scores in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        *,
        challenge: str = "gli",
        metrics: Sequence[str] = CHALLENGE_METRIC_COLUMNS,
        groups: Sequence[str] | None = None,
        regions: Sequence[str] = REGIONS,
        spacing: Sequence[float] | None = None,
        key: str = "mean_lesionwise_dsc_mean",
        prefix: str = "",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric = ChallengeMetric(
            challenge=challenge, metrics=metrics, groups=groups, regions=regions, spacing=spacing
        )
        valid = set(metric.columns) | {f"mean_{m}" for m in metric.metrics}
        super().__init__(
            metric,
            key=key,
            valid=valid,
            prefix=prefix,
            publish=lambda k, p: f"{p}{k}",
            output_transform=output_transform,
            save_details=save_details,
        )
