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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from tumorseg.conventions import REGIONS
from tumorseg.metrics.regions import dice, hd95_key
from tumorseg.metrics.surface import hd95

__all__ = ["RegionMetric", "RegionMetricHandler", "published_name", "spacing_from_affine"]


def spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    """Voxel size (mm) along the array axes: the column norms of the affine's 3x3 block."""
    a = np.asarray(affine.detach().cpu() if torch.is_tensor(affine) else affine, dtype=np.float64)
    if a.shape[-2:] != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {a.shape}")
    norms = np.sqrt((a[..., :3, :3] ** 2).sum(axis=-2))
    return (float(norms[0]), float(norms[1]), float(norms[2]))


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

    def _sample_spacings(self, y_pred: torch.Tensor, y: torch.Tensor) -> list[tuple[float, ...]]:
        batch = int(y_pred.shape[0])
        if self.spacing is not None:
            return [self.spacing] * batch
        for source in (y, y_pred):
            affine = getattr(source, "affine", None)
            if affine is None or not hasattr(source, "meta"):
                continue
            if affine.ndim == 2:
                return [spacing_from_affine(affine)] * batch
            if affine.ndim == 3 and affine.shape[0] == batch:
                return [spacing_from_affine(a) for a in affine]
        return [(1.0, 1.0, 1.0)] * batch

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Scores of one batch: ``(B, 2 * n_regions)``, Dice columns then HD95 columns."""
        if y is None:
            raise ValueError("RegionMetric needs the labels y, got None")
        if y_pred.shape != y.shape:
            raise ValueError(
                f"y_pred and y must have one shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}"
            )
        if y_pred.ndim != 5 or y_pred.shape[1] != len(self.regions):
            raise ValueError(
                f"expected (B, {len(self.regions)}, H, W, D) region channels {self.regions}, "
                f"got shape {tuple(y_pred.shape)}"
            )
        spacings = self._sample_spacings(y_pred, y)
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
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            raise ValueError("RegionMetric.aggregate() called before any data was accumulated")
        means = buffer.reshape(-1, 2 * len(self.regions)).double().mean(dim=0).tolist()
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


class RegionMetricHandler(IgniteMetricHandler):
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
            :func:`published_name`).
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
        if key not in valid:
            raise ValueError(
                f"key {key!r} is not an aggregated value; expected one of {sorted(valid)}"
            )
        self.key = key
        self.prefix = prefix
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
        """Store the key metric under ``name`` and every per-region value beside it.

        The mean Dice over regions is stored as ``<prefix>mean_dice`` (``val_mean_dice``), the
        bundles' one name for it, not also as ``<prefix>dice_mean``.
        """
        super().completed(engine, name)
        for key, value in self._results.items():
            engine.state.metrics[published_name(key, self.prefix)] = value
