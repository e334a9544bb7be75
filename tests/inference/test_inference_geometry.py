"""Masks overlay their input exactly: RAS, LAS, LPS, permuted, oblique, anisotropic, 4D inputs.

Each study is an encoded phantom (see ``_infer_utils``): the correct mask is known voxel for
voxel, so a flip, transpose, shift or crop error in orientation, cropping or the inverse makes
the mask differ from the label drawn in the input.
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
    dice,
    midpoint_thresholds,
    sphere_study,
    write_encoded_dataset,
)

from tumorseg.conventions import REGIONS, get_convention
from tumorseg.data.synthetic import orientation_affine, write_case
from tumorseg.inference import Predictor
from tumorseg.transforms import labels_to_regions


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_bundle(
        BUNDLE, network=EncodedRegions(), roi_size=(32, 32, 32), device="cpu"
    )


def _first_image(root: Path, case_id: str, layout: str) -> Path:
    if layout == "msd":
        return root / "imagesTs" / f"{case_id}.nii.gz"
    suffix = {"brats2021": "_flair", "brats2023": "-t2f"}[layout]
    return root / case_id / f"{case_id}{suffix}.nii.gz"


# (orientation, spacing mm, oblique degrees, layout, voxel shape)
EXACT = {
    "RAS": ("RAS", (1.0, 1.0, 1.0), 0.0, "brats2021", (34, 32, 30)),
    "LAS": ("LAS", (1.0, 1.0, 1.0), 0.0, "brats2021", (34, 32, 30)),
    "LPS": ("LPS", (1.0, 1.0, 1.0), 0.0, "brats2021", (34, 32, 30)),
    "permuted-ASL": ("ASL", (1.0, 1.0, 1.0), 0.0, "brats2021", (32, 30, 34)),
    "oblique-LPS": ("LPS", (1.0, 1.0, 1.0), 17.0, "brats2021", (34, 32, 30)),
    "msd-4d-LPS": ("LPS", (1.0, 1.0, 1.0), 0.0, "msd", (34, 32, 30)),
    "brats2023-RAS": ("RAS", (1.0, 1.0, 1.0), 0.0, "brats2023", (34, 32, 30)),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_mask_lands_exactly_where_drawn(name: str, predictor: Predictor, tmp_path: Path) -> None:
    orientation, spacing, oblique, layout, shape = EXACT[name]
    labels = write_encoded_dataset(
        tmp_path / "in",
        1,
        shape=shape,
        orientation=orientation,
        spacing=spacing,
        oblique_degrees=oblique,
        layout=layout,
        seed=7,
    )
    (case_id, drawn), *_ = labels.items()
    predictor.network.thresholds = [0.0, 0.0, 0.0]
    # The drawn tumour is off-centre along every axis, so any flip would move it.
    for axis in range(3):
        assert not np.array_equal(drawn, np.flip(drawn, axis))

    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", progress=False)
    assert report.written == [case_id] and report.ok

    mask_path = tmp_path / "out" / f"{case_id}.nii.gz"
    assert_same_geometry(mask_path, _first_image(tmp_path / "in", case_id, layout))
    mask = np.asanyarray(nib.load(str(mask_path)).dataobj)
    # Each layout's own label numbers by default (brats2023: ET = 3, msd: ED = 1).
    assert np.array_equal(mask, drawn), f"{name}: {int((mask != drawn).sum())} voxels differ"


# (orientation, spacing mm, oblique degrees, voxel shape, tumour centre offset from the middle, mm)
ANISOTROPIC = {
    "RAS-1x1.4x2.2": ("RAS", (1.0, 1.4, 2.2), 0.0, (40, 30, 20), (5.0, -4.0, 3.0)),
    "LPS-oblique-2.2x1x1.4": ("LPS", (2.2, 1.0, 1.4), 12.0, (20, 40, 30), (-5.0, 4.0, -3.0)),
}


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


@pytest.mark.parametrize("name", sorted(ANISOTROPIC))
def test_anisotropic_studies_are_resampled_there_and_back(
    name: str, predictor: Predictor, tmp_path: Path
) -> None:
    orientation, spacing, oblique, shape, offset = ANISOTROPIC[name]
    affine = orientation_affine(orientation, shape=shape, spacing=spacing, oblique_degrees=oblique)
    images, drawn, centre = sphere_study(shape, affine, offset_mm=offset, seed=3)
    write_case(tmp_path / "in", "ANISO", images, None, affine=affine)
    predictor.network.thresholds = midpoint_thresholds(images)
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", progress=False)
    assert report.ok, report.failed

    mask_path = tmp_path / "out" / "ANISO.nii.gz"
    assert_same_geometry(mask_path, tmp_path / "in" / "ANISO" / "ANISO_flair.nii.gz")
    mask = np.asanyarray(nib.load(str(mask_path)).dataobj)
    conv = get_convention("brats2021")
    got, want = labels_to_regions(mask, conv), labels_to_regions(drawn, conv)
    # Resampling to 1 mm and back may move a border voxel (it moves none today); the regions
    # must coincide with the drawn ones and sit where they were drawn in the world (mm).
    assert np.linalg.norm(_world_centroid(want[2], affine) - centre) < 1.0
    for c, region in enumerate(REGIONS):
        assert dice(got[c], want[c]) > 0.97, (region, dice(got[c], want[c]))
        shift = np.linalg.norm(_world_centroid(got[c], affine) - _world_centroid(want[c], affine))
        assert shift < 0.3, (region, shift)


def test_predict_case_in_memory_matches_the_written_mask(
    predictor: Predictor, tmp_path: Path
) -> None:
    labels = write_encoded_dataset(tmp_path / "in", 1, orientation="LAS", oblique_degrees=9.0)
    (case_id, drawn), *_ = labels.items()
    predictor.network.thresholds = [0.0, 0.0, 0.0]
    files = [
        tmp_path / "in" / case_id / f"{case_id}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")
    ]
    result = predictor.predict_case(files, label_convention="msd")
    assert result.case_id == case_id
    # msd numbers: ED 1, NCR 2, ET 3 (drawn in brats2021: NCR 1, ED 2, ET 4).
    expected = np.select([drawn == 4, drawn == 1, drawn == 2], [3, 2, 1], 0).astype(np.uint8)
    assert np.array_equal(result.label, expected)
    ref: Any = nib.load(str(files[0]))
    np.testing.assert_allclose(result.affine, ref.affine, atol=1e-6)
    assert result.probabilities.shape == (3, *drawn.shape)
    assert set(result.timings) == {"load", "preprocess", "network", "postprocess"}
    path = result.save(tmp_path / "out")
    assert np.array_equal(np.asanyarray(nib.load(str(path)).dataobj), expected)
