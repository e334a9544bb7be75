"""CUDA speed settings are no-ops on a CPU device (the CUDA paths need a GPU to test)."""

from __future__ import annotations

import pytest
import torch

from tumorseg.training import amp_enabled, amp_kwargs, compile_enabled, configure_performance


def test_amp_and_compile_are_off_on_cpu() -> None:
    assert not amp_enabled(True, "cpu")
    assert not amp_enabled(True, torch.device("cpu"))
    assert amp_kwargs("cpu") == {}
    assert not compile_enabled(True, "cpu")
    assert amp_enabled(True, "cuda:0") and not amp_enabled(False, "cuda:0")


def test_amp_dtype_is_checked() -> None:
    with pytest.raises(ValueError, match="'half'"):
        amp_kwargs("cpu", dtype="half")


def test_configure_performance_leaves_a_cpu_run_alone() -> None:
    net = torch.nn.Conv3d(2, 2, 3)
    before = torch.backends.cudnn.benchmark
    applied = configure_performance("cpu", network=net, cudnn_benchmark=True, channels_last=True)
    assert applied == {"cudnn_benchmark": False, "channels_last": False}
    assert torch.backends.cudnn.benchmark == before
    assert net.weight.is_contiguous()  # not converted to channels-last-3d
