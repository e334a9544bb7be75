"""Issue 18: a batch's I/O failures end with one clear line naming the path and the fix.

A read-only output folder, a disk that fills up during a batch (one mask, or every write
including ``failures.csv``): no traceback, nothing already written is lost, the failure is in
``failures.csv`` or, when that cannot be written either, on stderr. Full disks and read-only
folders are simulated (the tests run as root, which ignores permissions).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _infer_utils import BUNDLE, TINY_FILTERS, tiny_checkpoint, write_encoded_dataset

import tumorseg.io
from tumorseg.cli import main


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("io-failures")
    write_encoded_dataset(root / "in", 3, seed=60)
    return {"input": root / "in", "ckpt": tiny_checkpoint(root / "model.pt")}


def _args(study_dir: dict[str, Path], out: Path) -> list[str]:
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(study_dir["input"])]
    args += ["--output", str(out), "--checkpoint", str(study_dir["ckpt"]), "--device", "cpu"]
    return [*args, "--override", f"filters={TINY_FILTERS}", "--roi-size", "32", "32", "32"]


def _failing_writes(monkeypatch: pytest.MonkeyPatch, fails: Any) -> None:
    """Make :func:`tumorseg.io.atomic_path` fail like the OS would for paths ``fails`` picks.

    ``fails(path)`` returns an errno or None. The error is raised where the OS raises it:
    creating the temporary file.
    """
    real = tumorseg.io.atomic_path

    @contextlib.contextmanager
    def atomic_path(path: Any, **kwargs: Any) -> Iterator[Path]:
        code = fails(Path(path))
        if code is not None:
            tmp = Path(path).with_name(f".{Path(path).name}.1234abcd.tmp")
            raise OSError(code, os.strerror(code), str(tmp))
        with real(path, **kwargs) as tmp:
            yield tmp

    monkeypatch.setattr(tumorseg.io, "atomic_path", atomic_path)


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    return lines[0]


def test_read_only_output_folder(
    study_dir: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _failing_writes(monkeypatch, lambda p: errno.EROFS if out in p.parents else None)
    # The old code ended with a 26-line traceback from the CSV writer.
    assert main([*_args(study_dir, out), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(out) in line and "Read-only file system" in line
    assert "writable" in line and "--output" in line
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_for_real(
    study_dir: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main([*_args(study_dir, out), "--no-progress"]) == 2
    finally:
        out.chmod(0o755)
    line = _one_line(capsys.readouterr().err)
    assert str(out) in line and "Permission denied" in line


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_full_disk_is_blamed_on_the_output_and_recorded(
    study_dir: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    # The disk fills up at the second mask; the small tables still fit.
    _failing_writes(monkeypatch, lambda p: errno.ENOSPC if p.name == "ENC_001.nii.gz" else None)
    assert main([*_args(study_dir, out), "--no-progress"]) == 2
    (failure,) = _rows(out / "failures.csv")
    # The old code named the input study's FLAIR file as the culprit.
    assert failure["case_id"] == "ENC_001"
    assert failure["file"] == str(out / "ENC_001.nii.gz")
    assert "No space left on device" in failure["reason"] and "free space" in failure["reason"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tumorseg infer: error: cannot write")
    assert str(out / "ENC_001.nii.gz") in last and "rerun" in last
    # What was written before stays; the batch stopped rather than fail every study.
    assert (out / "ENC_000.nii.gz").is_file() and not (out / "ENC_002.nii.gz").exists()
    assert [r["case_id"] for r in _rows(out / "volumes.csv")] == ["ENC_000"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # Space freed: the same command finishes the batch.
    monkeypatch.undo()
    assert main([*_args(study_dir, out), "--no-progress"]) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert _rows(out / "failures.csv") == []


def test_full_disk_for_every_write_reports_on_stderr(
    study_dir: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    writes: list[Path] = []

    def after_start(path: Path) -> int | None:
        writes.append(path)
        return errno.ENOSPC if len(writes) > 2 else None  # the first tables fit, then full

    _failing_writes(monkeypatch, after_start)
    # The old code crashed writing failures.csv, so the failure was recorded nowhere.
    assert main([*_args(study_dir, out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"FAILED ENC_000: {out / 'ENC_000.nii.gz'}" in err
    assert "could not write" in err and "failures.csv" in err
    assert err.strip().splitlines()[-1].startswith("tumorseg infer: error: cannot write")
    assert _rows(out / "failures.csv") == []  # the old, empty table: nothing lost either
