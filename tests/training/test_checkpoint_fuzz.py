"""Fuzz-style tests of the checkpoint loader, and issue 18's 0-byte checkpoint.

Whatever bytes sit where a checkpoint should be (empty, truncated at any length, flipped bits,
a pickle that would run code, another type), loading ends in FileNotFoundError or ValueError
naming the file, never another exception: in inference (``Predictor``, ``tumorseg infer``) and
in training resume (``Checkpointer``).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from tumorseg.cli import main
from tumorseg.training import Checkpointer, load_checkpoint, load_network_weights

TESTS = Path(__file__).resolve().parents[1]


def _valid_bytes() -> bytes:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    buf = io.BytesIO()
    torch.save({"network": net.state_dict(), "epoch": 3}, buf)
    return buf.getvalue()


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


def test_empty_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    # The old loader failed with IndexError on the empty message of torch's error.
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)") as err:
        load_checkpoint(empty)
    assert str(empty) in str(err.value)
    with pytest.raises(ValueError, match="empty"):
        load_network_weights(torch.nn.Linear(2, 2), empty)


def test_empty_checkpoint_at_resume_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_latest.pt").write_bytes(b"")
    net = torch.nn.Linear(2, 1)
    saver = Checkpointer(tmp_path, {"network": net})
    trainer = Engine(lambda e, b: None)
    saver.attach(trainer)
    with pytest.raises(ValueError, match=r"checkpoint_latest\.pt is empty") as err:
        trainer.run([0], max_epochs=1)
    assert "delete it" in str(err.value)


def test_empty_checkpoint_reaches_the_infer_user_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(TESTS / "inference"))
    try:
        from _infer_utils import BUNDLE, TINY_FILTERS
    finally:
        sys.path.remove(str(TESTS / "inference"))
    from tumorseg.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "in", num_cases=1, shape=(32, 32, 32), seed=1)
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(tmp_path / "in")]
    args += ["--output", str(tmp_path / "out"), "--checkpoint", str(empty), "--device", "cpu"]
    args += ["--override", f"filters={TINY_FILTERS}", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "model.pt is empty (0 bytes)" in err


def test_truncated_and_corrupted_checkpoints(tmp_path: Path) -> None:
    rng = random.Random(4)
    good = _valid_bytes()
    path = tmp_path / "ckpt.pt"
    cuts = sorted(
        {0, 1, 2, 10, 100, len(good) // 2, len(good) - 1, *rng.sample(range(len(good)), 40)}
    )
    for cut in cuts:
        path.write_bytes(good[:cut])
        with pytest.raises(ValueError, match="ckpt.pt") as err:
            load_checkpoint(path)
        assert err.value.__class__ is ValueError
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            obj = load_checkpoint(path)
        except ValueError as err:
            assert "ckpt.pt" in str(err)
        else:
            assert isinstance(obj, dict)  # a flip in tensor data still loads


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(_Evil()),
        pickle.dumps([1, 2, 3]),
        b"\x80\x02}q\x00.",  # a pickled empty dict, but not a torch file
        b"PK\x03\x04" + bytes(60),  # a zip header and nothing else
        os.urandom(512),
        b"\n" * 10,
    ],
)
def test_other_files_are_refused(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="x.pt"):
        load_checkpoint(path)


def test_non_dict_and_missing_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="holds a list"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint
