"""Whole-case CPU inference, PyTorch vs ONNX Runtime: seconds and peak memory, same run.

The :class:`tumorseg.inference.Predictor` segments the real 240x240x155 study TCGA-DU-7294
(``../shared/data``; a synthetic study of the same size where it is absent) twice per
network, once with the bundle's PyTorch network and once with the same weights exported by
:func:`tumorseg.inference.export.export_network` and run by
:class:`tumorseg.inference.backends.OnnxRuntimeNetwork` (``tumorseg infer --backend
onnxruntime``): only the network call differs. Two networks, random weights (a forward pass
costs the same whatever the weights):

* ``bundle default``: the bundle's DynUNet (``train.json`` as it is, 16.7 M parameters);
* ``nnU-Net-sized``: a 6-stage DynUNet, filters 32..320, strides 1, 2, 2, 2, 2, (1, 2, 2),
  plain convolution blocks (30.8 M parameters).

Each case runs in a fresh process (its own peak RSS), both backends with the same number of
threads and in float32 (``precision fp32``: the PyTorch default ``auto`` is bfloat16 on a CPU
with native bfloat16, while the ONNX model runs in float32), after one warm-up window. The
CPU is shared with other work, so the arms alternate
(PyTorch, ONNX Runtime, PyTorch, ONNX Runtime ...) and the table gives the ratio per pair.

Run alone with ``python benchmarks/bench_onnx.py [REPEATS]``; ``make bench BENCH=onnx``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
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

#: One window per network call in both arms: the 2-core machine shared by several people has
#: too little free memory for the bundle's four (ONNX Runtime was killed for memory).
SW_BATCH_SIZE = {"sw_batch_size": 1}
NETWORKS: dict[str, dict[str, Any]] = {
    "bundle default": {**SW_BATCH_SIZE},
    "nnU-Net-sized": {
        **SW_BATCH_SIZE,
        "filters": [32, 64, 128, 256, 320, 320],
        "network_def#kernel_size": [3, 3, 3, 3, 3, 3],
        "network_def#strides": [1, 2, 2, 2, 2, [1, 2, 2]],
        "network_def#upsample_kernel_size": [2, 2, 2, 2, [1, 2, 2]],
        "network_def#res_block": False,
    },
}
BACKENDS = ("pytorch", "onnxruntime")


def _study(tmp: Path) -> tuple[list[Path], str]:
    if REAL_STUDY.is_dir():
        name = REAL_STUDY.name
        return [REAL_STUDY / f"{name}_{m}.nii.gz" for m in MODALITIES], f"real study {name}"
    from tumorseg.data.synthetic import generate_dataset

    (case_id,) = generate_dataset(tmp / "synthetic", num_cases=1, shape=(240, 240, 155), seed=0)
    folder = tmp / "synthetic" / case_id
    return [folder / f"{case_id}_{m}.nii.gz" for m in MODALITIES], f"synthetic study {case_id}"


def _prepare(overrides: dict[str, Any], ckpt: Path, onnx: Path) -> dict[str, Any]:
    """Random weights saved, and exported to ONNX (with the export's parity check)."""
    import torch

    from tumorseg.inference import load_bundle
    from tumorseg.inference.export import export_network

    config = load_bundle(BUNDLE, overrides=overrides)
    torch.manual_seed(0)
    network = config.get_parsed_content("network_def")
    torch.save(network.state_dict(), ckpt)
    start = time.perf_counter()
    roi = config.get_parsed_content("roi_size")
    report = export_network(network, onnx, export_format="onnx", roi_size=roi, in_channels=4)
    return {
        "params_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "export_s": time.perf_counter() - start,
        "parity": max(report.max_abs_diff.values()),
    }


def _child(
    backend: str, overrides: dict[str, Any], ckpt: Path, onnx: Path, files: list[Path]
) -> dict[str, Any]:
    import torch

    from tumorseg.inference import Predictor
    from tumorseg.inference.backends import OnnxRuntimeNetwork

    threads = torch.get_num_threads()
    if backend == "onnxruntime":
        network: Any = OnnxRuntimeNetwork(onnx, num_threads=threads)
        predictor = Predictor.from_bundle(
            BUNDLE, overrides=overrides, network=network, device="cpu", precision="fp32"
        )
    else:
        predictor = Predictor.from_bundle(
            BUNDLE, overrides=overrides, checkpoint=ckpt, device="cpu", precision="fp32"
        )
    with torch.no_grad():
        predictor.network(torch.zeros(1, 4, *predictor.roi_size))  # warm-up window
    start = time.perf_counter()
    result = predictor.predict_case(files)
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "network": result.timings["network"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "threads": threads,
        "voxels": int((result.label > 0).sum()),
    }


def _in_child(backend: str, net: str, ckpt: Path, onnx: Path, files: list[Path]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [
        sys.executable,
        __file__,
        "--child",
        backend,
        net,
        str(ckpt),
        str(onnx),
        *map(str, files),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark child {backend} {net} failed (exit {proc.returncode}; -9: killed, "
            f"out of memory?):\n{proc.stderr[-3000:]}"
        )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run(repeats: int = 2) -> str:
    """Measure and return the markdown section for ``docs/benchmarks.md``."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files, what = _study(tmp)
        for net, overrides in NETWORKS.items():
            ckpt, onnx = tmp / f"{len(rows)}.pt", tmp / f"{len(rows)}.onnx"
            prep = _prepare(overrides, ckpt, onnx)
            runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
            for _ in range(repeats):  # alternate the arms: the CPU is shared
                for backend in BACKENDS:
                    runs[backend].append(_in_child(backend, net, ckpt, onnx, files))
            ratios = [
                o["wall"] / p["wall"]
                for p, o in zip(runs["pytorch"], runs["onnxruntime"], strict=True)
            ]
            same = {r["voxels"] for b in BACKENDS for r in runs[b]}
            rows.append((net, prep, runs, ratios, same))
    lines = []
    for net, prep, runs, ratios, _same in rows:
        for backend in BACKENDS:
            walls = [r["wall"] for r in runs[backend]]
            nets = [r["network"] for r in runs[backend]]
            rss = max(r["peak_rss_gb"] for r in runs[backend])
            lines.append(
                f"| {net} ({prep['params_m']:.1f} M) | {backend} | "
                f"{' / '.join(f'{w:.1f}' for w in walls)} | {statistics.median(nets):.1f} | "
                f"{rss:.2f} |"
            )
        lines.append(
            f"| {net} | ONNX Runtime / PyTorch, per pair | "
            f"{' / '.join(f'{r:.2f}' for r in ratios)} | | |"
        )
    notes = "\n".join(
        f"- {net}: export {prep['export_s']:.0f} s, parity check (largest probability "
        f"difference) {prep['parity']:.1e}; mask voxels per run {sorted(same)}"
        for net, prep, _, _, same in rows
    )
    threads = rows[0][2]["pytorch"][0]["threads"]
    return f"""## PyTorch vs ONNX Runtime, whole case on CPU (issue 20)

{what}, bundle preprocessing, roi 96^3, overlap 0.5, sw_batch_size 1, float32 and {threads}
threads in both backends, fresh process per run, {repeats} alternating runs per arm
(`python benchmarks/bench_onnx.py`).

| network | backend | whole case s (per run) | network s (median) | peak RSS GB |
|---|---|---:|---:|---:|
{chr(10).join(lines)}

{notes}
"""


def _child_main(argv: list[str]) -> int:
    backend, net, ckpt, onnx, *files = argv
    result = _child(backend, NETWORKS[net], Path(ckpt), Path(onnx), [Path(f) for f in files])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2:]))
    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
