"""Fuzz-style tests of the upload surface: multipart parser, NIfTI header checks, gzip and zip.

Each test mutates valid inputs many times (seeded, so a failure replays) and requires the
one documented failure, :class:`~tumorseg.viewer.UploadError` with a 4xx status, or a result
that keeps the declared invariants; never another exception (which would have been a dropped
connection or a 500) and never more memory than the limits allow.
"""

from __future__ import annotations

import gzip
import io
import random
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _viewer_utils import multipart, nifti_bytes

from tumorseg.conventions import CHANNEL_ORDER
from tumorseg.viewer.uploads import (
    NiftiInfo,
    UploadError,
    UploadLimits,
    check_nifti_header,
    parse_multipart,
    read_nifti,
    read_zip,
    validate_study,
)

LIMITS = UploadLimits(max_body_bytes=2**20, max_voxels=2**21, max_study_bytes=2**23)
ROUNDS = 400


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: bit flips, a byte run overwritten, a cut, an insertion, a swap."""
    buf = bytearray(data)
    kind = rng.randrange(6)
    if not buf:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 0:
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        i = rng.randrange(len(buf))
        run = bytes(rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)]) for _ in range(8))
        buf[i : i + len(run)] = run
    elif kind == 2:
        del buf[rng.randrange(len(buf)) :]
    elif kind == 3:
        i = rng.randrange(len(buf))
        buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
    elif kind == 4:
        i, j = sorted(rng.randrange(len(buf)) for _ in range(2))
        buf[i:j] = buf[i:j][::-1]
    else:
        i = rng.randrange(len(buf))
        buf[i:i] = buf[: rng.randrange(len(buf))]  # a repeated prefix (boundaries, headers)
    return bytes(buf)


def _only_upload_errors(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except UploadError as err:
        assert 400 <= err.status < 500, err
        assert str(err), "a refusal says why"
        return None


# ------------------------------------------------------------------------- multipart


def test_multipart_parser_round_trip_and_mutations() -> None:
    rng = random.Random(18)
    files = {"flair": ("a.nii.gz", bytes(range(256)) * 3), "t1": ("b.nii", b"\r\n--" * 50)}
    body, ctype = multipart(files, {"model": "stub"})
    parts = parse_multipart(body, ctype)
    assert [(p.name, p.filename) for p in parts] == [
        ("model", None),
        ("flair", "a.nii.gz"),
        ("t1", "b.nii"),
    ]
    assert bytes(parts[1].data) == files["flair"][1] and bytes(parts[2].data) == files["t1"][1]
    for _ in range(ROUNDS * 5):
        mutated = _mutate(body, rng)
        got = _only_upload_errors(lambda m=mutated: parse_multipart(m, ctype, max_parts=4))
        if got is not None:
            assert len(got) <= 4
            for part in got:
                assert isinstance(part.name, str) and part.data.obj is mutated
    for ctype_bad in (
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "x" * 71,
        'multipart/form-data; boundary="a\r\nb"',
        "multipart/mixed; boundary=abc",
        "",
        "\x00\xff",
    ):
        with pytest.raises(UploadError):
            parse_multipart(body, ctype_bad)


def test_multipart_parser_limits() -> None:
    many = {f"f{i}": (f"{i}.nii", b"x") for i in range(20)}
    body, ctype = multipart(many)
    with pytest.raises(UploadError, match="more than 16 parts"):
        parse_multipart(body, ctype, max_parts=16)
    boundary = ctype.split("boundary=")[1]
    huge_head = f"--{boundary}\r\nX-Pad: {'a' * 20000}\r\n\r\ndata\r\n--{boundary}--\r\n"
    with pytest.raises(UploadError, match="too long"):
        parse_multipart(huge_head.encode(), ctype)
    unterminated = f"--{boundary}\r\nContent-Disposition: form-data; name=a\r\n\r\nabc"
    with pytest.raises(UploadError, match="not terminated"):
        parse_multipart(unterminated.encode(), ctype)
    # Names with RFC 2231 encoding and quotes are decoded, not executed.
    tricky = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="flair"; '
        f"filename*=UTF-8''..%2F..%2Fetc%2Fpasswd\r\n\r\nabc\r\n--{boundary}--\r\n"
    )
    (part,) = parse_multipart(tricky.encode(), ctype)
    assert part.filename == "../../etc/passwd"  # refused later by check_name


# ------------------------------------------------------------------------- NIfTI headers


def _header(shape: tuple[int, ...] = (16, 16, 16), dtype: Any = np.int16) -> bytearray:
    return bytearray(nifti_bytes(shape, dtype, gz=False))


def _set(block: bytearray, field: str, value: Any) -> None:
    import nibabel as nib

    header = nib.Nifti1Header(bytes(block[:348]), check=False)
    header._structarr[field] = value
    block[:348] = header.binaryblock


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dim", [3, 2000, 2000, 2000, 1, 1, 1, 1], "2000x2000x2000"),
        ("dim", [4, 400, 400, 400, 4, 1, 1, 1], "voxels"),
        ("dim", [3, 16, -16, 16, 1, 1, 1, 1], ">= 1"),
        ("dim", [3, 16, 0, 16, 1, 1, 1, 1], ">= 1"),
        ("dim", [0, 16, 16, 16, 1, 1, 1, 1], "dimensions"),
        ("dim", [8, 16, 16, 16, 1, 1, 1, 1], "not a readable NIfTI"),
        ("datatype", 32, "type"),  # complex64
        ("datatype", 128, "type"),  # RGB
        ("datatype", 0, "not a readable NIfTI"),
        ("datatype", 12345, "not a readable NIfTI"),
        ("vox_offset", 100, "vox offset 100 too low"),
        ("vox_offset", 2**30, "voxels at byte"),
        ("magic", b"ni1", "single-file"),
        ("magic", b"xyz", "not a readable NIfTI"),
        ("sizeof_hdr", 349, "no NIfTI header"),
        ("pixdim", [1, np.nan, 1, 1, 1, 1, 1, 1], "geometry"),
        ("pixdim", [1, 1, 0, 1, 1, 1, 1, 1], None),  # nibabel reads a zero pixdim as 1
        ("scl_slope", 2.0, None),  # valid scaling ...
        ("scl_inter", np.nan, "scaling"),  # ... and an intercept nibabel refuses
        ("srow_x", [np.inf, 0, 0, 0], "geometry"),
        ("srow_x", [0, 0, 0, 0], "geometry"),
    ],
)
def test_header_checks_refuse_with_a_reason(field: str, value: Any, message: str | None) -> None:
    block = _header()
    _set(block, field, value)
    if message is None:
        check_nifti_header(bytes(block), name="x.nii", limits=LIMITS)
        return
    if field == "scl_inter":
        _set(block, "scl_slope", 2.0)
    with pytest.raises(UploadError, match=message):
        check_nifti_header(bytes(block), name="x.nii", limits=LIMITS)


def test_header_checks_mutated_headers() -> None:
    import nibabel as nib

    rng = random.Random(7)
    base = _header((12, 10, 9), np.float32)
    for _ in range(ROUNDS * 3):
        block = bytearray(_mutate(bytes(base), rng))
        info = _only_upload_errors(
            lambda b=bytes(block): check_nifti_header(b, name="m.nii", limits=LIMITS)
        )
        if info is None:
            continue
        assert isinstance(info, NiftiInfo)
        assert info.voxels <= LIMITS.max_voxels and info.data_bytes <= LIMITS.max_study_bytes
        assert np.isfinite(info.affine).all() and info.offset >= 352
        # What passes is an image nibabel reads with the same shape, once it has its voxels.
        if info.file_bytes < 2**20:
            raw = bytes(block[: info.offset]).ljust(info.offset, b"\0") + bytes(info.data_bytes)
            image: Any = nib.Nifti1Image.from_bytes(raw)
            assert image.shape == info.shape
            assert np.asanyarray(image.dataobj).shape == info.shape


def test_nifti2_and_big_endian_headers() -> None:
    import nibabel as nib

    data = np.arange(8 * 9 * 10, dtype=">i2").reshape(8, 9, 10)
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        image = klass(data, np.diag([2.0, 2.0, 2.0, 1.0]))
        raw = image.to_bytes()
        got, info = read_nifti(gzip.compress(raw), name="n.nii.gz", limits=LIMITS)
        assert bytes(got) == raw and info.shape == (8, 9, 10)
        assert np.allclose(info.affine, image.affine)


# ------------------------------------------------------------------------- gzip bodies


def test_read_nifti_mutated_gzip_streams_stay_bounded() -> None:
    rng = random.Random(11)
    data = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    good = nifti_bytes((16, 16, 16), np.float32, data=data.tobytes())
    raw, info = read_nifti(good, name="g.nii.gz", limits=LIMITS)
    assert len(raw) == info.file_bytes == 352 + data.nbytes
    tracemalloc.start()
    try:
        for _ in range(ROUNDS):
            mutated = _mutate(good, rng)
            _only_upload_errors(lambda m=mutated: read_nifti(m, name="m.nii.gz", limits=LIMITS))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda: nifti_bytes((2000, 2000, 2000)), 413, "2000x2000x2000"),
        (lambda: nifti_bytes((120, 120, 120), data=bytes(120**3)), 413, "compression ratio"),
        (lambda: nifti_bytes((64, 64, 64), np.float32), 400, "truncated"),
        (lambda: nifti_bytes((16,) * 3, data=bytes(16**3 + 1)), 400, "more data"),
        (lambda: nifti_bytes((16,) * 3, data=bytes(16**3)) + b"junk", 400, "after its gzip"),
        (lambda: b"\x1f\x8b" + bytes(100), 400, "gzip"),
        (lambda: b"\x1f\x8b", 400, "NIfTI"),
        (lambda: b"", 400, "NIfTI"),
        (lambda: b"<html>" * 200, 400, "NIfTI"),
        (lambda: gzip.compress(gzip.compress(nifti_bytes((16,) * 3, gz=False))), 400, "NIfTI"),
    ],
)
def test_read_nifti_refusals(make: Callable[[], bytes], status: int, message: str) -> None:
    with pytest.raises(UploadError, match=message) as err:
        read_nifti(make(), name="f.nii.gz", limits=LIMITS)
    assert err.value.status == status


# ------------------------------------------------------------------------- zips and studies


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_read_zip_mutations_and_bombs(new_study: list[Path]) -> None:
    rng = random.Random(3)
    entries = {f"s/{p.name}": p.read_bytes()[:2000] for p in new_study}
    good = _zip(entries)
    found = read_zip(good, limits=LIMITS)
    assert set(found) == set(CHANNEL_ORDER)
    for _ in range(ROUNDS):
        mutated = _mutate(good, rng)
        _only_upload_errors(lambda m=mutated: read_zip(m, limits=LIMITS))
    bomb = _zip({f"s_{m}.nii": bytes(8 * 2**20) for m in CHANNEL_ORDER})
    with pytest.raises(UploadError) as err:
        read_zip(bomb, limits=LIMITS)
    assert err.value.status == 413
    many = _zip({f"{i}/s_flair.nii": b"x" for i in range(100)})
    with pytest.raises(UploadError, match="entries"):
        read_zip(many, limits=LIMITS)
    stored = _zip({f"s_{m}.nii": b"x" for m in CHANNEL_ORDER}, zipfile.ZIP_STORED)
    assert set(read_zip(stored, limits=LIMITS)) == set(CHANNEL_ORDER)


def test_validate_study_with_one_file_mutated(new_study: list[Path]) -> None:
    rng = random.Random(5)
    files = {m: (p.name, p.read_bytes()) for m, p in zip(CHANNEL_ORDER, new_study, strict=True)}
    study = validate_study(files, limits=LIMITS)
    assert study.shape == (32, 32, 32)
    for _ in range(ROUNDS // 4):
        modality = rng.choice(CHANNEL_ORDER)
        name, data = files[modality]
        mutated = {**files, modality: (name, _mutate(data, rng))}
        got = _only_upload_errors(lambda m=mutated: validate_study(m, limits=LIMITS))
        if got is not None:
            assert got.shape == (32, 32, 32)
