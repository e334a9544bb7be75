"""8-bit slice intensity: per-slice z-score vs the file's own per-patient 8-bit scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity

from tumorseg.transforms import INTENSITY_MODES, SliceIntensityd, slice_intensity


def _slice(tissue: float, lesion: float, lesion_rows: int) -> torch.Tensor:
    """One 3-channel 8-bit slice: background 0, brain ``tissue``, a lesion of ``lesion_rows``."""
    image = torch.zeros(3, 16, 16)
    image[:, 2:14, 2:14] = tissue
    image[:, 2 : 2 + lesion_rows, 2:14] = lesion
    return image


def test_uint8_keeps_the_patient_scale_the_same_on_every_slice() -> None:
    # Same tissue (100) and lesion (200) on two slices of one patient; the second slice is
    # mostly lesion. The 8-bit scale maps the tissue to one value on both; a per-slice z-score
    # does not, which is why the mode exists.
    small, large = _slice(100, 200, 2), _slice(100, 200, 10)
    u_small, u_large = slice_intensity(small, "uint8"), slice_intensity(large, "uint8")
    assert u_small[0, 13, 8] == u_large[0, 13, 8] == pytest.approx(100 / 255)
    assert u_small[0, 3, 8] == pytest.approx(200 / 255)
    z_small, z_large = slice_intensity(small, "zscore"), slice_intensity(large, "zscore")
    assert abs(float(z_small[0, 13, 8]) - float(z_large[0, 13, 8])) > 1.0


def test_zscore_is_monai_channel_wise_nonzero_normalisation() -> None:
    image = torch.randint(0, 256, (3, 8, 8)).float()
    expected = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    assert torch.allclose(slice_intensity(image, "zscore"), expected)


def test_uint8_on_numpy_and_metatensor_keeps_type_and_metadata() -> None:
    array = np.full((3, 4, 4), 51, dtype=np.uint8)
    out = slice_intensity(array, "uint8")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert np.allclose(out, 0.2)
    meta = MetaTensor(torch.full((3, 4, 4), 255, dtype=torch.uint8), meta={"filename": "a.tif"})
    result = slice_intensity(meta, "uint8")
    assert isinstance(result, MetaTensor) and result.meta["filename"] == "a.tif"
    assert result.dtype == torch.float32 and torch.all(result == 1.0)


@pytest.mark.parametrize(("low", "high"), [(0, 1023), (-5, 100)])
def test_uint8_refuses_values_outside_8_bit_naming_the_range(low: int, high: int) -> None:
    image = torch.tensor([[[low, high]]], dtype=torch.float32)
    with pytest.raises(ValueError, match=rf"{low}\.\.{high}.*zscore"):
        slice_intensity(image, "uint8")


def test_unknown_mode_is_refused_at_construction_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'percentile'.*|.*'percentile'") as info:
        SliceIntensityd(keys="image", mode="percentile")
    assert all(mode in str(info.value) for mode in INTENSITY_MODES)
    with pytest.raises(ValueError, match="'minmax'"):
        slice_intensity(torch.zeros(1, 2, 2), "minmax")


def test_dictionary_transform_normalises_only_its_keys() -> None:
    data = {"image": _slice(100, 200, 2), "label": torch.ones(1, 16, 16)}
    out = SliceIntensityd(keys="image", mode="uint8")(data)
    assert torch.allclose(out["image"], data["image"] / 255)
    assert out["label"] is data["label"]
