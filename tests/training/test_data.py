"""BundleData: manifest, bare folder and generated demo set all give the same kind of splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumorseg.data.manifest import build_manifest, write_manifest
from tumorseg.data.synthetic import generate_dataset
from tumorseg.training import BundleData
from tumorseg.training import data as data_module


@pytest.fixture(scope="module")
def msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("msd")
    generate_dataset(root, num_cases=5, shape=(24, 24, 24), layout="msd", num_unlabelled=1)
    return root


def test_folder_and_manifest_give_the_same_splits(msd: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    write_manifest(build_manifest(msd, num_folds=5, seed=0), manifest)
    from_folder = BundleData(dataset_dir=msd, fold=1, num_folds=5)
    from_manifest = BundleData(dataset_dir=msd, datalist=manifest, fold=1)
    for split in ("train", "val", "test"):
        assert from_folder.files(split) == from_manifest.files(split)
    assert len(from_folder.files("train")) == 4 and len(from_folder.files("val")) == 1
    assert len(from_folder.files("test")) == 1
    assert from_folder.label_convention == "msd"
    item = from_folder.files("val")[0]
    assert Path(item["image"]).is_absolute() and Path(item["image"]).exists()


def test_fold_minus_one_trains_on_everything(msd: Path) -> None:
    data = BundleData(dataset_dir=msd, fold=-1)
    assert len(data.files("train")) == 5 and data.files("val") == []


def test_images_only_drops_labels(msd: Path) -> None:
    items = BundleData(dataset_dir=msd).files("all", images_only=True)
    assert len(items) == 6 and all("label" not in item for item in items)


def test_label_convention_override_wins(msd: Path) -> None:
    assert BundleData(dataset_dir=msd, label_convention="brats2023").label_convention == "brats2023"


def test_no_dataset_generates_the_demo_set_once(tmp_path: Path, monkeypatch) -> None:
    small = dict(data_module.DEMO_DATASET, num_cases=3, shape=(16, 16, 16))
    monkeypatch.setattr(data_module, "DEMO_DATASET", small)
    demo = tmp_path / "demo"
    data = BundleData(demo_dir=demo, fold=0, num_folds=3)
    assert len(data.files("train")) == 2 and len(data.files("val")) == 1
    stamp = (demo / ".tumorseg_demo.json").stat().st_mtime_ns
    BundleData(demo_dir=demo)  # complete set present: not regenerated
    assert (demo / ".tumorseg_demo.json").stat().st_mtime_ns == stamp


def test_missing_dataset_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.*--dataset_dir"):
        BundleData(dataset_dir=tmp_path / "nowhere")
