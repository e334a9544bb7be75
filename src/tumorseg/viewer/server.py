"""The viewer's HTTP server (stdlib ``ThreadingHTTPServer``): a page, a JSON API, NIfTI volumes.

Routes (case ids are looked up in the scanned output folder, never joined into a path):

- ``GET /``: the page (it carries a session token); ``GET /static/<name>``: its scripts
  (:data:`~tumorseg.viewer.assets.ASSETS` only: NiiVue and the page's code);
  ``GET /api/session``: a session token as JSON, for scripts;
- ``GET /api/cases?offset=0&limit=100&sort=case_id&order=asc&q=text``: one page of the case
  list (:meth:`~tumorseg.viewer.caselist.CaseIndex.page`: volumes from ``volumes.csv``, no
  image read); ``GET /api/cases/<id>``: one case's summary (shape, windows, labels, Dice);
- ``GET /api/volume/<id>/<name>.nii.gz``: a modality, ``pred``, ``ref`` or ``pred_outline``,
  cropped and gzipped, for NiiVue in the page;
- ``GET /api/slice/<id>?view=axial&index=N&modality=flair&source=pred&opacity=0.5``
  ``&classes=NCR,ED,ET``: one slice as PNG (for scripts and the static report);
- ``GET /api/mask/<id>``: the mask file, as a download;
- ``POST /api/upload`` (multipart: ``flair``, ``t1``, ``t1ce``, ``t2`` files, or ``archive`` (zip)
  or ``image`` (4D NIfTI), and ``model``); ``GET /api/jobs/<job id>``: progress.

What a request must be to be served (issue 18):

- every request: a ``Host`` header naming this server (its address, ``localhost`` for a
  loopback server, or ``allowed_hosts``), so that a DNS-rebinding page cannot read the
  patients' images (403 otherwise);
- a POST: no foreign ``Origin`` (nor ``Sec-Fetch-Site: cross-site``), and the token of its
  session (``X-Tumorseg-Token``, derived from the session cookie the page set), so that
  another web page cannot upload (403); a ``Content-Length`` that is a plain number
  (411 missing, 400 malformed, 413 over the cap); a free upload slot (429) and room in the
  job queue (503);
- the socket times out after ``request_timeout`` seconds of silence (408 in a body), a body
  must arrive within ``body_timeout`` seconds, and at most ``max_connections`` connections
  are served at once (503 beyond);
- any error is an answer: 4xx for the client's, 500 (logged) for the server's.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.cookies
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tumorseg.conventions import CLASSES
from tumorseg.viewer.assets import ASSETS, asset
from tumorseg.viewer.caselist import CaseIndex
from tumorseg.viewer.jobs import JobManager, PredictorFactory
from tumorseg.viewer.page import PAGE, TOKEN_PLACEHOLDER
from tumorseg.viewer.store import ResultsStore, render_slice
from tumorseg.viewer.uploads import (
    UploadError,
    UploadLimits,
    check_name,
    parse_multipart,
    read_zip,
    validate_study,
)

__all__ = ["ViewerServer", "make_server"]

log = logging.getLogger(__name__)
#: An over-cap or refused body up to this size is read and dropped, so that a client that
#: sends before it reads sees the answer rather than a reset connection.
_DRAIN_LIMIT = 64 * 2**20
_REFUSED_DRAIN_LIMIT = 2**20
_TOKEN_HEADER = "X-Tumorseg-Token"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_FILE_FIELDS = ("flair", "t1", "t1ce", "t2", "archive", "image")
_NII = ".nii.gz"


def _integer(query: Mapping[str, str], key: str, default: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not text.strip().isdigit():
        raise ValueError(f"{key} must be a non-negative integer, got {text!r}")
    return int(text)


class ViewerServer(ThreadingHTTPServer):
    """The HTTP server with the viewer's state.

    Args:
        address: ``(host, port)``; port 0 picks a free one.
        store: the output folder's cases.
        jobs: the upload job manager.
        cases: the case list (default: over ``store``, without a metrics table).
        limits: upload limits (body size, voxels, compression ratio, parts).
        max_concurrent_uploads: uploads read and validated at once; more get 429.
        max_connections: connections served at once; more get 503.
        request_timeout: seconds of silence on a socket before it is dropped.
        body_timeout: seconds an upload body may take to arrive.
        allowed_hosts: more host names the ``Host`` header may carry (e.g. the machine's
            name when serving on a network address).
    """

    daemon_threads = True
    # The OS queues this many connections while all handler threads are busy.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        store: ResultsStore,
        jobs: JobManager,
        limits: UploadLimits,
        max_concurrent_uploads: int = 2,
        max_connections: int = 32,
        request_timeout: float = 30.0,
        body_timeout: float = 300.0,
        allowed_hosts: Sequence[str] = (),
        cases: CaseIndex | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.cases = cases if cases is not None else CaseIndex(store)
        self.jobs = jobs
        self.limits = limits
        self.request_timeout = request_timeout
        self.body_timeout = body_timeout
        self.max_concurrent_uploads = max_concurrent_uploads
        self._uploads = threading.BoundedSemaphore(max_concurrent_uploads)
        self._active_uploads = 0
        self._connections = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)
        self.cookie_name = f"tumorseg_session_{self.server_address[1]}"
        self.allowed_hosts = self._host_names(allowed_hosts)

    @property
    def max_upload_bytes(self) -> int:
        """The largest request body accepted."""
        return self.limits.max_body_bytes

    @property
    def url(self) -> str:
        """The server's base URL."""
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def active_uploads(self) -> int:
        """Uploads being read or validated now."""
        with self._lock:
            return self._active_uploads

    def _host_names(self, extra: Sequence[str]) -> frozenset[str]:
        host = str(self.server_address[0]).lower()
        names = {host, *(h.lower().strip("[]") for h in extra)}
        if _is_loopback(host):
            names.update(_LOOPBACK_NAMES)
        if host in ("0.0.0.0", "::", ""):  # every interface: the machine's own names too
            names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
            names.update(_LOOPBACK_NAMES)
        return frozenset(names)

    def host_allowed(self, value: str | None) -> bool:
        """Whether a request's ``Host`` header names this server."""
        if not value:
            return False
        host, port = _split_host(value.strip().lower())
        if host is None or (80 if port is None else port) != self.port:
            return False
        host = host.rstrip(".")
        if host in self.allowed_hosts:
            return True
        # On every interface, a literal IP address is fine: a rebinding page has a name.
        return str(self.server_address[0]) in ("0.0.0.0", "::", "") and _is_ip(host)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    # -- sessions ------------------------------------------------------------------------

    def new_session(self) -> str:
        return secrets.token_urlsafe(18)

    def token_for(self, session: str) -> str:
        """The token a page of this session sends with its uploads."""
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()[:40]

    def token_valid(self, session: str | None, token: str | None) -> bool:
        if not session or not token:
            return False
        return hmac.compare_digest(self.token_for(session), token)

    # -- uploads -------------------------------------------------------------------------

    def upload_slot(self) -> bool:
        """Take an upload slot if one is free (release with :meth:`release_upload`)."""
        if not self._uploads.acquire(blocking=False):
            return False
        with self._lock:
            self._active_uploads += 1
        return True

    def release_upload(self) -> None:
        with self._lock:
            self._active_uploads -= 1
        self._uploads.release()

    # -- connections ---------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            body = b'{"error": "the server is busy: too many connections; try again"}'
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    # -- lifecycle -----------------------------------------------------------------------

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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str | None, int | None]:
    """``(host, port)`` of a Host header (port None when absent); host None when malformed."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None, None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None, None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = value.partition(":")
        port_text = port_text_ if sep else None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5:
        return None, None
    return host, int(port_text)


def make_server(
    output_dir: str,
    *,
    data_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8050,
    factories: Mapping[str, PredictorFactory] | None = None,
    max_upload_mb: float = 512,
    label_convention: str | None = None,
    max_voxels: int = UploadLimits.max_voxels,
    max_study_mb: float = UploadLimits.max_study_bytes / 2**20,
    max_compression_ratio: float = UploadLimits.max_ratio,
    max_concurrent_uploads: int = 2,
    max_pending_jobs: int = 4,
    max_connections: int = 32,
    request_timeout: float = 30.0,
    body_timeout: float = 300.0,
    allowed_hosts: Sequence[str] = (),
    metrics_csv: str | None = None,
) -> ViewerServer:
    """Build (not start) the viewer's server.

    Args:
        output_dir: folder of ``<case_id>.nii.gz`` masks; uploads land here too.
        data_dir: dataset folder with the images and reference labels, or None.
        host: address to bind; loopback by default (the data are patient images).
        port: TCP port; 0 picks a free one.
        factories: model name -> predictor factory for uploads; none disables uploads.
        max_upload_mb: the largest upload (request body) accepted, in MiB.
        label_convention: convention of the masks (default: the dataset's, else brats2021).
        max_voxels: the most voxels of an uploaded study (all files and channels).
        max_study_mb: the most MiB of an uploaded study's uncompressed voxels.
        max_compression_ratio: the largest compression ratio of an uploaded file.
        max_concurrent_uploads: uploads read and validated at once (429 beyond).
        max_pending_jobs: segmentations queued or running (503 beyond).
        max_connections: connections served at once (503 beyond).
        request_timeout: seconds a socket may stay silent.
        body_timeout: seconds an upload body may take to arrive.
        allowed_hosts: more names the ``Host`` header may carry.
        metrics_csv: per-case table with ``dice_WT``, ``dice_TC``, ``dice_ET`` columns (the
            ``per_case.csv`` of ``tumorseg evaluate``) for the case list; default
            ``<output_dir>/per_case.csv`` when present.

    Peak memory of uploads is about ``max_concurrent_uploads x (max_upload_mb + 2 x
    max_study_mb)``.

    Raises:
        FileNotFoundError: for a missing output or dataset folder, or metrics table.
        ValueError: for a non-positive limit.
    """
    numbers = {
        "max_upload_mb": max_upload_mb,
        "max_voxels": max_voxels,
        "max_study_mb": max_study_mb,
        "max_compression_ratio": max_compression_ratio,
        "max_concurrent_uploads": max_concurrent_uploads,
        "max_pending_jobs": max_pending_jobs,
        "max_connections": max_connections,
        "request_timeout": request_timeout,
        "body_timeout": body_timeout,
    }
    for key, value in numbers.items():
        if not value > 0:
            raise ValueError(f"{key} must be positive, got {value}")
    store = ResultsStore(output_dir, data_dir=data_dir, label_convention=label_convention)
    cases = CaseIndex(store, metrics_csv=metrics_csv)
    jobs = JobManager(store, factories or {}, max_pending=max_pending_jobs)
    limits = UploadLimits(
        max_body_bytes=int(max_upload_mb * 2**20),
        max_voxels=int(max_voxels),
        max_study_bytes=int(max_study_mb * 2**20),
        max_ratio=float(max_compression_ratio),
    )
    return ViewerServer(
        (host, port),
        store=store,
        jobs=jobs,
        limits=limits,
        max_concurrent_uploads=max_concurrent_uploads,
        max_connections=max_connections,
        request_timeout=request_timeout,
        body_timeout=body_timeout,
        allowed_hosts=allowed_hosts,
        cases=cases,
    )


class _Refused(Exception):
    """A request answered with an error status (and maybe a closed connection)."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


#: RFC 9110 token characters: what an HTTP method may be made of.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if not self.command or not set(self.command) <= _TOKEN_CHARS:
            # The stdlib takes any first word for a method and answers 501; a TLS hello or junk
            # is a malformed request.
            self.close_connection = True
            self.send_error(400, "Bad request line")
            return False
        return True

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)

    # -- responses -----------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        if self.close_connection:
            self.send_header("Connection", "close")
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200, **headers: str) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", **headers)

    def _error(self, status: int, message: str, **headers: str) -> None:
        self._json({"error": message}, status, **headers)

    def _serve(self, method: Any) -> None:
        """Run a route; every failure becomes an answer (the connection is never just dropped)."""
        if self.command != "POST" and (
            self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding")
        ):
            self.close_connection = True  # a body nobody reads must not pass for a request
        try:
            if not self.server.host_allowed(self.headers.get("Host")):
                self.close_connection = True
                raise _Refused(
                    403,
                    f"this server answers to {self.server.url}/ only (Host "
                    f"{self.headers.get('Host')!r} refused)",
                )
            method()
        except _Refused as err:
            self._error(err.status, str(err), **err.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except TimeoutError:
            self.close_connection = True
            self._try_error(408, "the request timed out")
        except Exception:
            log.exception("viewer: %s %s failed", self.command, self.path)
            self.close_connection = True
            self._try_error(500, "internal error (see the viewer's log)")

    def _try_error(self, status: int, message: str) -> None:
        with contextlib.suppress(OSError):  # the client may be gone
            self._error(status, message)

    # -- sessions ------------------------------------------------------------------------

    def _session(self) -> tuple[str, bool]:
        """The session id of the cookie, or a new one (True: set the cookie)."""
        cookies: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookies.load(self.headers.get("Cookie", ""))
        morsel = cookies.get(self.server.cookie_name)
        if morsel is not None and 16 <= len(morsel.value) <= 64 and morsel.value.isascii():
            return morsel.value, False
        return self.server.new_session(), True

    def _cookie_header(self, session: str) -> dict[str, str]:
        return {
            "Set_Cookie": f"{self.server.cookie_name}={session}; Path=/; HttpOnly; SameSite=Strict"
        }

    # -- GET -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self._serve(self._get)

    def _get(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            if not parts or parts == ["api", "session"]:
                session, new = self._session()
                token = self.server.token_for(session)
                headers = self._cookie_header(session) if new else {}
                if parts:
                    payload = json.dumps({"token": token, "header": _TOKEN_HEADER}).encode()
                    self._send(200, payload, "application/json", **headers)
                else:
                    page = PAGE.replace(TOKEN_PLACEHOLDER, token).encode()
                    self._send(200, page, "text/html; charset=utf-8", **headers)
            elif len(parts) == 2 and parts[0] == "static":
                self._send(200, asset(parts[1]), ASSETS[parts[1]])
            elif parts == ["api", "cases"]:
                listing = self.server.cases.page(
                    offset=_integer(query, "offset", 0),
                    limit=_integer(query, "limit", 100),
                    sort=query.get("sort", "case_id"),
                    order=query.get("order", "asc"),
                    query=query.get("q", ""),
                )
                self._json(
                    {
                        **listing,
                        "models": self.server.jobs.models,
                        "classes": list(CLASSES),
                        "max_upload_mb": self.server.max_upload_bytes / 2**20,
                    }
                )
            elif len(parts) == 3 and parts[:2] == ["api", "cases"]:
                self._json(self.server.store.summary(parts[2]))
            elif len(parts) == 4 and parts[:2] == ["api", "volume"] and parts[3].endswith(_NII):
                data = self.server.store.volume(parts[2], parts[3][: -len(_NII)])
                self._send(200, data, "application/octet-stream")
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
        self._serve(self._post)

    def _post(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/api/upload":
            self._refuse(404, "not found")
        self._check_same_origin()
        length = self._content_length()
        if not self.server.jobs.models:
            self._refuse(403, "uploads are disabled: the viewer was started without a model")
        if not self.server.upload_slot():
            self._refuse(
                429,
                f"too many uploads at once (at most {self.server.max_concurrent_uploads}); "
                "try again in a moment",
                Retry_After="5",
            )
        try:
            try:
                self.server.jobs.check_capacity()
            except UploadError as err:
                self._refuse(err.status, str(err), Retry_After="30")
            body = self._read_body(length)
            try:
                job = self._accept_upload(body)
            except UploadError as err:
                self._error(err.status, str(err))
                return
            self._json(job, 202)
        finally:
            self.server.release_upload()

    def _refuse(self, status: int, message: str, **headers: str) -> None:
        """Answer before the body was read: drop a small body, close the connection."""
        self.close_connection = True
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= _REFUSED_DRAIN_LIMIT:
            self._drain(int(length), deadline=time.monotonic() + self.server.request_timeout)
        raise _Refused(status, message, **headers)

    def _drain(self, length: int, *, deadline: float) -> None:
        remaining = length
        try:
            while remaining > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(remaining, 2**20))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _check_same_origin(self) -> None:
        origin = self.headers.get("Origin")
        own = f"http://{self.headers.get('Host', '').strip().lower()}"
        if origin is not None and origin.strip().lower() != own:
            self._refuse(403, f"uploads from another origin ({origin!r}) are refused")
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            self._refuse(403, "uploads from another site (Sec-Fetch-Site) are refused")
        session, _ = self._session()
        if not self.server.token_valid(session, self.headers.get(_TOKEN_HEADER)):
            self._refuse(
                403,
                f"missing or wrong session token ({_TOKEN_HEADER}); reload the viewer's page",
            )

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "a Content-Length is required (no chunked uploads)")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._refuse(411, "a Content-Length is required")
        text = values[0].strip()
        if len(values) > 1 or not text.isdigit() or not text.isascii():
            self.close_connection = True
            raise _Refused(400, f"bad Content-Length {', '.join(values)!r}")
        length = int(text)
        cap = self.server.max_upload_bytes
        if length > cap:
            self.close_connection = True
            if length <= cap + _DRAIN_LIMIT:
                self._drain(length, deadline=time.monotonic() + self.server.request_timeout)
            raise _Refused(413, f"upload larger than the {cap / 2**20:g} MiB limit")
        return length

    def _read_body(self, length: int) -> bytes:
        deadline = time.monotonic() + self.server.body_timeout
        buffer = bytearray()
        try:
            while len(buffer) < length:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(length - len(buffer), 2**20))
                if not chunk:
                    self.close_connection = True
                    raise _Refused(400, "the upload ended before its Content-Length")
                buffer += chunk
        except TimeoutError:
            self.close_connection = True
            raise _Refused(
                408, f"the upload stalled: {len(buffer)} of {length} bytes arrived"
            ) from None
        return bytes(buffer)

    def _accept_upload(self, body: bytes) -> dict[str, Any]:
        limits = self.server.limits
        parts = parse_multipart(
            body, self.headers.get("Content-Type", ""), max_parts=limits.max_parts
        )
        files: dict[str, tuple[str, memoryview]] = {}
        model = self.server.jobs.models[0]
        for part in parts:
            if part.filename is None:
                if part.name == "model":
                    text = bytes(part.data[:256]).decode("utf-8", "replace").strip()
                    model = text or model
                    continue
                raise UploadError(f"unexpected form field {part.name!r}")
            if part.name not in _FILE_FIELDS:
                raise UploadError(f"unexpected file field {part.name!r}")
            if not part.filename and not len(part.data):
                continue  # an empty file input
            if part.name in files:
                raise UploadError(f"the field {part.name!r} holds two files")
            files[part.name] = (check_name(part.filename), part.data)
        if "archive" in files:
            archive = files.pop("archive")[1]
            if files:
                raise UploadError("upload either a zip or the image files, not both")
            study_files: Mapping[str, tuple[str, bytes | memoryview]] = read_zip(
                archive, limits=limits
            )
        else:
            study_files = files
        study = validate_study(study_files, limits=limits)
        try:
            job = self.server.jobs.submit(study, model=model)
        except UploadError:
            raise
        except ValueError as err:
            raise UploadError(str(err)) from None
        return job.as_dict()
