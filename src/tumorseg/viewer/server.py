"""The viewer's HTTP server (stdlib ``ThreadingHTTPServer``): a page, a JSON API, PNG slices.

Routes (case ids are looked up in the scanned output folder, never joined into a path):

- ``GET /``: the page; ``GET /api/cases``, ``GET /api/cases/<id>``: summaries;
- ``GET /api/slice/<id>?view=axial&index=N&modality=flair&source=pred&opacity=0.5``
  ``&classes=NCR,ED,ET``: one slice as PNG;
- ``GET /api/mask/<id>``: the mask file, as a download;
- ``POST /api/upload`` (multipart: ``flair``, ``t1``, ``t1ce``, ``t2`` files, or ``archive`` (zip)
  or ``image`` (4D NIfTI), and ``model``); ``GET /api/jobs/<job id>``: progress.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tumorseg.conventions import CLASSES
from tumorseg.viewer.jobs import JobManager, PredictorFactory
from tumorseg.viewer.page import PAGE
from tumorseg.viewer.store import ResultsStore, render_slice
from tumorseg.viewer.uploads import UploadError, check_name, read_zip, validate_study

__all__ = ["ViewerServer", "make_server"]

log = logging.getLogger(__name__)
_DRAIN_LIMIT = 64 * 2**20
_UNCOMPRESSED_FACTOR = 8  # a NIfTI may shrink ~8x in gzip; more is refused as a likely bomb


class ViewerServer(ThreadingHTTPServer):
    """The HTTP server with the viewer's state.

    Args:
        address: ``(host, port)``; port 0 picks a free one.
        store: the output folder's cases.
        jobs: the upload job manager.
        max_upload_bytes: the largest request body accepted.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        store: ResultsStore,
        jobs: JobManager,
        max_upload_bytes: int,
    ) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.jobs = jobs
        self.max_upload_bytes = max_upload_bytes

    @property
    def url(self) -> str:
        """The server's base URL."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start_background(self) -> threading.Thread:
        """Serve in a daemon thread (tests, notebooks); stop with :meth:`close`."""
        thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="tumorseg-view",
        )
        thread.start()
        return thread

    def close(self) -> None:
        """Stop serving and release the port."""
        self.shutdown()
        self.server_close()
        self.jobs.shutdown()


def make_server(
    output_dir: str,
    *,
    data_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8050,
    factories: Mapping[str, PredictorFactory] | None = None,
    max_upload_mb: float = 512,
    label_convention: str | None = None,
) -> ViewerServer:
    """Build (not start) the viewer's server.

    Args:
        output_dir: folder of ``<case_id>.nii.gz`` masks; uploads land here too.
        data_dir: dataset folder with the images and reference labels, or None.
        host: address to bind; loopback by default (the data are patient images).
        port: TCP port; 0 picks a free one.
        factories: model name -> predictor factory for uploads; none disables uploads.
        max_upload_mb: the largest upload accepted, in MiB.
        label_convention: convention of the masks (default: the dataset's, else brats2021).

    Raises:
        FileNotFoundError: for a missing output or dataset folder.
        ValueError: for a non-positive upload cap.
    """
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    store = ResultsStore(output_dir, data_dir=data_dir, label_convention=label_convention)
    jobs = JobManager(store, factories or {})
    return ViewerServer(
        (host, port), store=store, jobs=jobs, max_upload_bytes=int(max_upload_mb * 2**20)
    )


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)

    # -- responses -----------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    # -- GET -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            if not parts:
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif parts == ["api", "cases"]:
                self._json(
                    {
                        "cases": self.server.store.summaries(),
                        "models": self.server.jobs.models,
                        "classes": list(CLASSES),
                        "max_upload_mb": self.server.max_upload_bytes / 2**20,
                    }
                )
            elif len(parts) == 3 and parts[:2] == ["api", "cases"]:
                self._json(self.server.store.summary(parts[2]))
            elif len(parts) == 3 and parts[:2] == ["api", "slice"]:
                self._slice(parts[2], query)
            elif len(parts) == 3 and parts[:2] == ["api", "mask"]:
                entry = self.server.store.get(parts[2])
                self._send(
                    200,
                    entry.mask.read_bytes(),
                    "application/gzip",
                    Content_Disposition=f'attachment; filename="{entry.mask.name}"',
                )
            elif len(parts) == 3 and parts[:2] == ["api", "jobs"]:
                self._json(self.server.jobs.get(parts[2]).as_dict())
            else:
                self._error(404, "not found")
        except KeyError:
            self._error(404, "no such case or job")
        except ValueError as err:
            self._error(400, str(err))

    def _slice(self, case_id: str, query: dict[str, str]) -> None:
        store = self.server.store
        entry = store.get(case_id)
        classes_arg = query.get("classes", ",".join(CLASSES))
        png = render_slice(
            store.load(entry),
            view=query.get("view", "axial"),
            index=int(query.get("index", "0")),
            modality=query.get("modality") or None,
            source=query.get("source", "pred"),
            opacity=float(query.get("opacity", "0.5")),
            classes=tuple(c for c in classes_arg.split(",") if c),
            convention=entry.convention,
        )
        self._send(200, png, "image/png")

    # -- POST ----------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        if urllib.parse.urlsplit(self.path).path != "/api/upload":
            self._error(404, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "a Content-Length is required")
            self.close_connection = True
            return
        cap = self.server.max_upload_bytes
        if length > cap:
            # Read (and drop) a moderate excess so the client sees the 413 rather than a reset.
            if length <= cap + _DRAIN_LIMIT:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 2**20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            self.close_connection = True
            self._error(413, f"upload larger than the {cap / 2**20:g} MiB limit")
            return
        body = self.rfile.read(length)
        try:
            job = self._accept_upload(body)
        except UploadError as err:
            self._error(err.status, str(err))
            return
        self._json(job, 202)

    def _accept_upload(self, body: bytes) -> dict[str, Any]:
        if not self.server.jobs.models:
            raise UploadError("uploads are disabled: the viewer was started without a model")
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            raise UploadError("expected a multipart/form-data upload")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body
        )
        fields: dict[str, tuple[str, bytes]] = {}
        model = self.server.jobs.models[0]
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if not isinstance(name, str) or not isinstance(payload, bytes):
                continue
            if name == "model":
                model = payload.decode("utf-8", "replace").strip() or model
                continue
            filename = part.get_filename()
            if filename is None or not payload:
                continue  # an empty file input
            fields[name] = (check_name(filename), payload)
        max_bytes = self.server.max_upload_bytes * _UNCOMPRESSED_FACTOR
        if "archive" in fields:
            files = read_zip(fields.pop("archive")[1], max_bytes=max_bytes)
        else:
            files = fields
        study = validate_study(files, max_bytes=max_bytes)
        try:
            job = self.server.jobs.submit(study, model=model)
        except ValueError as err:
            raise UploadError(str(err)) from None
        return job.as_dict()
