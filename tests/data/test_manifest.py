"""Manifests, folds and datalists (tumorseg.data.manifest) and the `tumorseg manifest` verb."""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tumorseg.cli import main
from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.data import (
    DatasetError,
    ManifestError,
    assign_folds,
    brats_patient_id,
    build_manifest,
    datalist_from_directory,
    load_datalist,
    load_manifest,
    manifest_from_case_ids,
    validate_manifest_against,
    write_manifest,
)
from tumorseg.data.manifest import MANIFEST_KEYS, patient_key

REPO = Path(__file__).resolve().parents[2]
PUBLIC = REPO / "data_manifests"


@pytest.fixture
def dataset(tmp_path, make_case) -> Path:
    """Seven labelled BraTS 2021 cases and two unlabelled ones."""
    root = tmp_path / "ds"
    for i in range(7):
        make_case(root, f"BraTS2021_{i:05d}")
    for i in (100, 101):
        make_case(root, f"BraTS2021_{i:05d}", label=False)
    return root


# --------------------------------------------------------------------------- folds


def test_folds_are_seeded_and_independent_of_input_order():
    ids = [f"case_{i:03d}" for i in range(50)]
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)

    a = assign_folds(ids, num_folds=5, seed=0)

    assert a == assign_folds(shuffled, num_folds=5, seed=0)
    assert a == assign_folds(tuple(reversed(ids)), num_folds=5, seed=0)
    assert a != assign_folds(ids, num_folds=5, seed=1)
    assert set(a.values()) == set(range(5)) and list(a) == sorted(ids)


def test_folds_are_balanced():
    for n in (5, 23, 101):
        sizes = Counter(assign_folds([f"c{i}" for i in range(n)], num_folds=5).values())
        assert max(sizes.values()) - min(sizes.values()) <= 1, (n, sizes)
        assert sum(sizes.values()) == n


def test_folds_are_not_in_id_order():
    # A seeded shuffle, not round-robin over sorted ids.
    folds = assign_folds([f"c{i:02d}" for i in range(20)], num_folds=5)
    assert list(folds.values())[:5] != [0, 1, 2, 3, 4]


def test_brats2023_timepoints_of_one_patient_share_a_fold():
    ids = [f"BraTS-GLI-{p:05d}-000" for p in range(40)]
    ids += [f"BraTS-GLI-{p:05d}-001" for p in range(0, 40, 3)]
    ids += ["BraTS-GLI-00003-002"]

    folds = assign_folds(ids, num_folds=5, seed=0)

    for patient in {brats_patient_id(i) for i in ids}:
        assert len({f for i, f in folds.items() if i.startswith(patient + "-")}) == 1, patient
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 2  # largest patient has 3 timepoints


def test_brats_patient_id():
    assert brats_patient_id("BraTS-GLI-00001-001") == "BraTS-GLI-00001"
    assert brats_patient_id("BraTS-MEN-00412-000") == "BraTS-MEN-00412"
    assert brats_patient_id("BraTS2021_00001") == "BraTS2021_00001"
    assert brats_patient_id("BRATS_001") == "BRATS_001"


def test_custom_patient_function_groups_cases():
    ids = ["p1_a", "p1_b", "p2_a", "p3_a", "p3_b", "p4_a"]

    folds = assign_folds(ids, num_folds=2, patient_id=lambda c: c.split("_")[0])

    assert folds["p1_a"] == folds["p1_b"] and folds["p3_a"] == folds["p3_b"]


@pytest.mark.parametrize(
    "key",
    [
        {"p1_a": "p1", "p1_b": "p1", "p2_a": "p2", "p3_a": "p3", "p3_b": "p3", "p4_a": "p4"},
        r"^(p\d)_",
        r"(?P<patient>p\d)_[ab]",
        re.compile(r"p\d"),
    ],
    ids=["mapping", "regex-group", "regex-named", "regex-whole-match"],
)
def test_patient_key_can_be_a_mapping_or_a_regular_expression(key):
    ids = ["p1_a", "p1_b", "p2_a", "p3_a", "p3_b", "p4_a"]

    folds = assign_folds(ids, num_folds=2, patient_id=key)

    assert folds["p1_a"] == folds["p1_b"] and folds["p3_a"] == folds["p3_b"]
    assert patient_key(key)("p3_b") == "p3"


def test_patient_key_names_every_uncovered_case():
    with pytest.raises(ValueError, match=r"2 case\(s\) without a patient: .*'c'.*'d'"):
        assign_folds(["a", "b", "c", "d"], patient_id={"a": "x", "b": "y"})
    with pytest.raises(ValueError, match="does not match"):
        assign_folds(["sub-1_ses-1", "other"], patient_id=r"^(sub-\d+)_")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        patient_key("(unclosed")
    with pytest.raises(TypeError, match="int"):
        patient_key(3)  # type: ignore[arg-type]


def test_build_manifest_groups_custom_patients_and_records_them(tmp_path, make_case):
    for case_id in ("sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1", "sub-03_ses-1"):
        make_case(tmp_path, case_id)

    manifest = build_manifest(tmp_path, num_folds=2, patient_id=r"^(sub-\d+)_", validate=False)

    items = {t["case_id"]: t for t in manifest["training"]}
    assert items["sub-01_ses-1"]["fold"] == items["sub-01_ses-2"]["fold"]
    assert {t["patient_id"] for t in items.values()} == {"sub-01", "sub-02", "sub-03"}
    path = write_manifest(manifest, tmp_path / "m.json")
    assert load_manifest(path)["training"] == manifest["training"]


def test_load_manifest_refuses_a_patient_in_two_folds(dataset, tmp_path):
    manifest = build_manifest(dataset, num_folds=2)
    first, second = manifest["training"][:2]
    first["patient_id"] = second["patient_id"] = "same-patient"
    first["fold"], second["fold"] = 0, 1
    (tmp_path / "m.json").write_text(json.dumps(manifest))

    with pytest.raises(ManifestError, match=r"1 patient\(s\) in more than one fold.*same-patient"):
        load_manifest(tmp_path / "m.json")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_folds_reject_bad_num_folds(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        assign_folds(["a"], num_folds=bad)


def test_folds_reject_repeated_ids():
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        assign_folds(["a", "b", "a"])


# --------------------------------------------------------------------------- build


def test_build_manifest_content(dataset):
    manifest = build_manifest(dataset, name="tiny", num_folds=3, seed=4)

    assert list(manifest) == [*MANIFEST_KEYS, "dataset_dir"]
    assert manifest["dataset_dir"] == str(Path(dataset).resolve())
    assert manifest["name"] == "tiny"
    assert manifest["layout"] == "brats2021" and manifest["label_convention"] == "brats2021"
    assert manifest["channel_order"] == list(CHANNEL_ORDER)
    assert (manifest["num_folds"], manifest["seed"]) == (3, 4)
    assert manifest["tumorseg_version"] == "0.1.0"
    assert [t["case_id"] for t in manifest["training"]] == [f"BraTS2021_{i:05d}" for i in range(7)]
    assert [t["case_id"] for t in manifest["testing"]] == ["BraTS2021_00100", "BraTS2021_00101"]
    first = manifest["training"][0]
    assert first["image"] == [f"BraTS2021_00000/BraTS2021_00000_{m}.nii.gz" for m in CHANNEL_ORDER]
    assert first["label"] == "BraTS2021_00000/BraTS2021_00000_seg.nii.gz"
    assert {t["fold"] for t in manifest["training"]} == {0, 1, 2}
    folds = assign_folds([t["case_id"] for t in manifest["training"]], num_folds=3, seed=4)
    assert {t["case_id"]: t["fold"] for t in manifest["training"]} == folds
    assert set(manifest["testing"][0]) == {"case_id", "image"}
    assert "skipped" not in manifest


def test_build_manifest_nested_paths_are_relative_posix(tmp_path, make_case):
    make_case(tmp_path / "MICCAI_BraTS2020_TrainingData", "BraTS20_Training_001")

    manifest = build_manifest(tmp_path)

    item = manifest["training"][0]
    assert item["label"] == (
        "MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_seg.nii.gz"
    )
    assert all(not p.startswith("/") and "\\" not in p for p in item["image"])


def test_build_manifest_msd_uses_a_single_image_path(tmp_path, make_msd):
    make_msd(tmp_path)

    manifest = build_manifest(tmp_path)

    assert manifest["layout"] == "msd" and manifest["label_convention"] == "msd"
    assert manifest["training"][0]["image"] == "imagesTr/BRATS_001.nii.gz"
    assert manifest["training"][0]["label"] == "labelsTr/BRATS_001.nii.gz"
    assert manifest["testing"] == [{"case_id": "BRATS_485", "image": "imagesTs/BRATS_485.nii.gz"}]


def test_build_manifest_custom_suffixes_need_a_convention(tmp_path, make_case):
    suffixes = {"flair": "_FLAIR", "t1": "_T1", "t1ce": "_T1CE", "t2": "_T2"}
    make_case(tmp_path, "p1", suffixes=suffixes)

    with pytest.raises(ValueError, match="label_convention is required"):
        build_manifest(tmp_path, modality_suffixes=suffixes)
    manifest = build_manifest(tmp_path, modality_suffixes=suffixes, label_convention="brats2020")

    assert manifest["layout"] == "custom" and manifest["label_convention"] == "brats2021"
    assert manifest["training"][0]["image"][2] == "p1/p1_T1CE.nii.gz"


def _break(root: Path, make_case, nifti) -> None:
    """Three bad cases: a missing modality, a truncated gzip, an illegal label."""
    (root / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    folder = make_case(root, "BraTS2021_00003")
    raw = (folder / "BraTS2021_00003_flair.nii.gz").read_bytes()
    (folder / "BraTS2021_00003_flair.nii.gz").write_bytes(raw[: len(raw) // 2])
    nifti(
        folder.parent / "BraTS2021_00005" / "BraTS2021_00005_seg.nii.gz",
        np.full((8, 8, 8), 3, np.uint8),
    )


def test_bad_cases_are_all_listed_at_once(dataset, make_case, nifti):
    _break(dataset, make_case, nifti)

    with pytest.raises(DatasetError) as info:
        build_manifest(dataset)

    message = str(info.value)
    lines = message.splitlines()
    assert lines[0].startswith("3 problem(s) in 3 case(s)") and str(dataset) in lines[0]
    assert "BraTS2021_00001: BraTS2021_00001/BraTS2021_00001_t2.nii.gz: missing t2 image" in lines
    assert any(
        line.startswith("BraTS2021_00003: BraTS2021_00003/BraTS2021_00003_fl") for line in lines
    )
    assert any(
        line.startswith("BraTS2021_00005: BraTS2021_00005/BraTS2021_00005_se") for line in lines
    )
    assert [p.case_id for p in info.value.problems] == [
        "BraTS2021_00001",
        "BraTS2021_00003",
        "BraTS2021_00005",
    ]


def test_skip_bad_leaves_bad_cases_out_and_records_them(dataset, make_case, nifti):
    _break(dataset, make_case, nifti)

    with pytest.warns(UserWarning, match="left out 3 bad case"):
        manifest = build_manifest(dataset, skip_bad=True)

    kept = [t["case_id"] for t in manifest["training"]]
    assert kept == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00004", "BraTS2021_00006"]
    assert [s["case_id"] for s in manifest["skipped"]] == [
        "BraTS2021_00001",
        "BraTS2021_00003",
        "BraTS2021_00005",
    ]
    assert manifest["skipped"][0] == {
        "case_id": "BraTS2021_00001",
        "file": "BraTS2021_00001/BraTS2021_00001_t2.nii.gz",
        "reason": "missing t2 image",
    }


def test_validate_false_checks_presence_only(dataset, make_case, nifti):
    _break(dataset, make_case, nifti)

    with pytest.raises(DatasetError) as info:
        build_manifest(dataset, validate=False)

    assert [p.case_id for p in info.value.problems] == ["BraTS2021_00001"]


def test_manifest_from_case_ids_matches_build_manifest(dataset):
    built = build_manifest(dataset, name="n", description="d")
    listed = manifest_from_case_ids(
        [f"BraTS2021_{i:05d}" for i in reversed(range(7))],
        testing_ids=["BraTS2021_00101", "BraTS2021_00100"],
        layout="brats2021",
        name="n",
        description="d",
    )

    assert listed == {k: v for k, v in built.items() if k != "dataset_dir"}


def test_manifest_from_case_ids_msd(tmp_path, make_msd):
    make_msd(tmp_path)
    built = build_manifest(tmp_path, name="n", description="d")

    listed = manifest_from_case_ids(
        ["BRATS_002", "BRATS_001"],
        testing_ids=["BRATS_485"],
        layout="msd",
        name="n",
        description="d",
    )

    assert listed == {k: v for k, v in built.items() if k != "dataset_dir"}


# --------------------------------------------------------------------------- files


def test_write_and_load_round_trip(dataset, tmp_path):
    manifest = build_manifest(dataset)
    manifest["training"].reverse()

    path = write_manifest(manifest, tmp_path / "out" / "manifest.json")

    text = path.read_text()
    assert text.startswith('{\n  "name"') and text.endswith("}\n")
    loaded = load_manifest(path)
    assert [t["case_id"] for t in loaded["training"]] == sorted(
        t["case_id"] for t in manifest["training"]
    )
    assert (
        loaded["training"][0]["fold"]
        == assign_folds([t["case_id"] for t in manifest["training"]])["BraTS2021_00000"]
    )


def test_write_is_atomic(dataset, tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    good = build_manifest(dataset, name="old")
    write_manifest(good, target)
    before = target.read_bytes()
    # Fail at the final rename: the old file must stay whole, the temp file must go.
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))

    with pytest.raises(OSError, match="disk full"):
        write_manifest({**good, "name": "new"}, target)

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "manifest.json"]
    monkeypatch.undo()
    write_manifest({**good, "name": "new"}, target)
    assert load_manifest(target)["name"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "manifest.json"]


def test_write_refuses_a_manifest_without_required_keys(tmp_path):
    with pytest.raises(ManifestError, match="missing key"):
        write_manifest({"name": "x"}, tmp_path / "m.json")
    assert list(tmp_path.iterdir()) == []


def test_load_manifest_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",\n "training": [}')

    with pytest.raises(ManifestError, match="not valid JSON") as info:
        load_manifest(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_load_manifest_missing_keys_names_them_and_the_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "x", "training": []}))

    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(path) in str(info.value) and "'testing'" in str(info.value)
    assert "'channel_order'" in str(info.value)


def test_load_manifest_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_manifest(tmp_path / "nope.json")


def test_load_manifest_rejects_bad_fold_and_channel_order(dataset, tmp_path):
    manifest = build_manifest(dataset, num_folds=2)
    manifest["training"][0]["fold"] = 2
    (tmp_path / "a.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"fold 2 is not in 0\.\.1"):
        load_manifest(tmp_path / "a.json")

    manifest = build_manifest(dataset)
    manifest["channel_order"] = ["t1", "t1ce", "t2", "flair"]
    (tmp_path / "b.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="channel_order"):
        load_manifest(tmp_path / "b.json")


# --------------------------------------------------------------------------- datalists


def test_load_datalist_splits_and_absolute_paths(dataset, tmp_path):
    path = write_manifest(build_manifest(dataset), dataset / "manifest.json")
    manifest = load_manifest(path)
    fold_of = {t["case_id"]: t["fold"] for t in manifest["training"]}

    train = load_datalist(path, fold=1, split="train")
    val = load_datalist(path, fold=1, split="val")
    test = load_datalist(path, split="test")
    every = load_datalist(path, split="all")

    assert {i["case_id"] for i in val} == {c for c, f in fold_of.items() if f == 1}
    assert {i["case_id"] for i in train} == {c for c, f in fold_of.items() if f != 1}
    assert [i["case_id"] for i in test] == ["BraTS2021_00100", "BraTS2021_00101"]
    assert len(every) == 9 and every[-1]["case_id"] == "BraTS2021_00101"
    item = val[0]
    assert set(item) == {"case_id", "image", "label", "fold"} and item["fold"] == 1
    assert item["image"] == [
        str(dataset.resolve() / item["case_id"] / f"{item['case_id']}_{m}.nii.gz")
        for m in CHANNEL_ORDER
    ]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in item["image"])
    assert Path(item["label"]).is_file()
    assert "label" not in test[0]


def test_load_datalist_of_a_loaded_dict_defaults_to_the_manifest_folder(dataset):
    path = write_manifest(build_manifest(dataset), dataset / "m.json")
    manifest = load_manifest(path)

    items = load_datalist(manifest, split="test")

    assert manifest == json.loads(path.read_text())
    assert items[0]["image"][0] == str(
        dataset.resolve() / "BraTS2021_00100" / "BraTS2021_00100_flair.nii.gz"
    )


def test_load_datalist_fold_none(dataset):
    manifest = build_manifest(dataset)

    train = load_datalist(manifest, dataset_dir=dataset, fold=None, split="train")
    val = load_datalist(manifest, dataset_dir=dataset, fold=None, split="val")

    assert len(train) == 7 and val == []


def test_load_datalist_msd_image_stays_a_string(tmp_path, make_msd):
    make_msd(tmp_path)

    (item,) = load_datalist(build_manifest(tmp_path), dataset_dir=tmp_path, split="test")

    assert item["image"] == str(tmp_path.resolve() / "imagesTs" / "BRATS_485.nii.gz")


def test_load_datalist_errors(dataset, tmp_path):
    manifest = build_manifest(dataset, num_folds=5)

    with pytest.raises(ValueError, match=r"fold 5 is out of range.*num_folds=5"):
        load_datalist(manifest, dataset_dir=dataset, fold=5)
    with pytest.raises(ValueError, match=r"fold -1 is out of range"):
        load_datalist(manifest, dataset_dir=dataset, fold=-1)
    with pytest.raises(ValueError, match=r"unknown split 'validation'"):
        load_datalist(manifest, dataset_dir=dataset, split="validation")
    with pytest.raises(ValueError, match="set dataset_dir"):
        load_datalist(manifest)
    missing = tmp_path / "elsewhere"
    with pytest.raises(ValueError, match="set dataset_dir") as info:
        load_datalist(manifest, dataset_dir=missing)
    assert str(missing) in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="set dataset_dir to your copy"):
        load_datalist(manifest, dataset_dir=tmp_path / "empty", split="all")


def test_load_datalist_finds_the_uncompressed_twin(tmp_path, make_case):
    make_case(tmp_path, "BraTS20_Training_001", ext=".nii")
    manifest = manifest_from_case_ids(
        ["BraTS20_Training_001"], layout="brats2021", name="n", description="d"
    )

    (item,) = load_datalist(manifest, dataset_dir=tmp_path, split="all")

    assert item["image"][0].endswith("BraTS20_Training_001_flair.nii")
    assert item["label"].endswith("_seg.nii")
    assert validate_manifest_against(tmp_path, manifest, check_readable=True) == []


def test_datalist_from_directory(dataset):
    train = datalist_from_directory(dataset, fold=0, split="train", num_folds=3, seed=2)
    val = datalist_from_directory(dataset, fold=0, split="val", num_folds=3, seed=2)

    assert len(train) + len(val) == 7 and {i["fold"] for i in val} == {0}
    assert not {i["case_id"] for i in train} & {i["case_id"] for i in val}
    assert all(Path(p).is_absolute() for p in train[0]["image"])
    with pytest.raises(TypeError, match="unexpected argument"):
        datalist_from_directory(dataset, validate=True)


def test_validate_manifest_against_lists_missing_cases(dataset):
    manifest = build_manifest(dataset)
    for path in (dataset / "BraTS2021_00004").iterdir():
        path.unlink()

    problems = validate_manifest_against(dataset, manifest)

    assert {p.case_id for p in problems} == {"BraTS2021_00004"}
    assert len(problems) == 5  # four images and the label


# --------------------------------------------------------------------------- CLI


def test_cli_writes_manifest_and_prints_summary(dataset, tmp_path, capsys):
    out = tmp_path / "m.json"

    code = main(["manifest", str(dataset), "-o", str(out), "--folds", "3", "--no-progress"])

    assert code == 0
    stdout = capsys.readouterr().out
    assert "layout:           brats2021" in stdout
    assert "training cases:   7" in stdout and "testing cases:    2" in stdout
    assert "cases per fold:   0:3 1:2 2:2" in stdout and "skipped cases:    0" in stdout
    assert load_manifest(out)["num_folds"] == 3


def test_cli_bad_cases_exit_2_listing_all(dataset, tmp_path, make_case, nifti, capsys):
    _break(dataset, make_case, nifti)
    out = tmp_path / "m.json"

    code = main(["manifest", str(dataset), "-o", str(out), "--no-progress"])

    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("tumorseg manifest: error: 3 problem(s) in 3 case(s)")
    for case_id in ("BraTS2021_00001", "BraTS2021_00003", "BraTS2021_00005"):
        assert f"\n{case_id}: {case_id}/" in err


def test_cli_skip_bad(dataset, tmp_path, make_case, nifti, capsys):
    _break(dataset, make_case, nifti)
    out = tmp_path / "m.json"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["manifest", str(dataset), "-o", str(out), "--skip-bad", "--no-progress"])

    assert code == 0
    assert "skipped cases:    3" in capsys.readouterr().out
    assert len(load_manifest(out)["training"]) == 4


def test_cli_modality_suffixes(tmp_path, make_case, capsys):
    suffixes = {"flair": "_FLAIR", "t1": "_T1", "t1ce": "_T1CE", "t2": "_T2"}
    make_case(tmp_path / "ds", "p1", suffixes=suffixes)
    out = tmp_path / "m.json"
    args = ["manifest", str(tmp_path / "ds"), "-o", str(out), "--no-progress"]

    code = main([*args, "--modality-suffixes", "flair=_FLAIR,t1=_T1,t1ce=_T1CE,t2=_T2",
                 "--label-convention", "brats2021"])  # fmt: skip
    assert code == 0
    assert load_manifest(out)["training"][0]["image"][0] == "p1/p1_FLAIR.nii.gz"

    capsys.readouterr()
    assert main([*args, "--modality-suffixes", "flair:_FLAIR"]) == 2
    assert "'flair:_FLAIR' is not MODALITY=SUFFIX" in capsys.readouterr().err


def test_cli_missing_folder_and_check(dataset, tmp_path, capsys):
    assert main(["manifest", str(tmp_path / "nope"), "-o", str(tmp_path / "m.json")]) == 2
    assert "does not exist" in capsys.readouterr().err

    manifest_path = write_manifest(build_manifest(dataset), tmp_path / "m.json")
    assert main(["manifest", str(dataset), "--check", str(manifest_path), "--no-progress"]) == 0
    (dataset / "BraTS2021_00002" / "BraTS2021_00002_t1.nii.gz").unlink()
    assert main(["manifest", str(dataset), "--check", str(manifest_path), "--no-progress"]) == 2
    assert "BraTS2021_00002: BraTS2021_00002/BraTS2021_00002_t1.nii.gz: missing t1 image" in (
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------- real studies


@pytest.mark.shared_data
def test_real_labelled_study_builds_a_manifest(real_studies):
    manifest = build_manifest(real_studies / "brats2020_layout")

    assert manifest["layout"] == "brats2021" and manifest["label_convention"] == "brats2021"
    assert [(t["case_id"], t["fold"]) for t in manifest["training"]] == [("TCGA-DU-7294", 0)]
    assert manifest["training"][0]["label"] == "TCGA-DU-7294/TCGA-DU-7294_seg.nii.gz"
    assert manifest["testing"] == []


@pytest.mark.shared_data
def test_real_unlabelled_study_builds_a_manifest(real_studies):
    manifest = build_manifest(real_studies / "brats2023_layout")

    assert manifest["layout"] == "brats2023" and manifest["training"] == []
    (item,) = manifest["testing"]
    assert item["image"][0] == "BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2f.nii.gz"
    (entry,) = load_datalist(
        manifest, dataset_dir=real_studies / "brats2023_layout", fold=None, split="test"
    )
    assert all(Path(p).is_file() for p in entry["image"])


# --------------------------------------------------------------------------- public manifests

PUBLIC_COUNTS = {
    "brats2020.json": ("brats2021", "brats2021", 369, 0),
    "brats2021.json": ("brats2021", "brats2021", 1251, 0),
    "brats2023_gli.json": ("brats2023", "brats2023", 1251, 0),
    "msd_task01.json": ("msd", "msd", 484, 266),
}


def _load_build_public():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_public", PUBLIC / "build_public.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(PUBLIC_COUNTS))
def test_public_manifest_loads_with_documented_counts_and_balanced_folds(name):
    layout, convention, n_train, n_test = PUBLIC_COUNTS[name]

    manifest = load_manifest(PUBLIC / name)

    assert (manifest["layout"], manifest["label_convention"]) == (layout, convention)
    assert (manifest["num_folds"], manifest["seed"]) == (5, 0)
    assert len(manifest["training"]) == n_train and len(manifest["testing"]) == n_test
    ids = [t["case_id"] for t in [*manifest["training"], *manifest["testing"]]]
    assert len(ids) == len(set(ids))
    sizes = Counter(t["fold"] for t in manifest["training"])
    assert sorted(sizes) == [0, 1, 2, 3, 4]
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for item in manifest["training"]:
        paths = [item["image"]] if isinstance(item["image"], str) else item["image"]
        assert all(p.endswith(".nii.gz") and not p.startswith("/") for p in paths)
        assert item["case_id"] in item["label"]
    datalist = load_datalist(
        PUBLIC / name, dataset_dir="/data/copy", fold=2, split="val", check_files=False
    )
    assert len(datalist) == sizes[2]
    assert all(str(d["label"]).startswith("/data/copy/") for d in datalist)


def test_public_case_ids_are_the_documented_ranges():
    ids = {n: [t["case_id"] for t in load_manifest(PUBLIC / n)["training"]] for n in PUBLIC_COUNTS}
    msd = load_manifest(PUBLIC / "msd_task01.json")

    assert ids["brats2020.json"] == [f"BraTS20_Training_{i:03d}" for i in range(1, 370)]
    assert ids["msd_task01.json"] == [f"BRATS_{i:03d}" for i in range(1, 485)]
    assert [t["case_id"] for t in msd["testing"]] == [f"BRATS_{i:03d}" for i in range(485, 751)]
    assert ids["brats2021.json"][0] == "BraTS2021_00000" and ids["brats2021.json"][-1].endswith(
        "01666"
    )
    # BraTS 2023 GLI is BraTS 2021 renamed: each patient number of a "-000" case is a 2021 id.
    numbers_2021 = {i.split("_")[1] for i in ids["brats2021.json"]}
    gli = ids["brats2023_gli.json"]
    assert {i.split("-")[2] for i in gli if i.endswith("-000")} <= numbers_2021
    assert sum(i.endswith("-001") for i in gli) == 118


def test_public_brats2023_timepoints_share_a_fold():
    manifest = load_manifest(PUBLIC / "brats2023_gli.json")
    fold = {t["case_id"]: t["fold"] for t in manifest["training"]}

    pairs = [(i, i[:-3] + "000") for i in fold if i.endswith("-001")]

    assert pairs and all(fold[a] == fold[b] for a, b in pairs)


def _possible_same_patient(name: str, manifest) -> list[set[str]]:
    """Sets of case ids that are, or may be, one patient's, from the case ids alone.

    BraTS 2023 GLI: ``BraTS-GLI-PPPPP-TTT`` is patient ``PPPPP`` at timepoint ``TTT``.
    BraTS 2021: the same data under other names: ``BraTS2021_PPPPP`` is ``BraTS-GLI-PPPPP-000``;
    the 2021 ids that are no 2023 ``-000`` number are the 2023 ``-001`` cases, in an order the
    names do not tell, so any of them may be the second timepoint of any patient with a
    ``-001``. BraTS 2020: the names carry no patient, only what the manifest records.
    """
    groups: dict[str, set[str]] = {}
    for item in manifest["training"]:
        groups.setdefault(item.get("patient_id", item["case_id"]), set()).add(item["case_id"])
    out = list(groups.values())
    ids = [t["case_id"] for t in manifest["training"]]
    gli = [t["case_id"] for t in load_manifest(PUBLIC / "brats2023_gli.json")["training"]]
    if name == "brats2023_gli.json":
        by_patient: dict[str, set[str]] = {}
        for case_id in ids:
            by_patient.setdefault(case_id.rsplit("-", 1)[0], set()).add(case_id)
        out += list(by_patient.values())
    elif name == "brats2021.json":
        first = {c.split("-")[2] for c in gli if c.endswith("-000")}
        second = {c.split("-")[2] for c in gli if c.endswith("-001")}
        unknown = {c for c in ids if c.split("_")[1] not in first}
        assert len(unknown) == len(second) == 118
        out.append(unknown | {f"BraTS2021_{n}" for n in second})
    return out


@pytest.mark.parametrize("name", ["brats2020.json", "brats2021.json", "brats2023_gli.json"])
def test_no_patient_of_the_public_brats_manifests_is_in_two_folds(name):
    manifest = load_manifest(PUBLIC / name)
    fold = {t["case_id"]: t["fold"] for t in manifest["training"]}

    groups = _possible_same_patient(name, manifest)

    split = [sorted(g)[:3] for g in groups if len({fold[c] for c in g}) > 1]
    assert not split, f"{len(split)} patient(s) of {name} in several folds, e.g. {split[:3]}"


def test_public_brats2021_patients_are_the_brats2023_ones():
    b2021 = {t["case_id"]: t for t in load_manifest(PUBLIC / "brats2021.json")["training"]}
    b2023 = load_manifest(PUBLIC / "brats2023_gli.json")["training"]
    single = {t["patient_id"] for t in b2023} - {
        t["patient_id"] for t in b2023 if t["case_id"].endswith("-001")
    }
    for patient in single:
        assert b2021["BraTS2021_" + patient.split("-")[2]]["patient_id"] == patient
    unpaired = [c for c, t in b2021.items() if t["patient_id"] == "BraTS2021-unpaired-timepoints"]
    assert len(unpaired) == 236 and len(single) == 1251 - 236


def test_public_manifests_match_a_fresh_build():
    built = _load_build_public().build_all()

    assert sorted(built) == sorted(PUBLIC_COUNTS)
    for name, manifest in built.items():
        committed = load_manifest(PUBLIC / name)
        committed.pop("tumorseg_version")
        manifest.pop("tumorseg_version")
        assert committed == manifest, f"{name} is stale: run data_manifests/build_public.py"
