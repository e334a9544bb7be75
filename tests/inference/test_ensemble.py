"""Ensembles: several checkpoints averaged in `tumorseg infer` (files or a cv folder), saved
probability folders averaged by `tumorseg ensemble`, the cv folder's rules applied by default."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _infer_utils import BUNDLE, TINY_FILTERS, tiny_checkpoint

from tumorseg.cli import main
from tumorseg.data.synthetic import generate_dataset
from tumorseg.inference import Predictor, load_bundle
from tumorseg.inference.ensemble import (
    EnsemblePredictor,
    ensemble_from_config,
    read_probabilities,
    resolve_checkpoints,
)
from tumorseg.inference.postprocess import RULES_FILE, PostprocessRules, RegionRule
from tumorseg.training.cv import CV_STATE, DONE_MARKER

SETTINGS = {"device": "cpu", "roi_size": [32, 32, 32]}
OVERRIDES = {"filters": TINY_FILTERS}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    generate_dataset(root / "in", num_cases=2, shape=(32, 30, 28), seed=4)
    return {
        "root": root,
        "input": root / "in",
        "a": tiny_checkpoint(root / "a" / "model.pt", seed=1),
        "b": tiny_checkpoint(root / "b" / "model.pt", seed=2),
    }


def _cases(folder: Path) -> list[list[Path]]:
    from tumorseg.data import discover_cases

    return [list(c.images) for c in discover_cases(folder)]


def test_ensemble_of_two_checkpoints_is_the_mean_of_their_probabilities(
    data: dict[str, Path],
) -> None:
    images = _cases(data["input"])[0]
    single = [
        Predictor.from_bundle(BUNDLE, checkpoint=data[k], overrides=OVERRIDES, **SETTINGS)
        for k in ("a", "b")
    ]
    pa, pb = (p.predict_case(images).probabilities for p in single)
    assert np.abs(pa - pb).max() > 1e-3  # two different models
    config = load_bundle(BUNDLE, overrides=OVERRIDES)
    ensemble = ensemble_from_config(config, [data["a"], data["b"]], **SETTINGS)
    assert isinstance(ensemble, EnsemblePredictor)
    result = ensemble.predict_case(images)
    np.testing.assert_allclose(result.probabilities, (pa + pb) / 2, atol=1e-6)
    # and the members' weights are left as they were for the next study
    np.testing.assert_allclose(ensemble.predict_case(images).probabilities, result.probabilities)


def _fake_cv(root: Path, models: list[Path], done: list[bool]) -> Path:
    """A cv folder as `tumorseg cv` leaves it (settings, fold models, done markers)."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / CV_STATE).write_text(json.dumps({"folds": list(range(len(models)))}))
    for k, (model, finished) in enumerate(zip(models, done, strict=True)):
        target = root / f"fold{k}" / "models" / "model.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(model.read_bytes())
        if finished:
            (root / f"fold{k}" / DONE_MARKER).write_text("{}")
    return root


def test_infer_cli_ensembles_files_and_cv_folders_and_ensemble_verb_agrees(
    data: dict[str, Path], tmp_path: Path
) -> None:
    base = ["infer", "--bundle", str(BUNDLE), "--input", str(data["input"]), "--device", "cpu",
            "--roi-size", "32", "32", "32", "--override", f"filters={TINY_FILTERS}",
            "--save-probabilities", "--no-progress"]  # fmt: skip
    for name, ckpts in (("a", ["a"]), ("b", ["b"]), ("ab", ["a", "b"])):
        args = [x for k in ckpts for x in ("--checkpoint", str(data[k]))]
        assert main([*base, "--output", str(tmp_path / name), *args]) == 0
    cv = _fake_cv(tmp_path / "cv", [data["a"], data["b"]], [True, True])
    assert main([*base, "--output", str(tmp_path / "cv_out"), "--checkpoint", str(cv)]) == 0
    assert main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--output",
                 str(tmp_path / "saved")]) == 0  # fmt: skip
    cases = sorted(p.name for p in (tmp_path / "a" / "probabilities").glob("*.npz"))
    assert len(cases) == 2
    for case in cases:
        pa, affine = read_probabilities(tmp_path / "a" / "probabilities" / case)
        pb, _ = read_probabilities(tmp_path / "b" / "probabilities" / case)
        for folder in ("ab", "cv_out", "saved"):
            got, got_affine = read_probabilities(tmp_path / folder / "probabilities" / case)
            np.testing.assert_allclose(got, (pa + pb) / 2, atol=2e-3)  # float16 files
            np.testing.assert_allclose(got_affine, affine)
        mask = case.replace(".npz", ".nii.gz")
        cli = nib.load(tmp_path / "ab" / mask)
        saved = nib.load(tmp_path / "saved" / mask)
        np.testing.assert_allclose(saved.affine, cli.affine, atol=1e-5)
        assert np.mean(np.asarray(saved.dataobj) == np.asarray(cli.dataobj)) > 0.99


def test_cv_folder_rules_apply_by_default(data: dict[str, Path], tmp_path: Path) -> None:
    cv = _fake_cv(tmp_path / "cv", [data["a"], data["b"]], [True, True])
    files, folder = resolve_checkpoints([cv])
    assert files == [cv / "fold0/models/model.pt", cv / "fold1/models/model.pt"]
    assert folder == cv
    # a rule that removes everything smaller than the volume: the mask must come out empty
    PostprocessRules({"WT": RegionRule(1e9)}).save(cv / RULES_FILE)
    config = load_bundle(BUNDLE, overrides=OVERRIDES)
    predictor = ensemble_from_config(config, [cv], **SETTINGS)
    assert predictor.postprocess_rules is not None
    images = _cases(data["input"])[0]
    result = predictor.predict_case(images)
    assert (result.probabilities > 0.5).any() and not result.label.any()
    predictor.postprocess_rules = None  # --no-postprocess
    assert predictor.predict_case(images).label.any()


def test_bad_checkpoints_and_folders(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt.*--checkpoint"):
        resolve_checkpoints([tmp_path / "nope.pt"])
    with pytest.raises(FileNotFoundError, match=f"without {CV_STATE}"):
        resolve_checkpoints([tmp_path])
    cv = _fake_cv(tmp_path / "cv", [data["a"], data["b"]], [False, False])
    with pytest.raises(ValueError, match="no finished fold yet"):
        resolve_checkpoints([cv])
    with pytest.raises(ValueError, match="two or more checkpoints, got 1"):
        EnsemblePredictor(
            *_components(), checkpoints=[data["a"]], network_settings="", device="cpu"
        )
    # ensemble verb: one folder, different cases, a file that is not a probability file
    (tmp_path / "p1" / "probabilities").mkdir(parents=True)
    (tmp_path / "p2" / "probabilities").mkdir(parents=True)
    rng = np.random.default_rng(0)
    probs = rng.random((3, 4, 4, 4)).astype(np.float16)
    np.savez(tmp_path / "p1/probabilities/x.npz", probabilities=probs, affine=np.eye(4),
             regions=np.array(["WT", "TC", "ET"]))  # fmt: skip
    np.savez(tmp_path / "p2/probabilities/y.npz", probabilities=probs, affine=np.eye(4),
             regions=np.array(["WT", "TC", "ET"]))  # fmt: skip
    cases = [
        ([str(tmp_path / "p1")], "two or more probability folders, got 1"),
        ([str(tmp_path / "p1"), str(tmp_path / "p2")], "hold different cases"),
        ([str(tmp_path / "p1"), str(tmp_path / "none")], "does not exist"),
    ]
    for folders, message in cases:
        code = main(["ensemble", *folders, "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    (tmp_path / "p2/probabilities/y.npz").unlink()
    (tmp_path / "p2/probabilities/x.npz").write_bytes(b"not a zip")
    code = main(["ensemble", str(tmp_path / "p1"), str(tmp_path / "p2"), "--output",
                 str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "x.npz: not a probability file" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.nii.gz"))


def _components() -> tuple:
    config = load_bundle(BUNDLE, overrides=OVERRIDES)
    return (
        config.get_parsed_content("network_def"),
        config.get_parsed_content("preprocessing"),
        config.get_parsed_content("inferer"),
    )
