"""Real studies (``../shared/data``) through the axial-slice bundle: the slices' predictions,
reassembled, sit on the study's own voxel grid (shape, affine, qform/sform and codes).

As in :mod:`test_inference_real`, a pointwise stand-in network makes the right mask known
(the study's own ``_seg``); the bundle's real FlexibleUNet (random weights) shows the whole
path keeps the geometry of an unlabelled BraTS 2023 study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from _infer_utils import EncodedRegions, assert_same_geometry, encode, sign_thresholds
from monai.bundle import ConfigParser

from tumorseg.conventions import CHANNEL_ORDER, LAYOUTS
from tumorseg.inference import Predictor

pytestmark = pytest.mark.shared_data

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_slice_segmentation_2d"
#: A narrow decoder keeps 155 slices of 192x192 quick on two CPU cores.
DECODER_CHANNELS = [32, 16, 16, 8, 8]


def _real_files(root: Path, layout: str, case_id: str) -> list[Path]:
    suffixes = LAYOUTS[layout].modality_suffixes
    return [root / case_id / f"{case_id}{suffixes[m]}.nii.gz" for m in CHANNEL_ORDER]


def test_real_study_mask_equals_its_reference_through_the_slices(
    shared_data: Path, tmp_path: Path
) -> None:
    """A pointwise stand-in network makes the right mask known: the real ``_seg``."""
    case = "TCGA-DU-7294"
    real = _real_files(shared_data / "brats2020_layout", "brats2021", case)
    flair: Any = nib.load(str(real[0]))
    seg_path = shared_data / "brats2020_layout" / case / f"{case}_seg.nii.gz"
    seg = np.asanyarray(nib.load(str(seg_path)).dataobj).astype(np.uint8)
    brain = np.zeros(flair.shape, bool)
    for path in real:
        brain |= np.asanyarray(nib.load(str(path)).dataobj) > 0
    case_dir = tmp_path / "in" / case
    case_dir.mkdir(parents=True)
    images = encode(seg, brain, "brats2021")
    for channel, path in zip(images, real, strict=True):
        image = nib.Nifti1Image(channel.astype(np.int16), None, header=flair.header.copy())
        nib.save(image, case_dir / path.name)

    predictor = Predictor.from_bundle(BUNDLE, network=EncodedRegions(), device="cpu")
    predictor.network.thresholds = sign_thresholds(images)  # this tumour has no ET
    assert predictor.roi_size == (192, 192)
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", progress=False)
    assert report.written == [case], report.failed
    mask_path = tmp_path / "out" / f"{case}.nii.gz"
    assert_same_geometry(mask_path, real[0])
    mask = np.asanyarray(nib.load(str(mask_path)).dataobj)
    assert np.array_equal(mask, seg), f"{int((mask != seg).sum())} voxels differ from _seg"


# ~19 s; the real study's geometry through the slices is checked above in make test.
@pytest.mark.slow
def test_real_study_through_the_bundle_network_keeps_its_geometry(
    shared_data: Path, tmp_path: Path
) -> None:
    case = "BraTS-GLI-00001-000"
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["decoder_channels"] = DECODER_CHANNELS
    network = parser.get_parsed_content("network_def")
    torch.save(network.state_dict(), tmp_path / "model.pt")
    predictor = Predictor.from_bundle(
        BUNDLE,
        checkpoint=tmp_path / "model.pt",
        overrides={"decoder_channels": DECODER_CHANNELS},
        device="cpu",
    )
    result = predictor.predict_case(
        _real_files(shared_data / "brats2023_layout", "brats2023", case), case_id=case
    )
    assert result.probabilities.shape == (3, 240, 240, 155)
    mask = result.save(tmp_path / "out")
    assert_same_geometry(mask, shared_data / "brats2023_layout" / case / f"{case}-t2f.nii.gz")
