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
