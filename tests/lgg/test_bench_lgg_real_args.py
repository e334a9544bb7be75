"""`make bench BENCH=lgg_real` argument checks that need no real data: ``SEEDS`` (one model per
seed, packed into an ensemble) is parsed, and bad values stop it with the value named."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_lgg_real", ROOT / "benchmarks" / "bench_lgg_real.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_lgg_real"] = module
    spec.loader.exec_module(module)
    return module


def test_seeds_are_parsed_in_order() -> None:
    bench = _bench()
    assert bench._seeds("") == [] and bench._seeds(" ") == []
    assert bench._seeds("0,1") == [0, 1] and bench._seeds("3") == [3]


@pytest.mark.parametrize(
    ("text", "shown"),
    [("0;1", "SEEDS must be integers like 0,1, got SEEDS='0;1'"),
     ("0,a", "got SEEDS='0,a'"),
     ("1,1", "SEEDS must be distinct, got SEEDS='1,1'")],
)  # fmt: skip
def test_bad_seeds_stop_with_the_value(text: str, shown: str) -> None:
    with pytest.raises(SystemExit, match=shown):
        _bench()._seeds(text)


def test_a_training_without_validation_is_taken_at_its_last_state(tmp_path: Path) -> None:
    bench = _bench()
    assert bench._trained(tmp_path) == tmp_path / "checkpoint_latest.pt"
    (tmp_path / "model.pt").write_bytes(b"x")
    assert bench._trained(tmp_path) == tmp_path / "model.pt"
