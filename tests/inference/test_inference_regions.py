"""A checkpoint trained with a resection-cavity channel infers RC without extra options (issue 16).

The checkpoint's description (``tumorseg_meta``) records its output ``regions``; inference
builds a four-output network from it and writes label 4 (RC) into ``brats2024`` output, drops
the cavity into background for an older convention (as ``convert_labels`` does), and lets the
tumour win where both are predicted. The network's last convolution is set to a constant so
where each label must land is known: everywhere in the brain's bounding box.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _infer_utils import BUNDLE, TINY_FILTERS
from monai.bundle import ConfigParser

from tumorseg.checkpoint_meta import CheckpointMeta, checkpoint_with_meta
from tumorseg.cli import main
from tumorseg.data.synthetic import generate_dataset
from tumorseg.inference import Predictor

RC4 = ["WT", "TC", "ET", "RC"]


def _constant_checkpoint(path: Path, logits: list[float], regions: list[str] = RC4) -> Path:
    """The bundle's tiny DynUNet whose output is ``logits`` at every voxel, with its description."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"filters": TINY_FILTERS, "regions": regions})
    network = parser.get_parsed_content("network_def")
    last = network.output_block.conv.conv
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(logits))
    meta = CheckpointMeta(
        network_name="dynunet",
        network_settings={"filters": TINY_FILTERS},
        pixdim=[1.0, 1.0, 1.0],
        roi_size=[32, 32, 32],
        label_convention="brats2024",
        regions=regions,
    )
    torch.save(checkpoint_with_meta({"network": network.state_dict()}, meta), path)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rc_infer")
    generate_dataset(root / "in", num_cases=1, shape=(32, 30, 28), seed=4)
    return root / "in"


def _infer(study: Path, out: Path, checkpoint: Path, convention: str) -> np.ndarray:
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(study), "--output", str(out)]
    args += ["--checkpoint", str(checkpoint), "--label-convention", convention]
    args += ["--device", "cpu", "--no-progress", "--save-probabilities"]
    assert main(args) == 0
    (mask,) = sorted(out.glob("*.nii.gz"))
    return np.asarray(nib.load(mask).dataobj)


def test_a_four_region_checkpoint_writes_the_cavity(study: Path, tmp_path: Path) -> None:
    checkpoint = _constant_checkpoint(tmp_path / "model.pt", [-20.0, -20.0, -20.0, 20.0])
    predictor = Predictor.from_bundle(BUNDLE, checkpoint=checkpoint, device="cpu")
    assert predictor.regions == tuple(RC4)
    assert predictor.network.output_block.conv.conv.out_channels == 4

    label = _infer(study, tmp_path / "b24", checkpoint, "brats2024")
    assert set(np.unique(label).tolist()) == {0, 4}
    assert np.count_nonzero(label == 4) > label.size // 4  # the brain's bounding box
    with np.load(next((tmp_path / "b24" / "probabilities").glob("*.npz"))) as probs:
        assert probs["regions"].tolist() == RC4
        assert probs["probabilities"].shape == (4, *label.shape)

    # brats2021 has no resection cavity: it becomes background, as convert_labels does.
    older = _infer(study, tmp_path / "b21", checkpoint, "brats2021")
    assert not older.any()


def test_the_tumour_wins_where_both_are_predicted(study: Path, tmp_path: Path) -> None:
    checkpoint = _constant_checkpoint(tmp_path / "model.pt", [20.0, -20.0, -20.0, 20.0])
    label = _infer(study, tmp_path / "out", checkpoint, "brats2024")
    assert set(np.unique(label).tolist()) == {0, 2}  # WT outside TC: SNFH, not RC


def test_asking_for_other_regions_than_the_checkpoint_is_refused(tmp_path: Path) -> None:
    checkpoint = _constant_checkpoint(tmp_path / "model.pt", [0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"regions=\['WT','TC','ET'\] \(the checkpoint has "):
        Predictor.from_bundle(
            BUNDLE, checkpoint=checkpoint, overrides={"regions": ["WT", "TC", "ET"]}
        )
    three = _constant_checkpoint(tmp_path / "three.pt", [0.0, 0.0, 0.0], RC4[:3])
    assert Predictor.from_bundle(BUNDLE, checkpoint=three, device="cpu").regions == tuple(RC4[:3])
