"""The viewer as a separate process: its peak memory while it refuses bombs, and a load test.

The server runs in a subprocess (``_viewer_utils.serve_main``, the stub predictor) with its own
working, temporary and home folders, so what it writes anywhere but its output folder shows;
its memory and threads are read from ``/proc/<pid>/status`` and ``/proc/<pid>/task``.
An address-space limit (4 GiB) keeps a regression from taking the machine's memory.

Run with ``-s`` to see the figures (copied to ``docs/benchmarks.md``).
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _viewer_utils import get_json, multipart, nifti_bytes, raw_exchange, request, session

from tumorseg.conventions import CHANNEL_ORDER

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
_ADDRESS_SPACE = 4 * 2**30


@dataclass
class Served:
    """A viewer process and the folders it may (output) and must not (the others) write."""

    proc: subprocess.Popen[bytes]
    url: str
    output: Path
    elsewhere: list[Path] = field(default_factory=list)

    def status(self, key: str) -> int:
        """A ``/proc/<pid>/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (Linux >= 4.0)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE, _ADDRESS_SPACE))


@pytest.fixture
def spawn(tmp_path: Path, outputs: Path, dataset: Path) -> Iterator[Callable[..., Served]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(**options: Any) -> Served:
        folders = [tmp_path / name for name in ("cwd", "tmp", "home")]
        for folder in folders:
            folder.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
            "TMPDIR": str(folders[1]),
            "HOME": str(folders[2]),
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        config = {"output_dir": str(outputs), "data_dir": str(dataset), **options}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from _viewer_utils import serve_main; serve_main()",
                json.dumps(config),
            ],
            cwd=folders[0],
            env=env,
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "server.log").open("wb"),
            preexec_fn=_limit_memory,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        assert ready, "the viewer process did not start"
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:"), url
        return Served(proc, url, outputs, folders)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _study(paths: list[Path]) -> dict[str, tuple[str, bytes]]:
    return {m: (p.name, p.read_bytes()) for m, p in zip(CHANNEL_ORDER, paths, strict=True)}


def _post(url: str, files: dict[str, tuple[str, bytes]], **kwargs: Any) -> tuple[int, Any]:
    body, ctype = multipart(files, {"model": "stub"})
    status, raw = request(f"{url}/api/upload", body=body, ctype=ctype, **kwargs)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def _wait_jobs(url: str, job_ids: list[str], timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {j: get_json(f"{url}/api/jobs/{j}")["state"] for j in job_ids}
        if all(s in ("done", "failed") for s in states.values()):
            break
        time.sleep(0.2)
    return states


def _warm_up(served: Served, study: list[Path]) -> None:
    """Imports and caches in place: the cases, a slice, one upload segmented."""
    assert get_json(f"{served.url}/api/cases")["cases"]
    assert request(f"{served.url}/api/slice/SYN2021_000?view=axial&index=16")[0] == 200
    status, job = _post(served.url, _study(study))
    assert status == 202, job
    assert _wait_jobs(served.url, [job["job_id"]]) == {job["job_id"]: "done"}


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ------------------------------------------------------------------------- peak memory


def test_peak_memory_while_refusing_a_2000_cubed_header(
    spawn: Callable[..., Served], new_study: list[Path]
) -> None:
    served = spawn(max_upload_mb=8)
    _warm_up(served, new_study)
    idle = served.status("VmRSS")
    served.reset_peak()

    bomb = nifti_bytes((2000, 2000, 2000))
    assert len(bomb) < 80
    attempts = {
        "4 modalities": {m: (f"{m}.nii.gz", bomb) for m in CHANNEL_ORDER},
        "4D image": {"image": ("image.nii.gz", nifti_bytes((2000, 2000, 2000, 4)))},
        "in a zip": {"archive": ("s.zip", _zip({f"s_{m}.nii.gz": bomb for m in CHANNEL_ORDER}))},
        "uncompressed": {
            m: (f"{m}.nii", nifti_bytes((2000,) * 3, gz=False)) for m in CHANNEL_ORDER
        },
        # 400 MB declared: the old server read this one too (the address-space limit stops
        # it at the 8 GB ones).
        "1000x1000x400": {
            m: (f"{m}.nii.gz", nifti_bytes((1000, 1000, 400))) for m in CHANNEL_ORDER
        },
    }
    for what, files in attempts.items():
        status, err = _post(served.url, files)
        assert status == 413, (what, err)
        assert "voxels" in err["error"], (what, err)
    peak = served.status("VmHWM")
    print(
        f"\nviewer RSS idle {idle / 2**20:.1f} MiB, peak while refusing the 2000^3 headers "
        f"{peak / 2**20:.1f} MiB (+{(peak - idle) / 2**20:.1f} MiB)"
    )
    assert peak - idle < 100 * 2**20

    # Ten at once, each within the caps but holding no voxels (truncated) or only zeros
    # (ratio bomb): refused, or turned away while two are read.
    in_cap = {m: (f"{m}.nii.gz", nifti_bytes((256, 256, 256), "float32")) for m in CHANNEL_ORDER}
    zeros = nifti_bytes((256, 256, 256), data=bytes(256**3))
    ratio = {**_study(new_study), "t2": ("t2.nii.gz", zeros)}
    results: list[int] = []

    def hit(files: dict[str, tuple[str, bytes]]) -> None:
        results.append(_post(served.url, files)[0])

    threads = [threading.Thread(target=hit, args=(in_cap if i % 2 else ratio,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) <= {400, 413, 429}, results  # a set: any subset of these answers
    peak = served.status("VmHWM")
    above = (peak - idle) / 2**20
    print(f"viewer RSS peak after 10 concurrent in-cap bombs: {above:.1f} MiB above idle")
    assert peak - idle < 100 * 2**20
    assert served.proc.poll() is None


# ------------------------------------------------------------------------- load test


def _raw(url: str, head: str, body: bytes = b"", **kwargs: Any) -> int | None:
    return raw_exchange(url, head, body, timeout=15, **kwargs)[0]


def _stall(url: str, headers: dict[str, str]) -> int | None:
    """Start an upload, send a little of it and hang up."""
    parts = urllib.parse.urlsplit(url)
    head = f"POST /api/upload HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"--x\r\n" + b"a" * 100)
        time.sleep(0.1)
    return None


def _kinds(url: str, study: list[Path]) -> dict[str, tuple[Callable[[], int | None], set]]:
    """Request kinds of the load test: how to send one, and the answers that are right."""
    files = _study(study)
    netloc = urllib.parse.urlsplit(url).netloc
    busy = {429, 503}
    corrupt = dict(files)
    t2 = files["t2"][1]
    corrupt["t2"] = ("t2.nii.gz", t2[:10] + bytes(b ^ 0x33 for b in t2[10:400]) + t2[400:])
    bomb = {m: (f"{m}.nii.gz", nifti_bytes((2000, 2000, 2000))) for m in CHANNEL_ORDER}
    ratio = {**files, "t2": ("t2.nii.gz", nifti_bytes((128,) * 3, data=bytes(128**3)))}
    slip = {"archive": ("s.zip", _zip({f"../{p.name}": p.read_bytes() for p in study}))}
    named = {**files, "flair": ("../../etc/flair.nii.gz", files["flair"][1])}
    good_zip = {"archive": ("s.zip", _zip({f"s/{p.name}": p.read_bytes() for p in study}))}

    def post(f: dict[str, tuple[str, bytes]], **kw: Any) -> Callable[[], int]:
        return lambda: _post(url, f, **kw)[0]

    headers_for = lambda: session(url)  # noqa: E731 (a fresh session per request)
    return {
        "upload": (post(files), {202, *busy}),
        "zip upload": (post(good_zip), {202, *busy}),
        "cases": (lambda: request(f"{url}/api/cases")[0], {200}),
        "slice": (lambda: request(f"{url}/api/slice/SYN2021_001?view=coronal&index=9")[0], {200}),
        "2000^3 header": (post(bomb), {413, *busy}),
        "ratio bomb": (post(ratio), {413, *busy}),
        "corrupt gzip": (post(corrupt), {400, *busy}),
        "zip slip": (post(slip), {400, *busy}),
        "path in name": (post(named), {400, *busy}),
        "no token": (post(files, auth=False), {403}),
        "foreign origin": (
            post(files, auth=False, headers={**headers_for(), "Origin": "http://evil.example"}),
            {403},
        ),
        "foreign host": (
            lambda: _raw(url, "GET /api/cases HTTP/1.1\nHost: evil.example:8050"),
            {403},
        ),
        "negative length": (
            lambda: _raw(
                url,
                f"POST /api/upload HTTP/1.1\nHost: {netloc}\n"
                + "".join(f"{k}: {v}\n" for k, v in headers_for().items())
                + "Content-Type: multipart/form-data; boundary=x\nContent-Length: -1",
                b"--x--\r\n",
            ),
            {400},
        ),
        "garbage": (lambda: _raw(url, "\x16\x03\x01 hello HTTP/1.1"), {400}),
        "stalled body": (lambda: _stall(url, headers_for()), {None}),
    }


@pytest.mark.slow
def test_bounded_load_with_hostile_uploads(
    spawn: Callable[..., Served], new_study: list[Path], outputs: Path
) -> None:
    served = spawn(max_upload_mb=4, request_timeout=2.0, body_timeout=10.0, max_pending_jobs=4)
    before = {p.relative_to(outputs) for p in outputs.rglob("*")}
    # Import-time caches of the libraries the process loads (matplotlib's font list, MLflow's
    # config, through MONAI) are there before the first request; the load must add nothing.
    elsewhere_before = {p for folder in served.elsewhere for p in folder.rglob("*")}
    _warm_up(served, new_study)
    baseline_threads = served.threads()
    idle = served.status("VmRSS")
    served.reset_peak()
    kinds = _kinds(served.url, new_study)
    names = list(kinds)
    clients, per_client = 10, 20
    results: list[tuple[str, int | None, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    busy: Counter[int] = Counter()

    def client(index: int) -> None:
        # Like a browser tab that honours Retry-After: a busy answer is retried a few times.
        order = random.Random(index).sample(names * 2, per_client)
        for name in order:
            start = time.perf_counter()
            try:
                for attempt in range(30):
                    status = kinds[name][0]()
                    if status not in (429, 503):
                        break
                    with lock:
                        busy[status] += 1
                    time.sleep(0.05 * (1 + attempt % 4))
            except Exception as err:  # a dropped connection is a failure of the server
                with lock:
                    errors.append(f"{name}: {type(err).__name__}: {err}")
                continue
            with lock:
                results.append((name, status, time.perf_counter() - start))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    seconds = time.perf_counter() - start
    assert not errors, errors[:5]
    assert len(results) == clients * per_client
    wrong = [(n, s) for n, s, _ in results if s not in kinds[n][1]]
    assert not wrong, wrong[:10]

    # Every accepted study is segmented; the server still answers; no thread is left behind.
    accepted = sum(1 for n, s, _ in results if s == 202)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cases = get_json(f"{served.url}/api/cases")["cases"]
        uploads = [c for c in cases if c["case_id"].startswith("upload-")]
        if len(uploads) == accepted + 1:  # + the warm-up upload
            break
        time.sleep(0.5)
    assert len(uploads) == accepted + 1, (len(uploads), accepted)
    threads_settled = _settle(served.threads, baseline_threads, timeout=15)
    assert threads_settled == baseline_threads, (threads_settled, baseline_threads)
    peak = served.status("VmHWM")

    # Written: only masks and uploaded studies in the output folder, nothing anywhere else.
    elsewhere_after = {p for folder in served.elsewhere for p in folder.rglob("*")}
    assert elsewhere_after == elsewhere_before, sorted(elsewhere_after - elsewhere_before)[:5]
    new = {p.relative_to(outputs) for p in outputs.rglob("*")} - before
    upload_ids = {c["case_id"] for c in uploads}
    expected = {Path("uploads")} | {Path(f"{c}.nii.gz") for c in upload_ids}
    for case_id in upload_ids:
        expected |= {Path("uploads", case_id)}
        expected |= {Path("uploads", case_id, f"{m}.nii.gz") for m in CHANNEL_ORDER}
    assert new == expected, sorted(map(str, new ^ expected))[:10]
    assert "Traceback" not in (served.output.parent / "server.log").read_text()
    assert served.proc.poll() is None

    counts = Counter((n, s) for n, s, _ in results)
    latencies = sorted(t for _, _, t in results)
    print(
        f"\nload: {len(results)} requests from {clients} clients in {seconds:.1f} s "
        f"({len(results) / seconds:.1f}/s); latency p50 {latencies[len(latencies) // 2]:.3f} s, "
        f"p95 {latencies[int(len(latencies) * 0.95)]:.3f} s, max {latencies[-1]:.3f} s; "
        f"{accepted} uploads segmented; RSS idle {idle / 2**20:.0f} MiB, peak "
        f"+{(peak - idle) / 2**20:.0f} MiB; threads {baseline_threads} before and after; "
        f"busy answers retried: {dict(busy)}"
    )
    for (name, status), n in sorted(counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"  {name:16s} {status!s:>5} x{n}")
    assert seconds < 60


def _settle(read: Callable[[], int], target: int, *, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    value = read()
    while value != target and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value
