"""`evaluate_challenge` against direct calls of the official brats-evaluation package.

The direct calls are the package's documented Python use (``Panoptica_Evaluator`` from its
bundled config, ``evaluate_single_exam`` on file paths, ``parse_seg_results`` on the JSON its
command line writes), on files the tests convert themselves with a plain look-up table. The
normal suite runs on the sample cases cut to a box around their largest lesion and on the real
case cropped to its tumour (panoptica takes tens of seconds per full volume on a loaded 2-core
machine); the full-volume parity is ``slow``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _real_case import ALGORITHMS, REAL_CASE

from tumorseg.conventions import CHALLENGE_CONVENTIONS, convert_labels, get_convention
from tumorseg.metrics.challenge import (
    CHALLENGES,
    ChallengePackageMissing,
    EvaluationError,
    evaluate_challenge,
    load_challenge_package,
    pair_challenge_cases,
)
from tumorseg.metrics.pairing import CaseMismatchError

nib = pytest.importorskip("nibabel")
pd = pytest.importorskip("pandas")

SAMPLES = ("00132-000", "00630-001")  # 00630-001 has 0.86x0.86x1.5 mm voxels: spacing must reach
SAMPLE_PRED = {
    "00132-000": "00132-000.nii.gz",
    "00217-000": "SEG-00217-000.nii.gz",
    "00630-001": "BraTS-MET-00630-001.nii.gz",
    "01325-000": "BraTS-MET_01325-000.nii.gz",
}
# brats2021 -> brats2024 written out by hand: 1 -> 1, 2 -> 2, 4 -> 3.
LUT_2021_TO_2024 = np.array([0, 1, 2, 0, 3], dtype=np.uint8)


def _load(path: Path) -> tuple[np.ndarray, object]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def _save(data: np.ndarray, like: object, path: Path) -> Path:
    header = like.header.copy()  # type: ignore[attr-defined]
    header.set_data_dtype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), like.affine, header), str(path))  # type: ignore[attr-defined]
    return path


def _crop_pair(pred: np.ndarray, ref: np.ndarray, pad: int = 3) -> tuple[slice, ...]:
    union = (pred != 0) | (ref != 0)
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + pad, union.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _lesion_box(ref: np.ndarray, half: int = 20) -> tuple[slice, ...]:
    """A box of ``2 * half`` voxels a side around the largest reference lesion."""
    from scipy import ndimage

    labels, n = ndimage.label(ref != 0)
    sizes = ndimage.sum(ref != 0, labels, index=range(1, n + 1))
    centre = ndimage.center_of_mass(labels == int(np.argmax(sizes)) + 1)
    return tuple(
        slice(max(int(c) - half, 0), min(int(c) + half, dim))
        for c, dim in zip(centre, ref.shape, strict=True)
    )


def direct_table(pairs: list[tuple[Path, Path, str]], config: str, tmp: Path) -> pd.DataFrame:
    """The package called directly: evaluator, evaluate_single_exam, its JSON, its parser."""
    brats_evaluation, panoptica = load_challenge_package()
    evaluator = panoptica.Panoptica_Evaluator.load_from_config(
        str(brats_evaluation.config_path(config))
    )
    results = {"metrics": [], "missings": []}
    for pred, ref, subject in pairs:
        results["metrics"].append(
            brats_evaluation.evaluate_single_exam(str(pred), str(ref), subject, evaluator)
        )
    json_path = tmp / "direct.json"
    json_path.write_text(json.dumps(results, indent=4))
    csv_path = tmp / "direct.csv"
    brats_evaluation.parse_seg_results(str(json_path), str(csv_path))
    return pd.read_csv(csv_path, dtype={"subject_id": str})


def assert_same_table(ours: pd.DataFrame, direct: pd.DataFrame) -> None:
    """Same columns in the same order, same number of rows, every value to 1e-6."""
    assert list(ours.columns) == list(direct.columns)
    assert len(ours) == len(direct)
    assert list(ours["subject_id"].iloc[-3:]) == ["mean", "std", "median"]
    for column in direct.columns[1:]:
        a = ours[column].to_numpy(dtype=np.float64)
        b = direct[column].to_numpy(dtype=np.float64)
        assert np.allclose(a, b, rtol=0.0, atol=1e-6, equal_nan=True), (column, a, b)


def _ours(out: Path) -> pd.DataFrame:
    per_case = pd.read_csv(out / "per_case.csv", dtype={"subject_id": str})
    summary = pd.read_csv(out / "summary.csv", dtype={"subject_id": str})
    return pd.concat([per_case, summary], ignore_index=True)


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> Path:
    folder = shared_data / "brats_evaluation_samples"
    if not (folder / "ref").is_dir():
        pytest.skip(f"brats-evaluation samples not in {shared_data}")
    return folder


@pytest.fixture(scope="module")
def cropped_samples(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two METS sample cases cut to a box around their largest lesion, under their names."""
    out = tmp_path_factory.mktemp("mets")
    for number in SAMPLES:
        pred, pred_img = _load(samples / "pred" / SAMPLE_PRED[number])
        ref, ref_img = _load(samples / "ref" / f"BraTS-MET-{number}-seg.nii.gz")
        box = _lesion_box(ref)
        _save(pred[box], pred_img, out / "pred" / SAMPLE_PRED[number])
        _save(ref[box], ref_img, out / "ref" / f"BraTS-MET-{number}-seg.nii.gz")
    return out


def test_mets_parity_on_cropped_samples(cropped_samples: Path, tmp_path: Path) -> None:
    result = evaluate_challenge(
        cropped_samples / "pred",
        cropped_samples / "ref",
        challenge="mets",
        output_dir=tmp_path / "out",
        num_workers=0,
        progress=False,
    )
    pairs = [
        (
            cropped_samples / "pred" / SAMPLE_PRED[n],
            cropped_samples / "ref" / f"BraTS-MET-{n}-seg.nii.gz",
            f"BraTS-MET-{n}",
        )
        for n in SAMPLES
    ]
    direct = direct_table(pairs, "mets", tmp_path)
    ours = _ours(tmp_path / "out")
    assert_same_table(ours, direct)
    assert list(ours["subject_id"][:2]) == [f"BraTS-MET-{n}" for n in SAMPLES]
    # The lesion-wise distances depend on the anisotropic voxel size reaching panoptica.
    assert result.groups == ["et", "rc", "tc", "wt"]
    for name in ("per_case.csv", "summary.csv", "summary.json", "challenge_results.json"):
        assert (tmp_path / "out" / name).is_file()
    info = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert info["challenge"] == "mets" and info["label_numbering"] == "brats2024"
    assert info["brats_evaluation_version"] and info["panoptica_version"]


@pytest.mark.slow
def test_mets_parity_on_the_four_full_samples(samples: Path, tmp_path: Path) -> None:
    evaluate_challenge(
        samples / "pred",
        samples / "ref",
        challenge="mets",
        output_dir=tmp_path / "out",
        progress=False,
    )
    refs = sorted((samples / "ref").iterdir())
    pairs = []
    for ref in refs:
        number = re.search(r"(\d{5}-\d{3})", ref.name).group(1)  # type: ignore[union-attr]
        pairs.append((samples / "pred" / SAMPLE_PRED[number], ref, f"BraTS-MET-{number}"))
    assert_same_table(_ours(tmp_path / "out"), direct_table(pairs, "mets", tmp_path))


def _tcga_folders(
    shared_data: Path, tmp: Path, algorithms: tuple[str, ...], *, crop: bool
) -> list[tuple[str, Path, Path]]:
    """Per algorithm: a prediction folder (2021 labels) and the hand-converted 2024 pair."""
    ref_path = shared_data / "brats2020_layout" / REAL_CASE / f"{REAL_CASE}_seg.nii.gz"
    seg_dir = shared_data / "reference_segmentations" / REAL_CASE
    if not ref_path.is_file() or not seg_dir.is_dir():
        pytest.skip(f"{REAL_CASE} not in {shared_data}")
    ref, ref_img = _load(ref_path)
    out = []
    for algo in algorithms:
        pred, pred_img = _load(seg_dir / f"{algo}.nii.gz")
        box = _crop_pair(pred, ref) if crop else (slice(None),) * 3
        folder = tmp / algo
        _save(pred[box], pred_img, folder / "pred" / f"{REAL_CASE}.nii.gz")
        _save(ref[box], ref_img, folder / "ref" / REAL_CASE / f"{REAL_CASE}_seg.nii.gz")
        pred24 = _save(LUT_2021_TO_2024[pred[box]], pred_img, folder / "conv" / "pred.nii.gz")
        ref24 = _save(LUT_2021_TO_2024[ref[box]], ref_img, folder / "conv" / "ref.nii.gz")
        out.append((algo, pred24, ref24))
    return out


def test_gli_parity_on_a_real_case_with_enhancing_voxels(shared_data: Path, tmp_path: Path) -> None:
    """hnfnetv1-20 predicts 352 enhancing (2021 label 4) voxels where the reference has none:
    read from a brats2021 dataset folder they are converted to ET (3), never scored as RC."""
    ((algo, pred24, ref24),) = _tcga_folders(shared_data, tmp_path, ("hnfnetv1-20",), crop=True)
    folder = tmp_path / algo
    evaluate_challenge(
        folder / "pred",
        folder / "ref",  # a BraTS 2018-2021 dataset folder: its convention is brats2021
        challenge="gli",
        output_dir=folder / "out",
        num_workers=0,
        progress=False,
    )
    ours = _ours(folder / "out")
    assert_same_table(ours, direct_table([(pred24, ref24, REAL_CASE)], "gli", tmp_path))
    row = ours.iloc[0]
    assert row["all_instance_fp_et"] >= 1  # the enhancing voxels are ET false positives
    assert row["all_instance_fp_rc"] == 0 and row["all_instance_tp_rc"] == 0
    assert math_isnan(row["global_dsc_rc"])  # no RC anywhere: the package's NaN


def math_isnan(value: float) -> bool:
    return bool(np.isnan(float(value)))


@pytest.mark.slow
def test_gli_parity_for_the_five_algorithms_full_volume(shared_data: Path, tmp_path: Path) -> None:
    for algo, pred24, ref24 in _tcga_folders(shared_data, tmp_path, ALGORITHMS, crop=False):
        folder = tmp_path / algo
        evaluate_challenge(
            folder / "pred",
            folder / "ref",
            challenge="gli",
            output_dir=folder / "out",
            progress=False,
        )
        direct = direct_table([(pred24, ref24, REAL_CASE)], "gli", tmp_path)
        assert_same_table(_ours(folder / "out"), direct)


def test_2021_mask_of_unknown_convention_is_refused_not_scored_as_rc(
    shared_data: Path, tmp_path: Path
) -> None:
    ((algo, _, _),) = _tcga_folders(shared_data, tmp_path, ("hnfnetv1-20",), crop=True)
    folder = tmp_path / algo
    plain_ref = folder / "plain_ref"
    plain_ref.mkdir()
    (plain_ref / f"{REAL_CASE}.nii.gz").write_bytes(
        (folder / "ref" / REAL_CASE / f"{REAL_CASE}_seg.nii.gz").read_bytes()
    )
    with pytest.raises(EvaluationError, match=r"holds label 4.*--convention brats2021"):
        evaluate_challenge(
            folder / "pred",
            plain_ref,
            challenge="gli",
            output_dir=folder / "refused",
            num_workers=0,
            progress=False,
        )
    assert not (folder / "refused").exists()  # nothing half-written
    # Declared, the same files are converted: label 4 becomes ET.
    result = evaluate_challenge(
        folder / "pred",
        plain_ref,
        challenge="gli",
        convention="brats2021",
        num_workers=0,
        progress=False,
    )
    row = result.per_case.iloc[0]
    assert row["all_instance_fp_et"] >= 1 and row["all_instance_fp_rc"] == 0
    assert result.info["prediction_convention"] == "brats2021"


def test_label_4_declared_as_brats2024_is_the_resection_cavity(tmp_path: Path) -> None:
    ref = np.zeros((24, 24, 24), np.uint8)
    ref[4:10, 4:10, 4:10] = 4
    ref[14:20, 14:20, 14:20] = 3
    for folder in ("pred", "ref"):
        _save(ref, nib.Nifti1Image(ref, np.eye(4)), tmp_path / folder / "case1.nii.gz")
    result = evaluate_challenge(
        tmp_path / "pred",
        tmp_path / "ref",
        challenge="gli",
        convention="brats2024",
        num_workers=0,
        progress=False,
    )
    row = result.per_case.iloc[0]
    assert row["all_instance_tp_rc"] == 1 and row["global_dsc_rc"] == 1.0
    assert row["all_instance_tp_et"] == 1 and row["global_dsc_et"] == 1.0


def _write_pair(tmp: Path, pred: np.ndarray, ref: np.ndarray, affine=None) -> tuple[Path, Path]:
    affine = np.eye(4) if affine is None else affine
    for folder, data in (("pred", pred), ("ref", ref)):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(tmp / folder / "c1.nii.gz"))
    return tmp / "pred", tmp / "ref"


def _blob() -> np.ndarray:
    arr = np.zeros((16, 16, 16), np.uint8)
    arr[4:12, 4:12, 4:12] = 2
    arr[6:10, 6:10, 6:10] = 1
    return arr


def test_illegal_values_name_the_file(tmp_path: Path) -> None:
    bad = _blob()
    bad[0, 0, 0] = 7
    pred, ref = _write_pair(tmp_path, bad, _blob())
    with pytest.raises(EvaluationError, match=r"prediction c1\.nii\.gz.*\[7\].*brats2024"):
        evaluate_challenge(pred, ref, challenge="gli", num_workers=0, progress=False)


def test_grid_mismatch_is_found_before_scoring(tmp_path: Path) -> None:
    pred, ref = _write_pair(tmp_path, _blob(), _blob())
    nib.save(nib.Nifti1Image(_blob(), np.diag([2.0, 1, 1, 1])), str(pred / "c1.nii.gz"))
    with pytest.raises(CaseMismatchError, match="different affines"):
        evaluate_challenge(pred, ref, challenge="gli", num_workers=0, progress=False)


def test_no_matching_prediction_is_an_error(tmp_path: Path) -> None:
    pred, ref = _write_pair(tmp_path, _blob(), _blob())
    (pred / "c1.nii.gz").rename(pred / "other.nii.gz")
    with pytest.raises(EvaluationError, match="no prediction"):
        evaluate_challenge(pred, ref, challenge="gli", num_workers=0, progress=False)


def test_missing_prediction_gets_the_package_penalty(tmp_path: Path) -> None:
    pred, ref = _write_pair(tmp_path, _blob(), _blob())
    nib.save(nib.Nifti1Image(_blob(), np.eye(4)), str(ref / "c2.nii.gz"))
    result = evaluate_challenge(pred, ref, challenge="gli", num_workers=0, progress=False)
    assert result.missing == ["c2"]
    rows = result.per_case.set_index("subject_id")
    assert rows.loc["c2", "global_hd95_wt"] == 373 and rows.loc["c2", "global_dsc_wt"] == 0
    assert rows.loc["c1", "global_dsc_wt"] == 1.0


def test_class_that_cannot_be_converted_is_an_error(tmp_path: Path) -> None:
    pred, ref = _write_pair(tmp_path, _blob(), _blob())
    with pytest.raises(EvaluationError, match="class NCR.*brats2024menrt"):
        evaluate_challenge(
            pred, ref, challenge="MenRT", convention="brats2021", num_workers=0, progress=False
        )


def test_missing_package_says_which_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib

    real = importlib.import_module

    def no_brats(name: str, *args, **kwargs):
        if name == "brats_evaluation":
            raise ModuleNotFoundError("No module named 'brats_evaluation'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_brats)
    pred, ref = _write_pair(tmp_path, _blob(), _blob())
    with pytest.raises(ChallengePackageMissing, match=r"pip install 'tumorseg\[brats\]'"):
        evaluate_challenge(pred, ref, challenge="gli", num_workers=0, progress=False)


def test_pairing_follows_the_package_cli_rule() -> None:
    refs = {"BraTS-MET-00132-000": Path("BraTS-MET-00132-000-seg.nii.gz")}
    preds = {"00132-000": Path("00132-000.nii.gz"), "x": Path("x.nii.gz")}
    assert pair_challenge_cases(preds, refs) == {"BraTS-MET-00132-000": Path("00132-000.nii.gz")}
    two = {**preds, "SEG-00132-000": Path("SEG-00132-000.nii.gz")}
    with pytest.raises(EvaluationError, match="several predictions"):
        pair_challenge_cases(two, refs)


def _config_groups(config: str) -> dict[str, list[int]]:
    brats_evaluation, _ = load_challenge_package()
    text = Path(brats_evaluation.config_path(config)).read_text()
    found = re.findall(
        r"\n\s+(\w+): !Label\w+\n\s+single_instance: \w+\n\s+value_labels: \[([^]]*)\]", text
    )
    return {name: sorted(int(v) for v in values.split(",")) for name, values in found}


_GROUP_CLASSES = {
    "netc": ("NCR",),
    "snfh": ("ED",),
    "ed": ("ED",),
    "rc": ("RC",),
    "cc": ("CC",),
    "gtv": ("GTV",),
}


@pytest.mark.parametrize("config", CHALLENGES)
def test_conventions_table_matches_the_package_configs(config: str) -> None:
    conv = get_convention(CHALLENGE_CONVENTIONS[config])
    groups = _config_groups(config)
    assert groups, config
    for name, values in groups.items():
        if name in ("wt", "tc", "et"):
            expected = sorted(conv.region_values(name.upper()))
        else:
            expected = sorted(conv.classes[c] for c in _GROUP_CLASSES[name])
        assert values == expected, (config, name)


def test_convert_labels_rules() -> None:
    m2021 = np.array([0, 1, 2, 4])
    assert convert_labels(m2021, "brats2021", "brats2024").tolist() == [0, 1, 2, 3]
    m2024 = np.array([0, 1, 2, 3, 4])
    # The resection cavity is in no region: it becomes background in older conventions.
    assert convert_labels(m2024, "brats2024", "brats2021").tolist() == [0, 1, 2, 4, 0]
    assert convert_labels(m2024, "brats2024", "msd").tolist() == [0, 2, 1, 3, 0]
    assert convert_labels(m2024, "brats2024", "brats2024ped").tolist() == [0, 2, 4, 1, 0]
    ped = np.array([0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="class CC"):
        convert_labels(ped, "brats2024ped", "brats2023")
    assert convert_labels(ped[[0, 1, 2, 4]], "brats2024ped", "brats2023").tolist() == [0, 3, 1, 2]
    with pytest.raises(ValueError, match=r"\[3\].*brats2021"):
        convert_labels(np.array([0, 3]), "brats2021", "brats2024")
    assert get_convention("brats2025").name == "brats2024"


@pytest.mark.parametrize(("et_value", "expected"), [(3, "brats2023"), (4, "brats2024")])
def test_manifest_recognises_brats2024_by_the_resection_cavity(
    tmp_path: Path, et_value: int, expected: str
) -> None:
    from tumorseg.data.manifest import build_manifest
    from tumorseg.data.synthetic.files import write_case

    images = np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype(np.float32)
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:6, 2:6, 2:6] = 2
    label[3:5, 3:5, 3:5] = et_value
    write_case(tmp_path, "BraTS-GLI-00001-000", images, label, affine=np.eye(4), layout="brats2023")
    write_case(
        tmp_path, "BraTS-GLI-00002-000", images, label * 0, affine=np.eye(4), layout="brats2023"
    )
    manifest = build_manifest(tmp_path, num_folds=2)
    assert manifest["layout"] == "brats2023"
    assert manifest["label_convention"] == expected
    # Told, it is not second-guessed: a 4 is then illegal in brats2023.
    if et_value == 4:
        from tumorseg.data.discovery import DatasetError

        with pytest.raises(DatasetError, match=r"\{4\}.*brats2023"):
            build_manifest(tmp_path, num_folds=2, label_convention="brats2023")


def test_2023_layout_references_read_as_2024_but_a_predicted_4_must_be_declared(
    tmp_path: Path,
) -> None:
    case = "BraTS-GLI-00001-000"
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:8, 2:8, 2:8] = 4  # resection cavity
    label[10:18, 10:18, 10:18] = 2
    label[12:16, 12:16, 12:16] = 3
    _save(label, nib.Nifti1Image(label, np.eye(4)), tmp_path / "ref" / case / f"{case}-seg.nii.gz")
    _save(label, nib.Nifti1Image(label, np.eye(4)), tmp_path / "pred" / f"{case}.nii.gz")
    with pytest.raises(EvaluationError, match=r"prediction .* holds label 4"):
        evaluate_challenge(
            tmp_path / "pred", tmp_path / "ref", challenge="gli", num_workers=0, progress=False
        )
    result = evaluate_challenge(
        tmp_path / "pred",
        tmp_path / "ref",
        challenge="gli",
        pred_convention="brats2024",
        num_workers=0,
        progress=False,
    )
    assert result.info["reference_convention"] == "brats2024"
    row = result.per_case.iloc[0]
    assert row["all_instance_tp_rc"] == 1 and row["global_dsc_rc"] == 1.0
