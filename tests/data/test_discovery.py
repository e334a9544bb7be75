"""Discovery and validation of dataset folders (tumorseg.data.discovery)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.data.discovery import (
    Case,
    CaseProblem,
    DatasetError,
    detect_layout,
    discover_cases,
    split_extension,
    validate_case,
)


def _names(case: Case) -> list[str]:
    return [p.name for p in case.images]


def _only_problem(case: Case, convention: str = "brats2021") -> CaseProblem:
    problems = validate_case(case, label_convention=convention)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------- layouts


def test_brats2021_layout_detected_and_discovered_in_channel_order(tmp_path, make_case):
    for case_id in ("BraTS2021_00002", "BraTS2021_00000"):
        make_case(tmp_path, case_id)
    make_case(tmp_path, "BraTS2021_00005", label=False)

    assert detect_layout(tmp_path) == "brats2021"
    cases = discover_cases(tmp_path)

    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00005"]
    assert _names(cases[0]) == [
        "BraTS2021_00000_flair.nii.gz",
        "BraTS2021_00000_t1.nii.gz",
        "BraTS2021_00000_t1ce.nii.gz",
        "BraTS2021_00000_t2.nii.gz",
    ]
    assert cases[0].label == tmp_path / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    assert cases[2].label is None
    assert {c.layout for c in cases} == {"brats2021"}
    assert all(validate_case(c, label_convention="brats2021") == [] for c in cases)


def test_brats2023_layout_maps_file_suffixes_to_canonical_channel_order(tmp_path, make_case):
    make_case(tmp_path, "BraTS-GLI-00001-000", layout="brats2023")

    assert detect_layout(tmp_path) == "brats2023"
    (case,) = discover_cases(tmp_path)

    # Alphabetical listing is t1c, t1n, t2f, t2w; the channel order must not follow it.
    assert _names(case) == [
        "BraTS-GLI-00001-000-t2f.nii.gz",  # flair
        "BraTS-GLI-00001-000-t1n.nii.gz",  # t1
        "BraTS-GLI-00001-000-t1c.nii.gz",  # t1ce
        "BraTS-GLI-00001-000-t2w.nii.gz",  # t2
    ]
    assert case.label is not None and case.label.name == "BraTS-GLI-00001-000-seg.nii.gz"
    assert validate_case(case, label_convention="brats2023") == []


def test_nested_case_folders_are_found_one_level_down(tmp_path, make_case):
    inner = tmp_path / "MICCAI_BraTS2020_TrainingData"
    make_case(inner, "BraTS20_Training_001")
    make_case(inner, "BraTS20_Training_002")
    (tmp_path / "README.txt").write_text("not a case")

    assert detect_layout(tmp_path) == "brats2021"
    cases = discover_cases(tmp_path)

    assert [c.case_id for c in cases] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert cases[0].images[0].parent == inner / "BraTS20_Training_001"


def test_uncompressed_nifti_is_accepted(tmp_path, make_case):
    make_case(tmp_path, "BraTS20_Training_001", ext=".nii")

    (case,) = discover_cases(tmp_path)

    assert _names(case)[0] == "BraTS20_Training_001_flair.nii"
    assert validate_case(case, label_convention="brats2021") == []


def test_hidden_and_macos_resource_files_are_ignored(tmp_path, make_case):
    folder = make_case(tmp_path, "BraTS2021_00000")
    (folder / "._BraTS2021_00000_flair.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / ".DS_Store").write_bytes(b"junk")
    (tmp_path / ".hidden_case").mkdir()
    (tmp_path / ".hidden_case" / ".hidden_case_flair.nii.gz").write_bytes(b"junk")

    (case,) = discover_cases(tmp_path)

    assert case.images[0].name == "BraTS2021_00000_flair.nii.gz"
    assert validate_case(case, label_convention="brats2021") == []


def test_msd_with_dataset_json_uses_its_lists(tmp_path, make_msd):
    task = make_msd(tmp_path / "Task01_BrainTumour", extra_train=["BRATS_003"])
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"mac junk")

    assert detect_layout(task) == "msd"
    cases = discover_cases(task)

    # BRATS_003 is on disk but not listed in dataset.json: the list wins.
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_485"]
    assert cases[0].images == (task / "imagesTr" / "BRATS_001.nii.gz",)
    assert cases[0].label == task / "labelsTr" / "BRATS_001.nii.gz"
    assert cases[2].label is None and cases[2].images == (task / "imagesTs" / "BRATS_485.nii.gz",)
    assert all(validate_case(c, label_convention="msd") == [] for c in cases)


def test_msd_without_dataset_json_lists_the_folders(tmp_path, make_msd):
    task = make_msd(tmp_path / "Task01_BrainTumour", dataset_json=False)

    cases = discover_cases(tmp_path, layout="msd")  # the task folder one level down

    assert [(c.case_id, c.label is not None) for c in cases] == [
        ("BRATS_001", True),
        ("BRATS_002", True),
        ("BRATS_485", False),
    ]
    assert cases[0].images[0].parent == task / "imagesTr"


def test_custom_modality_suffixes_with_other_itk_extensions(tmp_path):
    suffixes = {"t2": "_T2", "flair": "_FLAIR", "t1ce": "_T1CE", "t1": "_T1"}
    folder = tmp_path / "patient_7"
    folder.mkdir()
    for suffix in ("_T1CE", "_T2", "_T1", "_FLAIR"):
        (folder / f"patient_7{suffix}.nrrd").write_bytes(b"NRRD0004\n")
    (folder / "patient_7_seg.mha").write_bytes(b"ObjectType = Image\n")

    (case,) = discover_cases(tmp_path, modality_suffixes=suffixes)

    assert _names(case) == [
        "patient_7_FLAIR.nrrd",
        "patient_7_T1.nrrd",
        "patient_7_T1CE.nrrd",
        "patient_7_T2.nrrd",
    ]
    assert case.label is not None and case.label.name == "patient_7_seg.mha"
    assert case.layout == "custom"
    assert validate_case(case, label_convention="brats2021", check_readable=False) == []


def test_custom_suffixes_reading_nrrd_through_itk(tmp_path, labels):
    itk = pytest.importorskip("itk")
    folder = tmp_path / "p1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for suffix in ("_FLAIR", "_T1", "_T1CE", "_T2"):
        image = itk.image_from_array(rng.normal(size=(8, 8, 8)).astype(np.float32))
        itk.imwrite(image, str(folder / f"p1{suffix}.nrrd"))
    itk.imwrite(itk.image_from_array(labels("brats2021")), str(folder / "p1_seg.nrrd"))
    suffixes = {"flair": "_FLAIR", "t1": "_T1", "t1ce": "_T1CE", "t2": "_T2"}

    (case,) = discover_cases(tmp_path, modality_suffixes=suffixes)
    assert validate_case(case, label_convention="brats2021") == []

    bad = itk.image_from_array(np.full((8, 8, 8), 7, dtype=np.uint8))
    itk.imwrite(bad, str(folder / "p1_seg.nrrd"))
    problem = _only_problem(case)
    assert problem.file == "p1/p1_seg.nrrd" and "{7}" in problem.reason


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"flair": "_F", "t1": "_T1", "t1c": "_T1C", "t2": "_T2"}, "unknown modality ['t1c']"),
        ({"flair": "_F", "t1": "_T1", "t2": "_T2"}, "lacks ['t1ce']"),
        ({"flair": "_A", "t1": "_A", "t1ce": "_C", "t2": "_D"}, "distinct"),
    ],
)
def test_bad_modality_suffixes_are_refused_showing_the_mapping(
    tmp_path, make_case, mapping, message
):
    make_case(tmp_path, "c1")

    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        discover_cases(tmp_path, modality_suffixes=mapping)
    assert str(mapping["flair"]) in str(info.value)


def test_split_extension():
    assert split_extension("a_t1.nii.gz") == ("a_t1", ".nii.gz")
    assert split_extension("a.NII") == ("a", ".NII")
    assert split_extension("a.mha") == ("a", ".mha")
    assert split_extension("notes.txt") == ("notes.txt", "")


# --------------------------------------------------------------------------- bad inputs


def test_missing_modality_is_discovered_and_reported(tmp_path, make_case):
    make_case(tmp_path, "BraTS2021_00000", skip=["t1ce"])

    (case,) = discover_cases(tmp_path)
    problem = _only_problem(case)

    assert problem.case_id == "BraTS2021_00000"
    assert problem.file == "BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz"
    assert problem.reason == "missing t1ce image"
    assert str(problem) == (
        "BraTS2021_00000: BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz: missing t1ce image"
    )


def test_mismatched_shape_names_the_file_and_both_shapes(tmp_path, make_case):
    make_case(tmp_path, "c1", shapes={"t2": (8, 8, 9)})

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "c1/c1_t2.nii.gz"
    assert "(8, 8, 9)" in problem.reason and "flair (8, 8, 8)" in problem.reason


def test_mismatched_affine_is_reported_beyond_tolerance_only(tmp_path, make_case):
    shifted = np.eye(4)
    shifted[0, 3] = 1.5
    tiny = np.eye(4)
    tiny[1, 3] = 5e-5  # below the 1e-4 tolerance: same grid
    make_case(tmp_path, "c1", affines={"label": shifted, "t1": tiny})

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "c1/c1_seg.nii.gz"
    assert "affine differs from flair by up to 1.5" in problem.reason


def test_truncated_gzip_is_caught(tmp_path, make_case, nifti):
    folder = make_case(tmp_path, "c1")
    # Random voxels do not compress, so cutting the tail truncates the voxel data while the
    # header still reads: only decompressing the whole file notices.
    noise = np.random.default_rng(1).integers(0, 30000, size=(8, 8, 8)).astype(np.int16)
    path = nifti(folder / "c1_t1.nii.gz", noise)
    path.write_bytes(path.read_bytes()[:-100])

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "c1/c1_t1.nii.gz"
    assert problem.reason.startswith("cannot read (EOFError")


def test_gzip_with_bad_crc_is_caught(tmp_path, make_case):
    folder = make_case(tmp_path, "c1")
    path = folder / "c1_t2.nii.gz"
    payload = gzip.decompress(path.read_bytes())
    data = bytearray(gzip.compress(payload))
    data[-8] ^= 0xFF  # flip the stored CRC-32: every byte decompresses, the check fails
    path.write_bytes(bytes(data))

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "c1/c1_t2.nii.gz" and "cannot read" in problem.reason


def test_truncated_uncompressed_nifti_is_caught(tmp_path, make_case):
    folder = make_case(tmp_path, "c1", ext=".nii")
    path = folder / "c1_flair.nii"
    path.write_bytes(path.read_bytes()[:-100])

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "c1/c1_flair.nii" and "truncated" in problem.reason


def test_not_a_nifti_file_is_caught(tmp_path, make_case):
    folder = make_case(tmp_path, "c1")
    (folder / "c1_flair.nii.gz").write_bytes(b"this is not an image")

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "c1/c1_flair.nii.gz" and "cannot read" in problem.reason


@pytest.mark.parametrize(
    ("convention", "values", "illegal"),
    [("brats2021", (0, 1, 2, 3), "{3}"), ("brats2023", (0, 1, 4), "{4}"), ("msd", (0, 5), "{5}")],
)
def test_illegal_label_values_are_named(tmp_path, make_case, convention, values, illegal):
    label = np.zeros((8, 8, 8), np.uint8)
    for i, value in enumerate(values):
        label[i] = value
    make_case(tmp_path, "c1", label_data=label)

    problem = _only_problem(discover_cases(tmp_path)[0], convention)

    assert problem.file == "c1/c1_seg.nii.gz"
    assert illegal in problem.reason and convention in problem.reason


def test_non_integer_label_values_are_illegal(tmp_path, make_case):
    label = np.zeros((8, 8, 8), np.float32)
    label[0] = 1.5
    make_case(tmp_path, "c1", label_data=label)

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert "{1.5}" in problem.reason


def test_4d_volume_in_a_brats_case_is_reported(tmp_path, make_case):
    make_case(tmp_path, "c1", shapes={"t1": (8, 8, 8, 2)})

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "c1/c1_t1.nii.gz" and "expected a 3D volume" in problem.reason


def test_msd_image_must_have_four_channels(tmp_path, make_msd):
    task = make_msd(tmp_path / "Task01", train=["BRATS_001"], test=[], image_shape=(8, 8, 8, 3))

    problem = _only_problem(discover_cases(task)[0], "msd")

    assert problem.file == "imagesTr/BRATS_001.nii.gz"
    assert "4 channels" in problem.reason and "(8, 8, 8, 3)" in problem.reason


def test_two_files_for_one_modality_are_reported(tmp_path, make_case, nifti):
    folder = make_case(tmp_path, "c1")
    nifti(folder / "c1_t2.nii", np.zeros((8, 8, 8), np.int16))

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert "2 files match 't2'" in problem.reason and "c1_t2.nii" in problem.reason


def test_check_readable_false_only_checks_presence(tmp_path, make_case):
    folder = make_case(tmp_path, "c1", skip=["flair"])
    (folder / "c1_t1.nii.gz").write_bytes(b"corrupt")

    problems = validate_case(
        discover_cases(tmp_path)[0], label_convention="brats2021", check_readable=False
    )

    assert [p.reason for p in problems] == ["missing flair image"]


def test_empty_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="is empty") as info:
        discover_cases(tmp_path)
    assert str(tmp_path) in str(info.value) and "_flair.nii.gz" in str(info.value)


def test_missing_folder_gives_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(DatasetError, match="does not exist") as info:
        detect_layout(missing)
    assert str(missing) in str(info.value) and "expected" in str(info.value)


def test_unknown_layout_names_what_was_found(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "scan.nii.gz").write_bytes(b"")

    with pytest.raises(DatasetError, match="cannot tell the layout") as info:
        detect_layout(tmp_path)
    assert "scans/" in str(info.value) and "brats2023" in str(info.value)


def test_explicit_layout_with_no_matching_case(tmp_path, make_case):
    make_case(tmp_path, "c1")

    with pytest.raises(DatasetError, match="no cases found"):
        discover_cases(tmp_path, layout="brats2023")


def test_duplicate_case_ids_across_nested_folders(tmp_path, make_case):
    make_case(tmp_path / "TrainingData", "c1")
    make_case(tmp_path / "TrainingData_copy", "c1")

    with pytest.raises(DatasetError, match="duplicate case ids") as info:
        discover_cases(tmp_path)
    assert "TrainingData_copy/c1" in str(info.value)


def test_dataset_error_lists_every_problem():
    problems = [CaseProblem("a", "a/a_t1.nii.gz", "missing t1 image"), CaseProblem("b", "f", "r")]

    err = DatasetError(problems)

    lines = str(err).splitlines()
    assert lines[0].startswith("2 problem(s) in 2 case(s)")
    assert lines[1:] == ["a: a/a_t1.nii.gz: missing t1 image", "b: f: r"]
    assert err.problems == problems and isinstance(err, ValueError)


# --------------------------------------------------------------------------- real studies


@pytest.mark.shared_data
def test_real_studies_are_discovered(real_studies, tmp_path):
    brats2020 = discover_cases(real_studies / "brats2020_layout")
    brats2023 = discover_cases(real_studies / "brats2023_layout")

    assert [(c.case_id, c.layout, c.label is not None) for c in brats2020] == [
        ("TCGA-DU-7294", "brats2021", True)
    ]
    assert [(c.case_id, c.layout, c.label is not None) for c in brats2023] == [
        ("BraTS-GLI-00001-000", "brats2023", False)
    ]
    assert [p.name.split("-")[-1] for p in brats2023[0].images] == [
        "t2f.nii.gz",
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
    ]
    # The folder of reference segmentations beside them is not mistaken for a case.
    beside = tmp_path / "beside"
    beside.mkdir()
    for name in ("brats2020_layout", "reference_segmentations"):
        (beside / name).symlink_to(real_studies / name, target_is_directory=True)
    assert [c.case_id for c in discover_cases(beside)] == ["TCGA-DU-7294"]

    # A truncated copy of a real 240x240x155 study is caught (the other files are linked).
    case_dir = tmp_path / "TCGA-DU-7294"
    case_dir.mkdir()
    for path in brats2020[0].images:
        (case_dir / path.name).symlink_to(path)
    raw = brats2020[0].images[0].read_bytes()
    (case_dir / "TCGA-DU-7294_flair.nii.gz").unlink()
    (case_dir / "TCGA-DU-7294_flair.nii.gz").write_bytes(raw[: len(raw) - 4096])
    (case,) = discover_cases(tmp_path)
    problems = validate_case(case, label_convention="brats2021")
    assert [p.file for p in problems] == ["TCGA-DU-7294/TCGA-DU-7294_flair.nii.gz"]
    assert CHANNEL_ORDER[0] == "flair"


def test_msd_dataset_json_with_invalid_json_falls_back_to_folders(tmp_path, make_msd):
    task = make_msd(tmp_path, dataset_json=False)
    (task / "dataset.json").write_text("{not json")

    assert [c.case_id for c in discover_cases(task)] == ["BRATS_001", "BRATS_002", "BRATS_485"]


def test_label_suffix_override(tmp_path, make_case):
    make_case(tmp_path, "c1", label_suffix="_GlistrBoost")

    (case,) = discover_cases(tmp_path, layout="brats2021", label_suffix="_GlistrBoost")

    assert case.label is not None and case.label.name == "c1_GlistrBoost.nii.gz"


def test_case_folder_copied_from_real_layout_keeps_order(tmp_path, make_case):
    src = make_case(tmp_path / "src", "c1")
    dst = tmp_path / "dst" / "c1"
    shutil.copytree(src, dst)
    (dst / "notes.json").write_text(json.dumps({"a": 1}))

    (case,) = discover_cases(tmp_path / "dst")

    assert [p.name for p in case.images] == [f"c1_{m}.nii.gz" for m in CHANNEL_ORDER]


def test_problem_file_is_relative_to_case_folder(tmp_path: Path, make_case):
    make_case(tmp_path, "c1", skip=["t2"])

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert not problem.file.startswith("/")


def test_misnamed_label_map_is_flagged_not_treated_as_unlabelled(tmp_path, make_case, nifti):
    folder = make_case(tmp_path, "BraTS20_Training_355", label=False)
    nifti(folder / "W39_1998.09.19_Segm.nii", np.zeros((8, 8, 8), np.uint8))

    problem = _only_problem(discover_cases(tmp_path)[0])

    assert problem.file == "BraTS20_Training_355/W39_1998.09.19_Segm.nii"
    assert "no label map named BraTS20_Training_355_seg.nii.gz" in problem.reason


def test_dataset_error_survives_pickling():
    import pickle

    err = DatasetError([CaseProblem("a", "a/x.nii.gz", "missing flair image")], message="bad:")

    copy = pickle.loads(pickle.dumps(err))

    assert str(copy) == str(err) and copy.problems == err.problems
