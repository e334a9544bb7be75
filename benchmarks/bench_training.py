"""Benchmark of the training data pipeline and of one training step on this CPU.

Data pipeline: patches per second at ``roi_size`` 128^3 (4 channels) from real-size
240x240x155 synthetic studies, through the bundle's own transforms (``train.json``):

* ``plain``: MONAI ``Dataset`` + the full chain, one patch per load (``num_samples`` 1): every
  patch re-reads and re-normalises the four volumes;
* ``tuned``: the bundle's pipeline: ``tumorseg.training.cached_dataset`` (``cache_mode``
  auto: here in memory), ``num_samples`` patches per loaded case, persistent workers; and the
  same with ``cache_mode`` disk (what ``auto`` picks for a dataset larger than the memory
  budget), its cache already filled.

Both use the same data-loader workers (the bundle's ``num_workers``: one per CPU but one) and
batch size 2. The caches are filled before timing (its fill time is reported on its own); the
first batch of each pipeline is a warm-up. Wall time and CPU time (this process plus its
workers) are reported, with the load average, since the machine may be shared.

Training step: forward, backward and AdamW step of the default network (``network_def``
with the default ``filters``) at ``roi_size`` 96^3, batch 2, on CPU.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROI_PIPELINE = 128
ROI_STEP = 96
NUM_CASES = 4
BATCH = 2
PLAIN_BATCHES = 4
TUNED_BATCHES = 12
STEP_REPEATS = 2
CONFIG = (
    Path(__file__).resolve().parents[1]
    / "bundles"
    / "brats_mri_segmentation"
    / "configs"
    / "train.json"
)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the data-loader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _parser(dataset_dir: Path, **overrides: Any) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["dataset_dir"] = str(dataset_dir)
    parser["fold"] = -1
    parser["roi_size"] = [ROI_PIPELINE] * 3
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _patches(batches: Iterator[Any], count: int) -> tuple[int, float, float]:
    """Patches, wall seconds and CPU seconds of ``count`` batches after one warm-up batch."""
    next(batches)
    patches = 0
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(count):
        patches += int(next(batches)["image"].shape[0])
    return patches, time.perf_counter() - wall, cpu


def _forever(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _pipeline(name: str, parser: Any, dataset: Any, batches: int) -> dict[str, Any]:
    from monai.data import DataLoader

    workers = int(parser.get_parsed_content("num_workers"))
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    it = _forever(loader)
    patches, wall, cpu0 = _patches(it, batches)
    del it, loader  # joins the workers, so their CPU time is counted
    cpu = _cpu_seconds() - cpu0
    return {
        "name": name,
        "workers": workers,
        "num_samples": int(parser["num_samples"]),
        "patches": patches,
        "wall": wall,
        "cpu": cpu,
        "rate": patches / wall,
    }


def _data_pipeline(root: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from monai.data import Dataset
    from monai.utils import set_determinism

    set_determinism(seed=0)
    plain_parser = _parser(root, num_samples=1)
    files = plain_parser.get_parsed_content("data").files("all")
    plain = Dataset(files, plain_parser.get_parsed_content("train#preprocessing"))
    rows = [_pipeline("plain: Dataset, full chain per patch", plain_parser, plain, PLAIN_BATCHES)]

    tuned_parser = _parser(root, cache_dir=str(root / "cache"))
    start = time.perf_counter()
    tuned = tuned_parser.get_parsed_content("train#dataset")
    fills = {type(tuned).__name__: time.perf_counter() - start}
    rows.append(
        _pipeline("tuned: bundle defaults (memory cache)", tuned_parser, tuned, TUNED_BATCHES)
    )

    # What a large dataset gets from cache_mode auto: the disk cache, here already filled.
    disk_parser = _parser(root, cache_dir=str(root / "cache"), cache_mode="disk")
    disk = disk_parser.get_parsed_content("train#dataset")
    start = time.perf_counter()
    for i in range(len(disk)):
        disk[i]
    fills[type(disk).__name__] = time.perf_counter() - start
    rows.append(_pipeline("tuned: disk cache (warm)", disk_parser, disk, TUNED_BATCHES))
    return rows, fills


def _training_step(root: Path) -> dict[str, float]:
    import torch

    parser = _parser(root, roi_size=[ROI_STEP] * 3, device="cpu")
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network")
    loss_fn = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    image = torch.randn(BATCH, 4, ROI_STEP, ROI_STEP, ROI_STEP)
    label = (torch.rand(BATCH, 3, ROI_STEP, ROI_STEP, ROI_STEP) > 0.9).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(image), label)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, oneDNN primitive caches
    walls, cpus = [], []
    for _ in range(STEP_REPEATS):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "median": statistics.median(walls),
        "min": min(walls),
        "max": max(walls),
        "cpu": statistics.median(cpus),
        "params": sum(p.numel() for p in network.parameters()) / 1e6,
        "threads": torch.get_num_threads(),
    }


def run() -> str:
    """Markdown section: data-pipeline patches/s (plain vs tuned) and the CPU training step."""
    from tumorseg.data.synthetic import generate_dataset

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tumorseg_bench_") as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        generate_dataset(root, num_cases=NUM_CASES, shape=(240, 240, 155), seed=10)
        generated = time.perf_counter() - start
        rows, fills = _data_pipeline(root)
        step = _training_step(root)
    load_after = os.getloadavg()

    plain, tuned = rows[0], rows[1]
    lines = [
        "## Training data pipeline and step (`bench_training`)\n",
        f"{NUM_CASES} synthetic 240x240x155 studies (4 modalities + label, generated in "
        f"{generated:.0f} s); patches of {ROI_PIPELINE}^3 x 4 channels, batch {BATCH}, through "
        f"the bundle's transforms. {os.cpu_count()} CPUs; load average "
        f"{load[0]:.2f} before, {load_after[0]:.2f} after. CPU time counts this process and "
        "its data-loader workers.\n",
        "| pipeline | workers | patches per load | patches | wall s | patches/s | "
        "CPU s per patch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['workers']} | {r['num_samples']} | {r['patches']} | "
            f"{r['wall']:.1f} | {r['rate']:.2f} | {r['cpu'] / r['patches']:.2f} |"
        )
    lines += [
        "",
        f"Tuned (memory) / plain: **{tuned['rate'] / plain['rate']:.1f}x** patches/s; tuned "
        f"(disk) / plain: **{rows[2]['rate'] / plain['rate']:.1f}x**. Cache fill, not timed "
        f"above: memory {fills['CacheDataset']:.1f} s before the first epoch, disk "
        f"{fills['PersistentDataset']:.1f} s (one pass over the cases, normally the first "
        "epoch).",
        "",
        f"Training step on CPU (default `DynUNet`, {step['params']:.1f} M parameters, "
        f"roi {ROI_STEP}^3, batch {BATCH}, forward + backward + AdamW, {step['threads']} torch "
        f"threads): median **{step['median']:.1f} s** (min {step['min']:.1f}, max "
        f"{step['max']:.1f}, {STEP_REPEATS} runs after a warm-up), CPU {step['cpu']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
