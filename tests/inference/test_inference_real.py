"""Real LPS studies (``../shared/data``): masks overlay the input voxel for voxel.

Two independent oracles, since a random-weight network cannot say where a mask must be:

* the real study's own reference segmentation, encoded into images that carry the real
  header (LPS, qform code 2, sform code 1): the mask must equal the reference exactly;
* the unmodified real images through a pointwise stand-in network, whose correct output can
  be computed directly on the input grid with numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from _infer_utils import (
    BUNDLE,
    EncodedRegions,
    assert_same_geometry,
    encode,
    sign_thresholds,
    tiny_checkpoint,
)

from tumorseg.conventions import CHANNEL_ORDER, LAYOUTS, REGIONS
from tumorseg.inference import Predictor
from tumorseg.transforms import regions_to_labels

pytestmark = pytest.mark.shared_data

CASE_2020 = "TCGA-DU-7294"
CASE_2023 = "BraTS-GLI-00001-000"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    # Large windows without overlap: the stand-in network is pointwise, so the window layout
    # does not change its output, and fewer windows keep a 240x240x155 study fast.
    return Predictor.from_bundle(
        BUNDLE, network=EncodedRegions(), roi_size=(96, 96, 96), overlap=0.0, device="cpu"
    )


def _files(root: Path, layout: str, case_id: str) -> list[Path]:
    suffixes = LAYOUTS[layout].modality_suffixes
    return [root / case_id / f"{case_id}{suffixes[m]}.nii.gz" for m in CHANNEL_ORDER]


def test_real_lps_study_mask_equals_its_reference(
    shared_data: Path, predictor: Predictor, tmp_path: Path
) -> None:
    source = shared_data / "brats2020_layout"
    real = _files(source, "brats2021", CASE_2020)
    flair: Any = nib.load(str(real[0]))
    assert nib.aff2axcodes(flair.affine) == ("L", "P", "S")
    seg = np.asanyarray(nib.load(str(source / CASE_2020 / f"{CASE_2020}_seg.nii.gz")).dataobj)
    brain = np.zeros(flair.shape, bool)
    for path in real:
        brain |= np.asanyarray(nib.load(str(path)).dataobj) > 0
    images = encode(seg.astype(np.uint8), brain, "brats2021")

    # The encoded study keeps the real header byte for byte (only the voxels change).
    case_dir = tmp_path / "in" / CASE_2020
    case_dir.mkdir(parents=True)
    for channel, path in zip(images, real, strict=True):
        img = nib.Nifti1Image(channel.astype(np.int16), None, header=flair.header.copy())
        nib.save(img, case_dir / path.name)

    predictor.network.thresholds = sign_thresholds(images)  # this tumour has no ET
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", progress=False)
    assert report.written == [CASE_2020], report.failed
    mask_path = tmp_path / "out" / f"{CASE_2020}.nii.gz"
    assert_same_geometry(mask_path, real[0])  # the original file in ../shared/data
    mask = np.asanyarray(nib.load(str(mask_path)).dataobj)
    assert np.array_equal(mask, seg), f"{int((mask != seg).sum())} voxels differ from _seg"


def _expected_stub_labels(files: list[Path], convention: str) -> np.ndarray:
    """What the pointwise stand-in network must give, computed on the input grid."""
    regions = []
    for path in files[: len(REGIONS)]:
        x = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)
        nonzero = x != 0
        z = np.zeros_like(x)
        z[nonzero] = (x[nonzero] - x[nonzero].mean()) / x[nonzero].std()
        # logit 20 z - 1 > 0  <=>  z > 0.05
        regions.append(nonzero & (z > 0.05))
    return regions_to_labels(np.stack(regions), convention)


@pytest.mark.parametrize(
    ("folder", "layout", "case_id"),
    [("brats2020_layout", "brats2021", CASE_2020), ("brats2023_layout", "brats2023", CASE_2023)],
)
def test_real_images_land_on_their_own_grid(
    shared_data: Path,
    predictor: Predictor,
    tmp_path: Path,
    folder: str,
    layout: str,
    case_id: str,
) -> None:
    files = _files(shared_data / folder, layout, case_id)
    predictor.network.thresholds = [0.0, 0.0, 0.0]
    report = predictor.predict_folder(shared_data / folder, tmp_path / "out", progress=False)
    assert report.written == [case_id], report.failed
    mask_path = tmp_path / "out" / f"{case_id}.nii.gz"
    assert_same_geometry(mask_path, files[0])

    mask = np.asanyarray(nib.load(str(mask_path)).dataobj)
    expected = _expected_stub_labels(files, LAYOUTS[layout].label_convention)
    # float32 (pipeline) against float64 (here) statistics may tip voxels sitting exactly on
    # the threshold; anything misplaced would differ by whole structures.
    differ = int((mask != expected).sum())
    assert (expected > 0).sum() > 100_000
    assert differ <= 10, f"{differ} voxels differ"


@pytest.mark.slow
def test_real_study_through_the_bundle_network(shared_data: Path, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    predictor = Predictor.from_bundle(
        BUNDLE,
        checkpoint=ckpt,
        overrides={"filters": [4, 8, 16, 32, 64]},
        roi_size=(96, 96, 96),
        overlap=0.0,
        device="cpu",
    )
    files = _files(shared_data / "brats2020_layout", "brats2021", CASE_2020)
    result = predictor.predict_case(files)
    path = result.save(tmp_path)
    assert_same_geometry(path, files[0])
    assert set(np.unique(result.label)) <= {0, 1, 2, 4}
