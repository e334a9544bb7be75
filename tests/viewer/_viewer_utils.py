"""Helpers of the viewer tests: a stub predictor and plain HTTP requests (urllib)."""

from __future__ import annotations

import json
import urllib.error
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


def request(url: str, *, body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or a POST when ``body`` is given; HTTP errors included."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get_json(url: str) -> Any:
    status, body = request(url)
    assert status == 200, (status, body[:200])
    return json.loads(body)
