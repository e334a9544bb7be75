"""Training losses of the region-based (WT/TC/ET) bundles.

:class:`RegionDiceBCELoss` is the loss of ``brats_mri_segmentation`` and
``brats_slice_segmentation_2d``: soft Dice over the batch plus per-channel binary cross-entropy
on the logits, the region-based recipe of nnU-Net (Isensee et al., BraTS 2020/2021) for
overlapping sigmoid channels. Both terms penalise a false positive wherever it is, including
on patches (or whole batches) where a region is absent:

* **BCE with logits**, averaged over every voxel of every channel: a voxel predicted as tumour
  where the reference has none costs ``log(1 + exp(logit))``, whatever the rest of the patch
  holds. MONAI's ``DiceCELoss(sigmoid=True)``, which the bundles used before, applies *softmax*
  cross-entropy to multi-channel inputs: with multi-hot region targets it is 0 on background
  voxels, so it taught nothing there.
* **Batch soft Dice**: intersections and sums over the batch and all voxels of a channel
  (``DiceLoss(batch=True)``), so a channel absent from one patch still gets the Dice gradient
  of the batch. A channel absent from the *whole* batch gives ``1 - 1e-5 / (sum p + 1e-5)``
  with ``smooth_nr = smooth_dr = 1e-5``: about 1 for any real prediction (soft probabilities
  never sum to much below 1e-5), with a non-zero but negligible gradient; there the BCE term
  does the penalising. (With ``smooth_nr = 0``, the old setting, that value is exactly 1
  whatever the prediction.)

Measured on a tumour-free ``(2, 3, 16, 16, 16)`` batch: "tumour everywhere" (logits +8)
costs 9.0 (BCE 8.0 + Dice 1.0), the right answer (logits -8) 1.0003, gradient norm 6.4e-3
and 2.2e-6; the old ``DiceCELoss`` gave 1.0 to both, gradient 0.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

__all__ = ["RegionDiceBCELoss"]


class RegionDiceBCELoss(nn.Module):
    """``dice_weight * batch soft Dice + bce_weight * BCE-with-logits`` of region channels.

    Args:
        dice_weight: weight of the Dice term (>= 0).
        bce_weight: weight of the BCE term (>= 0).
        batch_dice: sum the Dice terms over the batch as well as the voxels (nnU-Net's
            ``batch_dice``); False: one Dice per sample and channel, then their mean.
        smooth_nr: added to the Dice numerator; must be > 0 so that a channel empty in the
            reference has a gradient from the Dice term too.
        smooth_dr: added to the Dice denominator.
        squared_pred: squared predictions and targets in the Dice denominator.
        pos_weight: optional per-channel weight of positive voxels in the BCE term (a
            sequence of one value per channel), as ``torch.nn.BCEWithLogitsLoss``.

    Inputs are logits ``(B, C, *spatial)`` and targets of the same shape with values in
    ``[0, 1]`` (the region channels); the loss is a scalar. Computed in float32 under AMP.
    """

    pos_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        batch_dice: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        squared_pred: bool = False,
        pos_weight: list[float] | tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(
                "dice_weight and bce_weight must be >= 0 and not both 0, got "
                f"{dice_weight} and {bce_weight}"
            )
        if smooth_nr <= 0 or smooth_dr <= 0:
            raise ValueError(
                f"smooth_nr and smooth_dr must be > 0 (got {smooth_nr}, {smooth_dr}): with 0 "
                "an empty reference channel gives a constant Dice loss, no gradient"
            )
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.dice = DiceLoss(
            sigmoid=True,
            batch=batch_dice,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            squared_pred=squared_pred,
        )
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of logits ``input`` against region targets ``target`` (same shape)."""
        if input.shape != target.shape:
            raise ValueError(
                "logits and targets must have one shape (B, C, *spatial), got "
                f"{tuple(input.shape)} and {tuple(target.shape)}"
            )
        if input.ndim < 3:
            raise ValueError(f"expected (B, C, *spatial) logits, got shape {tuple(input.shape)}")
        # Plain tensors: MONAI MetaTensors would carry (and re-check) metadata through the sum.
        logits = _plain(input).float()
        ref = _plain(target).float()
        total = logits.new_zeros(())
        if self.dice_weight:
            total = total + self.dice_weight * self.dice(logits, ref)
        if self.bce_weight:
            pos = None
            if self.pos_weight is not None:
                shape = (-1, *([1] * (logits.ndim - 2)))
                pos = self.pos_weight.to(logits.device).reshape(shape)
            bce = nn.functional.binary_cross_entropy_with_logits(logits, ref, pos_weight=pos)
            total = total + self.bce_weight * bce
        return total


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a plain ``torch.Tensor`` (a MetaTensor's data, autograd kept)."""
    as_tensor = getattr(x, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else x
