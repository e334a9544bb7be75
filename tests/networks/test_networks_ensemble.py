"""`ProbabilityMeanEnsemble` and `pack_members`: members averaged in probability space, packed
into one self-describing checkpoint that loads back into the ensemble network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

from tumorseg.checkpoint_meta import META_KEY, CheckpointMeta, checkpoint_with_meta, read_meta
from tumorseg.networks import (
    ENSEMBLE_SETTING,
    ProbabilityMeanEnsemble,
    ensemble_of_checkpoint,
    pack_members,
)
from tumorseg.training.checkpoint import load_network_weights


def _unet(seed: int, channels: tuple[int, ...] = (4, 8, 16)) -> UNet:
    torch.manual_seed(seed)
    return UNet(2, 3, 1, channels=channels, strides=(2, 2), num_res_units=1, norm="batch").eval()


def _meta(**changes: object) -> CheckpointMeta:
    base = CheckpointMeta(
        network_name="unet2d",
        network_settings={"channels": [4, 8, 16]},
        preprocessing_settings={"intensity_mode": "zscore"},
        data_format="kaggle_3m",
        regions=["abnormality"],
        run_id="r",
    )
    return CheckpointMeta(**{**base.to_dict(), **changes})  # type: ignore[arg-type]


def _save(net: torch.nn.Module, path: Path, meta: CheckpointMeta | None) -> Path:
    torch.save(checkpoint_with_meta({"network": net.state_dict()}, meta), path)
    return path


def test_forward_is_the_logit_of_the_members_mean_probability() -> None:
    a, b = _unet(0), _unet(1)
    ensemble = ProbabilityMeanEnsemble(_unet(2), num_members=2).eval()
    ensemble.members[0].load_state_dict(a.state_dict())
    ensemble.members[1].load_state_dict(b.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = (torch.sigmoid(a(x)) + torch.sigmoid(b(x))) / 2
        got = torch.sigmoid(ensemble(x))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # Not one member's output: the members differ, so the mean is a third thing.
    assert not torch.allclose(got, torch.sigmoid(a(x)).detach(), atol=1e-3)


def test_a_certain_member_still_gives_a_finite_logit() -> None:
    net = _unet(0)
    last = [k for k in net.state_dict() if k.endswith(".bias")][-1]
    net.state_dict()[last].fill_(1e4)
    ensemble = ProbabilityMeanEnsemble(net, num_members=2).eval()
    with torch.no_grad():
        out = ensemble(torch.randn(1, 3, 16, 16))
    assert torch.isfinite(out).all() and (torch.sigmoid(out) > 0.99).all()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_member_count_is_refused_with_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match=f"num_members must be an integer >= 1, got {bad!r}"):
        ProbabilityMeanEnsemble(_unet(0), num_members=bad)  # type: ignore[arg-type]


def test_pack_writes_one_float16_checkpoint_that_loads_into_the_ensemble(
    tmp_path: Path,
) -> None:
    a, b = _unet(0), _unet(1)
    # The first member is plain weights (like a release that predates descriptions).
    paths = [_save(a, tmp_path / "a.pt", None), _save(b, tmp_path / "b.pt", _meta())]
    out = tmp_path / "models" / "model.pt"
    meta = pack_members(paths, out)
    assert meta.network_name == "unet2d_ensemble"
    assert meta.network_settings == {"channels": [4, 8, 16], ENSEMBLE_SETTING: 2}
    assert meta.preprocessing_settings == {"intensity_mode": "zscore"} and meta.run_id == ""
    assert read_meta(out) == meta
    stored = torch.load(out, weights_only=True)
    assert set(stored) == {"network", META_KEY}
    floats = [v for v in stored["network"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    # Half the weight bytes of the two float32 members.
    member_bytes = sum(v.numel() * 4 for n in (a, b) for v in n.state_dict().values()
                       if v.is_floating_point())  # fmt: skip
    assert sum(v.numel() * v.element_size() for v in floats) == member_bytes // 2

    ensemble = ProbabilityMeanEnsemble(_unet(5), num_members=2).eval()
    load_network_weights(ensemble, out)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = (torch.sigmoid(a(x)) + torch.sigmoid(b(x))) / 2
        got = torch.sigmoid(ensemble(x))
    # float16 storage moves the probabilities by rounding only.
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_a_tensor_float16_cannot_hold_stays_float32(tmp_path: Path) -> None:
    big = _unet(1)
    variances = [k for k in big.state_dict() if k.endswith("running_var")]
    big.state_dict()[variances[0]].fill_(2e5)  # BatchNorm variances of real data reach 1e5
    paths = [_save(_unet(0), tmp_path / "a.pt", _meta()), _save(big, tmp_path / "b.pt", _meta())]
    pack_members(paths, tmp_path / "m.pt")
    stored = torch.load(tmp_path / "m.pt", weights_only=True)["network"]
    assert stored[f"members.1.{variances[0]}"].dtype == torch.float32
    assert stored[f"members.0.{variances[0]}"].dtype == torch.float16
    ensemble = ProbabilityMeanEnsemble(_unet(5), num_members=2)
    load_network_weights(ensemble, tmp_path / "m.pt")
    assert (ensemble.members[1].state_dict()[variances[0]] == 2e5).all()


def test_pack_in_float32_is_exact(tmp_path: Path) -> None:
    a, b = _unet(0), _unet(1)
    paths = [_save(a, tmp_path / "a.pt", _meta()), _save(b, tmp_path / "b.pt", _meta())]
    pack_members(paths, tmp_path / "m.pt", dtype=torch.float32)
    ensemble = ProbabilityMeanEnsemble(_unet(5), num_members=2)
    load_network_weights(ensemble, tmp_path / "m.pt")
    for i, member in enumerate((a, b)):
        for key, value in member.state_dict().items():
            assert torch.equal(ensemble.members[i].state_dict()[key], value), key


def test_pack_bad_members_are_named(tmp_path: Path) -> None:
    a = _save(_unet(0), tmp_path / "a.pt", _meta())
    out = tmp_path / "out.pt"
    with pytest.raises(ValueError, match="two or more member checkpoints, got 1"):
        pack_members([a], out)
    with pytest.raises(FileNotFoundError, match="none.pt"):
        pack_members([a, tmp_path / "none.pt"], out)
    wide = _save(_unet(1, (8, 16, 32)), tmp_path / "wide.pt", _meta())
    with pytest.raises(ValueError, match=f"{wide} is not the same network as {a}"):
        pack_members([a, wide], out)
    other = _save(_unet(1), tmp_path / "u8.pt", _meta(preprocessing_settings={"x": "uint8"}))
    with pytest.raises(ValueError, match=f"{other} was trained with preprocessing_settings="):
        pack_members([a, other], out)
    plain = [_save(_unet(i), tmp_path / f"p{i}.pt", None) for i in range(2)]
    with pytest.raises(ValueError, match="says what it was trained with"):
        pack_members(plain, out)
    with pytest.raises(ValueError, match="dtype must be torch.float16 or torch.float32"):
        pack_members([a, a], out, dtype=torch.bfloat16)
    pack_members([a, a], out)
    with pytest.raises(ValueError, match="already an ensemble"):
        pack_members([out, out], tmp_path / "again.pt")
    # Nothing half-written is left where a refused pack would have written.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.pt", "wide.pt", "u8.pt", "p0.pt", "p1.pt", "out.pt"]
    )


def test_ensemble_of_checkpoint_wraps_only_for_a_packed_file(tmp_path: Path) -> None:
    a, b = _unet(0), _unet(1)
    single = _save(a, tmp_path / "a.pt", _meta())
    plain = _save(b, tmp_path / "b.pt", None)
    packed = tmp_path / "packed.pt"
    pack_members([single, _save(b, tmp_path / "b2.pt", _meta()), plain], packed)

    net = _unet(5)
    wrapped = ensemble_of_checkpoint(net, read_meta(packed))
    assert isinstance(wrapped, ProbabilityMeanEnsemble) and len(wrapped.members) == 3
    load_network_weights(wrapped, packed)  # every key fits
    # Already the ensemble, a single model's file, plain weights: unchanged.
    assert ensemble_of_checkpoint(wrapped, read_meta(packed)) is wrapped
    for path in (single, plain):
        assert ensemble_of_checkpoint(net, read_meta(path)) is net
    # The loader does it on request, reading the file once, and returns what it loaded.
    loaded = load_network_weights(_unet(6), packed, packed_members=True)
    assert isinstance(loaded, ProbabilityMeanEnsemble) and len(loaded.members) == 3
    assert load_network_weights(net, single, packed_members=True) is net
