"""kaggle_3m in the one CLI: `tumorseg synth --layout kaggle_3m`, `tumorseg manifest` (given or
detected layout, bad files named, --skip-bad, --check) and `tumorseg infer` with the LGG bundle,
end to end on tiny synthetic slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from tumorseg.cli import main
from tumorseg.data.lgg import LGG_LAYOUT, load_lgg_manifest
from tumorseg.data.synthetic_lgg import generate_kaggle_3m

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "lgg_flair_segmentation_2d"
CHANNELS = [4, 8, 16, 32, 64]
SIZE = ["32", "32", "16"]


def _patients(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


# ----------------------------------------------------------------------------- synth


def test_synth_writes_labelled_and_unlabelled_patients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k3m"
    argv = ["synth", str(out), "--layout", "kaggle_3m", "--num-cases", "2", "--size", *SIZE]
    assert main([*argv, "--num-unlabelled", "1", "--seed", "4"]) == 0
    assert "wrote 3 synthetic patients (1 without masks)" in capsys.readouterr().out
    labelled = ["TCGA_SY_0000_20000101", "TCGA_SY_0001_20000101"]
    assert _patients(out) == ["TCGA_SYU_0000_20000101", *labelled]
    folder = out / labelled[0]
    assert len(list(folder.glob("*_mask.tif"))) == 16 and len(list(folder.glob("*.tif"))) == 32
    with Image.open(folder / f"{labelled[0]}_1.tif") as img:
        assert (img.mode, img.size) == ("RGB", (32, 32))
    assert not list((out / "TCGA_SYU_0000_20000101").glob("*_mask.tif"))
    # The same seed writes the same files as the library generator.
    ids = generate_kaggle_3m(tmp_path / "lib", num_patients=1, shape=(32, 32, 16), seed=4)
    name = f"{ids[0]}_8.tif"
    assert (out / ids[0] / name).read_bytes() == (tmp_path / "lib" / ids[0] / name).read_bytes()


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        (["--orientation", "RAS"], "--orientation does not apply to --layout kaggle_3m"),
        (["--num-cases", "0"], "got 0"),
        (["--layout", "kaggle3m"], "'kaggle3m'"),
    ],
)
def test_synth_bad_arguments_exit_2_naming_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], shown: str
) -> None:
    argv = ["synth", str(tmp_path / "o"), "--layout", "kaggle_3m", "--size", *SIZE, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tumorseg synth: error:") and shown in err


def test_synth_refuses_to_overwrite_without_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["synth", str(tmp_path), "--layout", "kaggle_3m", "--num-cases", "1", "--size", *SIZE]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "TCGA_SY_0000_20000101") in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0


# ----------------------------------------------------------------------------- manifest


@pytest.fixture()
def kaggle(tmp_path: Path) -> Path:
    """4 labelled patients and 1 unlabelled one, 16 slices of 32x32 each."""
    root = tmp_path / "kaggle_3m"
    generate_kaggle_3m(root, num_patients=4, shape=(32, 32, 16), seed=2)
    generate_kaggle_3m(
        root, num_patients=1, shape=(32, 32, 16), seed=9, with_masks=False, prefix="TCGA_UN"
    )
    return root


def test_manifest_detects_kaggle_3m_and_folds_per_patient(
    kaggle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lgg.json"
    # The parent of kaggle_3m/ works too, as the Kaggle download unpacks.
    assert (
        main(["manifest", str(kaggle.parent), "-o", str(out), "--folds", "2", "--seed", "3"]) == 0
    )
    stdout = capsys.readouterr().out
    assert "layout:              kaggle_3m" in stdout
    assert "training slices:     64 of 4 patients" in stdout
    assert "testing slices:      16 of 1 patients" in stdout
    assert "patients per fold:   0:2 1:2" in stdout and "problems (skipped):  0" in stdout
    manifest = load_lgg_manifest(out)
    assert manifest["layout"] == LGG_LAYOUT and manifest["num_folds"] == 2
    folds: dict[str, set[int]] = {}
    for item in manifest["training"]:
        folds.setdefault(item["patient"], set()).add(item["fold"])
    assert all(len(f) == 1 for f in folds.values())  # no patient straddles two folds
    assert {i["patient"] for i in manifest["testing"]} == {"TCGA_UN_0000_20000101"}
    # Asking for the layout gives the same manifest.
    again = tmp_path / "again.json"
    args = ["manifest", str(kaggle), "-o", str(again), "--folds", "2", "--seed", "3"]
    assert main([*args, "--layout", "kaggle_3m"]) == 0
    assert json.loads(again.read_text())["training"] == manifest["training"]


def _break(kaggle: Path) -> list[Path]:
    """Three bad files in three patients: returns them."""
    first, second, third = _patients(kaggle)[:3]
    notes = kaggle / first / "notes.txt"
    notes.write_text("not a slice")
    (kaggle / second / f"{second}_5.tif").unlink()  # its mask is left alone
    odd = kaggle / third / f"{third}_7.tif"
    Image.new("RGB", (24, 24)).save(odd)
    Image.new("L", (24, 24)).save(kaggle / third / f"{third}_7_mask.tif")
    return [notes, kaggle / second / f"{second}_5_mask.tif", odd]


def test_manifest_bad_files_exit_2_naming_each_then_skip_bad(
    kaggle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes, orphan, odd = _break(kaggle)
    out = tmp_path / "lgg.json"
    assert main(["manifest", str(kaggle), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert not out.exists()
    assert err.startswith(f"tumorseg manifest: error: 3 problem(s) in {kaggle}")
    assert f"\n{notes}: not a TIF file" in err
    assert f"\n{orphan}: mask without its image" in err
    assert f"\n{odd}: slice is 24x24, the other slices of" in err

    assert main(["manifest", str(kaggle), "-o", str(out), "--skip-bad"]) == 0
    stdout = capsys.readouterr().out
    assert "problems (skipped):  3" in stdout and f"  {odd}: slice is 24x24" in stdout
    manifest = load_lgg_manifest(out)
    assert len(manifest["training"]) == 4 * 16 - 2  # the rest goes on
    assert len(manifest["problems"]) == 3


def test_manifest_refuses_3d_options(kaggle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["manifest", str(kaggle), "-o", "m.json", "--label-convention", "brats2021"])
    assert code == 2
    assert "--label-convention does not apply to kaggle_3m slices, got 'brats2021'" in (
        capsys.readouterr().err
    )


def test_manifest_check_names_what_a_copy_lacks(
    kaggle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lgg.json"
    assert main(["manifest", str(kaggle), "-o", str(out)]) == 0
    assert main(["manifest", str(kaggle), "--check", str(out)]) == 0
    assert "holds every slice" in capsys.readouterr().out
    patient = _patients(kaggle)[1]
    gone = kaggle / patient / f"{patient}_3_mask.tif"
    gone.unlink()
    assert main(["manifest", str(kaggle), "--check", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err
    assert f"{patient}_3: {kaggle / patient / f'{patient}_3.tif'}: image without its mask" in err


# ----------------------------------------------------------------------------- infer


def _checkpoint(path: Path, final_bias: float) -> Path:
    """Bundle U-Net weights whose output bias is ``final_bias``: every pixel in or out."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["channels"] = CHANNELS
    state = parser.get_parsed_content("network_def").state_dict()
    last = [k for k in state if k.endswith(".bias")][-1]
    assert state[last].shape == (1,)  # the output layer's
    state[last].fill_(final_bias)
    torch.save(state, path)
    return path


def _infer(inputs: Path, out: Path, ckpt: Path, *more: str) -> list[str]:
    return ["infer", "--bundle", str(BUNDLE), "--input", str(inputs), "--output", str(out),
            "--checkpoint", str(ckpt), "--override", f"channels={CHANNELS}", "--device", "cpu",
            *more]  # fmt: skip


def test_infer_with_the_lgg_bundle_writes_masks_in_the_same_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = generate_kaggle_3m(
        tmp_path / "in", num_patients=2, shape=(32, 32, 16), seed=3, with_masks=False
    )
    for bias, value in ((1e4, 255), (-1e4, 0)):
        ckpt = _checkpoint(tmp_path / f"w{value}.pt", bias)
        out = tmp_path / f"out{value}"
        assert main(_infer(tmp_path / "in", out, ckpt)) == 0
        assert f"wrote 32 masks of 2 patient(s) to {out}" in capsys.readouterr().out
        for patient in ids:
            names = sorted(p.name for p in (out / patient).iterdir())
            assert names == sorted(f"{patient}_{i}_mask.tif" for i in range(1, 17))
            for name in names:
                mask = np.array(Image.open(out / patient / name))
                # The checkpoint's weights decide every pixel, at the image's size.
                assert mask.shape == (32, 32) and mask.dtype == np.uint8
                assert (mask == value).all(), name


def test_infer_reports_bad_files_exit_1_and_writes_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = generate_kaggle_3m(
        tmp_path / "in", num_patients=2, shape=(32, 32, 16), seed=3, with_masks=False
    )
    notes = tmp_path / "in" / ids[0] / "notes.txt"
    notes.write_text("x")
    odd = tmp_path / "in" / ids[1] / f"{ids[1]}_4.tif"
    Image.new("RGB", (20, 20)).save(odd)
    ckpt = _checkpoint(tmp_path / "w.pt", 1e4)
    assert main(_infer(tmp_path / "in", tmp_path / "out", ckpt)) == 1
    captured = capsys.readouterr()
    assert "wrote 31 masks of 2 patient(s)" in captured.out
    assert "2 problem(s); the other slices were written" in captured.err
    assert f"  {notes}: not a TIF file" in captured.err
    assert f"  {odd}: slice is 20x20" in captured.err
    assert not (tmp_path / "out" / ids[1] / f"{ids[1]}_4_mask.tif").exists()
    assert (tmp_path / "out" / ids[1] / f"{ids[1]}_5_mask.tif").is_file()


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        (["--tta"], "--tta does not apply to the 2D bundle"),
        (["--roi-size", "8", "8", "8"], "got [8, 8, 8]"),
        (["--config-file", "networks/nope.json"], "networks/nope.json"),
    ],
)
def test_infer_lgg_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], shown: str
) -> None:
    generate_kaggle_3m(
        tmp_path / "in", num_patients=1, shape=(32, 32, 16), seed=3, with_masks=False
    )
    ckpt = _checkpoint(tmp_path / "w.pt", 0.0)
    assert main(_infer(tmp_path / "in", tmp_path / "out", ckpt, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("tumorseg infer: error:") and shown in err
    assert not (tmp_path / "out").exists()


def test_infer_names_a_missing_or_unfitting_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate_kaggle_3m(
        tmp_path / "in", num_patients=1, shape=(32, 32, 16), seed=3, with_masks=False
    )
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(tmp_path / "in")]
    args += ["--output", str(tmp_path / "out")]
    assert main([*args, "--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint not found: {tmp_path / 'none.pt'}" in err and "--checkpoint" in err
    ckpt = _checkpoint(tmp_path / "w.pt", 0.0)  # 4..64 wide, the bundle's default is 32..512
    assert main([*args, "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} does not fit the bundle's network (UNet with channels=" in err
    assert "shape mismatch(es): model." in err


def test_infer_with_two_checkpoints_averages_both_members(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every pixel: one member says 1, the other 0, so the mean probability is 0.5. The default
    threshold (0.3) puts it in, 0.6 out; one member alone would give all-in or all-out."""
    generate_kaggle_3m(
        tmp_path / "in", num_patients=1, shape=(32, 32, 16), seed=3, with_masks=False
    )
    sure, never = _checkpoint(tmp_path / "in.pt", 1e4), _checkpoint(tmp_path / "out.pt", -1e4)
    for threshold, value in ((None, 255), (0.6, 0)):
        out = tmp_path / f"out{value}"
        more = ["--checkpoint", str(never)]
        if threshold is not None:
            more += ["--override", f"threshold={threshold}"]
        assert main(_infer(tmp_path / "in", out, sure, *more)) == 0, capsys.readouterr().err
        masks = [np.array(Image.open(p)) for p in sorted(out.rglob("*_mask.tif"))]
        assert len(masks) == 16 and all((m == value).all() for m in masks)


def _packed_checkpoint(tmp_path: Path) -> Path:
    """A packed ensemble of two bundle U-Nets: one says every pixel is in, the other out."""
    from tumorseg.checkpoint_meta import CheckpointMeta, checkpoint_with_meta
    from tumorseg.networks import pack_members

    meta = CheckpointMeta(
        network_name="unet2d",
        network_settings={"channels": CHANNELS},
        preprocessing_settings={"intensity_mode": "zscore"},
        data_format="kaggle_3m",
        regions=["abnormality"],
    )
    members = []
    for name, bias in (("in", 1e4), ("out", -1e4)):
        plain = torch.load(_checkpoint(tmp_path / f"{name}.pt", bias), weights_only=True)
        torch.save(checkpoint_with_meta({"network": plain}, meta), tmp_path / f"{name}.pt")
        members.append(tmp_path / f"{name}.pt")
    packed = tmp_path / "packed.pt"
    pack_members(members, packed)
    return packed


def test_infer_picks_the_ensemble_network_of_a_packed_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate_kaggle_3m(
        tmp_path / "in", num_patients=1, shape=(32, 32, 16), seed=3, with_masks=False
    )
    packed = _packed_checkpoint(tmp_path)
    # No --override channels and no network file: the packed file's description sets both.
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(tmp_path / "in"), "--device", "cpu"]
    args += ["--checkpoint", str(packed)]
    for threshold, value in (("0.3", 255), ("0.6", 0)):
        out = tmp_path / f"out{value}"
        argv = [*args, "--output", str(out), "--override", f"threshold={threshold}"]
        assert main(argv) == 0, capsys.readouterr().err
        masks = [np.array(Image.open(p)) for p in sorted(out.rglob("*_mask.tif"))]
        assert len(masks) == 16 and all((m == value).all() for m in masks)


def test_monai_bundle_inferring_loads_a_packed_checkpoint_without_a_network_file(
    tmp_path: Path,
) -> None:
    """``python -m monai.bundle run inferring`` with train.json and inference.json only: the
    packed file's members are averaged (mean probability 0.5, so all in at 0.3, out at 0.6)."""
    from monai.bundle import run

    generate_kaggle_3m(
        tmp_path / "in", num_patients=1, shape=(32, 32, 16), seed=3, with_masks=False
    )
    packed = _packed_checkpoint(tmp_path)
    configs = BUNDLE / "configs"
    for threshold, value in ((0.3, 255), (0.6, 0)):
        out = tmp_path / f"out{value}"
        run(
            "inferring",
            meta_file=str(configs / "metadata.json"),
            config_file=[str(configs / "train.json"), str(configs / "inference.json")],
            bundle_root=str(BUNDLE),
            dataset_dir=str(tmp_path / "in"),
            output_dir=str(out),
            checkpoint=str(packed),
            channels=CHANNELS,
            threshold=threshold,
        )
        masks = [np.array(Image.open(p)) for p in sorted(out.rglob("*_mask.tif"))]
        assert len(masks) == 16 and all((m == value).all() for m in masks)
