"""The missing-sequence augmentation copies FLAIR into the drawn channels, and only there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from tumorseg.transforms import RandCopyChanneld, copy_channel


def _image() -> torch.Tensor:
    # Three distinguishable channels: 0, 10 and 20 plus a ramp.
    ramp = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    return torch.stack([ramp, ramp + 10, ramp + 20])


def test_copy_channel_replaces_targets_and_leaves_input_alone() -> None:
    image = _image()
    before = image.clone()
    out = copy_channel(image, 1, [0, 2])
    assert torch.equal(image, before)
    for channel in range(3):
        assert torch.equal(out[channel], before[1])


def test_copy_channel_numpy_and_meta_kept() -> None:
    out = copy_channel(_image().numpy(), 1, [2])
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out[2], out[1])
    np.testing.assert_array_equal(out[0], _image().numpy()[0])
    meta = MetaTensor(_image(), meta={"filename_or_obj": "case.tif"})
    copied = copy_channel(meta, 1, [2])
    assert isinstance(copied, MetaTensor)
    assert copied.meta["filename_or_obj"] == "case.tif"


def test_copy_channel_rejects_a_channel_outside_the_image() -> None:
    with pytest.raises(ValueError, match="channel 3 is outside the image's 3 channels"):
        copy_channel(_image(), 1, [3])


@pytest.mark.parametrize("groups", [[], [[]], [[1, 2]]])
def test_bad_target_groups_are_refused(groups: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="target_groups"):
        RandCopyChanneld("image", source_channel=1, target_groups=groups)


def test_prob_zero_passes_through_and_prob_one_always_copies_a_group() -> None:
    image = _image()
    never = RandCopyChanneld("image", 1, [[2], [0, 2]], prob=0.0)
    assert torch.equal(never({"image": image})["image"], image)

    always = RandCopyChanneld("image", 1, [[2], [0, 2]], prob=1.0)
    always.set_random_state(0)
    seen = set()
    for _ in range(40):
        out = always({"image": image, "label": "kept"})
        assert out["label"] == "kept"
        assert torch.equal(out["image"][1], image[1])  # the source is never changed
        assert torch.equal(out["image"][2], image[1])  # channel 2 is in every group
        seen.add(bool(torch.equal(out["image"][0], image[1])))
    assert seen == {True, False}  # both groups are drawn


def test_rate_matches_prob() -> None:
    transform = RandCopyChanneld("image", 1, [[2]], prob=0.25)
    transform.set_random_state(123)
    image = _image()
    copied = sum(
        bool(torch.equal(transform({"image": image})["image"][2], image[1])) for _ in range(2000)
    )
    assert 400 < copied < 600
