"""Multi-process training (issue #6): torchrun command, process group, shards, seeds, DDP bundle.

The bundle tests start ``tumorseg launch --nproc-per-node 2`` (torchrun, two Gloo CPU ranks)
on tiny synthetic data with 3 validation cases, so the validation shards are uneven (2 + 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from _bundle_utils import TINY as BUNDLE_TINY
from _bundle_utils import free_port, override_args
from tumorseg.cli import main
from tumorseg.training import load_checkpoint
from tumorseg.training.distributed import (
    DistributedContext,
    RankAgreement,
    cleanup_distributed,
    init_distributed,
    per_rank_memory_gb,
    per_rank_num_workers,
    rank_seed,
    shard_sampler,
    torchrun_command,
    unwrap_state_dict,
)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brats_mri_segmentation"
CONFIGS = BUNDLE / "configs"
TUMORSEG = Path(sys.executable).parent / "tumorseg"

# 6 cases in 2 folds: 3 train, 3 validation.
TINY = {**BUNDLE_TINY, "num_folds": 2}
# 3 training cases padded to 2 per rank, batch size 1: 2 iterations per epoch.
ITERATIONS_PER_EPOCH = 2


# ----------------------------------------------------------------------------- torchrun command


def test_single_node_command_runs_the_bundle_with_the_ddp_configs() -> None:
    cmd = torchrun_command(["--epochs", "3"], nproc_per_node=4, bundle="b", python="py")
    assert cmd[:5] == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "4"]
    assert "--standalone" in cmd and "--rdzv-endpoint" not in cmd
    run = cmd.index("monai.bundle")
    assert cmd[run - 1 : run + 3] == ["-m", "monai.bundle", "run", "training"]
    config = cmd[cmd.index("--config_file") + 1]
    assert json.loads(config) == ["b/configs/train.json", "b/configs/multi_gpu_train.json"]
    assert cmd[cmd.index("--bundle_root") + 1] == "b"
    assert cmd[-2:] == ["--epochs", "3"]


def test_user_config_file_replaces_the_default_one() -> None:
    cmd = torchrun_command(["--config_file", "mine.json"], nproc_per_node=2, bundle="b")
    assert cmd.count("--config_file") == 1
    assert cmd[cmd.index("--config_file") + 1] == "mine.json"


def test_multi_node_command_uses_the_rendezvous() -> None:
    cmd = torchrun_command(nproc_per_node=8, nnodes=2, rdzv_endpoint="n1:29500", rdzv_id="42")
    text = " ".join(cmd)
    assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint n1:29500 --rdzv-id 42" in text
    assert "--standalone" not in cmd
    static = torchrun_command(
        nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="n1:29500", rdzv_backend="static"
    )
    assert static[static.index("--node-rank") + 1] == "1"


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"nproc_per_node": 0}, "got 0"),
        ({"nproc_per_node": "many"}, "got 'many'"),
        ({"nnodes": 2}, "needs rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "n1"}, "got 'n1'"),
        ({"nnodes": 2, "rdzv_endpoint": "n1:1", "rdzv_backend": "static"}, "got None"),
        ({"nnodes": 0}, "got 0"),
    ],
)
def test_bad_launch_options_are_named_with_their_value(kwargs: dict[str, Any], shown: str) -> None:
    with pytest.raises(ValueError, match=shown):
        torchrun_command(**kwargs)


def test_cli_dry_run_prints_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["launch", "--nproc-per-node", "2", "--bundle", str(BUNDLE), "--dry-run", "--"])
    out = capsys.readouterr().out.strip()
    assert code == 0
    assert "torch.distributed.run --nproc-per-node 2 --standalone" in out
    assert "multi_gpu_train.json" in out and out.endswith(f"--bundle_root {BUNDLE}")


def test_cli_names_a_bundle_without_ddp_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["launch", "--bundle", str(tmp_path), "--dry-run"])
    assert code == 2
    assert "multi_gpu_train.json" in capsys.readouterr().err


def test_make_train_ddp_builds_the_same_command() -> None:
    out = subprocess.run(
        ["make", "-n", "train-ddp", "NPROC=3", "ARGS=--epochs 1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tumorseg launch --nproc-per-node 3" in out and "-- --epochs 1" in out


# ----------------------------------------------------------------------------- rank helpers


def test_rank_seeds_are_distinct_per_rank_and_the_same_every_run() -> None:
    seeds = [rank_seed(0, r) for r in range(8)]
    assert seeds[0] == 0  # rank 0 initialises the network like a single-process run
    assert len(set(seeds)) == 8
    assert seeds == [rank_seed(0, r) for r in range(8)]
    assert rank_seed(1, 0) not in seeds  # no overlap with the next run's seeds
    with pytest.raises(ValueError, match="rank=-1"):
        rank_seed(0, -1)


def _augmented_batches(seed: int) -> list[torch.Tensor]:
    from monai.data import DataLoader, Dataset
    from monai.transforms import RandGaussianNoised
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    data = [{"image": np.zeros((1, 4, 4), dtype=np.float32)} for _ in range(3)]
    loader = DataLoader(Dataset(data, RandGaussianNoised("image", prob=1.0)), batch_size=1)
    return [batch["image"].clone() for batch in loader]


def test_ranks_draw_distinct_augmentation_streams_reproducibly() -> None:
    try:
        rank0, rank1 = _augmented_batches(rank_seed(5, 0)), _augmented_batches(rank_seed(5, 1))
        again = _augmented_batches(rank_seed(5, 1))
    finally:
        from monai.utils import set_determinism

        set_determinism(seed=None)
    assert not torch.equal(rank0[0], rank1[0])
    assert all(torch.equal(a, b) for a, b in zip(rank1, again, strict=True))


def test_unwrap_state_dict_strips_the_ddp_prefix_only() -> None:
    net = torch.nn.Linear(2, 2)
    wrapped = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.nn.Linear(2, 2).load_state_dict(unwrap_state_dict(wrapped))
    assert unwrap_state_dict(net.state_dict()).keys() == net.state_dict().keys()


def test_per_rank_budget_splits_the_node() -> None:
    assert per_rank_memory_gb(8.0, local_world_size=4) == 2.0
    assert per_rank_num_workers(local_world_size=1) >= per_rank_num_workers(local_world_size=64)
    assert per_rank_num_workers(local_world_size=64) == 0
    with pytest.raises(ValueError, match="got 0"):
        per_rank_memory_gb(8.0, local_world_size=0)


def test_init_outside_torchrun_says_how_to_start() -> None:
    with pytest.raises(RuntimeError, match="tumorseg launch"):
        init_distributed(environ={})
    with pytest.raises(ValueError, match="'mpi'"):
        init_distributed(backend="mpi", environ={})


def test_rank_agreement_stops_ranks_that_resumed_from_different_checkpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    def gather(out: list[Any], mine: Any) -> None:  # rank 1 found no checkpoint
        out[0], out[1] = mine, (0, 0)

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    engine = SimpleNamespace(state=SimpleNamespace(epoch=3, iteration=6))
    with pytest.raises(RuntimeError, match="rank 0: epoch 3, rank 1: epoch 0"):
        RankAgreement()(engine)


def test_single_rank_group_gives_a_cpu_context_and_validation_shards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    for name, value in env.items():  # what torchrun sets; env:// reads them from os.environ
        monkeypatch.setenv(name, value)
    ctx = init_distributed(backend="gloo", timeout_s=30)
    try:
        assert ctx == DistributedContext(0, 1, 0, 1, "gloo", torch.device("cpu"))
        assert init_distributed(backend="gloo") == ctx  # idempotent
        assert ctx.device_ids is None and ctx.on_main("bar", False) == "bar"
        sampler = shard_sampler(list(range(3)), shuffle=False, even_divisible=False)
        assert list(sampler) == [0, 1, 2]
        with pytest.raises(ValueError, match="validation split has 0 case"):
            shard_sampler([], shuffle=False, even_divisible=False, name="validation split")
    finally:
        cleanup_distributed()
    assert not torch.distributed.is_initialized()


# ----------------------------------------------------------------------------- the DDP bundle


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tumorseg.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("ddp_data")
    generate_dataset(root, num_cases=6, shape=(32, 32, 32), seed=3, layout="brats2023")
    return root


def _overrides(dataset: Path, work: Path, **more: Any) -> list[str]:
    values = {
        **TINY,
        "dataset_dir": str(dataset),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "cache_dir": str(work / "cache"),
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "experiment_name": "ddp-test",
        **more,
    }
    return override_args(values)


def _launch(dataset: Path, work: Path, **more: Any) -> list[str]:
    return [str(TUMORSEG), "launch", "--nproc-per-node", "2", "--bundle", str(BUNDLE), "--"] + (
        _overrides(dataset, work, **more)
    )


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _mlflow_runs(work: Path) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp-test")
    return list(client.search_runs([experiment.experiment_id])) if experiment else []


@pytest.fixture(scope="module")
def ddp_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ddp_run")
    _run(_launch(dataset, work, epochs=1), work)
    return work


def test_ddp_run_writes_one_checkpoint_set_and_one_mlflow_run(ddp_run: Path) -> None:
    models = ddp_run / "models"
    files = sorted(p.name for p in models.iterdir() if p.is_file())
    assert files == ["checkpoint_latest.pt", "mlflow_run.json", "model.pt"]  # rank 0 only
    latest = load_checkpoint(models / "checkpoint_latest.pt")
    assert latest["trainer"]["iteration"] == ITERATIONS_PER_EPOCH
    # Saved from the bare network: loads without DDP (and into DDP's .module).
    assert not any(k.startswith("module.") for k in latest["network"])
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["filters"] = TINY["filters"]
    parser.get_parsed_content("network_def").load_state_dict(latest["network"])

    runs = _mlflow_runs(ddp_run)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.params["val_cases"] == "3" and run.data.params["train_cases"] == "3"


def test_ddp_validation_dice_equals_single_process_evaluation(dataset: Path, ddp_run: Path) -> None:
    logged = _mlflow_runs(ddp_run)[0].data.metrics
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating"]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json")]
    cmd += [
        "--config_file",
        json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]),
    ]
    cmd += ["--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root", str(BUNDLE)]
    cmd += _overrides(dataset, ddp_run, log_mlflow=False)
    _run(cmd, ddp_run)
    rows = (ddp_run / "eval" / "metrics.csv").read_text().split()
    single = {k: float(v) for k, v in (row.split(",") for row in rows)}
    per_case = (ddp_run / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(per_case) == 1 + 3  # the same 3 validation cases, each counted once
    # Not bit-equal: the two runs' forward passes differ in process layout and thread count,
    # so voxels near the threshold can flip (a fresh-clone `make test` saw ET differ by 1.2e-6).
    # A case counted twice or dropped moves these means by orders of magnitude more.
    for key in ("val_mean_dice", "val_dice_wt", "val_dice_tc", "val_dice_et"):
        assert logged[key] == pytest.approx(single[key], abs=1e-4), key


def _rank_pid(parent: int, rank: int) -> int | None:
    """Pid of the torchrun worker of ``rank`` (a child of ``parent``), read from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_killed_rank_stops_the_job_and_a_restart_resumes(dataset: Path, tmp_path: Path) -> None:
    latest = tmp_path / "models" / "checkpoint_latest.pt"
    cmd = _launch(dataset, tmp_path, epochs=200, ddp_timeout=60)
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-4000:]
    victim = _rank_pid(proc.pid, 1)  # `tumorseg launch` exec'd into torchrun: same pid
    assert victim is not None
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    stopped_after = time.monotonic() - killed_at
    assert proc.returncode != 0
    assert stopped_after < 60, f"job took {stopped_after:.0f} s to stop"
    assert "Signal 9 (SIGKILL)" in out, out[-4000:]  # torchrun names the failed rank's fate

    done = load_checkpoint(latest)["trainer"]["iteration"]
    assert done % ITERATIONS_PER_EPOCH == 0 and done >= ITERATIONS_PER_EPOCH
    epochs = done // ITERATIONS_PER_EPOCH + 1
    log = _run(_launch(dataset, tmp_path, epochs=epochs, ddp_timeout=60), tmp_path)
    assert "resumed from" in log
    assert load_checkpoint(latest)["trainer"]["iteration"] == epochs * ITERATIONS_PER_EPOCH
    runs = _mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the resumed run continued


_BUFFERS_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from tumorseg.training.distributed import SyncBuffers, cleanup_distributed

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4))
ddp = torch.nn.parallel.DistributedDataParallel(net)
for step in range(2):  # each rank normalises its own shard: running statistics drift apart
    ddp(torch.randn(4, 2, 8, 8) * (1 + rank) + rank).sum().backward()

def gathered():
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, net[1].running_mean.tolist())
    return out

before = gathered()
SyncBuffers(net)(None)  # what the evaluator runs at STARTED
after = gathered()
if rank == 0:
    json.dump({"before": before, "after": after}, open(sys.argv[1], "w"))
cleanup_distributed(ddp)
assert not dist.is_initialized() and not hasattr(ddp, "reducer")
"""


def test_validation_sees_rank_0_batchnorm_statistics_on_every_rank(tmp_path: Path) -> None:
    script = tmp_path / "buffers.py"
    script.write_text(_BUFFERS_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-port", str(free_port()), str(script), str(tmp_path / "out.json")]
    _run(cmd, tmp_path, timeout=120)
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["before"][0] != result["before"][1]  # what each rank would validate with
    assert result["after"][0] == result["after"][1] == result["before"][0]
