"""Synthetic BraTS-like studies: content, determinism, file layouts, headers and the CLI."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tumorseg.cli import main
from tumorseg.conventions import get_convention
from tumorseg.data.synthetic import files as synthetic_files
from tumorseg.data.synthetic import (
    generate_dataset,
    make_phantom,
    orientation_affine,
    write_case,
)

SHAPE = (48, 48, 40)
SEEDS = (0, 1, 2, 3)
CROSS = ndimage.generate_binary_structure(3, 1)


@lru_cache(maxsize=16)
def phantom(seed: int = 0, convention: str = "brats2021", shape: tuple[int, ...] = SHAPE):
    images, label = make_phantom(shape, seed=seed, label_convention=convention)
    images.setflags(write=False)
    label.setflags(write=False)
    return images, label


def masks(label: np.ndarray, convention: str = "brats2021") -> dict[str, np.ndarray]:
    classes = get_convention(convention).classes
    return {name: label == value for name, value in classes.items()}


# --------------------------------------------------------------------------------------------
# phantom content
# --------------------------------------------------------------------------------------------


def test_same_seed_same_arrays_other_seed_differs():
    images, label = phantom(0)
    again_images, again_label = make_phantom(SHAPE, seed=0)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(label, again_label)
    other_images, other_label = phantom(1)
    assert not np.array_equal(images, other_images)
    assert not np.array_equal(label, other_label)


def test_shape_dtype_and_zero_background():
    shape = (40, 48, 32)
    images, label = make_phantom(shape, seed=5)
    assert images.shape == (4, *shape) and images.dtype == np.float32
    assert label.shape == shape and label.dtype == np.uint8
    head = images[0] > 0
    # One foreground for every sequence: exactly 0 outside, strictly positive inside.
    for channel in images:
        np.testing.assert_array_equal(channel > 0, head)
        assert channel.min() == 0.0
    assert not np.any(label[~head])
    assert 0.15 < head.mean() < 0.6  # a head, not the whole box nor a speck
    # The head sits inside the field of view: every face of the box is background.
    for axis in range(3):
        assert not head.take([0, -1], axis=axis).any()
    # One connected brain, so CropForeground crops to it.
    assert ndimage.label(head)[1] == 1
    assert images.max() < 32767  # fits the int16 files


@pytest.mark.parametrize(
    ("convention", "expected"),
    [
        ("brats2021", {"NCR": 1, "ED": 2, "ET": 4}),
        ("brats2023", {"NCR": 1, "ED": 2, "ET": 3}),
        ("msd", {"NCR": 2, "ED": 1, "ET": 3}),
    ],
)
def test_label_numbers_follow_the_convention(convention, expected):
    reference = masks(phantom(0)[1])
    label = phantom(0, convention)[1]
    assert set(np.unique(label)) == {0, *expected.values()}
    for name, value in expected.items():
        # Same anatomy whatever the numbering: only the numbers change.
        np.testing.assert_array_equal(label == value, reference[name])


@pytest.mark.parametrize("seed", SEEDS)
def test_tumour_classes_are_nested(seed):
    m = masks(phantom(seed)[1])
    tumour = m["NCR"] | m["ED"] | m["ET"]
    core = m["NCR"] | m["ET"]
    assert m["NCR"].any() and m["ED"].any() and m["ET"].any()
    # Necrosis is enclosed by enhancing tumour at least two voxels thick.
    assert not (ndimage.binary_dilation(m["NCR"], CROSS, iterations=2) & ~core).any()
    # The tumour core is wrapped in edema: no core voxel touches healthy tissue or background.
    ring = ndimage.binary_dilation(core, CROSS) & ~core
    assert ring.any() and m["ED"][ring].all()
    # Edema is one piece with its core: no detached specks of label noise.
    components, count = ndimage.label(tumour)
    assert set(np.unique(components[core])) == set(range(1, count + 1))


@pytest.mark.parametrize("seed", SEEDS)
def test_resection_cavity_is_fluid_beside_the_residual_tumour(seed):
    images, label = make_phantom(
        SHAPE, seed=seed, label_convention="brats2024", resection_cavity=True
    )
    cavity = label == 4
    assert cavity.sum() > 50
    assert (label[ndimage.binary_dilation(cavity, CROSS)] % 4 != 0).any()  # touches tumour
    assert (label == 3).any() and (label == 2).any()  # residual tumour and edema remain
    flair, t2 = images[0], images[3]
    edema = label == 2
    assert np.median(flair[cavity]) < np.median(flair[edema])  # fluid: dark on FLAIR
    assert np.median(t2[cavity]) > np.median(t2[edema])  # and bright on T2
    # The cavity is carved into the study the same seed gives without it.
    plain_label = phantom(seed, "brats2024")[1]
    assert not (plain_label == 4).any()
    assert np.array_equal(label[~cavity], plain_label[~cavity])
    assert (plain_label[cavity] != 0).any()  # it took part of the tumour


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_sequences_show_the_tumour_contrasts(seed):
    images, label = phantom(seed)
    flair, t1, t1ce, t2 = images
    m = masks(label)
    normal = (images[0] > 0) & (label == 0)
    assert flair[m["ED"]].mean() > 1.3 * flair[normal].mean()
    assert t2[m["ED"]].mean() > 1.3 * t2[normal].mean()
    assert t1ce[m["ET"]].mean() > 1.5 * t1ce[m["NCR"]].mean()
    assert t1ce[m["ET"]].mean() > 1.5 * t1ce[normal].mean()
    assert t2[m["NCR"]].mean() > t2[normal].mean()
    assert t1[m["NCR"] | m["ET"]].mean() < t1[normal].mean()


def test_contrast_override_and_tumour_count():
    images, label = make_phantom(SHAPE, seed=0, contrast={"t1ce": {"ET": 3.0}})
    base_images, base_label = phantom(0)
    np.testing.assert_array_equal(label, base_label)
    et = masks(label)["ET"]
    assert images[2][et].mean() > 1.5 * base_images[2][et].mean()
    np.testing.assert_array_equal(images[0], base_images[0])  # other sequences untouched

    healthy_images, healthy = make_phantom(SHAPE, seed=0, num_tumours=0)
    assert not healthy.any() and healthy_images[0].max() > 0
    with pytest.raises(ValueError, match="'XX'"):
        make_phantom(SHAPE, contrast={"t1ce": {"XX": 1.0}})


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PLI"])
def test_anatomy_follows_the_orientation(orientation):
    shape = (40, 36, 32)
    _, label = make_phantom(shape, seed=3, orientation=orientation)
    img = nib.Nifti1Image(label, orientation_affine(orientation, shape=shape))
    canonical = nib.as_closest_canonical(img)
    _, ras_label = make_phantom(canonical.shape, seed=3, orientation="RAS")
    # Reoriented to RAS, the data is the RAS phantom: the brain is the right way up.
    np.testing.assert_array_equal(np.asarray(canonical.dataobj), ras_label)


@pytest.mark.slow
def test_real_size_phantom():
    images, label = make_phantom((240, 240, 155), seed=7)
    m = masks(label)
    core = m["NCR"] | m["ET"]
    assert all(v.any() for v in m.values())
    assert not (ndimage.binary_dilation(m["NCR"], CROSS, iterations=2) & ~core).any()
    head = images[0] > 0
    # Brain volume in the range of an adult brain (1-1.8 l at 1 mm).
    assert 1.0e6 < head.sum() < 1.8e6


# --------------------------------------------------------------------------------------------
# affines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["LPS", "RAS", "LAS", "ASR"])
def test_orientation_affine_axis_codes_spacing_and_centre(code):
    shape, spacing = (40, 30, 20), (0.9, 1.1, 2.5)
    affine = orientation_affine(code, shape=shape, spacing=spacing)
    assert nib.aff2axcodes(affine) == tuple(code)
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), spacing)
    centre = affine @ np.array([*((np.array(shape) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_oblique_affine_is_tilted_about_left_right():
    straight = orientation_affine("LPS", shape=(32, 32, 32))
    tilted = orientation_affine("LPS", shape=(32, 32, 32), oblique_degrees=20)
    assert nib.aff2axcodes(tilted) == ("L", "P", "S")
    np.testing.assert_allclose(tilted[:3, 0], straight[:3, 0])  # left-right axis unchanged
    cos = tilted[:3, 2] @ straight[:3, 2] / np.linalg.norm(tilted[:3, 2]) ** 2
    assert np.degrees(np.arccos(cos)) == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"orientation": "LPX"}, "'LPX'"),
        ({"orientation": "LLS"}, "'LLS'"),
        ({"orientation": "LP"}, "'LP'"),
        ({"oblique_degrees": 60}, "60"),
        ({"spacing": (1, 0, 1)}, "(1, 0, 1)"),
    ],
)
def test_orientation_affine_rejects_bad_arguments(kwargs, shown):
    with pytest.raises(ValueError, match=shown.replace("(", r"\(").replace(")", r"\)")):
        orientation_affine(**{"orientation": "LPS", "shape": (32, 32, 32), **kwargs})


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

FILE_SHAPE = (40, 40, 32)
EXPECTED_FILES = {
    "brats2021": [
        "SYN2021_000/SYN2021_000_flair.nii.gz",
        "SYN2021_000/SYN2021_000_seg.nii.gz",
        "SYN2021_000/SYN2021_000_t1.nii.gz",
        "SYN2021_000/SYN2021_000_t1ce.nii.gz",
        "SYN2021_000/SYN2021_000_t2.nii.gz",
        "SYN2021_001/SYN2021_001_flair.nii.gz",
        "SYN2021_001/SYN2021_001_t1.nii.gz",
        "SYN2021_001/SYN2021_001_t1ce.nii.gz",
        "SYN2021_001/SYN2021_001_t2.nii.gz",
    ],
    "brats2023": [
        "BraTS-SYN-00000-000/BraTS-SYN-00000-000-seg.nii.gz",
        "BraTS-SYN-00000-000/BraTS-SYN-00000-000-t1c.nii.gz",
        "BraTS-SYN-00000-000/BraTS-SYN-00000-000-t1n.nii.gz",
        "BraTS-SYN-00000-000/BraTS-SYN-00000-000-t2f.nii.gz",
        "BraTS-SYN-00000-000/BraTS-SYN-00000-000-t2w.nii.gz",
        "BraTS-SYN-00001-000/BraTS-SYN-00001-000-t1c.nii.gz",
        "BraTS-SYN-00001-000/BraTS-SYN-00001-000-t1n.nii.gz",
        "BraTS-SYN-00001-000/BraTS-SYN-00001-000-t2f.nii.gz",
        "BraTS-SYN-00001-000/BraTS-SYN-00001-000-t2w.nii.gz",
    ],
    "msd": [
        "dataset.json",
        "imagesTr/BRATS_000.nii.gz",
        "imagesTs/BRATS_001.nii.gz",
        "labelsTr/BRATS_000.nii.gz",
    ],
}
LEGAL = {"brats2021": {0, 1, 2, 4}, "brats2023": {0, 1, 2, 3}, "msd": {0, 1, 2, 3}}


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd"])
def test_each_layout_writes_its_files_and_headers(tmp_path, layout):
    spacing = (1.0, 1.2, 2.0)
    ids = generate_dataset(
        tmp_path,
        num_cases=1,
        num_unlabelled=1,
        shape=FILE_SHAPE,
        layout=layout,
        spacing=spacing,
        oblique_degrees=10.0,
    )
    assert len(ids) == 2
    assert files_under(tmp_path) == EXPECTED_FILES[layout]  # no temporary files left either
    expected_affine = orientation_affine(
        "LPS", shape=FILE_SHAPE, spacing=spacing, oblique_degrees=10.0
    )
    images = sorted(p for p in tmp_path.rglob("*.nii.gz") if "seg" not in p.name)
    images = [p for p in images if "labelsTr" not in p.parts]
    for path in images:
        img = nib.load(path)
        assert img.get_data_dtype() == np.int16
        assert img.shape[:3] == FILE_SHAPE
        assert img.shape[3:] == ((4,) if layout == "msd" else ())
        np.testing.assert_allclose(img.affine, expected_affine, atol=1e-4)
        np.testing.assert_allclose(img.header.get_zooms()[:3], spacing, rtol=1e-5)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
    (seg,) = [p for p in tmp_path.rglob("*.nii.gz") if "seg" in p.name or "labelsTr" in p.parts]
    label_img = nib.load(seg)
    assert label_img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(label_img.affine, expected_affine, atol=1e-4)
    values = set(np.unique(np.asarray(label_img.dataobj)).tolist())
    assert values == LEGAL[layout]


def test_msd_dataset_json_matches_task01(tmp_path):
    generate_dataset(tmp_path, num_cases=2, num_unlabelled=1, shape=FILE_SHAPE, layout="msd")
    spec = json.loads((tmp_path / "dataset.json").read_text())
    assert spec["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert spec["labels"] == {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
    }
    assert spec["numTraining"] == len(spec["training"]) == 2
    assert spec["numTest"] == len(spec["test"]) == 1
    for item in spec["training"]:
        assert (tmp_path / item["image"]).is_file() and (tmp_path / item["label"]).is_file()
    assert all((tmp_path / p).is_file() for p in spec["test"])
    # The 4D image holds the phantom's sequences in CHANNEL_ORDER along the last axis.
    images, label = make_phantom(
        FILE_SHAPE, seed=synthetic_files._case_seed(0, 0), orientation="LPS"
    )
    stored = np.asarray(nib.load(tmp_path / "imagesTr" / "BRATS_000.nii.gz").dataobj)
    np.testing.assert_array_equal(np.moveaxis(stored, -1, 0), np.rint(images).astype(np.int16))


def test_cases_do_not_depend_on_how_many_are_generated(tmp_path):
    generate_dataset(tmp_path / "one", num_cases=1, shape=FILE_SHAPE, seed=4)
    generate_dataset(tmp_path / "two", num_cases=2, shape=FILE_SHAPE, seed=4, case_prefix="X")
    a = nib.load(tmp_path / "one" / "SYN2021_000" / "SYN2021_000_seg.nii.gz")
    b = nib.load(tmp_path / "two" / "X_000" / "X_000_seg.nii.gz")
    c = nib.load(tmp_path / "two" / "X_001" / "X_001_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert not np.array_equal(np.asarray(b.dataobj), np.asarray(c.dataobj))


def test_contrast_and_tumour_scale_pass_through_to_every_case(tmp_path):
    shift = {"t1ce": {"ET": 1.1}, "flair": {"ED": 0.9}}
    generate_dataset(
        tmp_path, num_cases=2, shape=FILE_SHAPE, seed=3, contrast=shift, tumour_scale=0.6
    )
    for i in range(2):
        images, label = make_phantom(
            FILE_SHAPE,
            seed=synthetic_files._case_seed(3, i),
            contrast=shift,
            tumour_scale=0.6,
            orientation="LPS",
        )
        folder = tmp_path / f"SYN2021_{i:03d}"
        stored = np.asarray(nib.load(folder / f"SYN2021_{i:03d}_seg.nii.gz").dataobj)
        np.testing.assert_array_equal(stored, label)
        t1ce = np.asarray(nib.load(folder / f"SYN2021_{i:03d}_t1ce.nii.gz").dataobj)
        np.testing.assert_array_equal(t1ce, np.rint(images[2]).astype(np.int16))
    # The defaults leave the dataset exactly as before the options existed.
    generate_dataset(tmp_path / "plain", num_cases=1, shape=FILE_SHAPE, seed=3)
    _, default_label = make_phantom(
        FILE_SHAPE, seed=synthetic_files._case_seed(3, 0), orientation="LPS"
    )
    plain = nib.load(tmp_path / "plain" / "SYN2021_000" / "SYN2021_000_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(plain.dataobj), default_label)
    shifted = nib.load(tmp_path / "SYN2021_000" / "SYN2021_000_seg.nii.gz")
    assert (np.asarray(shifted.dataobj) > 0).sum() < (default_label > 0).sum()


def test_label_convention_can_differ_from_the_layout(tmp_path):
    generate_dataset(tmp_path, num_cases=1, shape=FILE_SHAPE, label_convention="brats2023")
    label = np.asarray(nib.load(tmp_path / "SYN2021_000" / "SYN2021_000_seg.nii.gz").dataobj)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}


def test_existing_output_needs_overwrite(tmp_path):
    generate_dataset(tmp_path, num_cases=1, shape=FILE_SHAPE)
    case = tmp_path / "SYN2021_000"
    (case / "stale.txt").write_text("left from an older run")
    with pytest.raises(FileExistsError, match="overwrite") as info:
        generate_dataset(tmp_path, num_cases=1, shape=FILE_SHAPE, seed=1)
    assert str(case) in str(info.value)
    assert (case / "stale.txt").exists()  # nothing was touched

    generate_dataset(tmp_path, num_cases=1, shape=FILE_SHAPE, seed=1, overwrite=True)
    assert not (case / "stale.txt").exists()  # the case folder was replaced as a whole
    _, label = make_phantom(FILE_SHAPE, seed=synthetic_files._case_seed(1, 0), orientation="LPS")
    stored = np.asarray(nib.load(case / "SYN2021_000_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(stored, label)


def test_existing_msd_output_needs_overwrite(tmp_path):
    generate_dataset(tmp_path, num_cases=1, shape=FILE_SHAPE, layout="msd")
    with pytest.raises(FileExistsError, match="BRATS_000.nii.gz"):
        generate_dataset(tmp_path, num_cases=1, shape=FILE_SHAPE, layout="msd")


@pytest.mark.parametrize(("layout", "fail_at", "left"), [("brats2021", 3, []), ("msd", 2, 1)])
def test_interrupted_write_leaves_no_partial_case(tmp_path, monkeypatch, layout, fail_at, left):
    images, label = phantom(0)
    calls = []
    real_save = nib.save

    def failing_save(img, path):
        calls.append(path)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        real_save(img, path)

    monkeypatch.setattr(nib, "save", failing_save)
    affine = orientation_affine("LPS", shape=SHAPE)
    with pytest.raises(KeyboardInterrupt):
        write_case(tmp_path, "CASE_1", images, label, affine=affine, layout=layout)
    assert len(calls) == fail_at
    if layout == "msd":
        # The label went in first; the image never got its final name, and no temp is left.
        assert files_under(tmp_path) == ["labelsTr/CASE_1.nii.gz"]
    else:
        # Nothing at all: the case folder is assembled aside and renamed only when complete.
        assert list(tmp_path.iterdir()) == []


def test_write_case_returns_paths_and_checks_inputs(tmp_path):
    images, label = phantom(0)
    affine = orientation_affine("RAS", shape=SHAPE)
    out = write_case(tmp_path, "C1", images, label, affine=affine, layout="brats2023")
    assert out["case_id"] == "C1"
    assert [Path(p).name for p in out["image"]] == [
        "C1-t2f.nii.gz",
        "C1-t1n.nii.gz",
        "C1-t1c.nii.gz",
        "C1-t2w.nii.gz",
    ]
    assert Path(out["label"]).name == "C1-seg.nii.gz"
    assert nib.aff2axcodes(nib.load(out["label"]).affine) == ("R", "A", "S")
    unlabelled = write_case(tmp_path, "C2", images, None, affine=affine, layout="msd")
    assert unlabelled["label"] is None and "imagesTs" in unlabelled["image"][0]

    with pytest.raises(ValueError, match=r"\(3, 48, 48, 40\)"):
        write_case(tmp_path, "C3", images[:3], label, affine=affine)
    with pytest.raises(ValueError, match="'../C4'"):
        write_case(tmp_path, "../C4", images, label, affine=affine)
    with pytest.raises(ValueError, match="float32"):
        write_case(tmp_path, "C5", images * 100, label, affine=affine)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"shape": (8, 64, 64)}, r"\(8, 64, 64\)"),
        ({"shape": (64, 64)}, r"\(64, 64\)"),
        ({"shape": (64.0, 64, 64)}, r"\(64.0, 64, 64\)"),
        ({"orientation": "LPX"}, "'LPX'"),
        ({"orientation": "SPS"}, "'SPS'"),
        ({"num_cases": 0}, "num_cases .* got 0"),
        ({"layout": "brats2019x"}, "unknown file layout 'brats2019x'"),
        ({"label_convention": "nope"}, "unknown label convention 'nope'"),
        ({"seed": -1}, "got -1"),
        ({"case_prefix": "a/b"}, "'a/b'"),
        ({"tumour_scale": 0}, "tumour_scale .* got 0"),
        ({"contrast": {"t1ce": {"XX": 1.0}}}, "unknown tissue 'XX'"),
        ({"resection_cavity": True}, "resection_cavity .*'brats2024'.* got .*'brats2021'"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, shown):
    with pytest.raises(ValueError, match=shown):
        generate_dataset(tmp_path / "out", **{"num_cases": 1, "shape": FILE_SHAPE, **kwargs})
    assert not (tmp_path / "out").exists()  # validated before anything is written


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_writes_the_requested_cases(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["synth", str(out), "--num-cases", "3", "--size", "32", "32", "24", "--no-progress"]
    code = main([*argv, "--layout", "brats2023", "--orientation", "RAS", "--seed", "2"])
    assert code == 0
    cases = sorted(p.name for p in out.iterdir())
    assert cases == [f"BraTS-SYN-0000{i}-000" for i in range(3)]
    img = nib.load(out / cases[0] / f"{cases[0]}-t1c.nii.gz")
    assert img.shape == (32, 32, 24) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    stdout = capsys.readouterr().out
    assert "3" in stdout and str(out.resolve()) in stdout


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        (["--orientation", "LPX"], "'LPX'"),
        (["--size", "32", "32"], "--size"),
        (["--size", "8"], "(8, 8, 8)"),
        (["--layout", "nope"], "'nope'"),
        (["--num-cases", "0"], "num_cases"),
        (["--resection-cavity"], "label_convention='brats2021'"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, extra, shown):
    code = main(["synth", str(tmp_path / "out"), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tumorseg synth: error:") and shown in err
    assert err.strip().count("\n") == 0


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    argv = ["synth", str(tmp_path), "--num-cases", "1", "--size", "32", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "SYN2021_000") in err and "--overwrite" in err
    assert err.strip().count("\n") == 0
    assert main([*argv, "--overwrite"]) == 0
