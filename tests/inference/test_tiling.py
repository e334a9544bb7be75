"""Window placement and the tiled inferer: the fewest windows for an overlap, placed where
MONAI's inferer places them (the same result on any crop), whole-crop passes padded to the
network's downsampling and cropped back, and bad settings refused naming the value."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval
from monai.networks.nets import DynUNet

from tumorseg.inference.tiling import (
    TiledInferer,
    axis_starts,
    padded_size,
    size_multiple,
    window_starts,
)


@pytest.mark.parametrize(
    ("size", "roi", "overlap"),
    [
        (129, 112, 0.5),
        (200, 96, 0.5),
        (193, 96, 0.5),
        (300, 64, 0.25),
        (64, 64, 0.5),
        (97, 32, 0.0),
    ],
)
def test_fewest_windows_that_cover_with_the_overlap(size: int, roi: int, overlap: float) -> None:
    starts = axis_starts(size, roi, overlap)
    assert starts[0] == 0 and starts[-1] + roi == size
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(0 < g <= roi * (1 - overlap) for g in gaps)  # the overlap is kept
    # one window fewer cannot keep the overlap
    assert len(starts) == 1 or (len(starts) - 2) * roi * (1 - overlap) < size - roi


def test_windows_are_placed_exactly_where_monai_places_them() -> None:
    # Evenly spread windows normalised other voxels than the reference's and moved a
    # synthetic-trained model's masks on a real study to Dice 0.76-0.93 (docs/benchmarks.md).
    for size, roi, overlap in itertools.product(range(8, 60, 3), (4, 8, 32), (0.0, 0.25, 0.5, 0.6)):
        if roi > size:
            continue
        interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
        monai = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
        assert axis_starts(size, roi, overlap) == monai, (size, roi, overlap)
    assert axis_starts(129, 32, 0.5) == [0, 16, 32, 48, 64, 80, 96, 97]


def test_the_brats_crop_needs_two_windows_per_axis_and_the_grid_is_their_product() -> None:
    assert axis_starts(129, 112, 0.5) == [0, 17]
    assert len(window_starts((129, 162, 131), (112, 160, 128), 0.5)) == 8
    assert len(window_starts((200, 96, 96), (96, 96, 96), 0.5)) == 4


@pytest.mark.parametrize(
    ("size", "roi", "overlap"), [(10, 12, 0.5), (20, 0, 0.5), (20, 8, 1.0), (20, 8, -0.1)]
)
def test_bad_axis_settings_are_refused(size: int, roi: int, overlap: float) -> None:
    with pytest.raises(ValueError, match=f"size={size}, roi={roi}"):
        axis_starts(size, roi, overlap)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: several threads only fight over a shared machine's cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dynunet() -> torch.nn.Module:
    torch.manual_seed(0)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 1]]
    return DynUNet(3, 2, 3, [3, 3, 3], strides, strides[1:], filters=[4, 8, 8]).eval()


def test_size_multiple_reads_dynunet_strides_else_32() -> None:
    assert size_multiple(_dynunet()) == (4, 4, 2)
    assert size_multiple(torch.nn.Conv3d(2, 3, 1)) == (32, 32, 32)
    assert padded_size((129, 162, 131), (16, 32, 32)) == (144, 192, 160)


def test_windows_match_monai_on_any_crop() -> None:
    # 19 = 4 windows of 8 at stride 4, the last moved back to 11 (evenly spread: 0, 4, 7, 11)
    net, x = _dynunet(), torch.randn(1, 2, 19, 12, 8)
    kw = {"roi_size": (8, 8, 4), "sw_batch_size": 3, "overlap": 0.5, "mode": "gaussian"}
    with torch.no_grad():
        ref = SlidingWindowInferer(**kw)(x, net)
        ours = TiledInferer(**kw, tiling="windows", precision="fp32")(x, net)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape == (1, 3, 19, 12, 8)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_a_volume_smaller_than_the_window_is_padded_and_cropped_back() -> None:
    net, x = _dynunet(), torch.randn(2, 2, 5, 9, 4)
    with torch.no_grad():
        ref = SlidingWindowInferer((8, 8, 6), overlap=0.25, mode="constant")(x, net)
        ours = TiledInferer((8, 8, 6), overlap=0.25, mode="constant", tiling="windows")(x, net)
    assert ours.shape == (2, 3, 5, 9, 4)
    assert torch.allclose(ours, ref, atol=1e-5)


class _Counting(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.shapes = net, []
        self.strides = net.strides  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[2:]))
        return self.net(x)


def test_whole_runs_once_on_the_padded_crop_and_crops_back() -> None:
    net, x = _Counting(_dynunet()), torch.randn(1, 2, 10, 7, 5)
    with torch.no_grad():
        out = TiledInferer((4, 4, 2), tiling="whole")(x, net)
        direct = net.net(torch.nn.functional.pad(x, [0, 1, 0, 1, 1, 1]))[..., 1:11, 0:7, 0:5]
    assert net.shapes == [(12, 8, 6)]
    assert out.shape == (1, 3, 10, 7, 5) and torch.allclose(out, direct, atol=1e-6)


def test_auto_goes_whole_only_up_to_max_whole_voxels() -> None:
    net = _dynunet()
    padded = math.prod(padded_size((10, 7, 5), size_multiple(net)))
    assert TiledInferer(
        (4, 4, 2), tiling="auto", max_whole_voxels=padded, max_whole_ratio=100
    ).uses_whole((10, 7, 5), net)
    small = TiledInferer((8, 8, 4), tiling="auto", max_whole_voxels=padded - 1, max_whole_ratio=100)
    assert not small.uses_whole((10, 7, 5), net)
    counting = _Counting(net)
    with torch.no_grad():
        small(torch.randn(1, 2, 10, 7, 5), counting)
    assert set(counting.shapes) == {(8, 8, 4)} and len(counting.shapes) > 1


def test_auto_goes_whole_only_up_to_max_whole_ratio_windows() -> None:
    net = _dynunet()  # (10, 7, 5) pads to (12, 8, 6): 576 voxels, 2.25 windows of (8, 8, 4)
    assert not TiledInferer((8, 8, 4), tiling="auto").uses_whole((10, 7, 5), net)
    assert TiledInferer((8, 8, 4), tiling="auto", max_whole_ratio=2.25).uses_whole((10, 7, 5), net)


def test_bf16_runs_the_network_in_bf16_and_blends_in_float32() -> None:
    from tumorseg.networks import cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("CPU without native bfloat16")
    net, seen = _dynunet(), []
    net.input_block.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(1, 2, 12, 8, 8)
    with torch.no_grad():
        low = TiledInferer((8, 8, 4), tiling="windows", precision="bf16")(x, net)
        ref = TiledInferer((8, 8, 4), tiling="windows", precision="fp32")(x, net)
    assert set(seen) == {torch.bfloat16, torch.float32}
    assert low.dtype == torch.float32
    assert torch.allclose(low, ref, atol=0.05 * float(ref.abs().max()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tiling": "tiles"}, "tiling must be one of .* got 'tiles'"),
        ({"max_whole_voxels": 0}, "max_whole_voxels must be an integer >= 1, got 0"),
        ({"max_whole_ratio": -1}, "max_whole_ratio must be a number > 0, got -1"),
        ({"precision": "half"}, "precision must be one of .* got 'half'"),
    ],
)
def test_bad_inferer_settings_are_refused_naming_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TiledInferer((8, 8, 8), **kwargs)
