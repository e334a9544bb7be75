"""tumorseg vs nnU-Net v2 at equal network, whole processes, one real study, CPU (issue #22).

**Speed.** The network on both sides is nnU-Net v2.8.1's own ``3d_fullres`` plan for BraTS: 6
stages of two 3x3x3 convolutions (32, 64, 128, 256, 320, 320 features), strides 1, 2, 2, 2, 2,
(1, 2, 2) in RAS order, instance norm with affine, leaky ReLU, no conv bias, 3 region outputs
(30.8 M parameters), patch 112x160x128 (RAS; 128x160x112 in nnU-Net's z, y, x), step 0.5,
Gaussian blending, no mirroring. tumorseg runs it as a MONAI ``DynUNet`` (bundle overrides);
nnU-Net gets a results folder built here (``dataset.json``, ``plans.json``,
``fold_0/checkpoint_final.pth``) holding the *same* random weights, copied layer by layer
into its ``PlainConvUNet`` (kernels transposed to its axis order). Each arm is a whole
process (``python -m tumorseg infer ...`` / ``nnUNetv2_predict -device cpu --disable_tta
-npp 1 -nps 1``) on ``../shared/data/brats2020_layout/TCGA-DU-7294``; the arms alternate,
``REPEATS`` rounds (default 3) in one run, and the ratios are of medians from that run. Peak
RSS is ``ru_maxrss`` of the arm's process tree as ``wait4`` reports it (the largest single
process: nnU-Net's worker processes are not summed).

**Accuracy.** With a small model trained on synthetic data (``MODEL``, default the demo's
``demo/models/model.pt``: ``filters`` 8..128, ``roi_size`` 32; ``HELDOUT``, default
``demo/data/heldout``), the fast settings' masks are compared per region (WT, TC, ET) with
the reference masks of MONAI's ``SlidingWindowInferer`` in float32, overlap 0.5, Gaussian,
on the held-out studies (also scored against their labels) and on the shared real studies.

**Decomposition** (``PART=decompose``): on a tumour-centred block of a real crop, the masks
of each precision and tiling against the reference, one factor at a time. ``PART=passes``: the
equal network's float32 whole pass vs its windows on one real crop (network time only).
``PART=compile``: one window, eager vs ``torch.compile``, float32 and bfloat16.
``PART=norms``: bfloat16 windows with the norm layers in bfloat16 or float32 on the real studies.
``PART=whole_small``: a whole pass on crops of at most two windows (where ``tiling auto`` takes
one) against MONAI's windows, with the synthetic-trained model.

``make bench BENCH=vs_nnunet``; ``PART`` (comma-separated) picks parts; default speed and
accuracy. ``ARMS`` (comma-separated arm names of :data:`ARMS`) limits the speed arms; nnU-Net
and the defaults always run.
nnU-Net (``nnunetv2``) must be installed for the speed half; without it that half is skipped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import nibabel as nib
import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brats_mri_segmentation"
SHARED = REPO.parent / "shared" / "data"
STUDY_DIR = SHARED / "brats2020_layout"
REAL_STUDIES = {
    "TCGA-DU-7294": [
        STUDY_DIR / "TCGA-DU-7294" / f"TCGA-DU-7294_{m}.nii.gz"
        for m in ("flair", "t1", "t1ce", "t2")
    ],
    "BraTS-GLI-00001-000": [
        SHARED / "brats2023_layout" / "BraTS-GLI-00001-000" / f"BraTS-GLI-00001-000-{m}.nii.gz"
        for m in ("t2f", "t1n", "t1c", "t2w")
    ],
}
MODALITIES = ("flair", "t1", "t1ce", "t2")
REGIONS = ("WT", "TC", "ET")

#: The equal network, RAS axis order (x, y, z).
FILTERS = [32, 64, 128, 256, 320, 320]
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
ROI = [112, 160, 128]
TARGET_RATIO = 0.5
GOAL_RATIO = 0.25
TARGET_RSS_GB = 4.0
TARGET_AGREEMENT = 0.995
TARGET_DROP = 0.002

#: Speed arms: name -> extra ``tumorseg infer`` arguments (None: nnU-Net).
ARMS: dict[str, list[str] | None] = {
    "nnU-Net": None,
    "tumorseg defaults": [],
    "tumorseg fp32 whole": ["--precision", "fp32", "--tiling", "whole"],
    "tumorseg bf16 whole": ["--precision", "bf16", "--tiling", "whole"],
    "tumorseg fp32 windows": ["--precision", "fp32", "--tiling", "windows"],
    "tumorseg bf16 windows": ["--precision", "bf16", "--tiling", "windows"],
}


def _arms() -> dict[str, list[str] | None]:
    """The speed arms of this run: ``ARMS`` (comma-separated names) or all; nnU-Net and the
    defaults always run (the ratio is theirs)."""
    wanted = os.environ.get("ARMS", "")
    if not wanted:
        return dict(ARMS)
    names = {n.strip() for n in wanted.split(",")} | {"nnU-Net", "tumorseg defaults"}
    unknown = names - set(ARMS)
    if unknown:
        raise SystemExit(f"ARMS: unknown arm(s) {sorted(unknown)}; known: {list(ARMS)}")
    return {n: a for n, a in ARMS.items() if n in names}


def equal_overrides() -> dict[str, Any]:
    """Bundle overrides that make the bundle's DynUNet nnU-Net's BraTS 3d_fullres network."""
    return {
        "filters": FILTERS,
        "roi_size": ROI,
        "sw_batch_size": 1,
        "network_def#kernel_size": [[3, 3, 3]] * len(FILTERS),
        "network_def#strides": STRIDES,
        "network_def#upsample_kernel_size": STRIDES[1:],
        "network_def#res_block": False,
        "network_def#norm_name": ["instance", {"affine": True}],
    }


def _dynunet() -> torch.nn.Module:
    from tumorseg.inference import load_bundle

    config = load_bundle(BUNDLE, overrides=equal_overrides())
    torch.manual_seed(0)
    network: torch.nn.Module = config.get_parsed_content("network_def")
    return network.eval()


def _zyx(weight: torch.Tensor) -> torch.Tensor:
    """A 3D kernel in nnU-Net's axis order (z, y, x) from RAS order (x, y, z)."""
    return weight.permute(0, 1, 4, 3, 2).contiguous() if weight.ndim == 5 else weight


def nnunet_plans() -> tuple[dict[str, Any], dict[str, Any]]:
    """``plans.json`` and ``dataset.json`` of the equal network (nnU-Net's z, y, x order)."""
    zyx_strides = [s[::-1] for s in STRIDES]
    resample = "resample_data_or_seg_to_shape"
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": ROI[::-1],
        "median_image_size_in_voxels": [140, 171, 137],
        "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"] * 4,
        "use_mask_for_norm": [True] * 4,
        "resampling_fn_data": resample,
        "resampling_fn_seg": resample,
        "resampling_fn_data_kwargs": {
            "is_seg": False,
            "order": 3,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_seg_kwargs": {
            "is_seg": True,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_probabilities": resample,
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": len(FILTERS),
                "features_per_stage": FILTERS,
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * len(FILTERS),
                "strides": zyx_strides,
                "n_conv_per_stage": [2] * len(FILTERS),
                "n_conv_per_stage_decoder": [2] * (len(FILTERS) - 1),
                "conv_bias": False,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    props = {"max": 1e4, "mean": 100.0, "median": 100.0, "min": 0.0}
    props |= {"percentile_00_5": 0.0, "percentile_99_5": 1e4, "std": 50.0}
    plans = {
        "dataset_name": "Dataset999_TumorsegEqual",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [140, 171, 137],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(i): props for i in range(4)},
    }
    dataset = {
        "channel_names": {str(i): m.upper() for i, m in enumerate(MODALITIES)},
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": [3],
        },
        "regions_class_order": [1, 2, 3],
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    return plans, dataset


def nnunet_weights(dynunet: torch.nn.Module, plans: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The DynUNet's weights as a state dict of nnU-Net's ``PlainConvUNet`` (layer by layer)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kwargs = dict(plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"])
    kwargs |= {
        "conv_op": torch.nn.Conv3d,
        "norm_op": torch.nn.InstanceNorm3d,
        "dropout_op": None,
        "nonlin": torch.nn.LeakyReLU,
    }
    net = PlainConvUNet(input_channels=4, num_classes=3, deep_supervision=False, **kwargs)
    dyn: Any = dynunet
    enc_blocks = [dyn.input_block, *dyn.downsamples, dyn.bottleneck]
    pairs: list[tuple[torch.nn.Module, torch.nn.Module]] = []
    for stage, block in zip(net.encoder.stages, enc_blocks, strict=True):
        convs = stage[0].convs
        pairs += [(convs[0].conv, block.conv1.conv), (convs[0].norm, block.norm1)]
        pairs += [(convs[1].conv, block.conv2.conv), (convs[1].norm, block.norm2)]
    for i, up in enumerate(dyn.upsamples):
        pairs.append((net.decoder.transpconvs[i], up.transp_conv.conv))
        convs = net.decoder.stages[i].convs
        pairs += [(convs[0].conv, up.conv_block.conv1.conv), (convs[0].norm, up.conv_block.norm1)]
        pairs += [(convs[1].conv, up.conv_block.conv2.conv), (convs[1].norm, up.conv_block.norm2)]
    pairs.append((net.decoder.seg_layers[-1], dyn.output_block.conv.conv))
    with torch.no_grad():
        for target, source in pairs:
            for name, param in target.named_parameters(recurse=False):
                value = _zyx(getattr(source, name))
                if value.shape != param.shape:
                    raise ValueError(
                        f"{target}: {name} {tuple(value.shape)} != {tuple(param.shape)}"
                    )
                param.copy_(value)
    copied = sum(p.numel() for t, _ in pairs for p in t.parameters(recurse=False))
    if copied != sum(p.numel() for p in dynunet.parameters()):
        raise ValueError("not every DynUNet parameter found its place in the PlainConvUNet")
    return net.state_dict()


def _write_nnunet_model(results: Path, dynunet: torch.nn.Module) -> None:
    plans, dataset = nnunet_plans()
    folder = results / plans["dataset_name"] / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    checkpoint = {
        "network_weights": nnunet_weights(dynunet, plans),
        "trainer_name": "nnUNetTrainer",
        "init_args": {
            "plans": plans,
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dataset,
        },
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a whole process; raises with its output if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} ... exited {proc.returncode}:\n{output.decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024**2


def _speed() -> str:
    if shutil.which("nnUNetv2_predict", path=str(Path(sys.executable).parent)) is None:
        return "## vs nnU-Net\n\nskipped: nnunetv2 is not installed in this environment\n"
    if not STUDY_DIR.is_dir():
        return f"## vs nnU-Net\n\nskipped: {STUDY_DIR} is absent\n"
    repeats = int(os.environ.get("REPEATS", "3"))
    arms = _arms()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="vs_nnunet_") as tmp_name:
        tmp = Path(tmp_name)
        dynunet = _dynunet()
        params = sum(p.numel() for p in dynunet.parameters()) / 1e6
        torch.save(dynunet.state_dict(), tmp / "model.pt")
        _write_nnunet_model(tmp / "results", dynunet)
        raw = tmp / "nnunet_in"
        raw.mkdir()
        for i, path in enumerate(REAL_STUDIES["TCGA-DU-7294"]):
            (raw / f"TCGA-DU-7294_{i:04d}.nii.gz").symlink_to(path)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        env |= {f"nnUNet_{k}": str(tmp / k) for k in ("raw", "preprocessed", "results")}
        overrides = [f"--override={k}={json.dumps(v)}" for k, v in equal_overrides().items()]
        commands: dict[str, list[str]] = {}
        for name, extra in arms.items():
            out = str(tmp / "out" / name.replace(" ", "_"))
            if extra is None:
                commands[name] = [str(bin_dir / "nnUNetv2_predict"), "-i", str(raw), "-o", out]
                commands[name] += ["-d", "999", "-c", "3d_fullres", "-f", "0", "-device", "cpu"]
                commands[name] += ["--disable_tta", "-npp", "1", "-nps", "1"]
            else:
                commands[name] = [
                    sys.executable,
                    "-m",
                    "tumorseg",
                    "infer",
                    "--bundle",
                    str(BUNDLE),
                ]
                commands[name] += ["--input", str(STUDY_DIR), "--output", out, "--overwrite"]
                commands[name] += ["--checkpoint", str(tmp / "model.pt"), "--device", "cpu"]
                commands[name] += ["--no-progress", *overrides, *extra]
        walls: dict[str, list[float]] = {n: [] for n in arms}
        rss: dict[str, float] = dict.fromkeys(arms, 0.0)
        for round_ in range(repeats):
            order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
            for name in order:
                wall, peak = _timed(commands[name], env)
                walls[name].append(wall)
                rss[name] = max(rss[name], peak)
                print(f"  round {round_ + 1}: {name}: {wall:.1f} s, {peak:.2f} GB", flush=True)
    base = statistics.median(walls["nnU-Net"])
    lines = [
        "## tumorseg vs nnU-Net v2.8.1 at equal network, whole process (`bench_vs_nnunet`)",
        "",
        f"TCGA-DU-7294 (240x240x155), CPU, {torch.get_num_threads()} threads, DynUNet = nnU-Net "
        f"BraTS 3d_fullres plan ({params:.1f} M parameters), patch {'x'.join(map(str, ROI))}, "
        f"no mirroring; arms alternated, {repeats} rounds in one run.",
        "",
        "| arm | wall s (median) | all runs | peak RSS GB | ratio to nnU-Net |",
        "|---|---|---|---|---|",
    ]
    for name in arms:
        median = statistics.median(walls[name])
        runs = ", ".join(f"{w:.1f}" for w in walls[name])
        lines.append(f"| {name} | {median:.1f} | {runs} | {rss[name]:.2f} | {median / base:.2f} |")
    default_ratio = statistics.median(walls["tumorseg defaults"]) / base
    best = min((n for n in arms if n != "nnU-Net"), key=lambda n: statistics.median(walls[n]))
    lines += [
        "",
        f"defaults ratio {default_ratio:.2f} (target <= {TARGET_RATIO}: "
        f"{'met' if default_ratio <= TARGET_RATIO else 'NOT met'}); best: {best}, ratio "
        f"{statistics.median(walls[best]) / base:.2f} (goal {GOAL_RATIO}); peak RSS of the "
        f"defaults {rss['tumorseg defaults']:.2f} GB (target < {TARGET_RSS_GB}: "
        f"{'met' if rss['tumorseg defaults'] < TARGET_RSS_GB else 'NOT met'})",
    ]
    return "\n".join(lines) + "\n"


#: Accuracy variants: name -> (precision, tiling, overlap); the reference is MONAI's inferer.
VARIANTS: dict[str, tuple[str, str, float | None]] = {
    "defaults (auto, auto)": ("auto", "auto", None),
    "bf16 whole": ("bf16", "whole", None),
    "fp32 whole": ("fp32", "whole", None),
}


def _region_dice(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from tumorseg.metrics.regions import dice, structure_masks

    ma, mb = structure_masks(a, "brats2021"), structure_masks(b, "brats2021")
    return {r: dice(ma[r], mb[r]) for r in REGIONS}


def _accuracy() -> str:
    from tumorseg.data import discover_cases
    from tumorseg.inference import Predictor

    model = Path(os.environ.get("MODEL", REPO / "demo" / "models" / "model.pt"))
    heldout = Path(os.environ.get("HELDOUT", REPO / "demo" / "data" / "heldout"))
    if not model.is_file() or not heldout.is_dir():
        return (
            f"## fast inference accuracy\n\nskipped: no demo model {model} or held-out folder "
            f"{heldout} (run `make demo`, or set MODEL= and HELDOUT=)\n"
        )
    small = {"filters": [8, 16, 32, 64, 128], "roi_size": [32, 32, 32]}
    cases = {c.case_id: (list(c.images), c.label) for c in discover_cases(heldout)}
    cases |= {k: (v, None) for k, v in REAL_STUDIES.items() if v[0].is_file()}

    def predictor(**kw: Any) -> Predictor:
        return Predictor.from_bundle(BUNDLE, checkpoint=model, device="cpu", **kw)

    ref = predictor(overrides={**small, "inferer": "@validate#inferer"})
    ref_masks = {
        cid: ref.predict_case(files, case_id=cid).label for cid, (files, _) in cases.items()
    }
    truth = {}
    for cid, (_, label) in cases.items():
        if label is not None:
            truth[cid] = np.asarray(nib.load(str(label)).dataobj)  # type: ignore[attr-defined]
    ref_score = {
        r: float(np.mean([_region_dice(ref_masks[c], t)[r] for c, t in truth.items()]))
        for r in REGIONS
    }
    lines = [
        "## fast inference accuracy (`bench_vs_nnunet`, PART=accuracy)",
        "",
        f"Model {model.name} (synthetic training, filters 8..128, roi 32); reference: MONAI "
        f"SlidingWindowInferer, fp32, overlap 0.5, Gaussian. {len(truth)} synthetic held-out + "
        f"{len(cases) - len(truth)} real studies. Agreement = min over studies of the Dice "
        "between the variant's and the reference's masks; held-out = mean Dice vs labels.",
        "",
        "| variant | agreement WT / TC / ET (held-out) | agreement WT / TC / ET (real) "
        "| held-out Dice WT / TC / ET (reference "
        + " / ".join(f"{ref_score[r]:.4f}" for r in REGIONS)
        + ") | max drop |",
        "|---|---|---|---|---|",
    ]
    for name, (precision, tiling, overlap) in VARIANTS.items():
        over = {**small, **({"overlap": overlap} if overlap is not None else {})}
        fast = predictor(overrides=over, precision=precision, tiling=tiling)
        agree: dict[str, list[dict[str, float]]] = {"held-out": [], "real": []}
        score: dict[str, list[float]] = {r: [] for r in REGIONS}
        for cid, (files, _) in cases.items():
            mask = fast.predict_case(files, case_id=cid).label
            agree["held-out" if cid in truth else "real"].append(_region_dice(mask, ref_masks[cid]))
            if cid in truth:
                for r, v in _region_dice(mask, truth[cid]).items():
                    score[r].append(v)
        cells = [
            " / ".join(f"{min(d[r] for d in agree[k]):.4f}" for r in REGIONS) if agree[k] else "-"
            for k in ("held-out", "real")
        ]
        means = {r: float(np.mean(v)) for r, v in score.items()}
        drop = max(ref_score[r] - means[r] for r in REGIONS)
        lines.append(
            f"| {name} | {cells[0]} | {cells[1]} | "
            + " / ".join(f"{means[r]:.4f}" for r in REGIONS)
            + f" | {drop:+.4f} |"
        )
        print(lines[-1], flush=True)
    lines.append(
        f"\ntargets: agreement >= {TARGET_AGREEMENT} per region, held-out drop <= {TARGET_DROP}\n"
    )
    return "\n".join(lines)


def _window_seconds(network: Any, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Seconds of one forward pass of ``network`` over ``x`` under autocast to ``dtype``."""
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        network(x)
    return time.perf_counter() - start


def _compile() -> str:
    """One window of the equal network, eager vs ``torch.compile``, float32 and bfloat16."""
    from tumorseg.networks import cpu_bf16_supported

    dtypes: dict[str, torch.dtype | None] = {"fp32": None}
    if cpu_bf16_supported():
        dtypes["bf16"] = torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(1, 4, *ROI)
    lines = [
        "## torch.compile of one window of the equal network (`bench_vs_nnunet`, PART=compile)",
        "",
        f"CPU, {torch.get_num_threads()} threads, window {'x'.join(map(str, ROI))}, "
        "batch 1; per precision in one process: eager warm-up, `torch.compile` first call "
        "(compile + run), then eager and compiled alternated twice, best of each.",
        "",
        "| precision | eager s | compiled s | ratio compiled / eager | first compiled call s |",
        "|---|---|---|---|---|",
    ]
    for name, dtype in dtypes.items():
        eager = _dynunet()
        _window_seconds(eager, x, dtype)
        compiled = torch.compile(_dynunet())
        first_s = _window_seconds(compiled, x, dtype)
        # Alternated, the best of two each: the machine is shared, and a slow neighbour
        # should not land on one arm only.
        eager_runs, compiled_runs = [], []
        for _ in range(2):
            eager_runs.append(_window_seconds(eager, x, dtype))
            compiled_runs.append(_window_seconds(compiled, x, dtype))
        eager_s, compiled_s = min(eager_runs), min(compiled_runs)
        lines.append(
            f"| {name} | {eager_s:.2f} | {compiled_s:.2f} | {compiled_s / eager_s:.2f} "
            f"| {first_s:.1f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def _passes() -> str:
    """The equal network on one real brain crop: one float32 window vs one float32 whole pass.

    The windowed figure is one window's seconds times the number of windows :func:`window_starts`
    places on the crop (blending costs next to nothing beside the network).
    """
    from tumorseg.inference import Predictor, TiledInferer
    from tumorseg.inference.tiling import window_starts

    if not STUDY_DIR.is_dir():
        return f"## network passes\n\nskipped: {STUDY_DIR} is absent\n"
    network = _dynunet()
    predictor = Predictor.from_bundle(
        BUNDLE, overrides=equal_overrides(), device="cpu", network=network
    )
    image = predictor.load_case(REAL_STUDIES["TCGA-DU-7294"]).data[predictor.image_key]
    x = torch.as_tensor(image).as_subclass(torch.Tensor)[None]
    padded = [max(s, r) for s, r in zip(x.shape[2:], ROI, strict=True)]
    count = len(window_starts(padded, ROI, 0.5))
    window_s = _window_seconds(network, x[..., : ROI[0], : ROI[1], : ROI[2]], None)
    print(f"  one fp32 window: {window_s:.1f} s ({count} windows)", flush=True)
    start = time.perf_counter()
    with torch.no_grad():
        TiledInferer(ROI, 1, 0.5, tiling="whole", precision="fp32")(x, network)
    whole_s = time.perf_counter() - start
    print(f"  fp32 whole: {whole_s:.1f} s", flush=True)
    lines = [
        "## the equal network on one real crop, float32 (`bench_vs_nnunet`, PART=passes)",
        "",
        f"TCGA-DU-7294 brain crop {'x'.join(map(str, x.shape[2:]))}, CPU, "
        f"{torch.get_num_threads()} threads, random weights, in one process (network only).",
        "",
        "| arm | network s | ratio to fp32 windows |",
        "|---|---|---|",
        f"| fp32 windows ({count} x one window of {window_s:.1f} s) | {count * window_s:.1f} "
        "| 1.00 |",
        f"| fp32 whole (one pass) | {whole_s:.1f} | {whole_s / (count * window_s):.2f} |",
    ]
    return "\n".join(lines) + "\n"


#: The real-study block of PART=decompose: brain crop of TCGA-DU-7294, this size, centred on
#: its reference tumour (every variant sees the same voxels; windows of 32 at overlap 0.5 land
#: differently in MONAI's and the evenly spread placement along all three axes).
DECOMPOSE_BLOCK = (56, 72, 56)


def _even_axis_starts(size: int, roi: int, overlap: float) -> list[int]:
    """The window placement ``TiledInferer`` used before: the same count, spread evenly."""
    if size == roi:
        return [0]
    count = math.ceil((size - roi) / (roi * (1.0 - overlap)) - 1e-9) + 1
    return [round(i * (size - roi) / (count - 1)) for i in range(count)]


class _MonaiBf16(SlidingWindowInferer):
    """MONAI's inferer under CPU bfloat16 autocast: precision alone, at the reference's windows."""

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return super().__call__(inputs, network).float()


def _decompose() -> str:
    """Where the fast settings' masks part from the reference on a real study: precision
    (bf16 vs fp32 at identical windows) and tiling (window placement, whole pass) apart."""
    from tumorseg.inference import Predictor, TiledInferer
    from tumorseg.inference import tiling as tiling_module
    from tumorseg.metrics.regions import dice

    model = Path(os.environ.get("MODEL", REPO / "demo" / "models" / "model.pt"))
    files = REAL_STUDIES["TCGA-DU-7294"]
    seg = STUDY_DIR / "TCGA-DU-7294" / "TCGA-DU-7294_seg.nii.gz"
    if not model.is_file() or not seg.is_file():
        return f"## decomposition\n\nskipped: no model {model} or no {seg}\n"
    small = {"filters": [8, 16, 32, 64, 128], "roi_size": [32, 32, 32]}
    predictor = Predictor.from_bundle(BUNDLE, checkpoint=model, device="cpu", overrides=small)
    data = predictor.preprocessing({"image": [str(f) for f in files], "label": str(seg)})
    full = torch.as_tensor(data["image"]).as_subclass(torch.Tensor)[None]
    tumour = torch.as_tensor(data["label"])[0] > 0
    centre = tumour.nonzero().float().mean(0).round().long().tolist()
    lo = [
        min(max(c - b // 2, 0), n - b)
        for c, b, n in zip(centre, DECOMPOSE_BLOCK, full.shape[2:], strict=True)
    ]
    block = tuple(slice(a, a + b) for a, b in zip(lo, DECOMPOSE_BLOCK, strict=True))
    x = full[(..., *block)].contiguous()
    roi = small["roi_size"]
    even = TiledInferer(roi, 4, 0.5, tiling="windows", precision="fp32")
    even_bf16 = TiledInferer(roi, 4, 0.5, tiling="windows", precision="bf16")
    inferers: dict[str, Any] = {
        "reference: MONAI fp32": SlidingWindowInferer(roi, 4, 0.5, mode="gaussian"),
        "MONAI windows bf16": _MonaiBf16(roi, 4, 0.5, mode="gaussian"),
        "even windows fp32 (before)": even,
        "even windows bf16 (before: the defaults)": even_bf16,
        "TiledInferer windows fp32 (now)": TiledInferer(roi, 4, 0.5, tiling="windows"),
        "TiledInferer windows bf16 (now: the defaults)": TiledInferer(
            roi, 4, 0.5, tiling="windows", precision="bf16"
        ),
        "whole block fp32": TiledInferer(roi, 4, 0.5, tiling="whole", precision="fp32"),
        "whole block bf16": TiledInferer(roi, 4, 0.5, tiling="whole", precision="bf16"),
    }
    logits: dict[str, torch.Tensor] = {}
    for name, inferer in inferers.items():
        start = time.perf_counter()
        placement = _even_axis_starts if inferer in (even, even_bf16) else tiling_module.axis_starts
        with torch.no_grad(), mock.patch.object(tiling_module, "axis_starts", placement):
            logits[name] = inferer(x, predictor.network).float()[0]
        print(f"  {name}: {time.perf_counter() - start:.1f} s", flush=True)

    def row(a: str, b: str, what: str) -> str:
        ma, mb = logits[a] > 0, logits[b] > 0  # sigmoid > 0.5
        cells = " / ".join(f"{dice(ma[c].numpy(), mb[c].numpy()):.4f}" for c in range(3))
        diff = (logits[a] - logits[b]).abs()
        return f"| {b} vs {a} | {what} | {cells} | {diff.mean():.4f} / {diff.max():.3f} |"

    ref = "reference: MONAI fp32"
    near = (logits[ref].abs() < 0.1).float().mean(dim=(1, 2, 3))
    positive = (logits[ref] > 0).float().sum(dim=(1, 2, 3))
    lines = [
        "## fast settings vs reference, decomposed (`bench_vs_nnunet`, PART=decompose)",
        "",
        f"Model {model} (synthetic training); TCGA-DU-7294 brain crop "
        f"{'x'.join(map(str, full.shape[2:]))} (the pipeline's preprocessing), block "
        f"{'x'.join(map(str, DECOMPOSE_BLOCK))} at {lo} around its reference tumour; windows "
        f"32^3, overlap 0.5, Gaussian; {torch.get_num_threads()} thread(s). Masks: region "
        "logit > 0 (probability > 0.5). Reference voxels per region WT / TC / ET: "
        + " / ".join(f"{int(v)}" for v in positive)
        + "; share of block voxels with |reference logit| < 0.1: "
        + " / ".join(f"{float(v):.4f}" for v in near)
        + ".",
        "",
        "| pair | what differs | mask Dice WT / TC / ET | mean / max abs logit difference |",
        "|---|---|---|---|",
        row(ref, "MONAI windows bf16", "precision alone"),
        row(ref, "even windows fp32 (before)", "window placement alone"),
        row("even windows fp32 (before)", "even windows bf16 (before: the defaults)", "precision"),
        row(ref, "even windows bf16 (before: the defaults)", "both (the defaults before)"),
        row(ref, "TiledInferer windows fp32 (now)", "nothing (same windows, fp32)"),
        row(ref, "TiledInferer windows bf16 (now: the defaults)", "precision (the defaults now)"),
        row(ref, "whole block fp32", "whole pass alone (instance norm over the block)"),
        row("whole block fp32", "whole block bf16", "precision in a whole pass"),
    ]
    return "\n".join(lines) + "\n"


#: Blocks of PART=whole_small: each at most ``max_whole_ratio`` (2) windows of 32^3 once padded
#: to what the demo network divides (16), the crops ``tiling auto`` runs in one pass.
WHOLE_SMALL_BLOCKS = ((48, 32, 32), (32, 48, 32), (32, 32, 48))


def _whole_small() -> str:
    """A whole pass where ``tiling auto`` takes one (a crop of at most 2 windows) against
    MONAI's float32 windows, with the synthetic-trained demo model: what instance norm over the
    whole crop instead of each window does to the masks of a trained model."""
    from tumorseg.data import discover_cases
    from tumorseg.inference import Predictor, TiledInferer
    from tumorseg.metrics.regions import dice

    model = Path(os.environ.get("MODEL", REPO / "demo" / "models" / "model.pt"))
    heldout = Path(os.environ.get("HELDOUT", REPO / "demo" / "data" / "heldout"))
    if not model.is_file() or not heldout.is_dir():
        return f"## whole pass, small crops\n\nskipped: no model {model} or {heldout}\n"
    small = {"filters": [8, 16, 32, 64, 128], "roi_size": [32, 32, 32]}
    predictor = Predictor.from_bundle(BUNDLE, checkpoint=model, device="cpu", overrides=small)
    cases = [(c.case_id, list(c.images), c.label) for c in discover_cases(heldout)]
    seg = STUDY_DIR / "TCGA-DU-7294" / "TCGA-DU-7294_seg.nii.gz"
    if seg.is_file():
        cases.append(("TCGA-DU-7294", REAL_STUDIES["TCGA-DU-7294"], seg))
    roi = small["roi_size"]
    reference = SlidingWindowInferer(roi, 4, 0.5, mode="gaussian")
    variants = {
        "fp32 whole": TiledInferer(roi, 4, 0.5, tiling="whole", precision="fp32"),
        "bf16 whole": TiledInferer(roi, 4, 0.5, tiling="whole", precision="bf16"),
        "bf16 windows": TiledInferer(roi, 4, 0.5, tiling="windows", precision="bf16"),
    }
    agree: dict[str, list[list[float]]] = {n: [] for n in variants}
    truth_dice: dict[str, list[list[float]]] = {n: [] for n in ("reference", *variants)}
    for case_id, files, label in cases:
        data = predictor.preprocessing({"image": [str(f) for f in files], "label": str(label)})
        full = torch.as_tensor(data["image"]).as_subclass(torch.Tensor)[None]
        regions = torch.as_tensor(data["label"]) > 0  # WT, TC, ET: the bundle's label transform
        centre = regions[0].nonzero().float().mean(0).round().long().tolist()
        for wanted in WHOLE_SMALL_BLOCKS:
            # A synthetic crop is smaller than a block along some axis: the block is then the
            # crop along it (still at most 2 windows once padded).
            size = tuple(min(b, n) for b, n in zip(wanted, full.shape[2:], strict=True))
            lo = [
                min(max(c - b // 2, 0), n - b)
                for c, b, n in zip(centre, size, full.shape[2:], strict=True)
            ]
            block = tuple(slice(a, a + b) for a, b in zip(lo, size, strict=True))
            x = full[(..., *block)].contiguous()
            truth = regions[(slice(None), *block)].numpy()
            with torch.no_grad():
                ref = reference(x, predictor.network).float()[0] > 0
                out = {n: inf(x, predictor.network).float()[0] > 0 for n, inf in variants.items()}
            truth_dice["reference"].append([dice(ref[c].numpy(), truth[c]) for c in range(3)])
            for name, mask in out.items():
                agree[name].append([dice(mask[c].numpy(), ref[c].numpy()) for c in range(3)])
                truth_dice[name].append([dice(mask[c].numpy(), truth[c]) for c in range(3)])
        print(f"  {case_id}: done", flush=True)
    ref_mean = np.mean(truth_dice["reference"], axis=0)
    lines = [
        "## whole pass on crops `tiling auto` runs in one pass "
        "(`bench_vs_nnunet`, PART=whole_small)",
        "",
        f"Model {model} (synthetic training, windows 32^3); {len(cases)} studies "
        f"({', '.join(c for c, _, _ in cases)}), blocks "
        + ", ".join("x".join(map(str, b)) for b in WHOLE_SMALL_BLOCKS)
        + " around each reference tumour, cut to the crop where it is smaller (at most 2 "
        "windows once padded to a multiple of 16, so `tiling auto` would run each in one pass)."
        " Reference: "
        "MONAI SlidingWindowInferer fp32, overlap 0.5, Gaussian (2 windows per block). "
        "Agreement: min over blocks of the mask Dice with the reference; label Dice: mean over "
        f"blocks (reference {' / '.join(f'{v:.4f}' for v in ref_mean)}).",
        "",
        "| variant | agreement WT / TC / ET (min) | agreement WT / TC / ET (mean) "
        "| label Dice WT / TC / ET (mean) | max drop vs reference |",
        "|---|---|---|---|---|",
    ]
    for name in variants:
        low, mean = np.min(agree[name], axis=0), np.mean(agree[name], axis=0)
        score = np.mean(truth_dice[name], axis=0)
        lines.append(
            f"| {name} | {' / '.join(f'{v:.4f}' for v in low)} | "
            f"{' / '.join(f'{v:.4f}' for v in mean)} | {' / '.join(f'{v:.4f}' for v in score)} "
            f"| {float(np.max(ref_mean - score)):+.4f} |"
        )
    return "\n".join(lines) + "\n"


def _norms() -> str:
    """bfloat16 windows with the norm layers in bfloat16 (autocast alone) or float32 (the
    defaults, ``float32_norms``), against MONAI's float32 windows on the real studies, with the
    synthetic-trained demo model: the agreement per study."""
    from tumorseg.inference import Predictor, TiledInferer

    model = Path(os.environ.get("MODEL", REPO / "demo" / "models" / "model.pt"))
    if not model.is_file():
        return f"## norms in float32\n\nskipped: no model {model} (set MODEL=)\n"
    small = {"filters": [8, 16, 32, 64, 128], "roi_size": [32, 32, 32]}
    cases = {k: v for k, v in REAL_STUDIES.items() if v[0].is_file()}

    def predictor(**kw: Any) -> Predictor:
        return Predictor.from_bundle(BUNDLE, checkpoint=model, device="cpu", **kw)

    ref = predictor(overrides={**small, "inferer": "@validate#inferer"})
    ref_masks = {c: ref.predict_case(f, case_id=c).label for c, f in cases.items()}
    fast = predictor(overrides=small, precision="bf16", tiling="windows")
    low = predictor(overrides=small, precision="bf16", tiling="windows")
    roi, inferer = list(small["roi_size"]), fast.inferer
    low.inferer = TiledInferer(
        roi, inferer.sw_batch_size, inferer.overlap, inferer.mode, tiling="windows",
        precision="bf16", fp32_norms=False,
    )  # fmt: skip
    lines = [
        "## bfloat16 windows: norm layers in bfloat16 or float32 (`bench_vs_nnunet`, PART=norms)",
        "",
        f"Model {model} (synthetic training, windows 32^3); reference MONAI SlidingWindowInferer "
        "fp32, overlap 0.5, Gaussian. Mask Dice with the reference, WT / TC / ET.",
        "",
        "| variant | " + " | ".join(cases) + " | seconds |",
        "|---|" + "---|" * len(cases) + "---|",
    ]
    for name, p in (("bf16, norms bf16", low), ("bf16, norms float32 (defaults)", fast)):
        start = time.perf_counter()
        cells = []
        for cid, files in cases.items():
            d = _region_dice(p.predict_case(files, case_id=cid).label, ref_masks[cid])
            cells.append(" / ".join(f"{d[r]:.4f}" for r in REGIONS))
        took = time.perf_counter() - start
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {took:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


#: PART names -> the function measuring that part.
PARTS = {
    "accuracy": _accuracy,
    "speed": _speed,
    "passes": _passes,
    "decompose": _decompose,
    "compile": _compile,
    "whole_small": _whole_small,
    "norms": _norms,
}


def run() -> str:
    """Run the parts in ``PART`` (comma-separated names of :data:`PARTS`; default speed and
    accuracy); markdown sections."""
    parts = [p.strip() for p in os.environ.get("PART", "speed,accuracy").split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"PART: unknown part(s) {unknown}; known: {list(PARTS)}")
    return "\n".join(f() for name, f in PARTS.items() if name in parts)


if __name__ == "__main__":
    print(run())
