"""Inference on one real 240x240x155 study on CPU: seconds per stage and peak memory.

The :class:`tumorseg.inference.Predictor` (bundle preprocessing, crop to the brain, sliding
window, inverse, atomic write) is timed stage by stage, next to plain MONAI
``sliding_window_inference`` over the whole uncropped volume with the same network, weights,
``roi_size``, ``overlap``, ``sw_batch_size`` and Gaussian blending, in the same run. Each side
runs in its own fresh process, so each peak RSS is its own; both warm the network up with one
window first, so one-time library initialisation is in neither.

The network is the bundle's full-width DynUNet (``train.json`` as it is) with random weights:
the time of a forward pass does not depend on the weights.

Targets (issue #4): the whole case in at most 0.8x the plain network-only time, time outside
the network under 15 % of the total, peak RSS under 4 GB.

Run alone with ``python benchmarks/bench_inference.py``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brats_mri_segmentation"
REAL_STUDY = REPO.parent / "shared" / "data" / "brats2020_layout" / "TCGA-DU-7294"
MODALITIES = ("flair", "t1", "t1ce", "t2")
STAGES = ("load", "preprocess", "network", "postprocess", "write")
TARGET_RATIO = 0.8
TARGET_OVERHEAD = 0.15
TARGET_RSS_GB = 4.0


def _study(tmp: Path) -> tuple[list[Path], str]:
    """The real LPS study, or a synthetic one of the same size where ``../shared`` is absent."""
    if REAL_STUDY.is_dir():
        name = REAL_STUDY.name
        return [REAL_STUDY / f"{name}_{m}.nii.gz" for m in MODALITIES], f"real study {name}"
    from tumorseg.data.synthetic import generate_dataset

    (case_id,) = generate_dataset(tmp / "synthetic", num_cases=1, shape=(240, 240, 155), seed=0)
    folder = tmp / "synthetic" / case_id
    return [folder / f"{case_id}_{m}.nii.gz" for m in MODALITIES], (
        f"synthetic study {case_id} (../shared/data absent)"
    )


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of sliding windows MONAI places over ``shape``."""
    n = 1
    for size, r in zip(shape, roi, strict=True):
        step = max(int(r * (1 - overlap)), 1)
        n *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return n


def _warm_up(network: Any, roi: tuple[int, ...]) -> None:
    import torch

    with torch.no_grad():
        network(torch.zeros(1, 4, *roi))


def _child_predictor(files: list[Path], ckpt: Path, out: Path) -> dict[str, Any]:
    import torch

    from tumorseg.inference import Predictor

    torch.manual_seed(0)
    predictor = Predictor.from_bundle(BUNDLE, checkpoint=ckpt, device="cpu")
    _warm_up(predictor.network, predictor.roi_size)
    start = time.perf_counter()
    loaded = predictor.load_case(files)
    cropped = tuple(int(s) for s in loaded.data[predictor.image_key].shape[1:])
    result = predictor.predict_loaded(loaded)
    result.save(out)
    wall = time.perf_counter() - start
    return {
        "timings": {s: result.timings[s] for s in STAGES},
        "wall": wall,
        "peak_rss_gb": _peak_rss_gb(),
        "shape": [int(s) for s in result.label.shape],
        "cropped": list(cropped),
        "windows": _windows(cropped, predictor.roi_size, predictor.overlap),
        "roi_size": list(predictor.roi_size),
        "overlap": predictor.overlap,
        "sw_batch_size": predictor.sw_batch_size,
        "filters": predictor.config.get_parsed_content("filters"),
        "threads": torch.get_num_threads(),
    }


def _child_plain(files: list[Path], ckpt: Path) -> dict[str, Any]:
    import torch
    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(ckpt, weights_only=True))
    network.eval()
    roi = tuple(int(s) for s in parser.get_parsed_content("roi_size"))
    overlap = float(parser.get_parsed_content("overlap"))
    sw_batch_size = int(parser.get_parsed_content("sw_batch_size"))
    _warm_up(network, roi)
    image = LoadImage(image_only=True, ensure_channel_first=True)([str(f) for f in files])
    x = torch.as_tensor(image).as_subclass(torch.Tensor).float()
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
    start = time.perf_counter()
    with torch.no_grad():
        sliding_window_inference(
            x[None], roi, sw_batch_size, network, overlap=overlap, mode="gaussian"
        )
    network_s = time.perf_counter() - start
    shape = tuple(int(s) for s in x.shape[1:])
    return {
        "network": network_s,
        "peak_rss_gb": _peak_rss_gb(),
        "shape": list(shape),
        "windows": _windows(shape, roi, overlap),
    }


def _in_child(kind: str, files: list[Path], ckpt: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, __file__, "--child", kind, str(ckpt), str(out), *map(str, files)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {kind!r} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run() -> str:
    """Run the benchmark; returns a markdown section."""
    import torch
    from monai.bundle import ConfigParser

    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp_name:
        tmp = Path(tmp_name)
        files, what = _study(tmp)
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / "train.json"))
        torch.manual_seed(0)
        ckpt = tmp / "model.pt"
        torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
        ours = _in_child("predictor", files, ckpt, tmp / "out")
        plain = _in_child("plain", files, ckpt, tmp / "out")

    t = ours["timings"]
    total = sum(t.values())
    outside = total - t["network"]
    ratio = total / plain["network"]
    share = outside / total

    def ok(good: bool) -> str:
        return "met" if good else "**missed**"

    stages = "\n".join(f"| {s} | {t[s]:.2f} | {100 * t[s] / total:.1f} % |" for s in STAGES)
    rss = ours["peak_rss_gb"]
    checks = [
        (
            "plain MONAI `sliding_window_inference`, whole volume, network only",
            f"{plain['network']:.2f} s",
            "",
            "",
        ),
        (
            "whole case / plain network-only",
            f"{ratio:.2f}x",
            f"<= {TARGET_RATIO}x",
            ok(ratio <= TARGET_RATIO),
        ),
        (
            "time outside the network",
            f"{100 * share:.1f} %",
            f"< {100 * TARGET_OVERHEAD:.0f} %",
            ok(share < TARGET_OVERHEAD),
        ),
        (
            "peak RSS, Predictor process",
            f"{rss:.2f} GB",
            f"< {TARGET_RSS_GB} GB",
            ok(rss < TARGET_RSS_GB),
        ),
        ("peak RSS, plain process", f"{plain['peak_rss_gb']:.2f} GB", "", ""),
    ]
    summary = "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in checks)
    return f"""## Inference: one 240x240x155 study on CPU (`bench_inference`)

{what}; the bundle's DynUNet with filters {ours["filters"]} (full width, random weights), roi
{tuple(ours["roi_size"])}, overlap {ours["overlap"]}, sw_batch_size {ours["sw_batch_size"]},
Gaussian blending, {ours["threads"]} torch threads. Input {tuple(ours["shape"])}, cropped to the
brain {tuple(ours["cropped"])}: {ours["windows"]} windows, against {plain["windows"]} over the
whole volume.

| stage (Predictor) | seconds | share |
|---|---:|---:|
{stages}
| **whole case** | **{total:.2f}** | 100 % |

| | value | target | |
|---|---:|---:|---|
{summary}
"""


def _child_main(argv: list[str]) -> int:
    kind, ckpt, out, *files = argv
    paths = [Path(f) for f in files]
    if kind == "predictor":
        result = _child_predictor(paths, Path(ckpt), Path(out))
    else:
        result = _child_plain(paths, Path(ckpt))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2:]))
    print(run())
