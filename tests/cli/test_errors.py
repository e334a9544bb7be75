"""Failures inside a bundle's config reach the user as at most three lines: the original
message, the config id and the fix; ``--debug`` / ``TUMORSEG_DEBUG=1`` show the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from tumorseg.bundle_run import main as bundle_main
from tumorseg.cli import main
from tumorseg.config_errors import DEBUG_ENV, find_config_failure, format_config_error
from tumorseg.data.synthetic import generate_dataset

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_segmentation"
CFG = BUNDLE / "configs"


def _training(tmp_path: Path, *overrides: str, finetune: bool = False) -> list[str]:
    files = [CFG / "train.json"]
    if finetune:
        files += [CFG / "networks" / "unet.json", CFG / "finetune.json"]
    args = ["run", "training", "--meta_file", str(CFG / "metadata.json")]
    args += ["--config_file", str([str(f) for f in files]), "--bundle_root", str(BUNDLE)]
    args += ["--ckpt_dir", str(tmp_path / "models"), "--log_mlflow", "false"]
    args += ["--demo_dir", str(tmp_path / "demo"), "--num_workers", "0", "--device", "cpu"]
    return args + list(overrides)


def _three_lines(err: str, config_id: str, *expected: str) -> list[str]:
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3, err
    assert f"in config id {config_id!r}" in lines[1], err
    assert lines[2].startswith("  fix: "), err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err and "Failed to evaluate" not in err
    return lines


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, num_cases=2, shape=(16, 16, 16), seed=3)
    return root


def test_bad_override_names_the_expression_and_the_option(
    tmp_path: Path,
    tiny_dataset: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--epochs abc fails in warmup_epochs, which reads epochs: both are named."""
    monkeypatch.chdir(tmp_path)
    args = _training(tmp_path, "--epochs", "abc", "--dataset_dir", str(tiny_dataset))
    args += ["--num_folds", "2", "--cache_rate", "0"]
    assert bundle_main(args) == 1
    lines = _three_lines(
        capsys.readouterr().err, "warmup_epochs", "TypeError", "reads epochs", "--epochs VALUE"
    )
    assert lines[0].startswith("bundle run: error: TypeError: unsupported operand")


def test_missing_data_gives_the_loaders_message_and_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no_such_dataset"
    assert bundle_main(_training(tmp_path, "--dataset_dir", str(missing))) == 1
    lines = _three_lines(capsys.readouterr().err, "data", str(missing), "--dataset_dir VALUE")
    assert "is not a folder" in lines[0]
    assert "point the path at an existing file or folder" in lines[2]


def test_refused_weights_give_the_loaders_report_and_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tuning from weights of another network stops on the pretrained loader."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.pt"
    torch.save({"encoder.fc.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}, other)
    assert bundle_main(_training(tmp_path, "--pretrained", str(other), finetune=True)) == 1
    lines = _three_lines(capsys.readouterr().err, "network", str(other), "--pretrained VALUE")
    assert "reads " in lines[1]


def test_tumorseg_cli_reports_a_config_failure_in_three_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An override that is a failing expression (here the checkpoint path)."""
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(tmp_path), "--output"]
    args += [str(tmp_path / "out"), "--override", 'checkpoint="$1 // 0"', "--device", "cpu"]
    assert main(args) == 2
    lines = _three_lines(capsys.readouterr().err, "checkpoint", "ZeroDivisionError")
    assert lines[0].startswith("tumorseg infer: error: ZeroDivisionError")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_full_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(tmp_path), "--output"]
    args += [str(tmp_path / "out"), "--override", 'checkpoint="$1 // 0"']
    with pytest.raises(RuntimeError, match="Failed to evaluate"):
        main(["--debug", *args])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="Failed to evaluate"):
        main(args)
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert main(args) == 2
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_errors_outside_a_config_are_not_rewritten() -> None:
    try:
        raise ValueError("plain")
    except ValueError as err:
        assert find_config_failure(err) is None and format_config_error(err) is None
    parser = ConfigParser({"a": "$1 // 0", "b": "$@a + 1"})
    try:
        parser.get_parsed_content("b")
    except RuntimeError as err:
        failure = find_config_failure(err)
        assert failure is not None and failure.config_id == "a"
        assert isinstance(failure.error, ZeroDivisionError)
