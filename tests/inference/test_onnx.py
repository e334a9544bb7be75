"""ONNX export and the ONNX Runtime backend: same probabilities as PyTorch, same masks.

The bundle's DynUNet (small filters, random weights: parity does not depend on the weights)
is exported with :func:`tumorseg.inference.export.export_network` and run by
:class:`~tumorseg.inference.backends.OnnxRuntimeNetwork` inside the same predictor, both in
float32 with the same windows, on the real study TCGA-DU-7294 (a crop around the tumour in
the fast test, the whole study in the slow one): only the network call differs.

Before the export wrote instance normalisation as explicit one-axis reductions
(:class:`~tumorseg.inference.export.AxiswiseInstanceNorm`), ONNX Runtime's
``InstanceNormalization`` summed each 96^3 window in float32 and the whole study differed from
PyTorch by 6.7e-3 in probability and 89 mask voxels (``docs/benchmarks.md``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _infer_utils import BUNDLE, TINY_FILTERS, decisive_tiny_network

from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.inference import Predictor, export
from tumorseg.inference.backends import OnnxRuntimeNetwork
from tumorseg.inference.export import AxiswiseInstanceNorm, export_network, onnx_ready

pytest.importorskip("onnxruntime")

CASE = "TCGA-DU-7294"
ROI = (64, 64, 64)
#: A crop of the real study around its tumour (voxel ranges of the 240x240x155 grid).
CROP = (slice(60, 156), slice(60, 156), slice(30, 110))


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return decisive_tiny_network(seed=3)


@pytest.fixture(scope="module")
def onnx_model(network: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    report = export_network(network, path, export_format="onnx", roi_size=ROI, in_channels=4)
    assert report.dynamic and len(report.max_abs_diff) == 2
    assert max(report.max_abs_diff.values()) <= 1e-4
    return path


def _both_backends(
    files: list[Path], network: torch.nn.Module, onnx_model: Path, roi: tuple[int, ...]
) -> tuple[object, object, OnnxRuntimeNetwork]:
    """The PyTorch and ONNX Runtime predictions of one study: float32, same windows."""
    settings = {"roi_size": roi, "overlap": 0.25, "device": "cpu", "precision": "fp32",
                "tiling": "windows", "overrides": {"filters": TINY_FILTERS}}  # fmt: skip
    ort_network = OnnxRuntimeNetwork(onnx_model)
    want = Predictor.from_bundle(BUNDLE, network=network, **settings).predict_case(files)
    got = Predictor.from_bundle(BUNDLE, network=ort_network, **settings).predict_case(files)
    return want, got, ort_network


def _assert_parity(want: object, got: object) -> None:
    diff = np.abs(got.probabilities - want.probabilities)  # type: ignore[attr-defined]
    assert float(diff.max()) <= 1e-4, float(diff.max())
    np.testing.assert_array_equal(got.label, want.label)  # type: ignore[attr-defined]
    assert (want.label > 0).sum() > 1000  # type: ignore[attr-defined]  # a mask to compare
    np.testing.assert_array_equal(got.affine, want.affine)  # type: ignore[attr-defined]


@pytest.mark.shared_data
def test_onnxruntime_matches_pytorch_on_a_real_crop(
    shared_data: Path, network: torch.nn.Module, onnx_model: Path, tmp_path: Path
) -> None:
    files = []
    for m in CHANNEL_ORDER:
        image = nib.load(str(shared_data / "brats2020_layout" / CASE / f"{CASE}_{m}.nii.gz"))
        files.append(tmp_path / f"{CASE}_{m}.nii.gz")
        nib.save(image.slicer[CROP], str(files[-1]))
    want, got, ort_network = _both_backends(files, network, onnx_model, ROI)
    assert ort_network.calls > 1  # the sliding window called ONNX Runtime, window by window
    _assert_parity(want, got)


@pytest.mark.shared_data
@pytest.mark.slow
def test_onnxruntime_backend_matches_pytorch_on_a_real_study(
    shared_data: Path, network: torch.nn.Module, onnx_model: Path
) -> None:
    files = [shared_data / "brats2020_layout" / CASE / f"{CASE}_{m}.nii.gz" for m in CHANNEL_ORDER]
    want, got, ort_network = _both_backends(files, network, onnx_model, (96, 96, 96))
    assert ort_network.calls > 1
    _assert_parity(want, got)  # measured: 2.0e-5 at most, no mask voxel different


@pytest.mark.parametrize("kind", ["instance", "instance_affine", "group"])
def test_axiswise_norm_is_the_torch_norm_and_exports_without_instance_normalization(
    kind: str, tmp_path: Path
) -> None:
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    norms = {
        "instance": torch.nn.InstanceNorm3d(6),
        "instance_affine": torch.nn.InstanceNorm3d(6, affine=True),
        "group": torch.nn.GroupNorm(3, 6),
    }
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 6, 3, padding=1), norms[kind]).eval()
    with torch.no_grad():
        for p in net[1].parameters():
            p.uniform_(0.5, 1.5)
    ready = onnx_ready(net)
    assert isinstance(ready[1], AxiswiseInstanceNorm) and type(net[1]) is not AxiswiseInstanceNorm
    # A study-like input: a positive block on zeros (features with a large mean).
    x = torch.zeros(2, 2, 24, 20, 16)
    x[:, :, 4:20, 4:16, 4:12] = 3.0 + torch.rand(2, 2, 16, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(ready(x), net(x), atol=2e-5, rtol=0)
        reference = copy.deepcopy(net).double()(x.double())
    path = tmp_path / "norm.onnx"
    export_network(net, path, export_format="onnx", roi_size=(24, 20, 16), in_channels=2)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "InstanceNormalization" not in ops and "ReduceMean" in ops
    got = OnnxRuntimeNetwork(path)(x).double()
    assert float((got - reference).abs().max()) <= 1e-5


def test_export_check_includes_a_study_like_window(
    network: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exported as ONNX InstanceNormalization (as before the fix), the study-like window of the
    # parity check exposes ONNX Runtime's float32 sums, which random windows hide.
    monkeypatch.setattr(export, "onnx_ready", lambda net: net)
    report = export_network(network, tmp_path / "plain.onnx", export_format="onnx",
                            roi_size=(48, 48, 48), in_channels=4, atol=1.0)  # fmt: skip
    assert max(report.max_abs_diff.values()) > 1e-4
    runner = OnnxRuntimeNetwork(tmp_path / "plain.onnx")
    x = torch.randn((1, 4, 48, 48, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        random_diff = float((torch.sigmoid(runner(x)) - torch.sigmoid(network(x))).abs().max())
    assert random_diff <= 1e-4  # a random window alone would have let it through


def test_onnx_model_takes_other_window_sizes(network: torch.nn.Module, onnx_model: Path) -> None:
    runner = OnnxRuntimeNetwork(onnx_model)
    x = torch.randn(2, 4, 32, 48, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.sigmoid(network(x))
    got = torch.sigmoid(runner(x))
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4


def test_torchscript_export_round_trip(network: torch.nn.Module, tmp_path: Path) -> None:
    report = export_network(
        network, tmp_path / "model.ts", export_format="torchscript", roi_size=ROI, in_channels=4
    )
    assert report.max_abs_diff and max(report.max_abs_diff.values()) <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(1, 4, 32, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x), atol=1e-4, rtol=0)


def test_parity_beyond_tolerance_writes_nothing(network: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"differs from PyTorch by .* \(tolerance 1e-12\)"):
        export_network(
            network,
            tmp_path / "model.onnx",
            export_format="onnx",
            roi_size=(32, 32, 32),
            in_channels=4,
            atol=1e-12,
        )
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_bad_export_requests(network: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="export format must be one of"):
        export_network(network, tmp_path / "m", export_format="tflite", roi_size=ROI, in_channels=4)
    with pytest.raises(ValueError, match="cannot export DynUNet to onnx"):
        export_network(network, tmp_path / "m.onnx", export_format="onnx", roi_size=ROI,
                       in_channels=3)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_bad_models_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="make one with tumorseg export"):
        OnnxRuntimeNetwork(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load") as err:
        OnnxRuntimeNetwork(tmp_path / "junk.onnx")
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'tumorseg\[onnx\]'"):
        OnnxRuntimeNetwork(tmp_path / "junk.onnx")
