"""CPU training step of the LGG bundle's U-Net: float32 vs bfloat16 autocast vs channels-last.

One thread, the bundle's network (``channels`` 24..384), its loss and optimizer, a batch of 16
crops of 128x128 (the training ``patch_size``) and of whole 256x256 slices; the median of
several steps after a warm-up. bfloat16 runs only where the CPU has it natively.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss

from tumorseg.networks import AutocastInferer, cpu_bf16_supported

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lgg_flair_segmentation_2d"


def _step_ms(precision: str, channels_last: bool, size: int, steps: int = 5) -> float:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    x = torch.randn(16, 3, size, size)
    y = (torch.rand(16, 1, size, size) > 0.9).float()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    inferer = AutocastInferer(device="cpu", precision=precision)
    loss = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        value = loss(inferer(x, network), y)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:]) / 16


def run() -> str:
    """Time the variants; returns the markdown section."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        precisions = ["fp32", "bf16"] if cpu_bf16_supported() else ["fp32"]
        lines = [
            "## CPU training step, LGG U-Net (`bench_cpu_precision`)",
            "",
            "| input | precision | memory format | ms per slice (1 thread) | vs fp32 |",
            "|---|---|---|---|---|",
        ]
        for size in (128, 256):
            base = None
            for precision in precisions:
                for channels_last in (False, True):
                    ms = _step_ms(precision, channels_last, size)
                    base = base or ms
                    layout = "channels-last" if channels_last else "contiguous"
                    lines.append(
                        f"| {size}x{size} | {precision} | {layout} | {ms:.1f} | {base / ms:.2f}x |"
                    )
    finally:
        torch.set_num_threads(threads)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
