"""The axial-slice bundle next to the 3D one on CPU: size, training step, whole-study inference.

For each 2D encoder of ``bundles/brats_slice_segmentation_2d`` (EfficientNet-B0, the default,
and MobileNetV2 1.0) and, for reference, the 3D bundle's default DynUNet:

* parameters of the bundle's ``network_def`` as it is (4 input channels, 3 regions);
* one training step (forward, backward, AdamW) on a batch of the bundle's own size: 32
  slices of 192x192 (``batch_size`` 4 x ``num_samples`` 8) for 2D, 2 patches of 96^3 for 3D;
* segmenting one real 240x240x155 study end to end with :class:`tumorseg.inference.Predictor`
  (load, preprocess, network, invert, threshold), in seconds.

Weights are random: the time of a forward pass does not depend on them. Run alone with
``python benchmarks/bench_slices.py``; ``make bench BENCH=slices`` calls :func:`run`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE_2D = REPO / "bundles" / "brats_slice_segmentation_2d"
BUNDLE_3D = REPO / "bundles" / "brats_mri_segmentation"
REAL_STUDY = REPO.parent / "shared" / "data" / "brats2020_layout" / "TCGA-DU-7294"
MODALITIES = ("flair", "t1", "t1ce", "t2")


def _network(bundle: Path, overrides: dict[str, Any]) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def _train_step_s(network: torch.nn.Module, batch: tuple[int, ...], repeats: int = 2) -> float:
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    x = torch.randn(*batch)
    y = (torch.rand(batch[0], 3, *batch[2:]) > 0.9).float()
    network.train()
    times = []
    for _ in range(repeats + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(x), y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def _study(tmp: Path) -> list[Path]:
    if REAL_STUDY.is_dir():
        return [REAL_STUDY / f"{REAL_STUDY.name}_{m}.nii.gz" for m in MODALITIES]
    from tumorseg.data.synthetic import generate_dataset

    (case_id,) = generate_dataset(tmp / "synthetic", num_cases=1, shape=(240, 240, 155), seed=0)
    folder = tmp / "synthetic" / case_id
    return sorted(folder.glob("*.nii.gz"))[:4]


def _inference_s(bundle: Path, overrides: dict[str, Any], files: list[Path], tmp: Path) -> float:
    from tumorseg.inference import Predictor

    torch.manual_seed(0)
    ckpt = tmp / f"{bundle.name}-{overrides.get('backbone', 'default')}.pt"
    torch.save(_network(bundle, overrides).state_dict(), ckpt)
    predictor = Predictor.from_bundle(bundle, checkpoint=ckpt, overrides=overrides, device="cpu")
    start = time.perf_counter()
    predictor.predict_case(files, case_id="bench")
    return time.perf_counter() - start


def run() -> str:
    rows = []
    cases = [
        ("2D FlexibleUNet, EfficientNet-B0", BUNDLE_2D, {"backbone": "efficientnet-b0"}),
        ("2D FlexibleUNet, MobileNetV2 1.0", BUNDLE_2D, {"backbone": "mobilenetv2_100"}),
        ("3D DynUNet (reference)", BUNDLE_3D, {}),
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = _study(tmp)
        for name, bundle, overrides in cases:
            network = _network(bundle, overrides)
            params = sum(p.numel() for p in network.parameters()) / 1e6
            batch = (32, 4, 192, 192) if bundle == BUNDLE_2D else (2, 4, 96, 96, 96)
            step = _train_step_s(network, batch)
            per_item = step / batch[0]
            infer = _inference_s(bundle, overrides, files, tmp)
            rows.append((name, params, batch, step, per_item, infer))
    source = "real study TCGA-DU-7294" if REAL_STUDY.is_dir() else "synthetic 240x240x155 study"
    lines = [
        "## Axial-slice bundle vs 3D bundle (CPU)",
        "",
        f"Training step on the bundle's default batch; inference on one {source}, "
        "whole pipeline with the bundle defaults (2D: 192x192 slice windows, sw_batch_size 32; "
        "3D: 96^3, overlap 0.5).",
        "",
        "| network | params | training batch | s per step | s per slice / patch | "
        "s per study (inference) |",
        "|---|---|---|---|---|---|",
    ]
    for name, params, batch, step, per_item, infer in rows:
        shape = "x".join(str(b) for b in batch[2:])
        lines.append(
            f"| {name} | {params:.1f} M | {batch[0]} x {shape} | {step:.1f} | {per_item:.2f} | "
            f"{infer:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
