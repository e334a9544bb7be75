"""Every bundle's inference config is a MONAI inference workflow: ``train.json`` then
``inference.json`` pass MONAI's own property check for ``workflow_type="infer"`` and
``verify_net_in_out``, and their ``evaluator`` is the Predictor that ``tumorseg infer`` builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_net_in_out
from monai.bundle.properties import InferProperties
from monai.data import Dataset

from tumorseg.data.synthetic import generate_dataset
from tumorseg.data.synthetic_lgg import generate_kaggle_3m
from tumorseg.inference import Predictor, bundle_root_of, load_bundle

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
#: Per bundle: its data format and settings that keep the network small on two CPU cores
#: (the BraTS bundles ship no weights, so none are loaded; the LGG bundle's are committed).
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "brats_mri_segmentation": ("nifti", {"filters": [4, 8, 16, 32, 64], "checkpoint": None}),
    "brats_slice_segmentation_2d": (
        "nifti",
        {"decoder_channels": [32, 16, 16, 8, 8], "checkpoint": None},
    ),
    "lgg_flair_segmentation_2d": ("kaggle_3m", {}),
}
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("infer_configs")
    generate_dataset(root / "nifti", num_cases=1, num_unlabelled=1, shape=(32, 32, 24), seed=2)
    generate_kaggle_3m(root / "kaggle_3m", num_patients=1, shape=(32, 32, 16), seed=2)
    return {"nifti": root / "nifti", "kaggle_3m": root / "kaggle_3m"}


def _files(bundle: str) -> list[str]:
    configs = BUNDLES / bundle / "configs"
    return [str(configs / "train.json"), str(configs / "inference.json")]


@pytest.mark.parametrize("bundle", sorted(SETTINGS))
def test_monai_infer_workflow_properties_hold(bundle: str, folders: dict[str, Path]) -> None:
    data_format, overrides = SETTINGS[bundle]
    workflow = ConfigWorkflow(
        config_file=_files(bundle),
        meta_file=str(BUNDLES / bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(BUNDLES / bundle),
        dataset_dir=str(folders[data_format]),
        device="cpu",
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    required = [n for n, p in InferProperties.items() if p.get("required")]
    assert {"network_def", "inferer", "dataset", "evaluator"} <= set(required)
    # The optional ids are declared too, and wired where MONAI looks for them.
    for name in ("preprocessing", "postprocessing"):
        assert name in workflow.parser, name
    assert workflow.parser["dataset"]["transform"] == "@preprocessing"
    assert workflow.parser["evaluator"]["postprocessing"] == "@postprocessing"
    assert workflow.parser["preprocessing"].replace("::", "#") == "@validate#preprocessing"

    predictor = workflow.evaluator
    assert isinstance(predictor, Predictor) and predictor.data_format == data_format
    dataset = workflow.dataset
    assert isinstance(dataset, Dataset) and len(dataset) == (2 if data_format == "nifti" else 16)
    item = dataset[0]
    # The shared preprocessing runs through MONAI's Dataset: channels first, 4 or 3 channels.
    assert item["image"].shape[0] == (3 if data_format == "kaggle_3m" else 4)
    assert "label" not in item


@pytest.mark.parametrize("bundle", sorted(SETTINGS))
def test_verify_net_in_out_on_the_merged_inference_config(bundle: str) -> None:
    overrides = {k: v for k, v in SETTINGS[bundle][1].items() if k != "checkpoint"}
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLES / bundle / "configs" / "metadata.json"),
        config_file=_files(bundle),
        device="cpu",
        n=2,
        **overrides,
    )


def test_load_bundle_takes_the_folder_or_the_config_paths(tmp_path: Path) -> None:
    bundle = BUNDLES / "brats_mri_segmentation"
    by_folder = load_bundle(bundle)
    by_files = load_bundle(config_files=_files("brats_mri_segmentation"))
    assert by_folder["bundle_root"] == str(bundle)
    assert Path(by_files["bundle_root"]) == bundle.resolve()
    assert by_folder["evaluator"] == by_files["evaluator"]
    network_file = bundle / "configs" / "networks" / "unet.json"
    assert bundle_root_of([network_file]) == bundle.resolve()
    with pytest.raises(ValueError, match=r"not in a bundle's configs/ folder"):
        bundle_root_of([tmp_path / "inference.json"])
    with pytest.raises(FileNotFoundError, match="has no configs/train.json"):
        load_bundle(tmp_path)
    with pytest.raises(FileNotFoundError, match="'nope.json' not found"):
        load_bundle(bundle, config_files=["nope.json"])


def test_the_data_format_picks_reader_and_writer() -> None:
    lgg = Predictor.from_bundle(BUNDLES / "lgg_flair_segmentation_2d", device="cpu")
    assert lgg.data_format == "kaggle_3m"
    assert lgg.tta is True and lgg.batch_size == 32  # the bundle's flip_tta and val_batch_size
    with pytest.raises(ValueError, match="layout does not apply to a kaggle_3m bundle.*'msd'"):
        lgg.predict_folder("in", "out", layout="msd")
    with pytest.raises(ValueError, match=r"data_format must be one of .* got 'png'"):
        Predictor.from_bundle(
            BUNDLES / "brats_mri_segmentation",
            overrides={"data_format": "png"},
            network=torch.nn.Identity(),
        )
