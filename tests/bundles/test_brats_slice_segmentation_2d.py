"""The axial-slice BraTS bundle (``bundles/brats_slice_segmentation_2d``) through MONAI's CLI.

One-epoch training, evaluation and folder inference on tiny synthetic studies; the slice
sampler's weighting towards tumour slices; a pretrained encoder from a local file; 2D and 3D
runs side by side in ``tumorseg compare``. Real studies through this bundle:
``tests/inference/test_inference_slice_bundle.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from _bundle_utils import BUNDLES, bundle_cmd, bundle_env, override_args, run_ok
from _bundle_utils import CONFIGS as CONFIGS_3D
from _bundle_utils import TINY as TINY_3D
from tumorseg.cli import main
from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.data.synthetic import generate_dataset
from tumorseg.inference import Predictor
from tumorseg.networks import PretrainedMismatchError

BUNDLE = BUNDLES / "brats_slice_segmentation_2d"
CONFIGS = BUNDLE / "configs"
#: 32x32 slices, a narrow decoder, few slices per case: two CPU cores.
TINY: dict[str, Any] = {
    "roi_size": [32, 32],
    "decoder_channels": [32, 16, 16, 8, 8],
    "batch_size": 2,
    "num_samples": 2,
    "num_workers": 0,
    "num_folds": 3,
    "sw_batch_size": 16,
}
REGION_METRICS = [f"val_{m}_{r}" for m in ("dice", "hd95") for r in ("wt", "tc", "et")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slice_data")
    generate_dataset(root, num_cases=6, shape=(32, 32, 32), seed=3, layout="brats2023")
    return root


def _overrides(dataset: Path, work: Path, **more: Any) -> dict[str, Any]:
    return {
        **TINY,
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(dataset),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "cache_dir": str(work / "cache"),
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        **more,
    }


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the 2D bundle, logged to the default experiment of a fresh store."""
    work = tmp_path_factory.mktemp("slice_run")
    cmd = bundle_cmd(CONFIGS, "training", ["train.json"], _overrides(dataset, work, epochs=1))
    proc = run_ok(cmd, work, env=bundle_env())
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    return work


def _parser(*files: str, **overrides: Any) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    for key, value in {**TINY, **overrides}.items():
        parser[key] = value
    return parser


def test_one_epoch_training_logs_the_brats_region_metrics(trained: Path) -> None:
    assert (trained / "models" / "model.pt").is_file()
    assert (trained / "models" / "checkpoint_latest.pt").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tumorseg-brats")  # shared with the 3D bundle
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["bundle"] == "brats_slice_segmentation_2d"
    assert (
        params["network"] == "flexunet-efficientnet-b0" and params["backbone"] == "efficientnet-b0"
    )
    assert params["roi_size"] == "[32, 32]" and params["pretrained"] == "none"
    for name in ["val_mean_dice", *REGION_METRICS]:
        (point,) = client.get_metric_history(run.info.run_id, name)
        assert point.step == 1 and np.isfinite(point.value), name


def _sample_slices(label: np.ndarray, num_samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """The bundle's random training transforms on a brain block of 48 axial slices."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    parser = _parser("train.json", num_samples=num_samples)
    transforms = Compose(parser.get_parsed_content("train#random_transforms"))
    transforms.set_random_state(seed=seed)
    image = np.zeros((4, 40, 40, 48), np.float32)
    image[:, 4:36, 4:36, :] = 1.0  # brain in every slice
    return transforms({"image": MetaTensor(image), "label": MetaTensor(label)})


def test_slices_are_sampled_weighted_towards_tumour_slices() -> None:
    label = np.zeros((3, 40, 40, 48), np.float32)
    label[0, 10:20, 10:20, 20:26] = 1.0  # tumour on 6 of the 48 slices (12.5 %)
    samples = _sample_slices(label, num_samples=200)
    assert len(samples) == 200
    for s in samples:
        assert tuple(s["image"].shape) == (4, 32, 32) and tuple(s["label"].shape) == (3, 32, 32)
    share = float(np.mean([float(s["label"].sum()) > 0 for s in samples]))
    # pos 3 : neg 1 puts about 3/4 + 1/4 * 1/8 of the slices on tumour, uniform slices 1/8.
    assert 0.7 <= share <= 0.92, share


def test_a_study_without_tumour_still_gives_brain_slices() -> None:
    samples = _sample_slices(np.zeros((3, 40, 40, 48), np.float32), num_samples=8)
    assert len(samples) == 8
    assert all(float(s["label"].sum()) == 0 and float(s["image"].abs().sum()) > 0 for s in samples)


def test_evaluation_scores_whole_volumes_with_the_region_metrics(
    dataset: Path, trained: Path
) -> None:
    overrides = _overrides(dataset, trained, log_mlflow=False)
    cmd = bundle_cmd(CONFIGS, "evaluating", ["train.json", "evaluate.json"], overrides)
    run_ok(cmd, trained)
    per_case = (trained / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(per_case) == 1 + 2  # header + the 2 validation cases of fold 0
    assert (trained / "eval" / "metrics.csv").read_text().count("val_dice_") == 3


def test_folder_inference_reassembles_volumes_on_the_input_grid(
    dataset: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = trained / "segmentations"
    overrides = {
        "dataset_dir": str(dataset),
        "output_dir": str(out),
        "ckpt_dir": str(trained / "models"),
        "bundle_root": str(CONFIGS.parent),
        "decoder_channels": TINY["decoder_channels"],
        "roi_size": [32, 32],
        "progress": False,
    }
    run_ok(bundle_cmd(CONFIGS, "inferring", ["train.json", "inference.json"], overrides), trained)
    cases = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    assert sorted(p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz")) == cases
    for case in cases:
        mask: Any = nib.load(str(out / f"{case}.nii.gz"))
        image: Any = nib.load(str(dataset / case / f"{case}-t2f.nii.gz"))
        assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1, 2, 3}  # brats2023 labels

    # `tumorseg infer` makes the same masks, with the window given as 2 sizes.
    cli_out = trained / "segmentations_cli"
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(dataset), "--output", str(cli_out)]
    args += ["--checkpoint", str(trained / "models" / "model.pt"), "--no-progress"]
    args += ["--override", f"decoder_channels={json.dumps(TINY['decoder_channels'])}"]
    assert main([*args, "--roi-size", "32", "32", "32"]) == 2  # a 3D window: refused
    assert "roi_size must be 2 positive integers for this bundle, got [32, 32, 32]" in (
        capsys.readouterr().err
    )
    assert main([*args, "--roi-size", "32", "32"]) == 0
    for case in cases:
        a = np.asanyarray(nib.load(str(out / f"{case}.nii.gz")).dataobj)
        b = np.asanyarray(nib.load(str(cli_out / f"{case}.nii.gz")).dataobj)
        assert np.array_equal(a, b), case

    # Scored with the very metrics of the 3D bundle's predictions.
    report = trained / "scores"
    assert main(["evaluate", "--pred", str(out), "--ref", str(dataset), "-o", str(report)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert "WT" in json.dumps(summary) and "ET" in json.dumps(summary)


# A second 2D and a 3D training, ~20 s; compare itself is covered in tests/tracking.
@pytest.mark.slow
def test_2d_and_3d_runs_sit_side_by_side_in_compare(
    dataset: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The 3D bundle's default experiment is the same "tumorseg-brats".
    overrides = {
        **TINY_3D,
        "bundle_root": str(CONFIGS_3D.parent),
        "dataset_dir": str(dataset),
        "ckpt_dir": str(trained / "models3d"),
        "cache_dir": str(trained / "cache3d"),
        "tracking_uri": f"sqlite:///{trained / 'mlflow.db'}",
        "epochs": 1,
    }
    run_ok(bundle_cmd(CONFIGS_3D, "training", ["train.json"], overrides), trained, env=bundle_env())
    csv_path = trained / "compare.csv"
    code = main(
        [
            "compare",
            "--experiment",
            "tumorseg-brats",
            "--kind",
            "training",
            "--tracking-uri",
            f"sqlite:///{trained / 'mlflow.db'}",
            "--csv",
            str(csv_path),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "flexunet-efficientnet-b0-fold0" in table and "dynunet-fold0" in table
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 2
    assert {r["bundle"] for r in rows} == {"brats_slice_segmentation_2d", "brats_mri_segmentation"}
    for row in rows:
        for name in ("val_mean_dice", "val_dice_wt", "val_dice_tc", "val_dice_et"):
            assert 0.0 <= float(row[name]) <= 1.0, (row["bundle"], name)


def _efficientnet_b0_source(path: Path) -> dict[str, torch.Tensor]:
    """An ImageNet-layout EfficientNet-B0 checkpoint (3 input channels, ``_fc`` head)."""
    from monai.networks.nets import EfficientNetBN

    torch.manual_seed(1)
    state = EfficientNetBN("efficientnet-b0", pretrained=False, in_channels=3).state_dict()
    torch.save(state, path)
    return state


def test_a_pretrained_encoder_is_loaded_from_a_local_file(tmp_path: Path) -> None:
    source = _efficientnet_b0_source(tmp_path / "efficientnet-b0.pth")
    network = _parser("train.json", pretrained=str(tmp_path / "efficientnet-b0.pth"))
    net = network.get_parsed_content("network")
    own = net.state_dict()
    stem = own["encoder._conv_stem.weight"]
    assert stem.shape[1] == 4  # the RGB stem was fitted to FLAIR, T1, T1ce, T2
    expected = source["_conv_stem.weight"].mean(dim=1, keepdim=True) * 3 / 4
    torch.testing.assert_close(stem, expected.repeat(1, 4, 1, 1))
    loaded = [k for k in source if f"encoder.{k}" in own and k != "_conv_stem.weight"]
    assert len(loaded) > 200
    for key in loaded:
        torch.testing.assert_close(own[f"encoder.{key}"], source[key], msg=key)


# ~20 s of training; the local-file encoder load and refusal tests stay in make test.
@pytest.mark.slow
def test_mobilenet_encoder_fine_tunes_from_a_local_file_through_the_bundle(
    dataset: Path, tmp_path: Path
) -> None:
    from tumorseg.networks import MobileNetV2Encoder

    torch.manual_seed(2)
    source = MobileNetV2Encoder(in_channels=3).state_dict()
    weights = tmp_path / "mobilenet_v2-imagenet.pth"
    torch.save({**source, "classifier.1.weight": torch.zeros(1000, 1280)}, weights)
    settings = _overrides(dataset, tmp_path, epochs=1, pretrained=str(weights), val_interval=2)
    files = ["train.json", "networks/mobilenetv2.json"]
    proc = run_ok(bundle_cmd(CONFIGS, "training", files, settings), tmp_path, env=bundle_env())
    assert "100.0% of the encoder" in proc.stdout + proc.stderr  # the load report
    client = mlflow.MlflowClient(settings["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tumorseg-brats").experiment_id])
    assert run.data.params["network"] == "flexunet-mobilenetv2_100"
    assert run.data.params["pretrained"] == str(weights)
    assert run.data.tags["tumorseg.pretrained.sha256"]
    trained = torch.load(tmp_path / "models" / "checkpoint_latest.pt", weights_only=True)
    first = trained["network"]["encoder.features.0.0.weight"]
    assert first.shape == (32, 4, 3, 3)  # RGB stem fitted to the 4 MRI channels, then trained


def test_a_checkpoint_of_another_encoder_is_refused(tmp_path: Path) -> None:
    from monai.networks.nets import resnet18

    torch.save(resnet18(spatial_dims=2, n_input_channels=3).state_dict(), tmp_path / "r18.pt")
    parser = _parser("train.json", pretrained=str(tmp_path / "r18.pt"))
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("network")
    chain = [err.value, *_causes(err.value)]
    refusal = next(e for e in chain if isinstance(e, PretrainedMismatchError))
    assert "r18.pt" in str(refusal) and "min_matched" in str(refusal)


def _causes(err: BaseException) -> list[BaseException]:
    out = []
    while err.__cause__ is not None:
        err = err.__cause__
        out.append(err)
    return out


def test_a_3d_window_for_the_slice_bundle_is_named_with_its_value() -> None:
    with pytest.raises(ValueError, match=r"2 positive integers .* got \(32, 32, 32\)"):
        Predictor.from_bundle(BUNDLE, network=torch.nn.Identity(), roi_size=(32, 32, 32))


def test_verify_net_in_out_accepts_the_network(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--config_file", str(CONFIGS / "train.json")]
    cmd += ["--n", "2", "--device", "cpu", "--decoder_channels", "[32,16,16,8,8]"]
    out = run_ok(cmd, tmp_path)
    assert "verified with no error" in out.stdout + out.stderr


def test_metadata_declares_four_channels_and_three_regions() -> None:
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == len(CHANNEL_ORDER)
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "WT", "1": "TC", "2": "ET"}
    assert meta["version"] in meta["changelog"]


@pytest.mark.slow
def test_two_rank_ddp_validation_equals_a_single_process_evaluation(
    dataset: Path, tmp_path: Path
) -> None:
    # 2 folds: 3 validation studies, split 2 + 1 over the ranks. The network has BatchNorm,
    # whose running statistics each rank updates on its own shard of slices.
    settings = _overrides(dataset, tmp_path, epochs=1, num_folds=2, experiment_name="ddp-2d")
    tumorseg = str(Path(sys.executable).parent / "tumorseg")
    cmd = [tumorseg, "launch", "--nproc-per-node", "2", "--bundle", str(BUNDLE), "--"]
    cmd += override_args(settings)
    run_ok(cmd, tmp_path, env=bundle_env())
    files = sorted(p.name for p in (tmp_path / "models").iterdir() if p.is_file())
    assert files == ["checkpoint_latest.pt", "mlflow_run.json", "model.pt"]  # rank 0 only
    client = mlflow.MlflowClient(settings["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("ddp-2d").experiment_id])
    assert run.data.params["world_size"] == "2"

    evaluate = {**settings, "log_mlflow": False}
    run_ok(bundle_cmd(CONFIGS, "evaluating", ["train.json", "evaluate.json"], evaluate), tmp_path)
    rows = (tmp_path / "eval" / "metrics.csv").read_text().split()
    single = {k: float(v) for k, v in (row.split(",") for row in rows)}
    per_case = (tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(per_case) == 1 + 3
    for key in ("val_mean_dice", "val_dice_wt", "val_dice_tc", "val_dice_et"):
        assert run.data.metrics[key] == pytest.approx(single[key], abs=1e-6), key
