"""Every network file of the bundle: parameters, FLOPs and CPU seconds per 128^3 x 4 patch.

Each ``configs/networks/*.json`` is built at its full (default) width, merged after
``train.json`` exactly as the bundle does. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; convolutions, matrix
products and attention, not norms and activations) for one forward pass of a 128^3 x 4 patch;
counted at 128^3 directly (counting runs the real forward, so it also costs a pass).
CPU seconds are measured at 64^3 (the median of 3 forward passes after one warm-up, no
gradient) and scaled by 8 to 128^3, to keep the benchmark within a few minutes on two cores:
the networks are convolutional or windowed (cost linear in voxels), except TransUNet's global
attention over the deepest tokens, which at 8^3 tokens is a small share of its cost, so the
scaled figure is close (slightly low for it).

Run alone with ``python benchmarks/bench_networks.py``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "brats_mri_segmentation" / "configs"
FLOP_SIZE = 128
TIME_SIZE = 64
REPEATS = 3


def build(name: str) -> torch.nn.Module:
    """The full-width network of ``networks/<name>.json`` (after ``train.json``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "networks" / f"{name}.json")])
    return parser.get_parsed_content("network_def").eval()


def measure(name: str) -> dict[str, float]:
    """Parameters (M), forward TFLOP at 128^3 and scaled CPU seconds per 128^3 patch."""
    net = build(name)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            net(torch.zeros(1, 4, FLOP_SIZE, FLOP_SIZE, FLOP_SIZE))
        flops = counter.get_total_flops() / 1e12
        x = torch.randn(1, 4, TIME_SIZE, TIME_SIZE, TIME_SIZE)
        net(x)  # warm-up: allocator and kernel selection
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    scale = (FLOP_SIZE / TIME_SIZE) ** 3
    return {"params_m": params, "tflop": flops, "cpu_s": statistics.median(times) * scale}


def run() -> str:
    names = sorted(p.stem for p in (CONFIGS / "networks").glob("*.json"))
    lines = [
        "## Networks (bundle network files, full width)",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads. FLOPs: one forward "
        f"pass of a {FLOP_SIZE}^3 x 4 patch (FlopCounterMode, multiply-add = 2). CPU s: "
        f"median forward at {TIME_SIZE}^3, x8 to {FLOP_SIZE}^3.",
        "",
        "| network file | parameters | TFLOP / 128^3 patch | CPU s / 128^3 patch |",
        "|---|---|---|---|",
    ]
    for name in names:
        m = measure(name)
        lines.append(
            f"| `networks/{name}.json` | {m['params_m']:.1f} M | {m['tflop']:.2f} "
            f"| {m['cpu_s']:.1f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
