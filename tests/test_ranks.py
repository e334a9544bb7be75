"""The rank helpers: which process writes, and data generated once by rank 0 under DDP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _bundle_utils import free_port
from tumorseg.ranks import ensure_generated, is_rank0, process_group


def test_without_a_process_group_this_process_is_rank_0_of_1() -> None:
    assert process_group() == (0, 1)
    assert is_rank0()


_RANKS_SCRIPT = """
import sys
from pathlib import Path
import torch.distributed as dist
from tumorseg.ranks import ensure_generated

dist.init_process_group("gloo")
rank = dist.get_rank()

def generate(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"written_by_rank{rank}").write_text("x")

ensure_generated(sys.argv[1], settings={"n": 1}, generate=generate, marker=".m.json", what="set")
dist.barrier()
dist.destroy_process_group()
"""


def test_a_synthetic_set_is_generated_once_then_reused_and_redone_when_incomplete(
    tmp_path: Path,
) -> None:
    calls: list[Path] = []

    def generate(root: Path) -> None:
        calls.append(root)
        root.mkdir(parents=True, exist_ok=True)

    root = tmp_path / "set"
    for _ in range(2):
        ensure_generated(root, settings={"n": 1}, generate=generate, marker=".m.json", what="s")
    assert len(calls) == 1  # complete set present: not regenerated
    ensure_generated(root, settings={"n": 2}, generate=generate, marker=".m.json", what="s")
    assert len(calls) == 2  # other settings: redone
    (root / ".m.json").unlink()  # an interrupted generation leaves no marker
    ensure_generated(root, settings={"n": 2}, generate=generate, marker=".m.json", what="s")
    assert len(calls) == 3


def test_under_ddp_only_rank_0_generates_the_synthetic_set(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-port", str(free_port()), str(script), str(tmp_path / "set")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [".m.json", "written_by_rank0"]
