"""Test helper: a volume written as a DICOM MR series, one file per slice, LPS geometry.

:func:`write_dicom_series` is the inverse of :func:`tumorseg.io_dicom.read_dicom_series`
built independently with pydicom: voxel ``(i, j, k)`` of an ``(X, Y, Z)`` volume is column
``i``, row ``j`` of the file of slice ``k``, and the RAS affine becomes DICOM's
``ImageOrientationPatient`` / ``ImagePositionPatient`` / ``PixelSpacing`` in LPS. Files are
named in reverse slice order, so a reader that sorted by name would stack them upside down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    description: str,
    study_uid: str,
    series_number: int,
    slope: float = 1.0,
    intercept: float = 0.0,
    patient_id: str = "TEST",
    frame_uid: str = "1.2.826.0.1.3680043.8.498.1",
) -> tuple[str, list[str]]:
    """Write ``volume`` (real values) as stored int16 ``(value - intercept) / slope``.

    Returns:
        ``(SeriesInstanceUID, SOPInstanceUIDs in slice order)``.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    stored = (np.asarray(volume, np.float64) - intercept) / slope
    assert np.array_equal(stored, np.round(stored)), "values must be exact after rescaling"
    assert stored.min() >= -32768 and stored.max() <= 32767
    stored = stored.astype(np.int16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    nz = stored.shape[2]
    sop_uids = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID = patient_id
        ds.PatientName = "Test^Patient"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = "MR"
        ds.Manufacturer = "tumorseg tests"
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTrainLength = 1
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]  # row, column spacing
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{intercept:.10g}"
        ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(folder / f"IM{nz - k:05d}.dcm", enforce_file_format=True)
        sop_uids.append(ds.SOPInstanceUID)
    return series_uid, sop_uids


#: Series description and (slope, intercept) of each modality, in CHANNEL_ORDER: the stored
#: integers differ from the real values in three of the four series.
STUDY_SERIES = (("FLAIR", 1.0, 0.0), ("T1", 0.5, -10.0), ("T1ce", 1.0, -100.0), ("T2", 0.5, 0.0))


def write_dicom_study(
    case_dir: Path,
    images: np.ndarray,
    affine: np.ndarray,
    *,
    descriptions: tuple[str, ...] | None = None,
) -> dict[str, tuple[str, list[str]]]:
    """Four MR series of one study (``images`` is ``(4, X, Y, Z)`` in CHANNEL_ORDER), one
    sub-folder each, sharing a StudyInstanceUID.

    Returns:
        description -> (SeriesInstanceUID, SOPInstanceUIDs in slice order).
    """
    from pydicom.uid import generate_uid

    study_uid, frame_uid = generate_uid(), generate_uid()
    out = {}
    for n, (channel, (default, slope, intercept)) in enumerate(
        zip(images, STUDY_SERIES, strict=True)
    ):
        description = descriptions[n] if descriptions else default
        out[description] = write_dicom_series(
            case_dir / f"series{n + 1}",
            channel,
            affine,
            description=description,
            study_uid=study_uid,
            series_number=n + 1,
            slope=slope,
            intercept=intercept,
            patient_id=case_dir.name,
            frame_uid=frame_uid,
        )
    return out


def seg_labels_on_grid(
    seg_path: Path, affine: np.ndarray, shape: tuple[int, ...], classes: dict[str, int]
) -> np.ndarray:
    """Decode a DICOM-SEG with highdicom and resample it (nearest voxel) onto a RAS grid.

    Segments are mapped to label values by their segment label (``classes``: name -> value);
    grid voxels outside the SEG's volume (empty frames are omitted) are 0. The SEG voxel
    centres must coincide with grid voxel centres (to 1e-3 voxel), else the grids differ.
    """
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    volume = seg.get_volume(combine_segments=True, relabel=False)
    numbers = np.asarray(volume.array)
    labels = np.zeros(numbers.shape, np.uint8)
    for number in seg.get_segment_numbers():
        labels[numbers == number] = classes[seg.get_segment_description(number).segment_label]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world_lps = (LPS_TO_RAS @ np.asarray(affine, np.float64))[:3] @ np.c_[ijk, np.ones(len(ijk))].T
    seg_index = (volume.inverse_affine[:3] @ np.r_[world_lps, np.ones((1, len(ijk)))]).T
    nearest = np.rint(seg_index).astype(int)
    assert np.abs(seg_index - nearest).max() < 1e-3, "the SEG's grid is not the source's"
    inside = np.all((nearest >= 0) & (nearest < np.array(labels.shape)), axis=1)
    out = np.zeros(len(ijk), np.uint8)
    out[inside] = labels[tuple(nearest[inside].T)]
    return out.reshape(shape)


def referenced_uids(seg_path: Path) -> dict[str, set[str]]:
    """SeriesInstanceUID -> the SOPInstanceUIDs a SEG references (ReferencedSeriesSequence)."""
    import pydicom

    ds = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    return {
        item.SeriesInstanceUID: {
            i.ReferencedSOPInstanceUID for i in item.ReferencedInstanceSequence
        }
        for item in ds.ReferencedSeriesSequence
    }
