"""`tumorseg export` and `tumorseg infer --backend onnxruntime`: same masks as PyTorch.

A checkpoint of the bundle's DynUNet (small filters) is exported through the CLI; inference
of an encoded synthetic study with ONNX Runtime must write the mask PyTorch writes, byte for
byte. Bad requests end with one line and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from _infer_utils import TINY_FILTERS, tiny_checkpoint, write_encoded_dataset  # noqa: E402

from tumorseg.cli import main  # noqa: E402

pytest.importorskip("onnxruntime")

TINY = ["--override", f"filters={TINY_FILTERS}"]
WINDOW = ["--roi-size", "32", "32", "32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    ckpt = tiny_checkpoint(tmp / "model.pt", seed=2)
    # Logits far from 0 (random weights give probabilities near the 0.5 threshold), so the
    # masks of both backends can be compared byte for byte, as for a trained network.
    import torch

    state = torch.load(ckpt, weights_only=True)
    torch.save({k: v * 10 if k.startswith("output_block") else v for k, v in state.items()}, ckpt)
    onnx = tmp / "model.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(onnx)]
    assert main([*args, *TINY, "--roi-size", "32", "32", "32"]) == 0
    return ckpt, onnx


def test_export_then_infer_with_onnxruntime_writes_the_pytorch_mask(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, onnx = exported
    assert onnx.is_file() and not [p for p in onnx.parent.iterdir() if p.name.startswith(".")]
    write_encoded_dataset(tmp_path / "in", 2, shape=(34, 32, 30))
    infer = ["infer", "--input", str(tmp_path / "in"), *TINY, *WINDOW]
    # The ONNX model runs in float32; the PyTorch default on a bf16-capable CPU is bfloat16.
    pt_args = ["--checkpoint", str(ckpt), "--precision", "fp32"]
    assert main([*infer, "--output", str(tmp_path / "pt"), *pt_args]) == 0
    assert (
        main([*infer, "--output", str(tmp_path / "ort"), "--backend", "onnxruntime",
              "--model", str(onnx)]) == 0
    ), capsys.readouterr().err  # fmt: skip
    for case in ("ENC_000", "ENC_001"):
        pt = (tmp_path / "pt" / f"{case}.nii.gz").read_bytes()
        assert (tmp_path / "ort" / f"{case}.nii.gz").read_bytes() == pt


def test_torchscript_export_through_the_cli(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = exported
    out = tmp_path / "model.ts"
    args = ["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--output", str(out)]
    assert main([*args, *TINY, "--roi-size", "32", "32", "32"]) == 0
    printed = capsys.readouterr().out
    assert "torchscript, dynamic spatial size" in printed and str(out) in printed
    import torch

    assert torch.jit.load(str(out))(torch.zeros(1, 4, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "onnxruntime"], "--backend onnxruntime needs --model"),
        (["--model", "m.onnx"], "needs --backend onnxruntime"),
        (["--backend", "onnxruntime", "--model", "m.onnx", "--checkpoint", "c.pt"],
         "does not apply to --backend onnxruntime"),
        (["--backend", "onnxruntime", "--model", "missing.onnx"], "does not exist"),
        (["--output-format", "nifti,png"], "output format must be some of"),
    ],
)  # fmt: skip
def test_bad_backend_options_are_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_encoded_dataset(tmp_path / "in", 1, shape=(20, 20, 20))
    code = main(["infer", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                 *TINY, *WINDOW, *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("*.nii.gz")) if (tmp_path / "o").exists() else True


def test_bad_export_requests_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["export", "--format", "onnx", "--output", str(tmp_path / "m.onnx"), *TINY]
    assert main([*base, "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    assert main([*base, "--checkpoint", str(ckpt), "--atol", "0"]) == 2
    assert "--atol must be > 0" in capsys.readouterr().err
    wrong = ["--override", "filters=[8,16,32,64,128]"]
    assert main([*base[:-2], *wrong, "--checkpoint", str(ckpt)]) == 2
    assert "filters" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))
