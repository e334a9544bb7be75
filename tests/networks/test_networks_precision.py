"""CPU bfloat16 autocast around an inferer: float32 out, bfloat16 inside, gradients through,
close to float32 results, and bad precision values refused naming the value."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from tumorseg.networks import AutocastInferer, autocast_dtype, cpu_bf16_supported

needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(), reason="CPU without native bfloat16")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(2, 3, 1, (4, 8, 16), (2, 2), num_res_units=1, norm="batch")


@needs_bf16
def test_bf16_inside_float32_out_and_gradients_flow() -> None:
    net, seen = _net(), []
    net.model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(2, 3, 32, 32)
    out = AutocastInferer(device="cpu", precision="bf16")(x, net)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    out.mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    net.eval()
    with torch.no_grad():
        ref = AutocastInferer(device="cpu", precision="fp32")(x, net)
        low = AutocastInferer(device="cpu", precision="bf16")(x, net)
    assert torch.allclose(ref, low, atol=0.1 * float(ref.abs().max()))


def test_fp32_and_cuda_leave_the_inferer_alone() -> None:
    assert autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype(torch.device("cuda"), "bf16") is None
    net, seen = _net(), []
    net.model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    AutocastInferer(device="cpu", precision="fp32")(torch.randn(1, 3, 16, 16), net)
    assert seen == [torch.float32]


def test_auto_follows_the_processor() -> None:
    expected = torch.bfloat16 if cpu_bf16_supported() else None
    assert autocast_dtype("cpu", "auto") is expected


def test_unknown_precision_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="'half'"):
        AutocastInferer(device="cpu", precision="half")


def test_bf16_on_a_cpu_without_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="no native bfloat16"):
        autocast_dtype("cpu", "bf16")
    assert autocast_dtype("cpu", "auto") is None
