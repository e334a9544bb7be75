"""The newcomer's journey, as the README tells it, with no extra flags.

``make demo`` (its command, ``tumorseg demo``, with a short schedule), then
``make finetune PRETRAINED=demo/models/model.pt DATASET=demo/manifest.json`` (the demo's
checkpoint describes its network, the demo's manifest records its dataset folder), then
``tumorseg infer --checkpoint`` the fine-tuned model on the demo's held-out folder, then
``tumorseg evaluate``. Only the epoch counts and the demo's size are made small.

It runs in a scratch copy of the repository's top level (``tests/_scratch.py``: the bundle
copied, so the fine-tuning's ``models/`` stays out of the checkout), with ``make``'s install
step taken as done (``-o install``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from _scratch import scratch_checkout, scratch_env

BUNDLE = "bundles/brats_mri_segmentation"


def run(cmd: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd,
        cwd=cwd,
        env=scratch_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_demo_finetune_infer_evaluate_with_no_extra_flags(tmp_path: Path) -> None:
    work = scratch_checkout(tmp_path / "repo")
    tumorseg = str(work / ".venv" / "bin" / "tumorseg")
    # make demo = `tumorseg demo --workdir demo`; a short, small demo.
    run(
        [
            tumorseg,
            "demo",
            "--workdir",
            "demo",
            "--epochs",
            "2",
            "--num-train",
            "4",
            "--size",
            "32",
        ],
        work,
    )
    manifest = (work / "demo" / "manifest.json").read_text()
    assert '"dataset_dir_relative": "data/train"' in manifest

    finetune = run(
        [
            "make",
            "-o",
            "install",
            "finetune",
            "PRETRAINED=demo/models/model.pt",
            "DATASET=demo/manifest.json",
            "ARGS=--epochs 2",
        ],
        work,
    )
    # The demo's network settings came from the checkpoint, not from the user.
    assert "--filters '[8,16,32,64,128]'" in finetune.stdout, finetune.stdout[:2000]
    model = work / BUNDLE / "models" / "finetune" / "model.pt"
    assert model.is_file()

    run(
        [
            tumorseg,
            "infer",
            "--checkpoint",
            str(model.relative_to(work)),
            "--input",
            "demo/data/heldout",
            "--output",
            "predictions/",
        ],
        work,
    )
    assert len(list((work / "predictions").glob("*.nii.gz"))) == 4
    run(
        [
            tumorseg,
            "evaluate",
            "--pred",
            "predictions/",
            "--ref",
            "demo/data/heldout",
            "-o",
            "results/",
        ],
        work,
    )
    assert (work / "results" / "summary.csv").is_file()
