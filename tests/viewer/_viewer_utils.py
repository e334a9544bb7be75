"""Helpers of the viewer tests: a stub predictor, NIfTI bytes, plain HTTP requests."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.inference.writer import label_image, write_label_atomic

SHAPE = (32, 32, 32)


class StubResult:
    """What :meth:`StubPredictor.predict_case` returns: a label map that can be saved."""

    def __init__(self, case_id: str, label: np.ndarray, header: Any) -> None:
        self.case_id, self.label, self.header = case_id, label, header

    def save(self, output_dir: str | Path) -> Path:
        return write_label_atomic(
            Path(output_dir) / f"{self.case_id}.nii.gz", label_image(self.label, self.header)
        )


class StubPredictor:
    """Thresholds FLAIR (no network): fast, and its mask is never empty on a phantom."""

    calls = 0

    def predict_case(
        self, images: Sequence[Path], *, case_id: str, label_convention: str
    ) -> StubResult:
        import nibabel as nib

        StubPredictor.calls += 1
        img: Any = nib.load(str(images[0]))
        flair = np.asanyarray(img.dataobj).astype(np.float32)
        levels = np.percentile(flair[flair > 0], [85, 93, 97])
        label = np.zeros(flair.shape, np.uint8)
        label[flair > levels[0]] = 2
        label[flair > levels[1]] = 1
        label[flair > levels[2]] = 4
        return StubResult(case_id, label, img.header)


def multipart(
    files: dict[str, tuple[str, bytes]], fields: dict[str, str] | None = None
) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in (fields or {}).items():
        disposition = f'Content-Disposition: form-data; name="{name}"'
        chunks.append(f"--{boundary}\r\n{disposition}\r\n\r\n{value}\r\n".encode())
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        chunks.append(head.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def session(base_url: str) -> dict[str, str]:
    """The headers a page of ``base_url`` sends with a POST: its cookie, token and origin.

    Empty for a server without sessions (before issue 18), so that the regression tests show
    that server's own failure rather than a missing endpoint.
    """
    try:
        with urllib.request.urlopen(f"{base_url}/api/session", timeout=30) as resp:
            cookie = resp.headers["Set-Cookie"].split(";", 1)[0]
            token = json.loads(resp.read())["token"]
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return {}
        raise
    return {"Cookie": cookie, "X-Tumorseg-Token": token, "Origin": base_url}


def request(
    url: str,
    *,
    body: bytes | None = None,
    ctype: str | None = None,
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> tuple[int, bytes]:
    """(status, body) of a GET, or a POST when ``body`` is given; HTTP errors included.

    A POST carries a page session's cookie, token and origin unless ``auth`` is False.
    """
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if ctype:
        req.add_header("Content-Type", ctype)
    if body is not None and auth:
        parts = urllib.parse.urlsplit(url)
        for key, value in session(f"{parts.scheme}://{parts.netloc}").items():
            req.add_header(key, value)
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get_json(url: str) -> Any:
    status, body = request(url)
    assert status == 200, (status, body[:200])
    return json.loads(body)


def nifti_bytes(
    shape: Sequence[int], dtype: Any = np.uint8, *, data: bytes | None = None, gz: bool = True
) -> bytes:
    """A single-file NIfTI-1 with this header; the voxels are ``data`` (default none at all:
    a header that promises voxels it does not hold, as in a decompression bomb)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(tuple(shape))
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0\0\0\0" + (data or b"")
    return gzip.compress(raw, mtime=0) if gz else raw


def raw_exchange(
    url: str, head: str, body: bytes = b"", *, timeout: float = 10.0, hold: float = 0.0
) -> tuple[int | None, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` on a raw
    socket; return the status and everything the server sent until it closed or went quiet
    for ``timeout`` seconds (status None: no answer). ``hold``: seconds to wait after sending,
    keeping the socket open (a client that stalls)."""
    import time

    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    data = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)
        if hold:
            time.sleep(hold)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    if not data.startswith(b"HTTP/"):
        return None, data
    return int(data.split(b" ", 2)[1]), data


def _complete(data: bytes) -> bool:
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip())
    return False


def serve_main() -> None:
    """Run a viewer with the stub predictor until killed (``test_viewer_load``'s server).

    ``sys.argv[1]`` is a JSON object: ``output_dir``, ``data_dir`` and ``make_server`` keyword
    arguments. The first line printed is the server's URL.
    """
    import sys

    from tumorseg.viewer import make_server

    options = json.loads(sys.argv[1])
    server = make_server(
        options.pop("output_dir"),
        data_dir=options.pop("data_dir", None),
        port=0,
        factories={"stub": StubPredictor},
        **options,
    )
    print(server.url, flush=True)
    server.serve_forever(poll_interval=0.1)
