"""Inference precision: the autocast dtype per device and request (falling back with a
warning where the hardware lacks it), and ``--precision`` / ``--tiling`` reaching the bundle's
inferer through the Predictor and the CLI, with bad values refused naming them."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _infer_utils import BUNDLE, TINY_FILTERS

from tumorseg.inference import Predictor, TiledInferer
from tumorseg.networks import cpu_bf16_supported, inference_dtype

REPO = Path(__file__).resolve().parents[2]


def test_fp32_is_plain_float32_everywhere() -> None:
    assert inference_dtype("cpu", "fp32") is None
    assert inference_dtype(torch.device("cuda"), "fp32") is None


def test_auto_on_cpu_follows_the_processor() -> None:
    assert inference_dtype("cpu", "auto") is (torch.bfloat16 if cpu_bf16_supported() else None)


def test_bf16_on_a_cpu_without_it_falls_back_to_fp32_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert inference_dtype("cpu", "bf16") is None
    assert "no native bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert inference_dtype("cpu", "auto") is None
    assert caplog.text == ""  # auto asks for nothing in particular: no warning


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert inference_dtype("cpu", "fp16") is None
    assert "'fp16' is for CUDA" in caplog.text


def test_cuda_gets_amp(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cuda = torch.device("cuda")
    assert inference_dtype(cuda, "fp16") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert inference_dtype(cuda, "auto") is torch.bfloat16
    assert inference_dtype(cuda, "bf16") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert inference_dtype(cuda, "auto") is torch.float16
    with caplog.at_level(logging.WARNING):
        assert inference_dtype(cuda, "bf16") is torch.float16
    assert "this GPU has none" in caplog.text


def test_unknown_precision_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="got 'half'"):
        inference_dtype("cpu", "half")


def _predictor(**kwargs: Any) -> Predictor:
    network = torch.nn.Conv3d(4, 3, 1)  # the settings are what is checked, not the weights
    return Predictor.from_bundle(
        BUNDLE, overrides={"filters": TINY_FILTERS}, device="cpu", network=network, **kwargs
    )


def test_the_bundle_defaults_are_the_fast_ones_and_explicit_settings_reach_the_inferer() -> None:
    default = _predictor()
    assert isinstance(default.inferer, TiledInferer)
    assert (default.inferer.precision, default.inferer.tiling) == ("auto", "auto")
    chosen = _predictor(precision="fp32", tiling="windows")
    assert (chosen.inferer.precision, chosen.inferer.tiling) == ("fp32", "windows")
    assert chosen.inferer.dtype is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "half"}, "precision must be one of .* got 'half'"),
        ({"tiling": "tiles"}, "tiling must be one of .* got 'tiles'"),
    ],
)
def test_bad_predictor_settings_are_refused_naming_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _predictor(**kwargs)


def test_cli_refuses_an_unknown_precision_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tumorseg",
            "infer",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
            "--precision",
            "half",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 2
    assert "--precision: invalid choice: 'half'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def _dtypes_seen(network: torch.nn.Module) -> tuple[dict[str, list[torch.dtype]], list[Any]]:
    seen: dict[str, list[torch.dtype]] = {"norm": [], "conv": []}

    def record(kind: str) -> Any:
        return lambda _m, args: seen[kind].append(args[0].dtype)

    handles = []
    for module in network.modules():
        if isinstance(module, torch.nn.InstanceNorm3d | torch.nn.GroupNorm):
            handles.append(module.register_forward_pre_hook(record("norm")))
        elif isinstance(module, torch.nn.Conv3d):
            handles.append(
                module.register_forward_hook(lambda _m, _a, out: seen["conv"].append(out.dtype))
            )
    return seen, handles


def _small_net() -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(3, 4, 3, [3, 3, 3], [1, 2, 2], [2, 2], norm_name="instance", filters=[4, 8, 16])


def test_float32_norms_feeds_norm_layers_float32_under_autocast_and_then_undoes_itself() -> None:
    from tumorseg.networks import float32_norms

    net = _small_net().eval()
    keys = list(net.state_dict())
    seen, _ = _dtypes_seen(net)
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with float32_norms(net):
            inside = net(x)
        norms_inside, convs_inside = list(seen["norm"]), list(seen["conv"])
        seen["norm"].clear()
        net(x)
    assert norms_inside and set(norms_inside) == {torch.float32}
    assert set(convs_inside) == {torch.bfloat16}  # the convolutions stay fast
    assert set(seen["norm"]) == {torch.bfloat16}  # hooks removed on exit
    assert list(net.state_dict()) == keys and torch.isfinite(inside).all()
    # Not a torch module (an ONNX Runtime session): left alone.
    with float32_norms(lambda t: t) as same:  # type: ignore[arg-type]
        assert same(1) == 1


@pytest.mark.skipif(not cpu_bf16_supported(), reason="the CPU has no native bfloat16")
@pytest.mark.parametrize(
    ("tiling", "norm_dtype"), [("windows", torch.float32), ("whole", torch.bfloat16)]
)
def test_tiled_inferer_runs_bf16_convolutions_with_float32_norms_in_windows(
    tiling: str, norm_dtype: torch.dtype
) -> None:
    """Windows: bf16 convolutions, float32 norms. A whole pass keeps bf16 norms (memory)."""
    net = _small_net().eval()
    seen, _ = _dtypes_seen(net)
    inferer = TiledInferer([16, 16, 16], tiling=tiling, precision="bf16", device="cpu")
    with torch.no_grad():
        out = inferer(torch.randn(1, 4, 24, 20, 16), net)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 24, 20, 16)
    assert seen["norm"] and set(seen["norm"]) == {norm_dtype}
    assert set(seen["conv"]) == {torch.bfloat16}
    seen["norm"].clear()
    with torch.no_grad():
        TiledInferer([16, 16, 16], tiling=tiling, precision="fp32")(
            torch.randn(1, 4, 16, 16, 16), net
        )
    assert set(seen["norm"]) == {torch.float32}


@pytest.mark.skipif(not cpu_bf16_supported(), reason="the CPU has no native bfloat16")
def test_tiled_inferer_fp32_norms_false_keeps_autocast_alone() -> None:
    net = _small_net().eval()
    seen, _ = _dtypes_seen(net)
    inferer = TiledInferer([16, 16, 16], tiling="windows", precision="bf16", fp32_norms=False)
    with torch.no_grad():
        inferer(torch.randn(1, 4, 24, 20, 16), net)
    assert seen["norm"] and set(seen["norm"]) == {torch.bfloat16}
