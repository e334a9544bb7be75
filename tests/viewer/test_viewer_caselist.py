"""The case list from ``volumes.csv`` (1,000 cases, none loaded), the NIfTI volumes NiiVue
loads, and the page's vendored scripts."""

from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _viewer_utils import get_json, request

from tumorseg.viewer.caselist import CaseIndex


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def thousand(tmp_path: Path) -> Path:
    """1,000 "masks" that are not NIfTI at all, and their volumes.csv: any mask read would
    show up as an unreadable case, so the list must come from the table alone."""
    out = tmp_path / "big"
    out.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1000):
        case_id = f"CASE_{i:04d}"
        (out / f"{case_id}.nii.gz").write_bytes(b"not a nifti")
        wt = round(float(rng.uniform(1, 200)), 3)
        rows.append([case_id, wt, round(wt / 2, 3), round(wt / 4, 3), "extra"])
    _write_csv(out / "volumes.csv", ["case_id", "WT_ml", "TC_ml", "ET_ml", "note"], rows)
    return out


def test_case_list_of_1000_answers_within_a_second(thousand: Path) -> None:
    from tumorseg.viewer import make_server

    srv = make_server(str(thousand), port=0)
    srv.start_background()
    try:
        url = f"{srv.url}/api/cases"
        get_json(url)  # imports and the first read of the table
        for query in ("", "?sort=WT&order=desc&limit=100", "?offset=900&limit=100&sort=ET"):
            start = time.perf_counter()
            data = get_json(url + query)
            elapsed = time.perf_counter() - start
            assert elapsed < 1.0, (query, elapsed)
            assert data["total"] == 1000 and data["pending"] == 0
            assert not any("error" in c for c in data["cases"]), "no mask was read"
        ordered = get_json(url + "?sort=WT&order=desc&limit=500")["cases"]
        wt = [c["volumes_ml"]["WT"] for c in ordered]
        assert len(wt) == 500 and wt == sorted(wt, reverse=True)
        page = get_json(url + "?offset=990&limit=50")
        assert [c["case_id"] for c in page["cases"]] == [f"CASE_{i:04d}" for i in range(990, 1000)]
        assert get_json(url + "?q=case_012")["total"] == 10
    finally:
        srv.close()


@pytest.mark.parametrize(
    "query,message",
    [
        ("sort=volume", "unknown sort key 'volume'"),
        ("order=up", "unknown order 'up'"),
        ("limit=0", "limit in 1..500"),
        ("limit=9999", "limit in 1..500"),
        ("offset=-3", "offset must be a non-negative integer, got '-3'"),
        ("limit=ten", "limit must be a non-negative integer, got 'ten'"),
    ],
)
def test_bad_list_parameters_are_a_400(server: Any, query: str, message: str) -> None:
    status, body = request(f"{server.url}/api/cases?{query}")
    assert status == 400 and message in json.loads(body)["error"]


def test_volumes_csv_read_tolerantly_and_dice_from_a_metrics_table(
    outputs: Path, dataset: Path
) -> None:
    from tumorseg.viewer.store import ResultsStore

    store = ResultsStore(outputs, data_dir=dataset)
    # A row with an unparsable number, a row of a case without a mask, and no TC column.
    _write_csv(
        outputs / "volumes.csv",
        ["case_id", "WT_ml", "ET_ml"],
        [["SYN2021_000", "12.5", "nan"], ["SYN2021_001", "oops", "1"], ["GONE", "1", "1"]],
    )
    _write_csv(
        outputs / "per_case.csv",
        ["case_id", "status", "dice_WT", "dice_TC", "dice_ET"],
        [["SYN2021_000", "ok", "0.5", "0.25", "0.125"]],
    )
    rows = {r["case_id"]: r for r in CaseIndex(store).rows()}
    assert set(rows) == {"SYN2021_000", "SYN2021_001"}
    assert rows["SYN2021_000"]["volumes_ml"] == {"WT": 12.5}  # what the table says
    assert rows["SYN2021_000"]["dice"] == {"WT": 0.5, "TC": 0.25, "ET": 0.125}
    # Not in the tables: from the label maps (the reference gives Dice).
    computed = CaseIndex.label_stats(store.get("SYN2021_001"))
    assert rows["SYN2021_001"]["volumes_ml"] == {"ET": 1.0}
    assert rows["SYN2021_001"]["dice"] == {k: round(v, 4) for k, v in computed["dice"].items()}
    assert 0.3 < computed["dice"]["WT"] < 1.0
    page = CaseIndex(store).page(sort="dice_WT", order="desc")
    assert [c["case_id"] for c in page["cases"]] == ["SYN2021_001", "SYN2021_000"]
    with pytest.raises(FileNotFoundError, match="metrics table"):
        CaseIndex(store, metrics_csv=outputs / "missing.csv")


def test_many_cases_without_a_table_are_filled_in_the_background(
    outputs: Path, dataset: Path
) -> None:
    from tumorseg.viewer.store import ResultsStore

    index = CaseIndex(ResultsStore(outputs, data_dir=dataset), sync_limit=1)
    first = index.page()
    assert first["pending"] == 2 and all(c["volumes_ml"] is None for c in first["cases"])
    deadline = time.monotonic() + 30
    while index.page()["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = index.page()["cases"]
    assert all(r["volumes_ml"]["WT"] > 0 and r["dice"]["WT"] > 0.3 for r in rows)


def test_volumes_are_cropped_nifti_on_the_case_grid(server: Any, outputs: Path) -> None:
    import nibabel as nib

    summary = get_json(f"{server.url}/api/cases/SYN2021_000")
    assert summary["volumes"] == ["flair", "t1", "t1ce", "t2", "pred", "ref", "pred_outline"]
    assert {c["name"]: c["value"] for c in summary["labels"]} == {"NCR": 1, "ED": 2, "ET": 4}
    images = {}
    for name in summary["volumes"]:
        status, body = request(f"{server.url}/api/volume/SYN2021_000/{name}.nii.gz")
        assert status == 200 and body[:2] == b"\x1f\x8b", name
        images[name] = nib.Nifti1Image.from_bytes(gzip.decompress(body))
    mask: Any = nib.as_closest_canonical(nib.load(str(outputs / "SYN2021_000.nii.gz")))
    full = np.asarray(mask.dataobj)
    pred = images["pred"]
    assert pred.get_data_dtype() == np.uint8 and images["flair"].get_data_dtype() == np.int16
    assert all(a <= b for a, b in zip(pred.shape, full.shape, strict=True))
    # Same world position, same label: the crop's affine is shifted, not just the array.
    origin = np.round(np.linalg.inv(mask.affine) @ pred.affine @ [0, 0, 0, 1]).astype(int)[:3]
    x, y, z = origin
    sx, sy, sz = pred.shape
    assert np.array_equal(np.asarray(pred.dataobj), full[x : x + sx, y : y + sy, z : z + sz])
    assert int(np.asarray(pred.dataobj).astype(bool).sum()) == int(full.astype(bool).sum())
    outline = np.asarray(images["pred_outline"].dataobj)
    assert 0 < (outline > 0).sum() < (full > 0).sum() and set(np.unique(outline)) <= {0, 1, 2, 4}
    for bad, status in (("SYN2021_000/seg", 404), ("SYN2021_000/dwi.nii.gz", 400)):
        assert request(f"{server.url}/api/volume/{bad}")[0] == status, bad
    assert request(f"{server.url}/api/volume/..%2fSYN2021_000/pred.nii.gz")[0] == 404


def test_the_page_scripts_are_served_from_the_package(server: Any) -> None:
    from tumorseg.viewer.assets import NIIVUE_VERSION

    status, page = request(f"{server.url}/")
    assert status == 200
    assert b'src="static/niivue.umd.js"' in page and b"http" not in page.split(b"<body>")[1]
    status, script = request(f"{server.url}/static/niivue.umd.js")
    assert status == 200 and len(script) > 1_000_000 and b"niivue" in script[:1000]
    notes = (Path(__file__).parents[2] / "src/tumorseg/viewer/static/README.md").read_text()
    assert NIIVUE_VERSION in notes and "BSD-2-Clause" in notes
    for name in ("server.py", "..%2fserver.py", "NIIVUE_LICENSE"):
        assert request(f"{server.url}/static/{name}")[0] == 404, name
