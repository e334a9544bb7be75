"""A fixed LGG patient split (the project's published 22/88 one, or a user's): manifests whose
folds are drawn among development patients only, test patients kept apart with their masks,
file hashes verified, and every malformed split file or mismatched copy named clearly."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tumorseg.cli import main
from tumorseg.data.lgg import (
    LGGDatasetError,
    build_lgg_manifest,
    lgg_datalist,
    load_lgg_manifest,
)
from tumorseg.data.lgg_split import (
    apply_patient_split,
    load_patient_split,
    verify_split_hashes,
)
from tumorseg.data.synthetic_lgg import generate_kaggle_3m

SHARED_SPLIT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def _generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("lgg_split") / "kaggle_3m"
    ids = generate_kaggle_3m(root, num_patients=6, shape=(16, 16, 16), seed=3)
    return root, ids


@pytest.fixture
def dataset(tmp_path: Path, _generated: tuple[Path, list[str]]) -> tuple[Path, list[str]]:
    """Six synthetic labelled patients, a private copy per test (some tests damage files)."""
    root = tmp_path / "kaggle_3m"
    shutil.copytree(_generated[0], root)
    return root, list(_generated[1])


def _split_file(root: Path, path: Path, test: list[str], dev: list[str]) -> Path:
    hashes = {
        f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*.tif"))
    }
    body = {"test_patients": test, "development_patients": dev, "sha256": hashes}
    path.write_text(json.dumps(body))
    return path


def test_folds_come_from_development_patients_and_test_keeps_its_masks(
    tmp_path: Path, dataset: tuple[Path, list[str]]
) -> None:
    root, ids = dataset
    split = load_patient_split(_split_file(root, tmp_path / "split.json", ids[:2], ids[2:]))
    manifest = apply_patient_split(build_lgg_manifest(root), split, num_folds=2, seed=0)
    train_patients = {t["patient"] for t in manifest["training"]}
    assert train_patients == set(ids[2:])
    assert {t["patient"] for t in manifest["testing"]} == set(ids[:2])
    assert all("label" in t and "fold" not in t for t in manifest["testing"])
    folds = {t["patient"]: t["fold"] for t in manifest["training"]}
    assert sorted(set(folds.values())) == [0, 1]
    assert manifest["split_sha256"] == hashlib.sha256(Path(split.path).read_bytes()).hexdigest()
    # No training split of any fold, nor "train every slice", reaches a test patient.
    for fold in (0, 1, None):
        for name in ("train", "val"):
            items = lgg_datalist(manifest, dataset_dir=root, fold=fold, split=name)
            assert not {i["patient"] for i in items} & set(ids[:2])
    test_items = lgg_datalist(manifest, dataset_dir=root, fold=0, split="test")
    assert {i["patient"] for i in test_items} == set(ids[:2])
    assert all(Path(i["label"]).is_file() for i in test_items)


def test_cli_builds_the_split_manifest_and_verifies_hashes(
    tmp_path: Path, dataset: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, ids = dataset
    split = _split_file(root, tmp_path / "split.json", ids[:1], ids[1:])
    out = tmp_path / "m.json"
    argv = ["manifest", str(root), "--split-file", str(split), "--verify", "--folds", "2"]
    assert main([*argv, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "files match the hashes" in text and "testing slices:      16 of 1 patients" in text
    manifest = load_lgg_manifest(out)
    assert {t["patient"] for t in manifest["testing"]} == {ids[0]}
    assert manifest["num_folds"] == 2


def test_verify_names_every_changed_or_missing_file(
    tmp_path: Path, dataset: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, ids = dataset
    split = _split_file(root, tmp_path / "split.json", ids[:1], ids[1:])
    changed = root / ids[2] / f"{ids[2]}_3_mask.tif"
    changed.write_bytes(changed.read_bytes() + b"\0")
    gone = root / ids[4] / f"{ids[4]}_1.tif"
    gone.unlink()
    lines = verify_split_hashes(root, load_patient_split(split))
    assert len(lines) == 2
    assert any(str(changed) in line and "expected" in line for line in lines)
    assert any(str(gone) in line and "missing" in line for line in lines)
    assert main(["manifest", str(root), "--split-file", str(split), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "2 file(s)" in err and str(changed) in err and "Traceback" not in err


def test_split_must_cover_the_dataset_exactly(
    tmp_path: Path, dataset: tuple[Path, list[str]]
) -> None:
    root, ids = dataset
    partial = load_patient_split(_split_file(root, tmp_path / "a.json", ids[:1], ids[1:4]))
    with pytest.raises(LGGDatasetError, match="not in the split file") as err:
        apply_patient_split(build_lgg_manifest(root), partial)
    assert ids[4] in str(err.value)
    extra = load_patient_split(
        _split_file(root, tmp_path / "b.json", [*ids[:1], "TCGA_XX_0000_19990101"], ids[1:])
    )
    with pytest.raises(LGGDatasetError, match="missing from the dataset"):
        apply_patient_split(build_lgg_manifest(root), extra)


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"test_patients": []}', "missing key(s)"),
        (
            '{"test_patients": ["A"], "development_patients": ["A"], "sha256": {}}',
            "in both test and development: ['A']",
        ),
        (
            '{"test_patients": "A", "development_patients": [], "sha256": {}}',
            "test_patients must be a list",
        ),
        ("{not json", "split file"),
    ],
)
def test_bad_split_files_are_named(
    tmp_path: Path,
    dataset: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    body: str,
    shown: str,
) -> None:
    path = tmp_path / "split.json"
    path.write_text(body)
    with pytest.raises(LGGDatasetError, match="split") as err:
        load_patient_split(path)
    assert shown in str(err.value) and str(path) in str(err.value)
    root, _ = dataset
    assert main(["manifest", str(root), "--split-file", str(path), "-o", str(tmp_path / "m")]) == 2
    assert shown in capsys.readouterr().err


def test_split_options_are_refused_where_they_do_not_apply(
    tmp_path: Path, dataset: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = dataset
    assert main(["manifest", str(root), "--verify", "-o", str(tmp_path / "m.json")]) == 2
    assert "add --split-file" in capsys.readouterr().err
    argv = ["manifest", str(tmp_path), "--layout", "brats2021", "--split-file", "s.json"]
    assert main([*argv, "-o", str(tmp_path / "m.json")]) == 2
    assert "apply to kaggle_3m" in capsys.readouterr().err


def test_the_project_split_file_is_22_test_and_88_development_patients() -> None:
    path = SHARED_SPLIT / "lgg_kaggle_3m_split.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (a clone without ../shared)")
    split = load_patient_split(path)
    assert (len(split.test_patients), len(split.development_patients)) == (22, 88)
    assert len(split.file_hashes) == 7858
