"""DICOM series read by ITK keep their exact geometry and real values (tumorseg.io_dicom).

Each series is written independently with pydicom (``tests/_dicom_utils.py``) from a volume
and a RAS affine; reading it back must give the same voxels and, voxel for voxel, the same
world position: oblique, anisotropic, and a left-handed grid (which ITK stacks the other way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _dicom_utils import write_dicom_series
from tumorseg.data.synthetic import orientation_affine
from tumorseg.io_dicom import find_dicom_series, holds_dicom, is_dicom_file, read_dicom_series

pytest.importorskip("pydicom")

# (orientation, spacing mm, oblique degrees, shape): the NIfTI geometry tests' grids
GEOMETRIES = {
    "LPS": ("LPS", (1.0, 1.0, 1.0), 0.0, (12, 10, 8)),
    "oblique-LPS-17deg": ("LPS", (1.0, 1.0, 1.0), 17.0, (12, 10, 8)),
    "anisotropic-oblique-2.2x1x1.4": ("LPS", (2.2, 1.0, 1.4), 12.0, (8, 14, 10)),
    "RAS-left-handed-in-LPS": ("RAS", (1.0, 1.4, 2.2), 0.0, (12, 10, 8)),
    "permuted-ASL": ("ASL", (1.0, 1.0, 1.0), 0.0, (10, 8, 12)),
}


def _same_world(
    got: np.ndarray, got_affine: np.ndarray, want: np.ndarray, want_affine: np.ndarray
) -> None:
    """Same voxels at the same world positions, whatever the voxel order."""
    index_map = np.linalg.inv(want_affine) @ got_affine  # got index -> want index
    rotation = np.round(index_map[:3, :3])
    np.testing.assert_allclose(index_map[:3, :3], rotation, atol=1e-6)
    assert sorted(np.abs(rotation).sum(axis=0)) == [1, 1, 1], rotation  # a signed permutation
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in got.shape], indexing="ij"), -1)
    where = np.rint(ijk @ rotation.T + index_map[:3, 3]).astype(int)
    np.testing.assert_allclose(ijk @ index_map[:3, :3].T + index_map[:3, 3], where, atol=1e-5)
    assert np.array_equal(got, want[where[..., 0], where[..., 1], where[..., 2]])


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_series_keeps_exact_geometry_and_values(name: str, tmp_path: Path) -> None:
    orientation, spacing, oblique, shape = GEOMETRIES[name]
    affine = orientation_affine(orientation, shape=shape, spacing=spacing, oblique_degrees=oblique)
    volume = np.random.default_rng(1).integers(-50, 3000, shape).astype(np.float32)
    uid, sop_uids = write_dicom_series(
        tmp_path / "s", volume, affine, description="FLAIR", study_uid="1.2.3", series_number=1
    )
    (series,) = find_dicom_series(tmp_path)
    assert series.series_uid == uid and series.description == "FLAIR"
    assert len(series.files) == shape[2]
    voxels, got_affine = read_dicom_series(series)
    assert voxels.dtype == np.float32
    _same_world(voxels, got_affine, volume, affine)
    spacings = np.linalg.norm(got_affine[:3, :3], axis=0)
    np.testing.assert_allclose(sorted(spacings), sorted(spacing), atol=1e-6)
    if np.linalg.det(affine[:3, :3]) > 0:  # right-handed (also in LPS): ITK keeps the order
        assert np.array_equal(voxels, volume)
        np.testing.assert_allclose(got_affine, affine, atol=1e-6)


def test_rescale_slope_and_intercept_give_real_values(tmp_path: Path) -> None:
    affine = orientation_affine("LPS", shape=(6, 5, 4))
    volume = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4) * 3 - 40
    write_dicom_series(
        tmp_path / "s",
        volume,
        affine,
        description="T1",
        study_uid="1.2.3",
        series_number=1,
        slope=0.5,
        intercept=-40.0,
    )
    voxels, _ = read_dicom_series(find_dicom_series(tmp_path)[0])
    assert np.array_equal(voxels, volume)


def test_series_are_told_apart_and_files_are_stacked_by_position(tmp_path: Path) -> None:
    affine = orientation_affine("LPS", shape=(6, 5, 4))
    volume = np.random.default_rng(0).integers(0, 100, (6, 5, 4)).astype(np.float32)
    uids = {}
    for n, description in enumerate(("T2", "FLAIR")):
        uids[description], _ = write_dicom_series(
            tmp_path / "case" / description.lower(),
            volume + n,
            affine,
            description=description,
            study_uid="1.2.3",
            series_number=n + 1,
        )
    found = find_dicom_series(tmp_path / "case")
    assert {s.description: s.series_uid for s in found} == uids
    for series in found:
        # Files are named in reverse slice order: the stacking follows the positions.
        assert [f.name for f in series.files] == [f"IM{4 - k:05d}.dcm" for k in range(4)]
    assert holds_dicom(tmp_path) and is_dicom_file(found[0].files[0])


def test_bad_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_dicom_series(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert not holds_dicom(tmp_path) and not is_dicom_file(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="no DICOM series in"):
        find_dicom_series(tmp_path)


def test_truncated_file_is_a_one_line_error(tmp_path: Path) -> None:
    affine = orientation_affine("LPS", shape=(6, 5, 4))
    write_dicom_series(
        tmp_path / "s",
        np.ones((6, 5, 4)),
        affine,
        description="T1",
        study_uid="1.2.3",
        series_number=1,
    )
    (series,) = find_dicom_series(tmp_path)
    data = series.files[1].read_bytes()
    series.files[1].write_bytes(data[: len(data) - 20])  # pixel data cut short
    with pytest.raises(ValueError, match=r"cannot read DICOM series .*'T1'") as err:
        read_dicom_series(series)
    assert "\n" not in str(err.value)
