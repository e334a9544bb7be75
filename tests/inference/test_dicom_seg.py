"""DICOM studies in, DICOM-SEG out: masks land where drawn; the SEG references its sources.

Each study is an encoded phantom (``_infer_utils``) written as four DICOM MR series with
pydicom (``tests/_dicom_utils.py``: one file per slice, LPS geometry, rescale slope and
intercept in three series): the correct mask is known voxel for voxel, so any error of
orientation, slice order or rescaling moves the mask away from the drawn label.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _infer_utils import (
    BUNDLE,
    TINY_FILTERS,
    EncodedRegions,
    encoded_phantom,
    midpoint_thresholds,
    sphere_study,
    tiny_checkpoint,
)

from _dicom_utils import referenced_uids, seg_labels_on_grid, write_dicom_study
from tumorseg.cli import main
from tumorseg.conventions import get_convention
from tumorseg.data.synthetic import orientation_affine
from tumorseg.inference import Predictor

pytest.importorskip("highdicom")

CLASSES = get_convention("brats2021").classes


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_bundle(
        BUNDLE, network=EncodedRegions(), roi_size=(32, 32, 32), device="cpu"
    )


def _study(root: Path, *, oblique: float = 17.0, descriptions: tuple[str, ...] | None = None):
    shape = (34, 32, 30)
    affine = orientation_affine("LPS", shape=shape, oblique_degrees=oblique)
    images, drawn = encoded_phantom(shape, seed=7, orientation="LPS")
    uids = write_dicom_study(root / "CASE1", images, affine, descriptions=descriptions)
    return affine, drawn, uids


def test_oblique_dicom_study_mask_and_seg_land_where_drawn(
    predictor: Predictor, tmp_path: Path
) -> None:
    affine, drawn, uids = _study(tmp_path / "in")
    predictor.network.thresholds = [0.0, 0.0, 0.0]
    report = predictor.predict_folder(
        tmp_path / "in", tmp_path / "out", progress=False, output_formats=("nifti", "dicom-seg")
    )
    assert report.written == ["CASE1"], report.failed

    nifti = nib.load(str(tmp_path / "out" / "CASE1.nii.gz"))
    np.testing.assert_allclose(nifti.affine, affine, atol=1e-5)
    assert np.array_equal(np.asanyarray(nifti.dataobj), drawn)

    seg_path = tmp_path / "out" / "CASE1.seg.dcm"
    decoded = seg_labels_on_grid(seg_path, affine, drawn.shape, CLASSES)
    assert np.array_equal(decoded, drawn), f"{int((decoded != drawn).sum())} voxels differ"

    # The SEG names all four source series, instance by instance, in the source study.
    refs = referenced_uids(seg_path)
    assert refs == {series: set(sops) for series, sops in uids.values()}
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    flair_series, flair_sops = uids["FLAIR"]
    assert seg.StudyInstanceUID == referenced_study(tmp_path / "in" / "CASE1")
    per_frame = {
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert per_frame <= set(flair_sops) and len(per_frame) > 1
    labels = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
    assert labels == ["NCR", "ED", "ET"]
    et = seg.get_segment_description(3)
    assert et.segmented_property_type.value == "108369006"
    assert et.segmented_property_category.value == "49755003"
    assert et.algorithm_identification[0].AlgorithmName == "tumorseg"
    assert seg.get_segment_description(1).segmented_property_type.meaning == "Necrosis"
    assert str(seg.SegmentSequence[0].RecommendedDisplayCIELabValue) != ""


def referenced_study(case_dir: Path) -> str:
    import pydicom

    first = next(p for p in sorted(case_dir.rglob("*.dcm")))
    return str(pydicom.dcmread(str(first), stop_before_pixels=True).StudyInstanceUID)


def test_anisotropic_oblique_dicom_study_is_resampled_there_and_back(
    predictor: Predictor, tmp_path: Path
) -> None:
    shape, spacing = (20, 40, 30), (2.2, 1.0, 1.4)
    affine = orientation_affine("LPS", shape=shape, spacing=spacing, oblique_degrees=12.0)
    images, drawn, _ = sphere_study(shape, affine, offset_mm=(-5.0, 4.0, -3.0), seed=3)
    write_dicom_study(tmp_path / "in" / "ANISO", images, affine)
    # Same study as NIfTI: the DICOM path must give the NIfTI path's mask exactly.
    from tumorseg.data.synthetic import write_case

    write_case(tmp_path / "nifti", "ANISO", images, None, affine=affine)
    predictor.network.thresholds = midpoint_thresholds(images)
    report = predictor.predict_folder(
        tmp_path / "in", tmp_path / "out", progress=False, output_formats="dicom-seg"
    )
    assert report.written == ["ANISO"], report.failed
    assert not (tmp_path / "out" / "ANISO.nii.gz").exists()  # SEG instead of NIfTI
    predictor.predict_folder(tmp_path / "nifti", tmp_path / "out_nifti", progress=False)
    want = np.asanyarray(nib.load(str(tmp_path / "out_nifti" / "ANISO.nii.gz")).dataobj)
    got = seg_labels_on_grid(tmp_path / "out" / "ANISO.seg.dcm", affine, shape, CLASSES)
    assert np.array_equal(got, want)
    assert (want > 0).sum() > 100 and set(np.unique(want)) == {0, 1, 2, 4}


def test_resume_skips_done_cases_and_keeps_volumes(predictor: Predictor, tmp_path: Path) -> None:
    _study(tmp_path / "in", oblique=0.0)
    predictor.network.thresholds = [0.0, 0.0, 0.0]
    out = tmp_path / "out"
    predictor.predict_folder(tmp_path / "in", out, progress=False, output_formats="dicom-seg")
    seg = out / "CASE1.seg.dcm"
    before = (seg.stat().st_mtime_ns, (out / "volumes.csv").read_text())
    (out / "volumes.csv").unlink()  # the volumes are read back from the SEG
    calls = predictor.network.calls
    report = predictor.predict_folder(
        tmp_path / "in", out, progress=False, output_formats="dicom-seg"
    )
    assert report.skipped == ["CASE1"] and not report.written
    assert predictor.network.calls == calls
    assert seg.stat().st_mtime_ns == before[0]
    assert (out / "volumes.csv").read_text() == before[1]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_dicom_map_names_site_descriptions(predictor: Predictor, tmp_path: Path) -> None:
    descriptions = ("Ax FLAIR fs", "SAG T1 pre", "T1 MPRAGE post", "Ax T2 TSE")
    _, drawn, _ = _study(tmp_path / "in", oblique=0.0, descriptions=descriptions)
    predictor.network.thresholds = [0.0, 0.0, 0.0]
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "bad", progress=False)
    assert not report.written and len(report.failed) == 1
    reason = report.failed[0].reason
    assert "no series described as flair" in reason and "Ax FLAIR fs" in reason
    assert "--dicom-map" in reason
    assert "failures.csv" and "Ax FLAIR fs" in (tmp_path / "bad" / "failures.csv").read_text()

    dicom_map = "flair=Ax FLAIR fs,t1=SAG T1 pre,t1ce=T1 MPRAGE post,t2=ax t2 tse"
    report = predictor.predict_folder(
        tmp_path / "in", tmp_path / "out", progress=False, dicom_map=dicom_map
    )
    assert report.written == ["CASE1"], report.failed
    mask = np.asanyarray(nib.load(str(tmp_path / "out" / "CASE1.nii.gz")).dataobj)
    assert np.array_equal(mask, drawn)


@pytest.mark.parametrize(
    ("dicom_map", "message"),
    [
        ("flair=A,pd=B", "names modality 'pd'"),
        ("flair A", "must look like flair=DESCRIPTION"),
        ("flair=  ", "empty series description"),
    ],
)
def test_bad_dicom_map_is_refused_before_any_study(
    predictor: Predictor, tmp_path: Path, dicom_map: str, message: str
) -> None:
    _study(tmp_path / "in", oblique=0.0)
    with pytest.raises(ValueError, match=message):
        predictor.predict_folder(
            tmp_path / "in", tmp_path / "out", progress=False, dicom_map=dicom_map
        )
    assert not (tmp_path / "out").exists()


def test_series_on_other_grids_fail_by_name(predictor: Predictor, tmp_path: Path) -> None:
    from _dicom_utils import write_dicom_series

    _study(tmp_path / "in", oblique=0.0)
    t2 = next(p for p in (tmp_path / "in" / "CASE1").iterdir() if p.name == "series4")
    for f in t2.iterdir():
        f.unlink()
    shifted = orientation_affine("LPS", shape=(34, 32, 30))
    shifted[:3, 3] += 2.0
    write_dicom_series(
        t2,
        np.ones((34, 32, 30)) * 100,
        shifted,
        description="T2",
        study_uid="1.2.9",
        series_number=4,
    )
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", progress=False)
    assert len(report.failed) == 1
    assert "t2 series 'T2' differs from FLAIR in position" in report.failed[0].reason
    assert report.failed[0].file.endswith(".dcm")
    assert not (tmp_path / "out" / "CASE1.nii.gz").exists()


def test_dicom_seg_needs_dicom_input(predictor: Predictor, tmp_path: Path) -> None:
    from _infer_utils import write_encoded_dataset

    write_encoded_dataset(tmp_path / "in", 1)
    with pytest.raises(ValueError, match="dicom-seg needs DICOM input"):
        predictor.predict_folder(
            tmp_path / "in", tmp_path / "out", progress=False, output_formats="dicom-seg"
        )
    with pytest.raises(ValueError, match="output format must be some of"):
        predictor.predict_folder(
            tmp_path / "in", tmp_path / "out", progress=False, output_formats="nifti,dicom"
        )


def test_missing_highdicom_is_named_with_the_extra(
    predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _study(tmp_path / "in", oblique=0.0)
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'tumorseg\[dicom\]'"):
        predictor.predict_folder(
            tmp_path / "in", tmp_path / "out", progress=False, output_formats="dicom-seg"
        )


def test_cli_writes_seg_from_dicom_with_a_real_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _study(tmp_path / "in", oblique=0.0)
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    args = [
        "infer", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
        "--checkpoint", str(ckpt), "--override", f"filters={TINY_FILTERS}",
        "--roi-size", "32", "32", "32", "--device", "cpu", "--no-progress",
        "--output-format", "nifti,dicom-seg",
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    import highdicom as hd

    seg = hd.seg.segread(str(tmp_path / "out" / "CASE1.seg.dcm"))
    ident = seg.get_segment_description(1).algorithm_identification[0]
    assert ident.AlgorithmName == "BraTS MRI segmentation (tumorseg)"
    assert "0.3.0" in str(ident.AlgorithmParameters) and "pytorch" in str(ident.AlgorithmParameters)
    nifti = np.asanyarray(nib.load(str(tmp_path / "out" / "CASE1.nii.gz")).dataobj)
    affine = orientation_affine("LPS", shape=(34, 32, 30))
    assert np.array_equal(
        seg_labels_on_grid(tmp_path / "out" / "CASE1.seg.dcm", affine, nifti.shape, CLASSES), nifti
    )

    assert main([*args[:3], "--output", str(tmp_path / "x"), "--dicom-map", "t5=x"]) == 2
    assert "names modality 't5'" in capsys.readouterr().err


def _label_on_study_grid(tmp_path: Path) -> tuple[object, np.ndarray, np.ndarray]:
    """A DICOM study, its FLAIR grid's RAS affine, and a brats2024 label map on that grid
    with all four classes (label 4, the resection cavity, next to the tumour)."""
    from tumorseg.inference.dicom_input import find_dicom_study, load_dicom_study

    shape = (34, 32, 30)
    affine = orientation_affine("LPS", shape=shape, oblique_degrees=17.0)
    images, _ = encoded_phantom(shape, seed=7, orientation="LPS")
    write_dicom_study(tmp_path / "CASE1", images, affine)
    study = find_dicom_study("CASE1", tmp_path / "CASE1", None)
    loaded = load_dicom_study(study)
    assert tuple(loaded.shape[1:]) == shape
    label = np.zeros(shape, np.uint8)
    label[8:20, 6:22, 5:20] = 2  # ED
    label[11:17, 9:19, 8:17] = 1  # NCR
    label[13:15, 12:16, 10:15] = 3  # ET
    rng = np.random.default_rng(0)
    cavity = np.zeros(shape, bool)
    cavity[20:29, 10:24, 12:24] = True
    cavity &= rng.random(shape) > 0.2  # an irregular cavity, not a box
    label[cavity] = 4  # RC
    return study, np.asarray(loaded.affine, np.float64), label


def test_brats2024_resection_cavity_is_its_own_coded_segment(tmp_path: Path) -> None:
    import highdicom as hd

    from tumorseg.conventions import CLASS_COLOURS
    from tumorseg.inference.dicom_seg import PRIVATE_SCHEME, read_dicom_seg_labels, write_dicom_seg

    study, affine, label = _label_on_study_grid(tmp_path / "in")
    path = write_dicom_seg(tmp_path / "CASE1.seg.dcm", label, "brats2024", study)
    classes = get_convention("brats2024").classes
    decoded = seg_labels_on_grid(path, affine, label.shape, classes)
    assert (label == 4).sum() > 500
    assert np.array_equal(decoded == 4, label == 4), int(((decoded == 4) != (label == 4)).sum())
    assert np.array_equal(decoded, label)  # and every other class where drawn
    back, _ = read_dicom_seg_labels(path, "brats2024")
    assert sorted(np.unique(back)) == [0, 1, 2, 3, 4] and (back == 4).sum() == (label == 4).sum()

    seg = hd.seg.segread(str(path))
    numbers = seg.get_segment_numbers()
    assert [seg.get_segment_description(n).segment_label for n in numbers] == [
        "NCR", "ED", "ET", "RC"
    ]  # fmt: skip
    rc = seg.get_segment_description(4)
    assert (rc.segmented_property_type.value, rc.segmented_property_type.scheme_designator) == (
        "RC",
        PRIVATE_SCHEME,
    )
    assert rc.segmented_property_type.meaning == "Resection cavity"
    assert rc.segmented_property_category.value == "49755003"
    assert rc.tracking_id == "RC: resection cavity"
    want = hd.color.CIELabColor.from_rgb(*CLASS_COLOURS["RC"]).value
    assert tuple(seg.SegmentSequence[3].RecommendedDisplayCIELabValue) == tuple(want)
    assert want != hd.color.CIELabColor.from_rgb(*CLASS_COLOURS["ET"]).value
    schemes = [item.CodingSchemeDesignator for item in seg.CodingSchemeIdentificationSequence]
    assert schemes == [PRIVATE_SCHEME]


def test_segs_without_a_private_code_name_no_private_scheme(tmp_path: Path) -> None:
    import pydicom

    from tumorseg.inference.dicom_seg import write_dicom_seg

    study, _, label = _label_on_study_grid(tmp_path / "in")
    label[label == 4] = 0
    label[label == 3] = 4  # brats2021: 4 is enhancing tumour, not a cavity
    path = write_dicom_seg(tmp_path / "CASE1.seg.dcm", label, "brats2021", study)
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    assert "CodingSchemeIdentificationSequence" not in ds
    types = [item.SegmentedPropertyTypeCodeSequence[0] for item in ds.SegmentSequence]
    assert [(t.CodeValue, t.CodingSchemeDesignator) for t in types] == [
        ("6574001", "SCT"), ("79654002", "SCT"), ("108369006", "SCT")
    ]  # fmt: skip


def test_a_class_without_a_coded_concept_is_refused_and_nothing_written(tmp_path: Path) -> None:
    from tumorseg.inference.dicom_seg import write_dicom_seg

    study, _, label = _label_on_study_grid(tmp_path / "in")
    message = r"no DICOM coded concept for label class 'GTV' \(value 1\) of label convention"
    gtv = (label > 0).astype(np.uint8)
    with pytest.raises(ValueError, match=message + " 'brats2024menrt'") as err:
        write_dicom_seg(tmp_path / "out" / "CASE1.seg.dcm", gtv, "brats2024menrt", study)
    assert "\n" not in str(err.value) and "'RC'" in str(err.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
