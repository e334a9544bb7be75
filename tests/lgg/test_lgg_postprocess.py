"""The LGG inference choices made on the real development fold: keep the largest 3D
component(s) of a patient, and average each slice with its left-right mirror (flip TTA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tumorseg.data.synthetic_lgg import generate_kaggle_3m
from tumorseg.inference.lgg import segment_kaggle_3m_folder
from tumorseg.transforms.post import remove_isolated_false_positives


def _volume() -> np.ndarray:
    volume = np.zeros((6, 12, 12), bool)
    volume[0:4, 1:5, 1:5] = True  # 64 voxels over 4 slices
    volume[1:4, 8:11, 8:11] = True  # 27 voxels over 3 slices
    volume[2:4, 8:10, 1:3] = True  # 8 voxels over 2 slices
    return volume


def test_max_components_keeps_the_largest_ones() -> None:
    volume = _volume()
    one = remove_isolated_false_positives(volume, min_slices=0, max_components=1)
    assert one.sum() == 64 and one[0:4, 1:5, 1:5].all()
    two = remove_isolated_false_positives(volume, min_slices=0, max_components=2)
    assert two.sum() == 64 + 27
    # The span rule applies first: with min_slices 4 only the first component is left anyway.
    assert remove_isolated_false_positives(volume, min_slices=4, max_components=2).sum() == 64
    assert remove_isolated_false_positives(volume, min_slices=0).sum() == volume.sum()
    with pytest.raises(ValueError, match="got -1"):
        remove_isolated_false_positives(volume, max_components=-1)


class _LeftHalf(torch.nn.Module):
    """Confident abnormality on the left half of every slice, none on the right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], 1, *x.shape[2:]), -20.0)
        out[..., : x.shape[-1] // 2] = 20.0
        return out


def _identity(item: dict) -> dict:
    with Image.open(item["image"]) as img:
        return {"image": np.moveaxis(np.asarray(img, np.float32), -1, 0)}


@pytest.mark.parametrize(("flip_tta", "left_on"), [(False, True), (True, False)])
def test_flip_tta_averages_with_the_mirror_image(
    tmp_path: Path, flip_tta: bool, left_on: bool
) -> None:
    ids = generate_kaggle_3m(tmp_path / "in", num_patients=1, shape=(16, 16, 16), seed=1)
    report = segment_kaggle_3m_folder(
        tmp_path / "in", tmp_path / "out", network=_LeftHalf(), preprocessing=_identity,
        threshold=0.5, flip_tta=flip_tta,
    )  # fmt: skip
    assert not report.failures and len(report.written) == 16
    with Image.open(tmp_path / "out" / ids[0] / f"{ids[0]}_5_mask.tif") as img:
        mask = np.asarray(img)
    # Without TTA the left half is in; with it, left and mirrored right average to 0.5,
    # which the strict threshold leaves out: the mirror really was averaged in.
    assert (mask[:, :8] == 255).all() == left_on and not mask[:, 8:].any()
