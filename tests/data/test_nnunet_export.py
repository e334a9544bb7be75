"""`tumorseg export-nnunet`: nnU-Net v2 raw data on the manifest's folds, nnU-Net's own
integrity check, its label numbering scored by `tumorseg evaluate`, and the install keeping
the pinned torch."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tumorseg.cli import main
from tumorseg.data.manifest import build_manifest, write_manifest
from tumorseg.data.nnunet_export import (
    NNUNET_CONVENTION,
    dataset_folder_name,
    export_nnunet,
    to_nnunet_labels,
)
from tumorseg.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (24, 24, 24)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnunet")
    data = root / "data"
    generate_dataset(data, num_cases=4, shape=SHAPE, seed=7, layout="brats2021")
    manifest = write_manifest(
        build_manifest(data, num_folds=2, seed=0, name="synthetic brats"), data / "m.json"
    )
    return {"root": root, "data": data, "manifest": manifest}


def _export(dataset: dict[str, Path], out: Path, dataset_id: int = 17) -> Path:
    code = main(
        [
            "export-nnunet",
            "--datalist",
            str(dataset["manifest"]),
            "--out",
            str(out),
            "--dataset-id",
            str(dataset_id),
        ]  # fmt: skip
    )
    assert code == 0
    return out / dataset_folder_name(dataset_id, "synthetic brats")


def test_export_layout_labels_and_splits(dataset: dict[str, Path], tmp_path: Path) -> None:
    folder = _export(dataset, tmp_path / "raw")
    assert folder.name == "Dataset017_synthetic_brats"
    manifest = json.loads(dataset["manifest"].read_text())
    cases = sorted(t["case_id"] for t in manifest["training"])
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        f"{c}_{i:04d}.nii.gz" for c in cases for i in range(4)
    ]
    # splits_final.json is the manifest's folds, fold by fold
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == manifest["num_folds"] == 2
    for fold, split in enumerate(splits):
        val = sorted(t["case_id"] for t in manifest["training"] if t["fold"] == fold)
        assert split == {"val": val, "train": sorted(set(cases) - set(val))}
    info = json.loads((folder / "dataset.json").read_text())
    assert info["numTraining"] == 4 and info["file_ending"] == ".nii.gz"
    assert info["labels"] == {
        "background": 0,
        "whole_tumor": [1, 2, 3],
        "tumor_core": [2, 3],
        "enhancing_tumor": 3,
    }
    assert info["regions_class_order"] == [1, 2, 3]
    assert info["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
    # channels in tumorseg's order, voxels unchanged; labels renumbered 1 NCR->2, 2 ED->1, 4 ET->3
    item = manifest["training"][0]
    for i, source in enumerate(item["image"]):
        exported = nib.load(folder / "imagesTr" / f"{item['case_id']}_{i:04d}.nii.gz")
        original = nib.load(dataset["data"] / source)
        np.testing.assert_array_equal(exported.get_fdata(), original.get_fdata())
        np.testing.assert_allclose(exported.affine, original.affine)
    ref = np.asarray(nib.load(dataset["data"] / item["label"]).dataobj)
    out = nib.load(folder / "labelsTr" / f"{item['case_id']}.nii.gz")
    got = np.asarray(out.dataobj)
    assert out.get_data_dtype() == np.uint8
    for old, new in ((0, 0), (1, 2), (2, 1), (4, 3)):
        assert (ref == old).any()
        np.testing.assert_array_equal(got[ref == old], new)
    np.testing.assert_allclose(out.affine, nib.load(dataset["data"] / item["label"]).affine)
    # a rerun rewrites the same folder, with the same bytes, and leaves no temporary file
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    _export(dataset, tmp_path / "raw")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_msd_four_d_images_are_split_into_channels(tmp_path: Path) -> None:
    data = tmp_path / "msd"
    generate_dataset(data, num_cases=2, shape=(16, 16, 16), seed=1, layout="msd")
    manifest = write_manifest(build_manifest(data, num_folds=2, name="msd"), tmp_path / "m.json")
    folder = export_nnunet(manifest, tmp_path / "raw", 3, dataset_dir=data)
    case = json.loads(manifest.read_text())["training"][0]
    four_d = np.asarray(nib.load(data / case["image"]).dataobj)
    for c in range(4):
        channel = nib.load(folder / "imagesTr" / f"{case['case_id']}_{c:04d}.nii.gz")
        assert channel.shape == four_d.shape[:3]
        np.testing.assert_array_equal(np.asarray(channel.dataobj), four_d[..., c])
    # MSD's numbers are already nnU-Net's
    ref = np.asarray(nib.load(data / case["label"]).dataobj)
    got = np.asarray(nib.load(folder / "labelsTr" / f"{case['case_id']}.nii.gz").dataobj)
    np.testing.assert_array_equal(got, ref)


def _dice_table(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "per_case.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    keys = [k for k in rows[0] if re.fullmatch(r"dice_(WT|TC|ET)", k)]
    assert len(keys) == 3
    return {row["case_id"]: {k: row[k] for k in keys} for row in rows}


def test_evaluate_scores_nnunet_label_maps(dataset: dict[str, Path], tmp_path: Path) -> None:
    """nnU-Net's predictions (its numbering = tumorseg's msd convention) score the same as the
    same segmentations in the dataset's own numbering against the original references."""
    folder = _export(dataset, tmp_path / "raw")
    manifest = json.loads(dataset["manifest"].read_text())
    ours, theirs = tmp_path / "pred_brats", tmp_path / "pred_nnunet"
    rng = np.random.default_rng(0)
    for item in manifest["training"]:
        ref_img = nib.load(dataset["data"] / item["label"])
        pred = np.asarray(ref_img.dataobj).copy()
        # a flawed segmentation: some tumour voxels relabelled, some background added
        flip = rng.random(pred.shape) < 0.1
        pred[flip & (pred > 0)] = rng.choice([1, 2, 4], size=int((flip & (pred > 0)).sum()))
        pred[2:4, 2:4, 2:4] = 4
        for folder_out, values in ((ours, pred), (theirs, to_nnunet_labels(pred, "brats2021"))):
            folder_out.mkdir(exist_ok=True)
            img = nib.Nifti1Image(values.astype(np.uint8), ref_img.affine, ref_img.header)
            nib.save(img, folder_out / f"{item['case_id']}.nii.gz")
    base = ["--no-lesionwise", "--no-progress", "--num-workers", "1"]
    assert main(["evaluate", "--pred", str(ours), "--ref", str(dataset["manifest"]),
                 "-o", str(tmp_path / "e1"), *base]) == 0  # fmt: skip
    nnunet_ref = ["--ref", str(folder / "labelsTr"), "--convention", NNUNET_CONVENTION]
    assert main(["evaluate", "--pred", str(theirs), *nnunet_ref, "-o", str(tmp_path / "e2"),
                 *base]) == 0  # fmt: skip
    first, second = _dice_table(tmp_path / "e1"), _dice_table(tmp_path / "e2")
    assert first == second
    assert any(float(v) < 1 for row in first.values() for v in row.values())


def test_bad_inputs(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for bad in ("0", "1000"):
        code = main(["export-nnunet", "--datalist", str(dataset["manifest"]), "--out",
                     str(tmp_path / "raw"), "--dataset-id", bad])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and f"ids are 1..999, got {bad}" in err and err.count("\n") == 1
    assert not (tmp_path / "raw").exists()
    (tmp_path / "raw" / "Dataset017_other").mkdir(parents=True)
    code = main(["export-nnunet", "--datalist", str(dataset["manifest"]), "--out",
                 str(tmp_path / "raw"), "--dataset-id", "17"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "already holds dataset id 17 as Dataset017_other" in err
    with pytest.raises(ValueError, match=r"label values \[7\] are not legal"):
        to_nnunet_labels(np.array([0, 1, 7]), "brats2021")
    # a case with an illegal label is named with its file, and no label file is left half-written
    data = tmp_path / "bad"
    shutil.copytree(dataset["data"], data)
    manifest = json.loads((data / "m.json").read_text())
    label_path = data / manifest["training"][1]["label"]
    img = nib.load(label_path)
    values = np.asarray(img.dataobj).copy()
    values[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(values, img.affine, img.header), label_path)
    code = main(["export-nnunet", "--datalist", str(data / "m.json"), "--out",
                 str(tmp_path / "raw2"), "--dataset-id", "5"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and manifest["training"][1]["case_id"] in err and "[9]" in err
    labels = tmp_path / "raw2" / "Dataset005_synthetic_brats" / "labelsTr"
    assert f"{manifest['training'][1]['case_id']}.nii.gz" not in {p.name for p in labels.iterdir()}
    assert not [p for p in labels.parent.rglob("*.tmp")]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nnUNetv2_plan_and_preprocess") is None and not (
    Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess").exists(),
    reason="nnunetv2 not installed (make install)")  # fmt: skip
def test_nnunet_verifies_the_export(dataset: dict[str, Path], tmp_path: Path) -> None:
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    folder = _export(dataset, raw, dataset_id=42)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
           "nnUNet_results": str(res), "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    tool = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    done = subprocess.run(
        [str(tool), "-d", "42", "--verify_dataset_integrity", "--no_pp", "-npfp", "1"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fingerprint = json.loads((pre / folder.name / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == 4
    # nnU-Net reads the splits from the preprocessed folder: the copy there equals the manifest's
    shutil.copy(folder / "splits_final.json", pre / folder.name / "splits_final.json")
    assert json.loads((pre / folder.name / "splits_final.json").read_text()) == json.loads(
        (folder / "splits_final.json").read_text()
    )


def test_install_keeps_the_pinned_torch() -> None:
    """`make install` puts nnunetv2 in without its dependencies, so torch stays 2.13.0 and no
    torchvision built for another torch comes in."""
    makefile = (ROOT / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if "nnunetv2==" in x)
    assert "--no-deps" in line
    pin = re.search(r"TORCH_PIN := torch==(\S+)", makefile)
    assert pin is not None
    assert importlib.metadata.version("torch").split("+")[0] == pin.group(1) == "2.13.0"
    if importlib.util.find_spec("torchvision") is not None:  # present: it must fit this torch
        requires = importlib.metadata.requires("torchvision") or []
        torch_req = [r for r in requires if r.startswith("torch") and "vision" not in r]
        assert all("2.13.0" in r for r in torch_req), torch_req
    if importlib.util.find_spec("nnunetv2") is not None:
        assert importlib.metadata.version("nnunetv2") == "2.8.1"


def _bench_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(5400)  # about 25 min on 2 shared cores: nnU-Net and tumorseg both train
@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None,
                    reason="nnunetv2 not installed (make install)")  # fmt: skip
def test_nnunet_baseline_and_tumorseg_cv_in_one_compare_table(tmp_path: Path) -> None:
    """The user's path, for real on CPU: export -> nnU-Net plan, train and predict each fold ->
    `tumorseg evaluate --fold K --log-mlflow` -> `tumorseg cv` in the same experiment ->
    `tumorseg compare`: nnU-Net and tumorseg rows on the same folds, in the same columns."""
    import mlflow

    bench = _bench_module("bench_nnunet_baseline")
    result = bench.baseline(tmp_path / "work", folds=[0])  # one fold: minutes of CPU each
    print("\n" + "\n".join(f"{s}: {c} ({t:.0f} s)" for s, c, t in result.commands))
    print(result.table)
    manifest = json.loads((result.work / "manifest.json").read_text())
    splits = json.loads((result.nnunet_dataset / "splits_final.json").read_text())
    trainer_dir = "nnUNetTrainer_smoke__nnUNetPlans__3d_fullres"
    for fold in (0,):
        val = sorted(t["case_id"] for t in manifest["training"] if t["fold"] == fold)
        assert splits[fold]["val"] == val
        # nnU-Net trained on the manifest's split (read from nnUNet_preprocessed), for real
        log = result.outputs[f"nnunet train fold {fold}"]
        assert "Using splits from existing split file" in log
        train = len(splits[fold]["train"])
        assert f"This split has {train} training and {len(val)} validation cases" in log
        results = result.work / "nnUNet_results" / result.nnunet_dataset.name / trainer_dir
        assert (results / f"fold_{fold}" / "checkpoint_final.pth").is_file()
        predicted = result.work / "nnunet_pred" / f"fold{fold}"
        assert sorted(p.name for p in predicted.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in val]
    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name(bench.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    kinds = sorted(r.data.tags["tumorseg.kind"] for r in runs)
    assert kinds == ["cross-validation", "evaluation", "evaluation", "training"]
    by_name = {r.info.run_name: r for r in runs}
    columns = ["val_mean_dice", "val_dice_wt", "val_dice_tc", "val_dice_et", "val_hd95_mean"]
    for fold in (0,):
        ours, theirs = by_name[f"tumorseg-fold{fold}"], by_name[f"nnunet-fold{fold}"]
        assert theirs.data.tags["source"] == "nnunet"
        for run in (ours, theirs):
            assert run.data.params["fold"] == str(fold)
            assert run.data.params["eval_cases"] == "2"
            assert set(columns) <= set(run.data.metrics)
        assert ours.data.params["datalist_sha256"] == theirs.data.params["datalist_sha256"]
        assert theirs.data.params["label_convention"] == NNUNET_CONVENTION
    children = [r for r in runs if r.data.tags["tumorseg.kind"] == "training"]
    assert [r.data.params["fold"] for r in children] == ["0"]
    assert {r.data.params["datalist_sha256"] for r in children} == {
        by_name["nnunet-fold0"].data.params["datalist_sha256"]
    }
    # one table: every run a row, the same metric columns, the fold of each shown
    lines = result.table.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    assert header.split()[:4] == ["#", "run", "status", "val_mean_dice"]
    assert header.split()[-3:] == ["network", "fold", "datalist_sha256"]
    for name in ("nnunet-fold0", "tumorseg-fold0"):
        row = next(line for line in lines if f" {name} " in line)
        assert row.split()[-2] == name[-1]
    assert sum(" FINISHED " in line for line in lines) == 4
