"""The brain mask that gives the patch sampler its negative centres."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tumorseg.transforms import BrainMaskd, brain_mask


def test_brain_mask_is_any_non_zero_channel_whatever_its_sign() -> None:
    image = np.zeros((4, 5, 5, 5), np.float32)
    image[0, 1, 1, 1] = -2.0  # z-scored dark tissue: below the mean in one channel
    image[:, 2, 2, 2] = -0.5  # below the mean in every channel
    image[3, 3, 3, 3] = 1.0
    mask = brain_mask(image)
    assert mask.shape == (1, 5, 5, 5) and mask.dtype == np.uint8
    assert set(zip(*np.nonzero(mask[0]), strict=True)) == {(1, 1, 1), (2, 2, 2), (3, 3, 3)}
    as_tensor = brain_mask(torch.from_numpy(image))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.uint8
    assert np.array_equal(as_tensor.numpy(), mask)


def test_dict_form_keeps_the_image_and_checks_its_arguments() -> None:
    image = np.ones((2, 3, 3), np.float32)
    out = BrainMaskd("image", output_key="brain")({"image": image})
    assert out["image"] is image and out["brain"].shape == (1, 3, 3)
    with pytest.raises(ValueError, match="one key"):
        BrainMaskd(["a", "b"], output_key="brain")
    with pytest.raises(ValueError, match="channel-first"):
        brain_mask(np.zeros(4))
