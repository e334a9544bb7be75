"""The preprocessing cache: keyed by entry and transform fingerprint, shared, never stale."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    RandFlipd,
    Spacingd,
    SpatialPadd,
    ThreadUnsafe,
)

from tumorseg.data.synthetic import generate_dataset
from tumorseg.training import caching
from tumorseg.training.caching import (
    auto_num_workers,
    cached_dataset,
    entry_hash,
    transform_fingerprint,
)

KEYS = ["image", "label"]


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cache_data")
    generate_dataset(root, num_cases=2, shape=(16, 16, 16), seed=5, layout="brats2021")
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    mods = ("flair", "t1", "t1ce", "t2")
    return [
        {
            "image": [str(c / f"{c.name}_{m}.nii.gz") for m in mods],
            "label": str(c / f"{c.name}_seg.nii.gz"),
        }
        for c in cases
    ]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts LoadImaged calls (patched on the class: the transforms' fingerprint is unchanged)."""
    calls = [0]
    original = LoadImaged.__call__

    def counting(self: LoadImaged, data: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(LoadImaged, "__call__", counting)
    return calls


def _pre(pixdim: float = 1.0) -> list[Any]:
    return [
        LoadImaged(KEYS, image_only=True),
        EnsureChannelFirstd(KEYS),
        Spacingd(KEYS, pixdim=(pixdim,) * 3, mode=("bilinear", "nearest")),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ]


def _train(pre: list[Any], roi: int = 20) -> Compose:
    return Compose([*pre, SpatialPadd(KEYS, spatial_size=(roi,) * 3), RandFlipd(KEYS, prob=0.5)])


def _read_all(ds: Any) -> None:
    for i in range(len(ds)):
        ds[i]


def test_fingerprint_is_stable_and_follows_the_configuration() -> None:
    assert transform_fingerprint(_pre()) == transform_fingerprint(_pre())
    assert transform_fingerprint(Compose(_pre())) == transform_fingerprint(_pre())
    assert transform_fingerprint(_pre(pixdim=1.5)) != transform_fingerprint(_pre())
    assert transform_fingerprint(_pre()[:-1]) != transform_fingerprint(_pre())


def test_disk_cache_hits_with_the_same_config_and_misses_after_a_change(
    items: list[dict[str, Any]], loads: list[int], tmp_path: Path
) -> None:
    first = cached_dataset(items, _pre(), mode="disk", cache_dir=tmp_path)
    assert isinstance(first, PersistentDataset)
    _read_all(first)
    assert loads[0] == 2
    files = sorted(tmp_path.glob("*/*.pt"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]

    # A new run with the same configuration: read from the cache, nothing recomputed.
    again = cached_dataset(items, _pre(), mode="disk", cache_dir=tmp_path)
    _read_all(again)
    _read_all(again)
    assert loads[0] == 2
    assert [f.stat().st_mtime_ns for f in files] == stamps

    # Another pixdim: a new fingerprint folder, every case preprocessed again.
    changed = cached_dataset(items, _pre(pixdim=2.0), mode="disk", cache_dir=tmp_path)
    _read_all(changed)
    assert loads[0] == 4
    assert len(list(tmp_path.iterdir())) == 2
    assert changed[0]["image"].shape[1:] == (8, 8, 8)


def test_replaced_study_is_a_cache_miss(items: list[dict[str, Any]], tmp_path: Path) -> None:
    before = entry_hash(items[0])
    assert entry_hash(dict(items[0])) == before
    path = items[0]["label"]
    st = os.stat(path)
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert entry_hash(items[0]) != before
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_training_and_validation_share_the_cache_whatever_the_roi(
    items: list[dict[str, Any]], loads: list[int], tmp_path: Path
) -> None:
    n = len(_pre())
    train = cached_dataset(
        items, _train(_pre(), roi=20), mode="disk", cache_dir=tmp_path, cache_transforms=n
    )
    _read_all(train)
    assert train[0]["image"].shape[1:] == (20, 20, 20)  # padding runs after the cache
    assert loads[0] == 2
    val = cached_dataset(
        items, Compose(_pre()), mode="disk", cache_dir=tmp_path, cache_transforms=n
    )
    other_roi = cached_dataset(
        items, _train(_pre(), roi=24), mode="disk", cache_dir=tmp_path, cache_transforms=n
    )
    _read_all(val)
    _read_all(other_roi)
    assert loads[0] == 2
    assert val[0]["image"].shape[1:] == (16, 16, 16)
    assert other_roi[0]["image"].shape[1:] == (24, 24, 24)
    assert len(list(tmp_path.iterdir())) == 1


def test_auto_picks_memory_when_it_fits_else_disk(
    items: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(caching, "_memory_reserved", 0)
    roomy = cached_dataset(items, _pre(), mode="auto", cache_dir=tmp_path, memory_budget_gb=1.0)
    assert isinstance(roomy, CacheDataset)
    assert not list(tmp_path.iterdir())  # nothing written when memory is chosen
    # Two 16^3 cases of 5 float32 channels take ~160 KiB; the first cache reserved them.
    assert 100_000 < caching._memory_reserved < 300_000
    tight = cached_dataset(items, _pre(), mode="auto", cache_dir=tmp_path, memory_budget_gb=1e-4)
    assert isinstance(tight, PersistentDataset)
    _read_all(tight)
    assert len(list(tmp_path.glob("*/*.pt"))) == 2
    assert isinstance(cached_dataset(items, _pre(), mode="none"), Dataset)


def test_threaded_memory_cache_loads_every_channel(items: list[dict[str, Any]]) -> None:
    # MONAI 1.6.1's NibabelReader shares state between threads: unwrapped, a threaded cache
    # fill now and then stacks 1 channel instead of 4 (seen in 5 of 90 cases on 2 CPUs).
    for _ in range(5):
        ds = cached_dataset(items * 4, _pre(), mode="memory", num_workers=4)
        assert isinstance(ds, CacheDataset)
        assert isinstance(ds.transform.transforms[0], ThreadUnsafe)  # copied per thread
        assert all(ds[i]["image"].shape[0] == 4 for i in range(len(ds)))


def test_invalid_settings_name_the_value(items: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="'ram'"):
        cached_dataset(items, _pre(), mode="ram")
    with pytest.raises(ValueError, match="1.5"):
        cached_dataset(items, _pre(), cache_rate=1.5)
    with pytest.raises(ValueError, match="RandFlipd"):
        cached_dataset(items, _train(_pre()), mode="none", cache_transforms=len(_pre()) + 2)


def test_auto_num_workers_keeps_a_cpu_for_the_main_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for cpus, expected in ((1, 0), (2, 1), (6, 5), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert auto_num_workers() == expected
    assert auto_num_workers(cap=0) == 0
    with pytest.raises(ValueError, match="-1"):
        auto_num_workers(cap=-1)
