"""The region loss of the BraTS bundles penalises false positives on tumour-free patches.

The bundle tests read the ``loss`` each bundle's ``train.json`` builds, so they test what
training uses. With the former ``DiceCELoss(sigmoid=True, smooth_nr=0)`` a tumour-free patch
gave loss 1.0 and gradient 0 for "tumour everywhere" logits: the same as a perfect prediction.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import MetaTensor  # noqa: E402

from tumorseg.losses import RegionDiceBCELoss  # noqa: E402
from tumorseg.transforms import labels_to_regions  # noqa: E402

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
REGION_BUNDLES = {
    "3d": (BUNDLES / "brats_mri_segmentation", (2, 3, 16, 16, 16)),
    "2d": (BUNDLES / "brats_slice_segmentation_2d", (4, 3, 24, 24)),
}
CONFIDENT = 8.0  # logit of a confident prediction: sigmoid 0.9997


def _bundle_loss(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    bundle, shape = REGION_BUNDLES[name]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    return parser.get_parsed_content("loss"), shape


def _loss_and_grad(loss_fn, logits: torch.Tensor, target: torch.Tensor):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    return float(loss.detach()), logits.grad


@pytest.mark.parametrize("bundle", sorted(REGION_BUNDLES))
def test_bundle_loss_penalises_false_positives_on_a_tumour_free_patch(bundle: str) -> None:
    loss_fn, shape = _bundle_loss(bundle)
    target = torch.zeros(shape)
    perfect, _ = _loss_and_grad(loss_fn, torch.full(shape, -CONFIDENT), target)
    wrong, grad = _loss_and_grad(loss_fn, torch.full(shape, CONFIDENT), target)
    assert wrong > perfect + 1.0, (wrong, perfect)
    assert float(grad.norm()) > 1e-3
    assert bool((grad > 0).all())  # every false-positive voxel is pushed down


@pytest.mark.parametrize("bundle", sorted(REGION_BUNDLES))
def test_bundle_loss_penalises_enhancing_tumour_predicted_on_an_et_free_tumour(
    bundle: str,
) -> None:
    loss_fn, shape = _bundle_loss(bundle)
    target = torch.zeros(shape)
    core = (slice(None), slice(None, 2)) + tuple(slice(4, 10) for _ in shape[2:])
    target[core] = 1.0  # WT and TC present, ET absent
    perfect_logits = torch.where(target > 0, CONFIDENT, -CONFIDENT)
    et_everywhere = perfect_logits.clone()
    et_everywhere[:, 2] = CONFIDENT
    perfect, _ = _loss_and_grad(loss_fn, perfect_logits, target)
    wrong, grad = _loss_and_grad(loss_fn, et_everywhere, target)
    assert wrong > perfect + 1.0, (wrong, perfect)
    # ET predicted on background voxels is pushed down too, not only inside the tumour.
    assert bool((grad[:, 2][target[:, 0] == 0] > 0).all())


def test_loss_is_near_zero_for_a_perfect_prediction_and_accepts_meta_tensors() -> None:
    loss_fn = RegionDiceBCELoss()
    target = torch.zeros(2, 3, 8, 8, 8)
    target[:, :, 2:6, 2:6, 2:6] = 1.0
    logits = MetaTensor(torch.where(target > 0, 20.0, -20.0))
    assert float(loss_fn(logits, MetaTensor(target))) < 1e-4
    assert type(loss_fn(logits, target)) is torch.Tensor


def test_batch_dice_gives_an_empty_channel_of_one_sample_the_batch_gradient() -> None:
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, 0, 2:6, 2:6, 2:6] = 1.0  # sample 1 empty
    logits = torch.where(target > 0, 3.0, -3.0)
    logits[1, 0, 0, 0, 0] = 3.0  # one false-positive voxel in the empty sample
    dice_only = RegionDiceBCELoss(bce_weight=0.0)
    _, grad = _loss_and_grad(dice_only, logits, target)
    assert float(grad[1, 0, 0, 0, 0]) > 0


def test_pos_weight_scales_positive_voxels_per_channel() -> None:
    target = torch.ones(1, 2, 4, 4)
    logits = torch.zeros(1, 2, 4, 4)
    plain = RegionDiceBCELoss(dice_weight=0.0)(logits, target)
    weighted = RegionDiceBCELoss(dice_weight=0.0, pos_weight=[2.0, 2.0])(logits, target)
    assert float(weighted) == pytest.approx(2 * float(plain))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"smooth_nr": 0.0}, "no gradient"),
        ({"dice_weight": 0.0, "bce_weight": 0.0}, "not both 0"),
        ({"bce_weight": -1.0}, ">= 0"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RegionDiceBCELoss(**kwargs)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        RegionDiceBCELoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))


def test_a_cavity_channel_outside_the_tumour_is_learned_like_the_others() -> None:
    # Four channels (WT, TC, ET, RC from brats2024 labels): RC lies outside WT, so its
    # target is not nested; its loss falls when the RC logit agrees, and a wrong RC channel
    # gets the gradient that corrects it.
    label = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
    label[0, 1:4, 1:4, 1:4] = 2
    label[0, 2, 2, 2] = 3
    label[0, 5:7, 5:7, 5:7] = 4
    target = labels_to_regions(label[0], "brats2024", regions=["WT", "TC", "ET", "RC"])[None]
    assert target.shape == (1, 4, 8, 8, 8)
    assert not (target[:, 0] * target[:, 3]).any()  # the cavity is in no tumour region
    right = torch.where(target > 0, 8.0, -8.0)
    wrong_rc = right.clone()
    wrong_rc[:, 3] = -right[:, 3]
    loss_fn = RegionDiceBCELoss()
    assert float(loss_fn(right, target)) < 0.1  # the one-voxel ET's soft Dice is ~0.92
    assert float(loss_fn(wrong_rc, target)) > 1.0
    logits = wrong_rc.clone().requires_grad_(True)
    loss_fn(logits, target).backward()
    assert logits.grad is not None
    rc_grad = logits.grad[:, 3]
    assert (rc_grad * (2 * target[:, 3] - 1) < 0).all()  # descent moves every RC voxel right
    assert float(rc_grad.abs().sum()) > 5 * float(logits.grad[:, :3].abs().sum())
