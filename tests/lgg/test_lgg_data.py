"""kaggle_3m discovery, manifests, the synthetic generator, scores and the 3D clean-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from tumorseg.data.lgg import (
    LGG_LAYOUT,
    LGGDatasetError,
    build_lgg_manifest,
    discover_kaggle_3m,
    lgg_datalist,
    load_lgg_manifest,
    parse_slice_name,
    stack_patient,
    write_lgg_manifest,
)
from tumorseg.data.synthetic_lgg import generate_kaggle_3m
from tumorseg.metrics.lgg import LGGOverlapMetric, overlap_scores, score_patients
from tumorseg.training import data as training_data
from tumorseg.training.data import LGGData
from tumorseg.transforms.post import remove_isolated_false_positives

SHAPE = (32, 32, 16)


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lgg") / "kaggle_3m"
    generate_kaggle_3m(root, num_patients=4, shape=SHAPE, seed=1)
    return root


def test_generator_writes_the_kaggle_layout(kaggle: Path) -> None:
    patients = sorted(p.name for p in kaggle.iterdir())
    assert len(patients) == 4
    folder = kaggle / patients[0]
    assert len(list(folder.glob("*_mask.tif"))) == SHAPE[2]
    assert len(list(folder.glob("*.tif"))) == 2 * SHAPE[2]
    with Image.open(folder / f"{patients[0]}_1.tif") as img:
        assert (img.mode, img.size) == ("RGB", (SHAPE[1], SHAPE[0]))
    masks = [np.array(Image.open(m)) for m in folder.glob("*_mask.tif")]
    assert all(set(np.unique(m)) <= {0, 255} for m in masks)
    # Tumour-bearing and tumour-free slices both exist, as in the real data.
    assert any(m.any() for m in masks) and not all(m.any() for m in masks)


def test_generator_is_deterministic(kaggle: Path, tmp_path: Path) -> None:
    ids = generate_kaggle_3m(tmp_path, num_patients=1, shape=SHAPE, seed=1)
    name = f"{ids[0]}_7.tif"
    assert (tmp_path / ids[0] / name).read_bytes() == (kaggle / ids[0] / name).read_bytes()


def _brain_extent(folder: Path) -> tuple[float, float]:
    """Largest bounding box of the brain (FLAIR > 0) over a patient's slices, as fractions of
    the slice height (antero-posterior) and width (left-right)."""
    rows = cols = 0.0
    for path in folder.glob("*.tif"):
        if path.stem.endswith("_mask"):
            continue
        with Image.open(path) as img:
            brain = np.asarray(img)[..., 1] > 0
        if brain.any():
            r, c = np.nonzero(brain.any(axis=1))[0], np.nonzero(brain.any(axis=0))[0]
            rows = max(rows, (r[-1] - r[0] + 1) / brain.shape[0])
            cols = max(cols, (c[-1] - c[0] + 1) / brain.shape[1])
    return rows, cols


@pytest.mark.parametrize("size", [64, 128])
def test_generated_brain_fills_the_field_of_view_like_real_slices(
    size: int, tmp_path: Path
) -> None:
    # The real kaggle_3m slices (256x256) show a head filling most of the field of view: about
    # 0.7-0.95 of it antero-posteriorly and 0.55-0.8 left-right on the middle slices. The
    # phantom brain must do the same at any size and slice count, or a model trained on real
    # slices sees a small disc it has never met (issue 14 item 6).
    (patient,) = generate_kaggle_3m(tmp_path, num_patients=1, shape=(size, size, 16), seed=3)
    rows, cols = _brain_extent(tmp_path / patient)
    assert 0.7 <= rows <= 0.85, (rows, cols)
    assert 0.55 <= cols <= 0.75, (rows, cols)
    assert rows > cols  # rows run antero-posterior, the brain's longest in-plane axis


def test_parse_slice_name() -> None:
    assert parse_slice_name("TCGA_CS_4941_19960909_12_mask.tif") == (
        "TCGA_CS_4941_19960909",
        12,
        True,
    )
    assert parse_slice_name("TCGA_CS_4941_19960909_3.TIF") == ("TCGA_CS_4941_19960909", 3, False)
    assert parse_slice_name("notes.txt") is None


def test_manifest_has_patient_level_folds_and_ordered_slices(kaggle: Path, tmp_path: Path) -> None:
    manifest = build_lgg_manifest(kaggle.parent, num_folds=2, seed=0)  # the parent works too
    assert manifest["layout"] == LGG_LAYOUT and manifest["problems"] == []
    training = manifest["training"]
    assert len(training) == 4 * SHAPE[2]
    folds: dict[str, set[int]] = {}
    for item in training:
        folds.setdefault(item["patient"], set()).add(item["fold"])
    assert all(len(f) == 1 for f in folds.values())
    assert sorted(f.pop() for f in folds.values()) == [0, 0, 1, 1]
    first = [t["slice"] for t in training if t["patient"] == training[0]["patient"]]
    assert first == list(range(1, SHAPE[2] + 1))  # numeric order: 2 before 10
    path = write_lgg_manifest(manifest, tmp_path / "lgg.json")
    loaded = load_lgg_manifest(path)
    train = lgg_datalist(loaded, dataset_dir=kaggle, fold=0, split="train")
    val = lgg_datalist(loaded, dataset_dir=kaggle, fold=0, split="val")
    assert {t["patient"] for t in train}.isdisjoint({t["patient"] for t in val})
    assert len(train) + len(val) == len(training)
    assert Path(val[0]["image"]).is_file() and Path(val[0]["label"]).is_file()


def test_lgg_data_from_folder_and_manifest(kaggle: Path, tmp_path: Path) -> None:
    path = write_lgg_manifest(build_lgg_manifest(kaggle, num_folds=2), tmp_path / "m.json")
    from_folder = LGGData(dataset_dir=kaggle, num_folds=2, fold=1)
    from_manifest = LGGData(dataset_dir=kaggle, datalist=path, fold=1)
    assert from_folder.files("val") == from_manifest.files("val")
    assert len(LGGData(dataset_dir=kaggle, num_folds=2, fold=-1).files("train")) == 4 * SHAPE[2]


def test_load_rejects_a_3d_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    with pytest.raises(LGGDatasetError, match="bad.json"):
        load_lgg_manifest(bad)


def test_bad_inputs_are_reported_and_the_rest_goes_on(kaggle: Path, tmp_path: Path) -> None:
    root = tmp_path / "kaggle_3m"
    shutil.copytree(kaggle, root)
    patient = sorted(p.name for p in root.iterdir())[0]
    folder = root / patient
    (folder / f"{patient}_3.tif").unlink()  # mask without its image
    Image.new("RGB", (20, 20)).save(folder / f"{patient}_5.tif")  # mismatched slice size
    Image.new("L", (20, 20)).save(folder / f"{patient}_5_mask.tif")
    (folder / "notes.txt").write_text("not a slice")  # non-TIF file
    (root / "data.csv").write_text("top-level files are ignored")

    found = discover_kaggle_3m(root)
    problems = "\n".join(found.problems)
    assert f"{patient}_3_mask.tif: mask without its image" in problems
    assert f"{patient}_5.tif: slice is 20x20" in problems
    assert "notes.txt: not a TIF file" in problems
    assert "data.csv" not in problems
    assert len(found.problems) == 3
    kept = found.patients[0]
    assert kept.patient_id == patient
    assert [s.index for s in kept.slices] == [i for i in range(1, SHAPE[2] + 1) if i not in (3, 5)]
    assert found.num_slices == 4 * SHAPE[2] - 2
    manifest = build_lgg_manifest(root, num_folds=2)
    assert manifest["problems"] == found.problems


def test_image_mask_size_mismatch_and_unlabelled_patients(kaggle: Path, tmp_path: Path) -> None:
    root = tmp_path / "k"
    shutil.copytree(kaggle, root)
    first, second = sorted(p.name for p in root.iterdir())[:2]
    Image.new("L", (8, 8)).save(root / first / f"{first}_2_mask.tif")
    (root / first / f"{first}_4_mask.tif").unlink()  # image without its mask
    for mask in (root / second).glob("*_mask.tif"):  # a patient without masks: unlabelled
        mask.unlink()
    found = discover_kaggle_3m(root)
    assert any(f"{first}_2_mask.tif: mask is 8x8" in p for p in found.problems)
    assert any(f"{first}_4.tif: image without its mask" in p for p in found.problems)
    assert len(found.problems) == 2
    manifest = build_lgg_manifest(root, num_folds=2)
    assert {t["patient"] for t in manifest["testing"]} == {second}
    assert len([t for t in manifest["training"] if t["patient"] == first]) == SHAPE[2] - 2


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LGGDatasetError, match="does not exist"):
        discover_kaggle_3m(tmp_path / "nowhere")
    (tmp_path / "P").mkdir()
    (tmp_path / "P" / "readme.md").write_text("x")
    with pytest.raises(LGGDatasetError, match="no usable"):
        discover_kaggle_3m(tmp_path)


def test_overlap_scores_and_empty_slices() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert overlap_scores(a, b) == (1.0, 1.0)  # tumour-free slice predicted tumour-free
    a[0, :2] = True
    assert overlap_scores(a, b) == (0.0, 0.0)
    b[0, 1:3] = True
    assert overlap_scores(a, b) == pytest.approx((0.5, 1 / 3))


def test_score_patients_restacks_by_slice_index() -> None:
    ref = {"P": {1: np.zeros((4, 4)), 2: np.ones((4, 4)), 10: np.ones((4, 4))}}
    pred = {"P": {10: np.ones((4, 4)), 2: np.ones((4, 4)), 1: np.zeros((4, 4))}}
    assert stack_patient(pred["P"]).shape == (3, 4, 4)
    scores = score_patients(pred, ref)
    assert scores["patient_dice"] == 1.0 and scores["slice_dice"] == 1.0
    pred["P"][1] = np.eye(4)  # a false positive on the tumour-free slice
    scores = score_patients(pred, ref)
    assert scores["slice"]["P_1"] == (0.0, 0.0)
    assert scores["patient_dice"] == pytest.approx(64 / 68)


def test_cc_postprocessing_removes_isolated_false_positives() -> None:
    volume = np.zeros((6, 8, 8), bool)
    volume[1:4, 2:5, 2:5] = True  # a lesion over three slices
    volume[5, 6, 6] = True  # an isolated false positive on a tumour-free slice
    cleaned = remove_isolated_false_positives(volume, min_slices=2)
    assert cleaned[1:4].sum() == volume[1:4].sum() and not cleaned[5].any()
    assert remove_isolated_false_positives(volume, min_slices=1).sum() == volume.sum()
    ref = {"P": {i + 1: volume[i] & (np.arange(6)[i] < 5) for i in range(6)}}
    pred = {"P": {i + 1: volume[i] for i in range(6)}}
    assert score_patients(pred, ref, min_slices=2)["slice_dice"] == 1.0
    assert score_patients(pred, ref)["slice_dice"] < 1.0


def test_ignite_metric_reads_slices_from_metadata() -> None:
    metric = LGGOverlapMetric(level="patient", kind="dice")
    metric.reset()
    items = []
    for index in (1, 2):
        image = MetaTensor(torch.zeros(3, 4, 4), meta={"filename_or_obj": f"/d/P/P_{index}.tif"})
        label = torch.ones(1, 4, 4) * (index == 2)
        items.append({"image": image, "pred": label.clone(), "label": label})
    metric.update(items)
    assert metric.compute() == 1.0
    with pytest.raises(ValueError, match="filename_or_obj"):
        metric.update([{"image": torch.zeros(3, 4, 4), "pred": label, "label": label}])


def test_demo_set_is_generated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(training_data.LGG_DEMO_DATASET, "num_patients", 2)
    monkeypatch.setitem(training_data.LGG_DEMO_DATASET, "shape", SHAPE)
    data = LGGData(demo_dir=tmp_path / "demo", num_folds=2)
    assert len(data.files("train")) == len(data.files("val")) == SHAPE[2]
    marker = tmp_path / "demo" / ".tumorseg_lgg_demo.json"
    stamp = marker.stat().st_mtime_ns
    LGGData(demo_dir=tmp_path / "demo", num_folds=2)
    assert marker.stat().st_mtime_ns == stamp
