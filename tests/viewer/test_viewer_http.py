"""The viewer's HTTP API through plain requests: cases, slices, mask download, uploads refused."""

from __future__ import annotations

import gzip
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _viewer_utils import get_json, multipart, request

from tumorseg.conventions import CHANNEL_ORDER


def _study_files(paths: list[Path]) -> dict[str, tuple[str, bytes]]:
    return {m: (p.name, p.read_bytes()) for m, p in zip(CHANNEL_ORDER, paths, strict=True)}


def _upload(server: Any, files: dict[str, tuple[str, bytes]]) -> tuple[int, dict[str, Any]]:
    body, ctype = multipart(files, {"model": "stub"})
    status, raw = request(f"{server.url}/api/upload", body=body, ctype=ctype)
    return status, json.loads(raw)


def _uploads_on_disk(server: Any) -> list[Path]:
    folder = server.store.uploads_dir
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_viewer_lists_cases_with_volumes_and_dice(server: Any) -> None:
    data = get_json(f"{server.url}/api/cases")
    assert [c["case_id"] for c in data["cases"]] == ["SYN2021_000", "SYN2021_001"]
    case = data["cases"][0]
    assert case["has_reference"] and case["modalities"] == list(CHANNEL_ORDER)
    assert case["volumes_ml"]["WT"] > 0
    assert 0.3 < case["dice"]["WT"] < 1.0  # a slab was removed from the reference
    assert data["models"] == ["stub"]
    status, page = request(f"{server.url}/")
    assert status == 200 and b"tumorseg viewer" in page


def test_viewer_slices_are_pngs_that_change_with_the_index(server: Any) -> None:
    from PIL import Image

    base = f"{server.url}/api/slice/SYN2021_000?view=axial&modality=flair&opacity=0.6"
    images = {}
    for index in (10, 16):
        status, png = request(f"{base}&index={index}")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        images[index] = np.asarray(Image.open(io.BytesIO(png)))
    assert images[10].shape == images[16].shape and images[10].shape[0] >= 256
    assert not np.array_equal(images[10], images[16])
    for view in ("coronal", "sagittal"):
        assert (
            request(f"{server.url}/api/slice/SYN2021_000?view={view}&index=16&source=ref")[0] == 200
        )
    # Without any class toggled on, no overlay colour: the image is grey.
    _, png = request(f"{base}&index=16&classes=")
    grey = np.asarray(Image.open(io.BytesIO(png))).astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert request(f"{base}&index=16&view=oblique")[0] == 400


def test_viewer_serves_files_only_by_case_id(server: Any, outputs: Path) -> None:
    status, data = request(f"{server.url}/api/mask/SYN2021_001")
    assert status == 200 and data == (outputs / "SYN2021_001.nii.gz").read_bytes()
    for bad in ("..%2F..%2Fetc%2Fpasswd", "../volumes", "nope", "%2Fetc%2Fpasswd"):
        assert request(f"{server.url}/api/mask/{bad}")[0] == 404, bad
        assert request(f"{server.url}/api/slice/{bad}?view=axial")[0] == 404, bad
    assert request(f"{server.url}/../../etc/passwd")[0] == 404


def test_viewer_upload_segments_a_study(server: Any, new_study: list[Path]) -> None:
    status, job = _upload(server, _study_files(new_study))
    assert status == 202, job
    deadline = time.monotonic() + 30
    while job["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = get_json(f"{server.url}/api/jobs/{job['job_id']}")
    assert job["state"] == "done", job
    summary = get_json(f"{server.url}/api/cases/{job['case_id']}")
    assert summary["volumes_ml"]["WT"] > 0 and summary["modalities"] == list(CHANNEL_ORDER)
    # The server named everything it wrote; no client name reached the disk.
    names = {p.name for p in _uploads_on_disk(server)}
    assert names == {job["case_id"], *(f"{m}.nii.gz" for m in CHANNEL_ORDER)}


def test_viewer_upload_of_a_zip(server: Any, new_study: list[Path]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in new_study:
            zf.writestr(f"study/{path.name}", path.read_bytes())
    status, job = _upload(server, {"archive": ("study.zip", buf.getvalue())})
    assert status == 202, job


def test_viewer_refuses_non_nifti(server: Any, new_study: list[Path]) -> None:
    files = _study_files(new_study)
    files["t2"] = ("t2.nii.gz", gzip.compress(b"this is not an image" * 50))
    status, err = _upload(server, files)
    assert status == 400 and "not a readable NIfTI" in err["error"]
    files["t2"] = ("t2.nii", b"<html>" * 100)
    assert _upload(server, files)[0] == 400
    assert _uploads_on_disk(server) == []


def test_viewer_refuses_oversize_upload(server: Any, new_study: list[Path]) -> None:
    files = _study_files(new_study)
    files["flair"] = ("flair.nii", b"\0" * (2 * 2**20))  # the server's cap is 1 MiB
    status, err = _upload(server, files)
    assert status == 413 and "limit" in err["error"]
    assert _uploads_on_disk(server) == []


@pytest.mark.parametrize("name", ["../flair.nii.gz", "..", "a/b.nii.gz", "..\\x.nii.gz"])
def test_viewer_refuses_names_with_paths(server: Any, new_study: list[Path], name: str) -> None:
    files = _study_files(new_study)
    files["flair"] = (name, files["flair"][1])
    status, err = _upload(server, files)
    assert status == 400 and "name" in err["error"], err
    assert _uploads_on_disk(server) == []


@pytest.mark.parametrize("entry", ["../t2.nii.gz", "/abs/t2.nii.gz", "a/../../t2.nii.gz"])
def test_viewer_refuses_zip_entries_with_paths(
    server: Any, new_study: list[Path], entry: str
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in new_study[:3]:
            zf.writestr(path.name, path.read_bytes())
        zf.writestr(entry, new_study[3].read_bytes())
    status, err = _upload(server, {"archive": ("study.zip", buf.getvalue())})
    assert status == 400 and "refused zip entry" in err["error"], err
    assert _uploads_on_disk(server) == []


def test_viewer_refuses_incomplete_or_mismatched_studies(
    server: Any, new_study: list[Path], dataset: Path
) -> None:
    files = _study_files(new_study)
    del files["t1"]
    status, err = _upload(server, files)
    assert status == 400 and "missing ['t1']" in err["error"]
    assert _upload(server, {"archive": ("x.zip", b"PK not really")})[0] == 400
    assert request(f"{server.url}/api/upload", body=b"x", ctype="text/plain")[0] == 400
