"""Regression tests of issue 18, viewer part: the upload path under attack and bad luck.

1. a NIfTI header that declares a huge image is refused before any voxel is read;
2. the upload limits hold: compression ratio, Content-Length (missing, negative, oversize),
   stalled bodies, concurrent uploads and queued jobs, corrupt gzip, unexpected handler
   errors, and failed uploads leave nothing behind;
3. only this server's Host is answered, and uploads need a same-origin page's session token.

The peak memory of a separate server process and the load test are in
``test_viewer_load.py``.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _viewer_utils import (
    StubPredictor,
    get_json,
    multipart,
    nifti_bytes,
    raw_exchange,
    request,
    session,
)

from tumorseg.conventions import CHANNEL_ORDER


def _study_files(paths: list[Path]) -> dict[str, tuple[str, bytes]]:
    return {m: (p.name, p.read_bytes()) for m, p in zip(CHANNEL_ORDER, paths, strict=True)}


def _upload(
    server: Any, files: dict[str, tuple[str, bytes]], **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    body, ctype = multipart(files, {"model": "stub"})
    status, raw = request(f"{server.url}/api/upload", body=body, ctype=ctype, **kwargs)
    return status, json.loads(raw)


def _on_disk(server: Any) -> list[Path]:
    folder = server.store.uploads_dir
    return sorted(folder.rglob("*")) if folder.exists() else []


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request" in t.name]


def _wait_for(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


@pytest.fixture
def make(outputs: Path, dataset: Path) -> Iterator[Any]:
    """Build and start a viewer with the given options; closed at the end of the test."""
    from tumorseg.viewer import make_server

    servers = []

    def build(**kwargs: Any) -> Any:
        kwargs.setdefault("factories", {"stub": StubPredictor})
        kwargs.setdefault("max_upload_mb", 1)
        srv = make_server(str(outputs), data_dir=str(dataset), port=0, **kwargs)
        srv.start_background()
        servers.append(srv)
        return srv

    yield build
    for srv in servers:
        srv.close()


# ----------------------------------------------------------------------------- 1. bombs


def test_huge_header_is_refused_before_any_voxel_is_read(server: Any) -> None:
    # 1000 x 1000 x 100 bytes declared in a few dozen: the old code allocated all 100 MB.
    bomb = nifti_bytes((1000, 1000, 100))
    assert len(bomb) < 100
    files = {m: (f"{m}.nii.gz", bomb) for m in CHANNEL_ORDER}
    tracemalloc.start()
    try:
        status, err = _upload(server, files)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413, err
    assert "1000x1000x100" in err["error"] and "flair.nii.gz" in err["error"]
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse a header"
    assert _on_disk(server) == []


# ----------------------------------------------------------------------------- 2. limits


def test_compression_ratio_is_limited(server: Any, new_study: list[Path]) -> None:
    # 2 MiB of zeros behind a valid header gzip to ~2 KiB: ratio ~1000, refused as a bomb
    # (the old limit was the upload cap x 8, so this passed).
    files = _study_files(new_study)
    files["t2"] = ("t2.nii.gz", nifti_bytes((128, 128, 128), data=bytes(128**3)))
    status, err = _upload(server, files)
    assert status == 413 and "compression ratio" in err["error"], err
    assert _on_disk(server) == []


def test_ratio_limit_in_a_zip(server: Any, new_study: list[Path]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in new_study[:3]:
            zf.writestr(path.name, path.read_bytes())
        raw = nifti_bytes((128, 128, 128), data=bytes(128**3), gz=False)
        zf.writestr("case_t2.nii", raw)
    status, err = _upload(server, {"archive": ("study.zip", buf.getvalue())})
    assert status == 413 and "compression ratio" in err["error"], err


@pytest.mark.parametrize(
    ("length", "status"),
    [("-1", 400), ("12abc", 400), ("+5", 400), ("99999999999", 413), (None, 411)],
)
def test_content_length_must_be_given_and_sane(
    server: Any, length: str | None, status: int
) -> None:
    headers = session(server.url)
    head = f"POST /api/upload HTTP/1.1\nHost: {server.url[7:]}\n"
    head += "".join(f"{k}: {v}\n" for k, v in headers.items())
    head += "Content-Type: multipart/form-data; boundary=x\n"
    if length is not None:
        head += f"Content-Length: {length}\n"
    # The old server read a negative length until the client hung up: it never answered.
    got, raw = raw_exchange(server.url, head.rstrip("\n"), b"--x--\r\n", timeout=5)
    assert got == status, raw[:300]
    assert b'"error"' in raw


def test_chunked_bodies_are_refused(server: Any) -> None:
    head = f"POST /api/upload HTTP/1.1\nHost: {server.url[7:]}\n"
    head += "".join(f"{k}: {v}\n" for k, v in session(server.url).items())
    head += "Transfer-Encoding: chunked"
    got, _ = raw_exchange(server.url, head, b"5\r\nhello\r\n0\r\n\r\n", timeout=5)
    assert got == 411


def test_a_stalled_body_times_out_and_frees_its_thread(make: Any) -> None:
    srv = make(request_timeout=1.0)
    headers = session(srv.url)
    head = f"POST /api/upload HTTP/1.1\nHost: {srv.url[7:]}\n"
    head += "".join(f"{k}: {v}\n" for k, v in headers.items())
    head += "Content-Type: multipart/form-data; boundary=x\nContent-Length: 1000"
    start = time.monotonic()
    got, raw = raw_exchange(srv.url, head, b"abc", timeout=8)
    assert got == 408, raw[:300]
    assert time.monotonic() - start < 5
    assert _wait_for(lambda: not _handler_threads(), 5), _handler_threads()
    # A client that connects and sends nothing is dropped after the timeout too.
    import socket

    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
        start = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - start < 5
    assert get_json(f"{srv.url}/api/cases")["cases"]


def _hold_upload(srv: Any, announced: int = 100_000) -> Any:
    """A socket that started an upload and stalls in its body (it holds an upload slot)."""
    import socket

    headers = session(srv.url)
    head = f"POST /api/upload HTTP/1.1\r\nHost: {srv.url[7:]}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {announced}\r\n\r\n"
    port = int(srv.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + b"--x\r\n")
    return sock


def test_concurrent_uploads_are_bounded(make: Any, new_study: list[Path]) -> None:
    srv = make(max_concurrent_uploads=1, request_timeout=5.0)
    sock = _hold_upload(srv)
    try:
        assert _wait_for(lambda: getattr(srv, "active_uploads", 1) == 1, 5)
        status, err = _upload(srv, _study_files(new_study))
        assert status == 429 and "uploads" in err["error"], err
    finally:
        sock.close()
    assert _wait_for(lambda: srv.active_uploads == 0, 10)
    assert _upload(srv, _study_files(new_study))[0] == 202


class _Blocking:
    """A predictor that waits for an event (a job that stays running)."""

    release = threading.Event()

    def predict_case(self, images: Sequence[Path], *, case_id: str, label_convention: str) -> Any:
        _Blocking.release.wait(20)
        return StubPredictor().predict_case(
            images, case_id=case_id, label_convention=label_convention
        )


def test_queued_jobs_are_bounded(make: Any, new_study: list[Path]) -> None:
    _Blocking.release.clear()
    srv = make(factories={"stub": _Blocking}, max_pending_jobs=1)
    try:
        first, job = _upload(srv, _study_files(new_study))
        assert first == 202, job
        status, err = _upload(srv, _study_files(new_study))
        assert status == 503 and "busy" in err["error"], err
        # Nothing of the refused upload was stored.
        assert {p.name for p in srv.store.uploads_dir.iterdir()} == {job["case_id"]}
    finally:
        _Blocking.release.set()
    done = _wait_for(lambda: get_json(f"{srv.url}/api/jobs/{job['job_id']}")["state"] == "done")
    assert done
    assert _upload(srv, _study_files(new_study))[0] == 202


def test_corrupt_gzip_gets_an_answer(server: Any, new_study: list[Path]) -> None:
    files = _study_files(new_study)
    good = files["t2"][1]
    files["t2"] = ("t2.nii.gz", good[:10] + bytes(b ^ 0x5A for b in good[10:200]) + good[200:])
    status, err = _upload(server, files)  # the old server dropped the connection
    assert status == 400 and "t2.nii.gz" in err["error"], err
    files["t2"] = ("t2.nii.gz", good[: len(good) // 2])  # truncated
    status, err = _upload(server, files)
    assert status == 400 and "truncated" in err["error"], err
    assert _on_disk(server) == []


def test_an_unexpected_error_is_a_500_answer(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server.cases, "rows", broken)
    status, body = request(f"{server.url}/api/cases")
    assert status == 500 and "error" in json.loads(body)
    assert request(f"{server.url}/api/cases/SYN2021_000")[0] == 200  # still serving


def test_a_failed_job_leaves_no_upload_behind(make: Any, new_study: list[Path]) -> None:
    class Failing:
        def predict_case(self, images: Any, **kwargs: Any) -> Any:
            raise RuntimeError("out of memory")

    srv = make(factories={"stub": Failing})
    status, job = _upload(srv, _study_files(new_study))
    assert status == 202
    state = _wait_for(
        lambda: (j := get_json(f"{srv.url}/api/jobs/{job['job_id']}"))["state"] == "failed" and j
    )
    assert state and "out of memory" in state["error"]
    assert _on_disk(srv) == []


def test_a_failed_store_leaves_no_upload_behind(
    server: Any, new_study: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tumorseg.viewer import jobs

    real = jobs.atomic_write_bytes
    calls = []

    def full_disk(path: Any, data: bytes) -> Path:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(jobs, "atomic_write_bytes", full_disk)
    status, err = _upload(server, _study_files(new_study))
    assert status == 507 and "No space left" in err["error"], err
    assert _on_disk(server) == []


# ----------------------------------------------------------------------------- 3. Host, CSRF


@pytest.mark.parametrize("path", ["/", "/api/cases", "/api/mask/SYN2021_000", "/api/session"])
def test_a_foreign_host_is_refused(server: Any, path: str) -> None:
    # DNS rebinding: a page of attacker.example whose name now points at 127.0.0.1.
    got, raw = raw_exchange(server.url, f"GET {path} HTTP/1.1\nHost: attacker.example:8050")
    assert got == 403, raw[:300]
    assert b"SYN2021" not in raw


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "LOCALHOST"])
def test_own_names_are_answered(server: Any, host: str) -> None:
    port = server.url.rsplit(":", 1)[1]
    got, raw = raw_exchange(server.url, f"GET /api/cases HTTP/1.1\nHost: {host}:{port}")
    assert got == 200 and b"SYN2021_000" in raw


def test_uploads_need_the_session_token(server: Any, new_study: list[Path]) -> None:
    files = _study_files(new_study)
    status, err = _upload(server, files, auth=False)
    assert status == 403 and "token" in err["error"], err
    wrong = {**session(server.url), "X-Tumorseg-Token": "0" * 32}
    status, err = _upload(server, files, auth=False, headers=wrong)
    assert status == 403 and "token" in err["error"], err
    # The token of one session is not valid with another session's cookie.
    mixed = {**session(server.url), "Cookie": session(server.url)["Cookie"]}
    assert _upload(server, files, auth=False, headers=mixed)[0] == 403
    assert _on_disk(server) == []


def test_uploads_from_another_origin_are_refused(server: Any, new_study: list[Path]) -> None:
    files = _study_files(new_study)
    for origin in ("http://attacker.example", "null", "http://127.0.0.1:1"):
        headers = {**session(server.url), "Origin": origin}
        status, err = _upload(server, files, auth=False, headers=headers)
        assert status == 403 and "origin" in err["error"].lower(), (origin, err)
    cross_site = {**session(server.url), "Sec-Fetch-Site": "cross-site"}
    cross_site.pop("Origin")
    assert _upload(server, files, auth=False, headers=cross_site)[0] == 403
    assert _on_disk(server) == []
    assert _upload(server, files)[0] == 202  # same origin, with its token


def test_the_page_carries_its_session_token(server: Any) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/", timeout=30) as resp:
        cookie = resp.headers["Set-Cookie"]
        page = resp.read().decode()
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert 'name="tumorseg-token"' in page
    assert resp.headers["X-Frame-Options"] == "DENY"


def test_gzip_with_trailing_members_and_garbage(server: Any, new_study: list[Path]) -> None:
    files = _study_files(new_study)
    raw = gzip.decompress(files["t2"][1])
    half = len(raw) // 2
    # Two gzip members (bgzip style) make one valid file ...
    files["t2"] = ("t2.nii.gz", gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    assert _upload(server, files)[0] == 202
    # ... bytes after the image are refused.
    files["t2"] = ("t2.nii.gz", gzip.compress(raw + np.zeros(64, np.uint8).tobytes()))
    status, err = _upload(server, files)
    assert status == 400 and "more" in err["error"], err


@pytest.mark.parametrize(
    "line", ["\x16\x03\x01 hello HTTP/1.1", "G(T / HTTP/1.1", "GET\x7f / HTTP/1.1"]
)
def test_a_request_line_that_is_not_http_is_a_bad_request(server: Any, line: str) -> None:
    # A TLS hello or junk on the plain-HTTP port is malformed (RFC 9110: a method is a token),
    # not a well-formed request for an unknown method (501).
    got, _ = raw_exchange(server.url, line, timeout=5)
    assert got == 400


def test_an_unknown_but_well_formed_method_is_not_implemented(server: Any) -> None:
    got, _ = raw_exchange(server.url, "BREW / HTTP/1.1\nHost: " + server.url[7:], timeout=5)
    assert got == 501
