"""The JSON that the bundles share stays equal in every copy (issue 19 item 3).

Each bundle stays self-contained: ``python -m monai.bundle run`` from a plain checkout and
``monai.bundle`` export (``ckpt_export``, the model zoo's one-folder layout) only see the files
of one bundle folder, so the shared sections are copied rather than merged from a common base
(see ``bundles/README.md``). This test is what keeps the copies from drifting: it compares
the parsed JSON and names the key and the bundles that differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
MRI, SLICE, LGG = (
    "brats_mri_segmentation",
    "brats_slice_segmentation_2d",
    "lgg_flair_segmentation_2d",
)

#: ``train.json`` ids (``#`` separates levels, as in MONAI) that must be equal in every bundle
#: of the group: the settings, the training loop, the data-loading and validation plumbing.
SHARED_TRAIN_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    (MRI, SLICE, LGG): (
        "amp",
        "amp_dtype",
        "bundle_root",
        "cache_dir",
        "cache_memory_gb",
        "cache_mode",
        "cache_rate",
        "channels_last",
        "ckpt_dir",
        "compile",
        "cudnn_benchmark",
        "datalist",
        "dataset_dir",
        "demo_dir",
        "device",
        "early_stop_patience",
        "fold",
        "image_key",
        "label_key",
        "log_mlflow",
        "lr_scheduler",
        "num_folds",
        "num_workers",
        "output_dir",
        "parent_run_id",
        "progress_bar",
        "run",
        "run_name",
        "seed",
        "tracking_uri",
        "training",
        "val_interval",
        "warmup_epochs",
        "weight_decay",
        "data#datalist",
        "data#dataset_dir",
        "data#demo_dir",
        "data#fold",
        "data#num_folds",
        "optimizer#_target_",
        "optimizer#lr",
        "optimizer#weight_decay",
        "train#dataloader",
        "train#dataset",
        "train#preprocessing",
        "train#trainer",
        "validate#dataset",
        "validate#handlers",
        "validate#preprocessing",
    ),
    # The two BraTS bundles also share the data source, loss, schedule and validation.
    (MRI, SLICE): (
        "challenge",
        "challenge_key",
        "data",
        "epochs",
        "experiment_name",
        "initialize",
        "label_convention",
        "learning_rate",
        "loss",
        "preprocessing_transforms",
        "regions",
        "train#inferer",
        "validate#dataloader",
        "validate#evaluator",
        "validate#postprocessing",
        "validation_metrics",
    ),
}

#: ``multi_gpu_train.json`` is the same in every bundle but for these ids, per bundle: the LGG
#: bundle draws no patches (``num_samples``) and has no sliding-window ``roi_size``.
MULTI_GPU_DIFFERENCES: dict[str, tuple[str, ...]] = {
    LGG: ("tracking_params#global_batch_size", "initialize"),
}

#: The network file that describes a bundle's default network: every id in it must equal
#: ``train.json``'s, so choosing it (``--config_file "['train.json','networks/x.json']"``)
#: trains exactly the default.
DEFAULT_NETWORK_FILES: dict[str, str] = {MRI: "unet.json"}


def _config(bundle: str, name: str) -> dict[str, Any]:
    data = json.loads((BUNDLES_DIR / bundle / "configs" / name).read_text())
    assert isinstance(data, dict)
    return data


_MISSING = object()


def _get(config: dict[str, Any], key: str) -> Any:
    if key in config:  # a flat override id such as "tracking_params#global_batch_size"
        return config[key]
    node: Any = config
    for part in key.split("#"):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _ids(config: Any, prefix: str = "") -> set[str]:
    """Every id of a config, down to the leaves (``a``, ``a#b``, ...)."""
    if not isinstance(config, dict):
        return set()
    out = set()
    for key, value in config.items():
        full = f"{prefix}#{key}" if prefix else key
        out |= {full, *_ids(value, full)}
    return out


def shared_differences(
    configs: dict[str, dict[str, Any]], groups: dict[tuple[str, ...], tuple[str, ...]]
) -> list[str]:
    """One line per shared id whose value is missing from, or differs between, its bundles."""
    problems = []
    for bundles, keys in groups.items():
        for key in keys:
            values = {b: _get(configs[b], key) for b in bundles}
            missing = [b for b, v in values.items() if v is _MISSING]
            if missing:
                problems.append(f"train.json {key!r} is missing from {missing}")
                continue
            first, *rest = bundles
            differ = [b for b in rest if values[b] != values[first]]
            if differ:
                problems.append(f"train.json {key!r} differs between {first} and {differ}")
    return problems


def test_shared_train_sections_are_equal() -> None:
    configs = {b: _config(b, "train.json") for b in (MRI, SLICE, LGG)}
    assert shared_differences(configs, SHARED_TRAIN_KEYS) == []


def test_an_edited_copy_is_named() -> None:
    configs = {b: _config(b, "train.json") for b in (MRI, SLICE, LGG)}
    configs[SLICE]["train"]["trainer"]["max_epochs"] = 1
    assert shared_differences(configs, SHARED_TRAIN_KEYS) == [
        f"train.json 'train#trainer' differs between {MRI} and ['{SLICE}']"
    ]
    del configs[LGG]["amp"]
    assert f"train.json 'amp' is missing from ['{LGG}']" in shared_differences(
        configs, SHARED_TRAIN_KEYS
    )


@pytest.mark.parametrize("bundle", [SLICE, LGG])
def test_multi_gpu_train_is_the_same_file_in_every_bundle(bundle: str) -> None:
    reference, other = _config(MRI, "multi_gpu_train.json"), _config(bundle, "multi_gpu_train.json")
    allowed = MULTI_GPU_DIFFERENCES.get(bundle, ())
    assert _ids(reference) == _ids(other), f"{bundle}: multi_gpu_train.json ids differ from {MRI}"
    differ = sorted(
        key
        for key in _ids(reference)
        if not any(key == a or key.startswith(f"{a}#") for a in allowed)
        and not isinstance(_get(reference, key), dict)
        and _get(reference, key) != _get(other, key)
    )
    assert differ == [], f"{bundle}: multi_gpu_train.json differs from {MRI} at {differ}"
    for key in allowed:  # a listed difference that disappeared should be unlisted
        assert _get(reference, key) != _get(other, key), f"{bundle}: {key!r} is equal now"


@pytest.mark.parametrize("bundle", sorted(DEFAULT_NETWORK_FILES))
def test_default_network_file_repeats_train_json(bundle: str) -> None:
    train = _config(bundle, "train.json")
    network = _config(bundle, f"networks/{DEFAULT_NETWORK_FILES[bundle]}")
    differ = [k for k, v in network.items() if train.get(k, _MISSING) != v]
    assert differ == [], (
        f"{bundle}: networks/{DEFAULT_NETWORK_FILES[bundle]} differs from train.json at {differ}"
    )
