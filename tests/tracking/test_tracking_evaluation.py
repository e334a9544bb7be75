"""`tumorseg evaluate --fold K --log-mlflow`: one fold's cases scored and recorded as an MLflow
run named as the bundles' validation, so that `tumorseg compare` puts label maps in nnU-Net's
numbering beside tumorseg's on the same folds; and the refusals, each before anything is
scored or logged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from tumorseg.cli import main
from tumorseg.data.manifest import build_manifest, write_manifest
from tumorseg.data.nnunet_export import NNUNET_CONVENTION, export_nnunet, to_nnunet_labels
from tumorseg.data.synthetic import generate_dataset
from tumorseg.tracking import compare_runs
from tumorseg.tracking.evaluation import log_evaluation_run, validation_metrics

QUIET = ["--no-lesionwise", "--no-progress", "--num-workers", "1"]


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 synthetic cases in 2 folds, exported for nnU-Net, and one flawed segmentation of each
    in both numberings (the dataset's brats2021 and nnU-Net's)."""
    root = tmp_path_factory.mktemp("eval_folds")
    data = root / "data"
    generate_dataset(data, num_cases=4, shape=(24, 24, 24), seed=5, layout="brats2021")
    manifest = write_manifest(
        build_manifest(data, num_folds=2, seed=0, name="evalfolds"), root / "m.json"
    )
    raw = export_nnunet(manifest, root / "raw", 9, dataset_dir=data)
    ours, theirs = root / "pred_tumorseg", root / "pred_nnunet"
    ours.mkdir()
    theirs.mkdir()
    rng = np.random.default_rng(3)
    for item in json.loads(manifest.read_text())["training"]:
        ref = nib.load(data / item["label"])
        pred = np.asarray(ref.dataobj).copy()
        flip = rng.random(pred.shape) < 0.15
        pred[flip & (pred > 0)] = 0
        pred[1:3, 1:3, 1:3] = 4
        for folder, values in ((ours, pred), (theirs, to_nnunet_labels(pred, "brats2021"))):
            img = nib.Nifti1Image(values.astype(np.uint8), ref.affine, ref.header)
            nib.save(img, folder / f"{item['case_id']}.nii.gz")
    return {"root": root, "data": data, "manifest": manifest, "labels": raw / "labelsTr",
            "ours": ours, "theirs": theirs}  # fmt: skip


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _fold_cases(manifest: Path, fold: int) -> list[str]:
    return sorted(
        t["case_id"] for t in json.loads(manifest.read_text())["training"] if t["fold"] == fold
    )


def test_nnunet_fold_lines_up_with_tumorseg_in_compare(
    folds: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = ["--log-mlflow", "--experiment", "bench", "--tracking-uri", uri]
    # nnU-Net's label maps against its exported references, fold 0 of the manifest
    code = main(["evaluate", "--pred", str(folds["theirs"]), "--ref", str(folds["labels"]),
                 "--convention", NNUNET_CONVENTION, "--fold", "0", "--datalist",
                 str(folds["manifest"]), "-o", str(tmp_path / "e_nnunet"), *QUIET, *log,
                 "--run-name", "nnunet-fold0", "--tag", "source=nnunet",
                 "--param", "network=nnunet-3d_fullres"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fold 0 of" in out and "its 2 validation case(s)" in out
    assert "without a reference" not in out  # fold 1's predictions are not "unmatched"
    # tumorseg's label maps against the manifest, the same fold
    code = main(["evaluate", "--pred", str(folds["ours"]), "--ref", str(folds["manifest"]),
                 "--fold", "0", "-o", str(tmp_path / "e_ours"), *QUIET, *log,
                 "--run-name", "tumorseg-fold0", "--param", "network=dynunet"])  # fmt: skip
    assert code == 0

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["nnunet-fold0", "tumorseg-fold0"]
    nnunet = runs["nnunet-fold0"]
    assert nnunet.info.status == "FINISHED"
    assert nnunet.data.tags["tumorseg.kind"] == "evaluation"
    assert nnunet.data.tags["source"] == "nnunet"
    params = nnunet.data.params
    assert params["fold"] == "0" and params["eval_cases"] == "2"
    assert params["datalist"] == str(folds["manifest"].resolve())
    assert params["label_convention"] == "msd" and params["network"] == "nnunet-3d_fullres"
    assert len(params["datalist_sha256"]) == 64 and params["torch_version"]
    # the metrics are the bundles' validation names, computed here from the files themselves
    cases = _fold_cases(folds["manifest"], 0)
    expected = []
    for case in cases:
        pred = np.asarray(nib.load(folds["theirs"] / f"{case}.nii.gz").dataobj)
        ref = np.asarray(nib.load(folds["labels"] / f"{case}.nii.gz").dataobj)
        expected.append(_dice(pred > 0, ref > 0))
    metrics = nnunet.data.metrics
    assert metrics["val_dice_wt"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert metrics["val_dice_wt"] < 1.0
    assert metrics["val_mean_dice"] == pytest.approx(
        np.mean([metrics[f"val_dice_{r}"] for r in ("wt", "tc", "et")])
    )
    assert metrics["val_hd95_mean"] == pytest.approx(
        np.mean([metrics[f"val_hd95_{r}"] for r in ("wt", "tc", "et")])
    )
    artifacts = {a.path for a in client.list_artifacts(nnunet.info.run_id)}
    assert artifacts == {"per_case.csv", "summary.json"}
    # the same segmentations in two numberings score the same; compare shows them side by side
    cmp = compare_runs(experiment="bench", tracking_uri=uri, kind="evaluation")
    assert [m for m in cmp.metrics if m.startswith("val_")] == cmp.metrics
    assert {"val_mean_dice", "val_dice_et", "val_hd95_et"} <= set(cmp.metrics)
    best = {r.run_name: r.best for r in cmp.runs}
    for name in cmp.metrics:
        assert best["nnunet-fold0"][name] == pytest.approx(best["tumorseg-fold0"][name]), name
    assert "fold" not in cmp.differing_params and "datalist" not in cmp.differing_params
    assert "network" in cmp.differing_params
    # --params shows the fold although it is the same in both runs
    argv = ["compare", "--experiment", "bench", "--tracking-uri", uri, "--params", "network,fold"]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("#"))
    assert header.split()[-2:] == ["network", "fold"]
    rows = [line.split() for line in table if "fold0 " in line]
    assert sorted((row[1], row[-2], row[-1]) for row in rows) == [
        ("nnunet-fold0", "nnunet-3d_fullres", "0"),
        ("tumorseg-fold0", "dynunet", "0"),
    ]
    assert main([*argv[:-1], " , "]) == 2
    assert "--params must name at least one param" in capsys.readouterr().err


def test_refusals_before_scoring_or_logging(
    folds: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "e"
    base = ["evaluate", "--pred", str(folds["ours"]), "--ref", str(folds["manifest"]),
            "-o", str(out), *QUIET]  # fmt: skip
    log = ["--log-mlflow", "--experiment", "E", "--tracking-uri", uri]
    cases = [
        ([*base, "--fold", "2"], "--fold 2 is not a fold of"),
        ([*base, "--fold", "-1"], "--fold -1 is not a fold of"),
        ([*base, "--datalist", str(folds["manifest"])], "--datalist applies only with --fold"),
        ([*base[:4], str(folds["labels"]), *base[5:], "--fold", "0"],
         "needs the manifest of the folds"),
        ([*base, "--experiment", "E"], "--experiment apply only with --log-mlflow"),
        ([*base, "--tag", "a=b", "--run-name", "x"], "--run-name, --tag apply only with"),
        ([*base, "--log-mlflow"], "--log-mlflow needs --experiment NAME"),
        ([*base, *log, "--tag", "novalue"], "--tag must look like KEY=VALUE, got 'novalue'"),
        ([*base, *log, "--param", "=x"], "--param must look like KEY=VALUE, got '=x'"),
        ([*base, *log, "--challenge", "gli"], "--log-mlflow do(es) not apply with --challenge"),
        ([*base, "--log-mlflow", "--experiment", "E", "--tracking-uri",
          "http://127.0.0.1:9"], "http://127.0.0.1:9"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing was scored
    assert not (tmp_path / "mlflow.db").exists() or not mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()]
    )
    # a fold case without a reference: named, nothing logged
    partial = tmp_path / "refs"
    partial.mkdir()
    keep = _fold_cases(folds["manifest"], 0)[0]
    (partial / f"{keep}.nii.gz").write_bytes((folds["labels"] / f"{keep}.nii.gz").read_bytes())
    code = main(["evaluate", "--pred", str(folds["theirs"]), "--ref", str(partial),
                 "--convention", "msd", "--fold", "0", "--datalist", str(folds["manifest"]),
                 "-o", str(out), *QUIET, *log])  # fmt: skip
    err = capsys.readouterr().err
    missing = _fold_cases(folds["manifest"], 0)[1]
    assert code == 2 and f"['{missing}'] have no reference label map" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("tumorseg evaluate:")
    # a fold prediction missing: reports written, exit 1, no run recorded
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / f"{keep}.nii.gz").write_bytes((folds["ours"] / f"{keep}.nii.gz").read_bytes())
    code = main([*base[:2], str(preds), *base[3:], "--fold", "0", *log])
    captured = capsys.readouterr()
    assert code == 1 and "not logged to MLflow: predictions are missing" in captured.err
    assert (out / "per_case.csv").is_file()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("E")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_validation_names_and_run_checks(tmp_path: Path) -> None:
    def stats(mean: float) -> dict[str, float]:
        return {"mean": mean}

    summary = {f"dice_{r}": stats(v) for r, v in (("WT", 0.9), ("TC", 0.6), ("ET", 0.3))}
    summary |= {f"hd95_{r}": stats(v) for r, v in (("WT", 2.0), ("TC", 4.0), ("ET", math.nan))}
    got = validation_metrics(summary)
    expected = {"val_dice_wt": 0.9, "val_dice_tc": 0.6, "val_dice_et": 0.3, "val_mean_dice": 0.6}
    assert got == pytest.approx({**expected, "val_hd95_wt": 2.0, "val_hd95_tc": 4.0})
    with pytest.raises(ValueError, match="not an evaluation summary"):
        validation_metrics({"global_dsc_wt": stats(0.5)})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match=r"metrics must be finite, got \{'val_dice_wt': nan\}"):
        log_evaluation_run({"val_dice_wt": float("nan")}, experiment_name="E", tracking_uri=uri)
    with pytest.raises(ValueError, match="tag tumorseg.kind is set by tumorseg"):
        log_evaluation_run({}, experiment_name="E", tracking_uri=uri, tags={"tumorseg.kind": "x"})
    with pytest.raises(ValueError, match="artifact file"):
        log_evaluation_run({}, experiment_name="E", tracking_uri=uri, artifacts=[tmp_path / "x"])
    with pytest.raises(ValueError, match="needs an experiment name"):
        log_evaluation_run({}, experiment_name="", tracking_uri=uri)
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


def test_a_run_whose_params_the_store_refuses_ends_failed(tmp_path: Path) -> None:
    # The params are logged when the run is opened (tracking.store.create_run, shared with the
    # cross-validation parent): a refusal there must not leave a run RUNNING in the store.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(Exception, match="bad!name"):
        log_evaluation_run(
            {"val_dice_wt": 0.5}, experiment_name="E", tracking_uri=uri, params={"bad!name": 1}
        )
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("E").experiment_id]
    )
    assert [r.info.status for r in runs] == ["FAILED"]
