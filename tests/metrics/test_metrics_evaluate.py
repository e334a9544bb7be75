"""Folder evaluation and `tumorseg evaluate`: matching, reports, missing cases, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from tumorseg.cli import main  # noqa: E402
from tumorseg.conventions import CONVENTIONS  # noqa: E402
from tumorseg.metrics import (  # noqa: E402
    HD95_EMPTY_MM,
    CaseMismatchError,
    EvaluationError,
    case_metrics,
    evaluate_folder,
)
from tumorseg.metrics.evaluate import case_id_from_path, find_references  # noqa: E402

SHAPE = (24, 24, 20)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _label(conv: str = "brats2021", shift: int = 0, et: bool = True) -> np.ndarray:
    c = CONVENTIONS[conv].classes
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[4:18, 4:18, 4:16] = c["ED"]
    lab[7:15, 7:15, 6:14] = c["ET"] if et else c["NCR"]
    lab[9:13, 9:13, 8:12] = c["NCR"]
    return np.roll(lab, shift, axis=0)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three reference cases, predictions for two of them (one misses its ET)."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    _save(ref / "case_a.nii.gz", _label())
    _save(ref / "case_b.nii.gz", _label(et=False))
    _save(ref / "case_c.nii.gz", _label())
    _save(pred / "case_a.nii.gz", _label(shift=1))
    _save(pred / "case_b.nii.gz", _label(shift=2))
    _save(pred / "stray.nii.gz", _label())
    return pred, ref


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_folder_matches_the_functional_form(folders, tmp_path):
    pred, ref = folders
    out = tmp_path / "out"
    result = evaluate_folder(pred, ref, output_dir=out, num_workers=0, progress=False)
    assert [r["case_id"] for r in result.rows] == ["case_a", "case_b", "case_c"]
    assert result.missing == ["case_c"] and result.unmatched == ["stray"]

    want_a = case_metrics(_label(shift=1), _label(), spacing=(1.0, 1.0, 2.0))
    row_a = result.rows[0]
    assert row_a["status"] == "ok"
    for key, value in want_a.items():
        assert row_a[key] == pytest.approx(value), key
    # case_b: ET empty in the reference but predicted.
    assert result.rows[1]["dice_ET"] == 0.0 and result.rows[1]["hd95_ET"] == HD95_EMPTY_MM
    # case_c: missing prediction, scored Dice 0 / HD95 373.13 everywhere.
    row_c = result.rows[2]
    assert row_c["status"] == "missing"
    assert row_c["dice_WT"] == 0.0 and row_c["hd95_TC"] == HD95_EMPTY_MM

    dice_wt = [r["dice_WT"] for r in result.rows]
    stats = result.summary["dice_WT"]
    assert stats["mean"] == pytest.approx(np.mean(dice_wt))
    assert stats["std"] == pytest.approx(np.std(dice_wt, ddof=1))
    assert stats["median"] == pytest.approx(np.median(dice_wt))
    assert stats["q25"] == pytest.approx(np.percentile(dice_wt, 25))
    assert stats["n"] == 3

    per_case = _read_csv(out / "per_case.csv")
    assert [r["case_id"] for r in per_case] == ["case_a", "case_b", "case_c"]
    assert float(per_case[0]["hd95_WT"]) == pytest.approx(row_a["hd95_WT"])
    summary = _read_csv(out / "summary.csv")
    row = next(r for r in summary if r["key"] == "hd95_ET")
    assert (row["metric"], row["structure"]) == ("hd95", "ET")
    assert float(row["mean"]) == pytest.approx(result.summary["hd95_ET"]["mean"])
    info = json.loads((out / "summary.json").read_text())
    assert info["missing_predictions"] == ["case_c"]
    assert info["unmatched_predictions"] == ["stray"]
    assert info["empty_masks"]["one_empty"]["hd95"] == 373.13
    assert info["lesionwise"]["dilation_factor"] == 3
    assert "surface-distance" in info["hd95_definition"]
    assert not (out / "per_label.csv").exists()
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


def test_rows_as_a_dataframe(folders):
    pytest.importorskip("pandas")
    pred, ref = folders
    frame = evaluate_folder(pred, ref, num_workers=0, progress=False).to_dataframe()
    assert list(frame.index) == ["case_a", "case_b", "case_c"]
    assert frame.loc["case_c", "status"] == "missing"


def test_parallel_workers_give_the_same_rows(folders):
    pred, ref = folders
    serial = evaluate_folder(pred, ref, num_workers=0, progress=False, lesionwise=False)
    parallel = evaluate_folder(pred, ref, num_workers=2, progress=False, lesionwise=False)
    assert parallel.rows == serial.rows
    assert "lesion_dice_WT" not in serial.rows[0]


def test_per_label_table(folders, tmp_path):
    pred, ref = folders
    result = evaluate_folder(
        pred, ref, output_dir=tmp_path / "o", per_label=True, num_workers=0, progress=False
    )
    assert [r["class"] for r in result.per_label] == [
        "edema",
        "non-enhancing tumour",
        "enhancing tumour",
    ]
    edema = result.per_label[0]
    assert edema["label"] == 2
    assert edema["sensitivity_mean"] == pytest.approx(
        np.mean([r["sensitivity_ED"] for r in result.rows])
    )
    table = _read_csv(tmp_path / "o" / "per_label.csv")
    assert table[2]["class"] == "enhancing tumour" and table[2]["label"] == "4"


@pytest.mark.parametrize("conv", ["brats2023", "msd"])
def test_other_conventions(tmp_path, conv):
    _save(tmp_path / "ref" / "x.nii.gz", _label(conv))
    _save(tmp_path / "pred" / "x.nii.gz", _label(conv, shift=1))
    result = evaluate_folder(
        tmp_path / "pred", tmp_path / "ref", convention=conv, num_workers=0, progress=False
    )
    expected = case_metrics(_label(shift=1), _label(), spacing=(1, 1, 2))
    assert result.rows[0]["dice_ET"] == pytest.approx(expected["dice_ET"])
    assert result.rows[0]["hd95_NCR"] == pytest.approx(expected["hd95_NCR"])
    # The wrong convention is an error naming the case, not a silently wrong number.
    if conv == "brats2023":
        with pytest.raises(EvaluationError, match="'x'.*brats2021"):
            evaluate_folder(tmp_path / "pred", tmp_path / "ref", num_workers=0, progress=False)


def test_shape_mismatch_names_the_case(folders):
    pred, ref = folders
    _save(pred / "case_b.nii.gz", _label()[:, :, :-1])
    with pytest.raises(CaseMismatchError, match="case 'case_b'.*shape"):
        evaluate_folder(pred, ref, num_workers=0, progress=False)


def test_affine_mismatch_names_the_case(folders):
    pred, ref = folders
    _save(pred / "case_a.nii.gz", _label(), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(CaseMismatchError, match="case 'case_a'.*affine"):
        evaluate_folder(pred, ref, num_workers=0, progress=False)


def test_missing_folders(tmp_path, folders):
    pred, ref = folders
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate_folder(tmp_path / "nope", ref, progress=False)
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate_folder(pred, tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no reference label maps"):
        evaluate_folder(pred, tmp_path / "empty", progress=False)
    with pytest.raises(ValueError, match="num_workers"):
        evaluate_folder(pred, ref, num_workers=-1)


def test_case_ids_and_dataset_folders(tmp_path):
    assert case_id_from_path("a/BraTS-GLI-00001-000-seg.nii.gz") == "BraTS-GLI-00001-000"
    assert case_id_from_path("X_seg.nii") == "X"
    assert case_id_from_path("case.nii.gz") == "case"
    # A BraTS-layout dataset folder: <case>/<case>_seg.nii.gz.
    root = tmp_path / "brats"
    _save(root / "P1" / "P1_seg.nii.gz", _label())
    for mod in ("flair", "t1", "t1ce", "t2"):
        _save(root / "P1" / f"P1_{mod}.nii.gz", np.zeros(SHAPE, np.int16))
    refs = find_references(root)
    assert list(refs) == ["P1"] and refs["P1"].name == "P1_seg.nii.gz"


def test_manifest_reference(tmp_path):
    manifest_mod = pytest.importorskip("tumorseg.data.manifest")
    root = tmp_path / "brats"
    for cid, shift in (("P1", 0), ("P2", 1)):
        _save(root / cid / f"{cid}_seg.nii.gz", _label(shift=shift))
        for mod in ("flair", "t1", "t1ce", "t2"):
            _save(root / cid / f"{cid}_{mod}.nii.gz", np.zeros(SHAPE, np.int16))
    manifest = manifest_mod.build_manifest(root)
    path = manifest_mod.write_manifest(manifest, root / "manifest.json")
    _save(tmp_path / "pred" / "P1.nii.gz", _label(shift=1))
    result = evaluate_folder(tmp_path / "pred", path, num_workers=0, progress=False)
    assert [r["case_id"] for r in result.rows] == ["P1", "P2"]
    assert result.missing == ["P2"]
    assert result.info["convention"] == "brats2021"


# ------------------------------------------------------------------------------- CLI


def test_cli_writes_reports_and_lists_missing(folders, tmp_path, capsys):
    pred, ref = folders
    out = tmp_path / "results"
    code = main(
        [
            "evaluate",
            "--pred",
            str(pred),
            "--ref",
            str(ref),
            "-o",
            str(out),
            "--num-workers",
            "0",
            "--per-label",
            "--no-progress",
            "--allow-missing",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "case_c" in text and "missing" in text
    assert "WT" in text and "enhancing tumour" in text
    assert {p.name for p in out.iterdir()} == {
        "per_case.csv",
        "summary.csv",
        "summary.json",
        "per_label.csv",
    }


def test_cli_errors_exit_2_with_the_case_named(folders, tmp_path, capsys):
    pred, ref = folders
    _save(pred / "case_b.nii.gz", _label()[:-2])
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(tmp_path / "o")]
    assert main([*args, "--num-workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "case_b" in err and "shape" in err
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(ref), "-o", "x"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([*args, "--convention", "brats1999"]) == 2
    assert "brats1999" in capsys.readouterr().err


def test_cli_no_lesionwise_and_monai_variant(folders, tmp_path, capsys):
    pred, ref = folders
    out = tmp_path / "o"
    code = main(
        [
            "evaluate",
            "--pred",
            str(pred),
            "--ref",
            str(ref),
            "-o",
            str(out),
            "--num-workers",
            "0",
            "--no-lesionwise",
            "--hd-variant",
            "monai",
            "--no-progress",
            "--allow-missing",
        ]
    )
    assert code == 0
    header = (out / "per_case.csv").read_text().splitlines()[0].split(",")
    assert "hd95_monai_WT" in header and "hd95_WT" not in header
    assert not any(h.startswith("lesion_") for h in header)
    assert json.loads((out / "summary.json").read_text())["lesionwise"] is None
