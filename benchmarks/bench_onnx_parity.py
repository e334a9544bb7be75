"""ONNX Runtime vs PyTorch probabilities on a real study, before and after the export fix.

The real study TCGA-DU-7294 (``../shared/data``; a synthetic study of the same size where it
is absent) is segmented by one :class:`tumorseg.inference.Predictor` per arm, all with the
same windows (roi 96^3, overlap 0.25, ``tiling windows``); only the network call differs:

* ``pytorch fp32``: the network of ``tests/inference/test_onnx.py`` (the bundle's DynUNet,
  filters 4..64, random weights, output block x10 so that masks compare like a trained
  network's: ``decisive_tiny_network`` of ``tests/inference/_infer_utils.py``), float32;
* ``pytorch float64``: the same weights in float64 (the exact answer, to tell who errs);
* ``pytorch bf16``: ``--precision auto`` on this CPU (bfloat16 autocast), the default;
* ``onnxruntime, InstanceNormalization``: the export before the fix (ONNX's
  ``InstanceNormalization``, float32 sums over the whole window in ONNX Runtime);
* ``onnxruntime``: :func:`tumorseg.inference.export.export_network` as it is (normalisation
  as one-axis reductions).

Every arm is compared with ``pytorch fp32``: largest probability difference, share of
probabilities more than 1e-4 away, mask voxels that differ.

Run alone with ``python benchmarks/bench_onnx_parity.py``; ``make bench BENCH=onnx_parity``.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from bench_onnx import BUNDLE, REPO, _study

from tumorseg.inference import Predictor, export
from tumorseg.inference.backends import OnnxRuntimeNetwork

sys.path.insert(0, str(REPO / "tests" / "inference"))
from _infer_utils import TINY_FILTERS, decisive_tiny_network  # noqa: E402

SETTINGS: dict[str, Any] = {
    "roi_size": (96, 96, 96),
    "overlap": 0.25,
    "tiling": "windows",
    "device": "cpu",
    "overrides": {"filters": TINY_FILTERS},
}


class _Float64(torch.nn.Module):
    """A network run in float64 on float32 windows (logits handed back in float32)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(network).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.double()).float()


def run() -> str:
    """Measure and return the markdown section for ``docs/benchmarks.md``."""
    network = decisive_tiny_network(seed=3)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files, what = _study(tmp)
        fixed, plain = tmp / "fixed.onnx", tmp / "plain.onnx"
        roi = SETTINGS["roi_size"]
        checks = {"fixed": export.export_network(
            network, fixed, export_format="onnx", roi_size=roi, in_channels=4
        )}  # fmt: skip
        with mock.patch.object(export, "onnx_ready", lambda net: net):  # the export before
            checks["plain"] = export.export_network(
                network, plain, export_format="onnx", roi_size=roi, in_channels=4, atol=1.0
            )
        arms: dict[str, tuple[torch.nn.Module, str]] = {
            "pytorch fp32": (network, "fp32"),
            "pytorch float64": (_Float64(network), "fp32"),
            "pytorch bf16 (--precision auto)": (network, "auto"),
            "onnxruntime, InstanceNormalization (before)": (OnnxRuntimeNetwork(plain), "fp32"),
            "onnxruntime (after)": (OnnxRuntimeNetwork(fixed), "fp32"),
        }
        results, seconds = {}, {}
        for name, (net, precision) in arms.items():
            predictor = Predictor.from_bundle(BUNDLE, network=net, precision=precision, **SETTINGS)
            start = time.perf_counter()
            results[name] = predictor.predict_case(files)
            seconds[name] = time.perf_counter() - start
    base = results["pytorch fp32"]
    rows = []
    for name, result in results.items():
        diff = np.abs(result.probabilities - base.probabilities)
        rows.append(
            f"| {name} | {diff.max():.1e} | {100 * (diff > 1e-4).mean():.2f} % | "
            f"{int((result.label != base.label).sum())} | {seconds[name]:.0f} |"
        )
    parity = "; ".join(
        f"{key} {max(report.max_abs_diff.values()):.1e}" for key, report in checks.items()
    )
    return f"""## ONNX Runtime vs PyTorch probabilities on a real study (issue 20)

{what}, bundle preprocessing, DynUNet filters 4..64 (random weights, output block x10),
roi 96^3, overlap 0.25, windows, {base.label.size} voxels, {int((base.label > 0).sum())} in
the PyTorch fp32 mask (`python benchmarks/bench_onnx_parity.py`). Every arm against PyTorch
float32; the export's own parity check (largest probability difference, random and
study-like windows): {parity}.

| arm | max \\|p - p_pytorch_fp32\\| | probabilities > 1e-4 away | mask voxels different | s |
|---|---:|---:|---:|---:|
{chr(10).join(rows)}
"""


if __name__ == "__main__":
    print(run())
