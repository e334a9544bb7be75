"""Post-processing rules as data: what a rule removes and keeps, the ET->NCR rule, the rule
file's checks, and the search on out-of-fold predictions with planted false positives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tumorseg.cli import main
from tumorseg.conventions import get_convention
from tumorseg.inference.postprocess import (
    RULES_FILE,
    PostprocessRules,
    RegionRule,
    apply_rules,
    brats_region_dice,
    label_map,
    load_rules,
    rules_next_to,
    search_rules,
)
from tumorseg.transforms import labels_to_regions, regions_to_labels

SHAPE = (40, 40, 40)
B21 = get_convention("brats2021")


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius


def _tumour_label(with_et: bool = True) -> np.ndarray:
    """A brats2021 tumour: edema ball, necrotic core, enhancing rim inside it."""
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((20, 20, 20), 9)] = 2
    label[_ball((20, 20, 20), 6)] = 1
    if with_et:
        label[_ball((20, 20, 20), 6) & ~_ball((20, 20, 20), 4)] = 4
    return label


def _with_false_positive(label: np.ndarray, value: int = 4) -> np.ndarray:
    """``label`` plus a 2x2x2 false-positive blob of ``value`` far from the tumour."""
    pred = label.copy()
    pred[2:4, 2:4, 2:4] = value
    return pred


def _regions(label: np.ndarray) -> np.ndarray:
    return np.asarray(labels_to_regions(label, B21), dtype=bool)


def test_rule_removes_planted_false_positive_and_keeps_tumour() -> None:
    reference = _tumour_label()
    pred = _regions(_with_false_positive(reference))
    rules = PostprocessRules({"WT": RegionRule(20.0), "ET": RegionRule(20.0)})
    cleaned = apply_rules(pred, rules, voxel_mm3=1.0)
    assert not cleaned[:, 2:4, 2:4, 2:4].any()  # the 8-voxel blob is gone from every region
    np.testing.assert_array_equal(cleaned, _regions(reference))  # the tumour is untouched
    label = label_map(pred.astype(np.float32), B21, 0.5, rules, np.eye(4))
    np.testing.assert_array_equal(label, reference)
    # without rules the blob stays in the label map
    assert label_map(pred.astype(np.float32), B21, 0.5, None, np.eye(4))[2, 2, 2] == 4


def test_volume_threshold_uses_the_voxel_volume() -> None:
    pred = _regions(_with_false_positive(_tumour_label()))
    rules = PostprocessRules({"WT": RegionRule(20.0)})
    # 8 voxels of 1 mm3 < 20 mm3: removed; 8 voxels of 8 mm3 (2 mm spacing) = 64 mm3: kept
    assert not apply_rules(pred, rules, voxel_mm3=1.0)[0, 2, 2, 2]
    assert apply_rules(pred, rules, voxel_mm3=8.0)[0, 2, 2, 2]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    assert label_map(pred.astype(np.float32), B21, 0.5, rules, affine)[2, 2, 2] == 4


def test_keep_largest_keeps_one_component() -> None:
    label = _tumour_label()
    label[_ball((33, 33, 33), 3)] = 2  # a second, smaller lesion of 123 voxels
    rules = PostprocessRules({"WT": RegionRule(keep_largest=True)})
    cleaned = apply_rules(_regions(label), rules, voxel_mm3=1.0)
    np.testing.assert_array_equal(cleaned, _regions(_tumour_label()))


def test_small_et_becomes_necrosis() -> None:
    label = _tumour_label(with_et=False)
    label[20:22, 20:22, 20:22] = 4  # 8 mm3 of ET inside the core
    rules = PostprocessRules(et_to_ncr_below_mm3=50.0)
    out = label_map(_regions(label).astype(np.float32), B21, 0.5, rules, np.eye(4))
    assert not (out == 4).any()
    assert (out[20:22, 20:22, 20:22] == 1).all()  # NCR now
    np.testing.assert_array_equal(out > 0, label > 0)  # the tumour keeps its extent
    # an ET above the volume stays ET
    big = PostprocessRules(et_to_ncr_below_mm3=5.0)
    out = label_map(_regions(label).astype(np.float32), B21, 0.5, big, np.eye(4))
    np.testing.assert_array_equal(out, label)


def test_identity_rules_change_nothing_even_for_non_nested_predictions() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((3, *SHAPE)).astype(np.float32)  # ET outside TC, TC outside WT...
    expected = np.asarray(regions_to_labels(probs, B21, threshold=0.5))
    ident = PostprocessRules({r: RegionRule() for r in ("WT", "TC", "ET")})
    assert ident.is_identity
    np.testing.assert_array_equal(label_map(probs, B21, 0.5, ident, np.eye(4)), expected)
    both = apply_rules(probs > 0.5, PostprocessRules(et_to_ncr_below_mm3=1.0), voxel_mm3=1.0)
    np.testing.assert_array_equal(np.asarray(regions_to_labels(both, B21)), expected)


def test_removed_outer_component_takes_its_core_with_it() -> None:
    label = _with_false_positive(_tumour_label(), value=4)  # blob is ET, so also TC and WT
    cleaned = apply_rules(_regions(label), PostprocessRules({"WT": RegionRule(20.0)}), voxel_mm3=1)
    assert not cleaned[:, 2, 2, 2].any()


def _oof_set(n: int = 8) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Out-of-fold cases: perfect tumours with a small ET false positive planted in each;
    half the cases have no ET at all (so the planted ET costs a full Dice point there)."""
    cases = []
    for i in range(n):
        reference = _tumour_label(with_et=i % 2 == 0)
        pred = _with_false_positive(reference, value=4)
        cases.append((_regions(pred), _regions(reference), 1.0))
    return cases


def test_search_picks_a_rule_that_raises_out_of_fold_dice() -> None:
    cases = _oof_set()
    rules = search_rules(cases)
    assert not rules.is_identity
    assert rules.oof["dice_with"] > rules.oof["dice_without"] + 0.1
    assert rules.oof["dice_ET_with"] == pytest.approx(1.0)
    assert rules.oof["cases"] == len(cases)
    # the chosen rules really score what the search says
    scores = [brats_region_dice(apply_rules(p, rules, voxel_mm3=v), r) for p, r, v in cases]
    assert float(np.mean(scores)) == pytest.approx(rules.oof["dice_with"])


def test_search_keeps_nothing_when_nothing_helps() -> None:
    cases = [(_regions(_tumour_label()), _regions(_tumour_label()), 1.0)] * 2
    rules = search_rules(cases)
    assert rules.is_identity
    assert rules.oof["dice_with"] == rules.oof["dice_without"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        search_rules([])


def test_rule_file_round_trip_and_default_location(tmp_path: Path) -> None:
    rules = PostprocessRules({"ET": RegionRule(50.0, True)}, 100.0, {"cases": 3})
    path = rules.save(tmp_path / "models" / RULES_FILE)
    assert load_rules(path) == rules
    assert json.loads(path.read_text())["format"] == "tumorseg-postprocess/1"
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.write_bytes(b"")
    assert rules_next_to(ckpt) == rules  # beside a checkpoint
    assert rules_next_to(tmp_path / "models") == rules  # in a (cv) folder
    assert rules_next_to(tmp_path / "model.pt") is None
    assert rules_next_to(None) is None
    assert "ET: drop components < 50 mm³" in rules.describe()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"format": "other"}, "not a post-processing rule file"),
        ([], "not a post-processing rule file"),
        ({"format": "tumorseg-postprocess/1", "regions": {"XX": {}}}, "unknown region"),
        (
            {"format": "tumorseg-postprocess/1", "regions": {"ET": {"min_volume": 1}}},
            "unknown key",
        ),
        (
            {"format": "tumorseg-postprocess/1", "regions": {"ET": {"min_component_mm3": -1}}},
            "must be >= 0, got -1",
        ),
        (
            {"format": "tumorseg-postprocess/1", "regions": {"WT": {"keep_largest": "yes"}}},
            "keep_largest must be true or false, got 'yes'",
        ),
        ({"format": "tumorseg-postprocess/1", "et_to_ncr_below_mm3": "10"}, "must be a number"),
        ({"format": "tumorseg-postprocess/1", "regions": []}, "'regions' must be an object"),
    ],
)
def test_bad_rule_files_are_named_with_the_value(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        load_rules(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_rule_file_reaches_the_cli_user_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.json").write_text("{not json")
    (tmp_path / "a").mkdir()
    code = main(
        [
            "ensemble",
            str(tmp_path / "a"),
            str(tmp_path / "a"),
            "--output",
            str(tmp_path / "o"),
            "--postprocess",
            str(tmp_path / "rules.json"),
        ]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "is not valid JSON" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bad_masks_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected \(3, X, Y, Z\)"):
        apply_rules(np.zeros((2, 4, 4, 4), bool), PostprocessRules(), voxel_mm3=1.0)
    with pytest.raises(ValueError, match="voxel_mm3 must be > 0, got 0"):
        apply_rules(np.zeros((3, 4, 4, 4), bool), PostprocessRules(), voxel_mm3=0.0)


def test_search_cli_on_a_cv_folder_writes_rules_beside_the_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nibabel as nib

    from tumorseg.data.manifest import build_manifest, write_manifest
    from tumorseg.data.synthetic import generate_dataset
    from tumorseg.inference.writer import write_probabilities_atomic

    data = tmp_path / "data"
    generate_dataset(data, num_cases=4, shape=(24, 24, 24), seed=3, layout="brats2021")
    manifest = write_manifest(build_manifest(data, num_folds=2, name="pp"), data / "m.json")
    cv = tmp_path / "cv"
    state = {"folds": [0, 1], "datalist": str(manifest), "dataset_dir": str(data)}
    cv.mkdir()
    (cv / "cv.json").write_text(json.dumps(state))
    for item in json.loads(manifest.read_text())["training"]:
        reference: nib.Nifti1Image = nib.load(data / item["label"])  # type: ignore[assignment]
        label = _with_false_positive(np.asarray(reference.dataobj), value=4)
        probs = np.asarray(labels_to_regions(label, B21), dtype=np.float32)
        path = cv / "oof" / "probabilities" / f"{item['case_id']}.npz"
        write_probabilities_atomic(path, probs, affine=reference.affine, regions=("WT", "TC", "ET"))
    for fold in (0, 1):
        (cv / f"fold{fold}" / "models").mkdir(parents=True)
        (cv / f"fold{fold}" / "done.json").write_text("{}")
    assert main(["postprocess", "--search", "--cv", str(cv)]) == 0
    out = capsys.readouterr().out
    rules = load_rules(cv / RULES_FILE)
    assert not rules.is_identity and rules.oof["dice_with"] > rules.oof["dice_without"]
    assert f"{rules.oof['dice_with']:.4f}" in out and "without rules" in out
    assert load_rules(cv / "fold1" / "models" / RULES_FILE) == rules
    # a fold's missing out-of-fold file is named, in one line
    next((cv / "oof" / "probabilities").glob("*.npz")).unlink()
    assert main(["postprocess", "--search", "--cv", str(cv)]) == 2
    err = capsys.readouterr().err
    assert "is missing: fold" in err and err.count("\n") == 1
