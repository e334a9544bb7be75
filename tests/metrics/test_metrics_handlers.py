"""The MONAI metric and the ignite handler report the functional numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ignite_engine = pytest.importorskip("ignite.engine")

from monai.data import MetaTensor  # noqa: E402

from tumorseg.metrics import RegionMetric, RegionMetricHandler  # noqa: E402
from tumorseg.metrics.handlers import spacing_from_affine  # noqa: E402
from tumorseg.metrics.surface import HD95_EMPTY_MM, hd95  # noqa: E402
from tumorseg.transforms.labels import labels_to_regions  # noqa: E402

SHAPE = (20, 20, 20)


def _label(shift: int = 0, with_et: bool = True) -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[4:16, 4:16, 4:16] = 2
    lab[7:13, 7:13, 7:13] = 4 if with_et else 1
    lab[9:11, 9:11, 9:11] = 1
    return np.roll(lab, shift, axis=1)


def _regions(lab: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels_to_regions(lab, "brats2021").astype(np.float32))


def _expected(pred_lab, ref_lab, spacing):
    p, r = labels_to_regions(pred_lab, "brats2021"), labels_to_regions(ref_lab, "brats2021")
    out = {}
    for i, name in enumerate(("WT", "TC", "ET")):
        total = p[i].sum() + r[i].sum()
        out[f"dice_{name}"] = 2 * np.sum(p[i] & r[i]) / total if total else 1.0
        out[f"hd95_{name}"] = hd95(p[i], r[i], spacing=spacing)
    return out


def test_metric_batch_matches_the_functional_form():
    pairs = [(_label(1), _label()), (_label(2), _label(with_et=False))]
    y_pred = torch.stack([_regions(p) for p, _ in pairs])
    y = torch.stack([_regions(r) for _, r in pairs])
    metric = RegionMetric(spacing=(1.0, 1.0, 2.0))
    metric(y_pred, y)
    result = metric.aggregate()
    expected = [_expected(p, r, (1.0, 1.0, 2.0)) for p, r in pairs]
    for key in expected[0]:
        assert result[key] == pytest.approx(np.mean([e[key] for e in expected]))
    # Second sample: ET empty in the reference but predicted: Dice 0, HD95 373.13.
    buffer = metric.get_buffer()
    assert buffer[1, 2].item() == 0.0 and buffer[1, 5].item() == HD95_EMPTY_MM
    assert result["dice_mean"] == pytest.approx(
        np.mean([result[f"dice_{r}"] for r in ["WT", "TC", "ET"]])
    )
    assert result["hd95_mean"] == pytest.approx(
        np.mean([result[f"hd95_{r}"] for r in ["WT", "TC", "ET"]])
    )


def test_spacing_comes_from_the_meta_tensor_affine():
    affine = torch.diag(torch.tensor([2.0, 2.5, 3.0, 1.0]))
    affine[0, 1] = 0.0
    y_pred = MetaTensor(_regions(_label(1))[None], affine=affine)
    y = MetaTensor(_regions(_label())[None], affine=affine)
    metric = RegionMetric()
    metric(y_pred, y)
    got = metric.aggregate()["hd95_WT"]
    want = _expected(_label(1), _label(), (2.0, 2.5, 3.0))["hd95_WT"]
    assert got == pytest.approx(want)
    assert want != pytest.approx(_expected(_label(1), _label(), (1, 1, 1))["hd95_WT"])
    assert spacing_from_affine(np.diag([-0.9, 0.9, 1.5, 1.0])) == pytest.approx((0.9, 0.9, 1.5))
    with pytest.raises(ValueError, match="4x4"):
        spacing_from_affine(np.eye(3))


def test_decollated_meta_tensors_keep_their_spacing():
    # What MONAI's from_engine gives after decollation: lists of channel-first MetaTensors.
    affine = torch.diag(torch.tensor([2.0, 2.5, 3.0, 1.0]))
    preds = [MetaTensor(_regions(_label(1)), affine=affine)]
    labels = [MetaTensor(_regions(_label()), affine=affine)]
    metric = RegionMetric()
    metric(preds, labels)
    want = _expected(_label(1), _label(), (2.0, 2.5, 3.0))
    assert metric.aggregate()["hd95_TC"] == pytest.approx(want["hd95_TC"])


def test_list_input_and_reset():
    metric = RegionMetric(include_hd95=False)
    metric([_regions(_label(1)), _regions(_label())], [_regions(_label()), _regions(_label())])
    res = metric.aggregate()
    assert "hd95_WT" not in res and res["dice_TC"] < 1.0
    metric.reset()
    with pytest.raises(ValueError, match="before any data"):
        metric.aggregate()


def test_bad_shapes_are_reported():
    metric = RegionMetric()
    with pytest.raises(ValueError, match="region channels"):
        metric(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="one shape"):
        metric(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 5))
    with pytest.raises(ValueError, match="key"):
        RegionMetricHandler(key="dice_XX")


def test_ignite_handler_reports_key_metric_and_regions():
    batches = [
        {"pred": _regions(_label(1))[None], "label": _regions(_label())[None]},
        {"pred": _regions(_label(2))[None], "label": _regions(_label(with_et=False))[None]},
    ]
    engine = ignite_engine.Engine(lambda eng, batch: batch)
    handler = RegionMetricHandler(
        output_transform=lambda out: (out["pred"], out["label"]), prefix="val_"
    )
    handler.attach(engine, "val_mean_dice")
    state = engine.run(batches, max_epochs=1)
    metrics = state.metrics
    expected = [
        _expected(_label(1), _label(), (1, 1, 1)),
        _expected(_label(2), _label(with_et=False), (1, 1, 1)),
    ]
    assert isinstance(metrics["val_mean_dice"], float)
    assert metrics["val_mean_dice"] == pytest.approx(
        np.mean([metrics[f"val_dice_{r}"] for r in ("WT", "TC", "ET")])
    )
    assert "val_dice_mean" not in metrics  # one name for the mean Dice
    for key in expected[0]:
        assert metrics[f"val_{key}"] == pytest.approx(np.mean([e[key] for e in expected]))
    assert state.metric_details["val_mean_dice"].shape == (2, 6)


BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
REGION_BUNDLES = ("brats_mri_segmentation", "brats_slice_segmentation_2d")


def _bundle_key_metric(bundle: str):
    """The validator's key metric of a bundle's ``train.json``, attached to a bare engine."""
    from monai.bundle import ConfigParser
    from monai.handlers import from_engine

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    (name, metric), *_ = parser.get_parsed_content("validate#evaluator#key_val_metric").items()
    engine = ignite_engine.Engine(lambda eng, batch: batch)
    metric.attach(engine, name)
    return engine, name, from_engine


def _run_cases(engine, pairs):
    batches = [{"pred": _regions(p)[None], "label": _regions(r)[None]} for p, r in pairs]
    return engine.run(batches, max_epochs=1).metrics


@pytest.mark.parametrize("bundle", REGION_BUNDLES)
def test_bundle_key_metric_falls_when_et_is_predicted_on_et_free_cases(bundle: str) -> None:
    engine, name, _ = _bundle_key_metric(bundle)
    assert name == "val_mean_dice"
    refs = [_label(), _label(with_et=False), _label(with_et=False)]
    perfect = _run_cases(engine, [(r, r) for r in refs])[name]
    # ET predicted on the ET-free cases: their core's necrosis labelled enhancing instead.
    false_et = [
        r if i == 0 else np.where(r == 1, 4, r).astype(np.uint8) for i, r in enumerate(refs)
    ]
    wrong = _run_cases(engine, list(zip(false_et, refs, strict=True)))
    assert perfect == pytest.approx(1.0)
    assert wrong[name] == pytest.approx(1 - 2 / 9), wrong  # ET Dice 0 on 2 of 3 cases
    assert wrong["val_dice_et"] == pytest.approx(1 / 3)
    assert "val_dice_mean" not in wrong


@pytest.mark.parametrize("bundle", REGION_BUNDLES)
def test_bundle_key_metric_is_the_mean_dice_tumorseg_evaluate_reports(bundle: str) -> None:
    from tumorseg.metrics import case_metrics

    engine, name, _ = _bundle_key_metric(bundle)
    pairs = [
        (_label(1), _label()),
        (_label(2), _label(with_et=False)),
        (np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)),  # tumour-free, none predicted
        (_label(), np.zeros(SHAPE, np.uint8)),  # tumour-free, tumour predicted
    ]
    got = _run_cases(engine, pairs)[name]
    scores = [case_metrics(p, r, lesionwise=False) for p, r in pairs]
    want = np.mean([[s[f"dice_{r}"] for r in ("WT", "TC", "ET")] for s in scores])
    assert got == pytest.approx(want)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import json

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        metric = RegionMetric()
        pred, ref = (_label(1), _label()) if rank == 0 else (_label(2), _label(with_et=False))
        metric(_regions(pred)[None], _regions(ref)[None])
        result = metric.aggregate()
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump(result, fh)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_aggregate_is_all_gathered_under_ddp(tmp_path):
    import json

    mp = pytest.importorskip("torch.multiprocessing")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = [
        _expected(_label(1), _label(), (1, 1, 1)),
        _expected(_label(2), _label(with_et=False), (1, 1, 1)),
    ]
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key in expected[0]:
            assert got[key] == pytest.approx(np.mean([e[key] for e in expected])), (rank, key)
