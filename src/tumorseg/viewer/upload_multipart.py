"""Multipart/form-data request bodies split by hand into their parts, bounded and without copies.

:func:`parse_multipart` accepts a fixed number of parts, each a :class:`Part` whose data is a
view on the request body; anything malformed is an :class:`~.upload_limits.UploadError`.
"""

from __future__ import annotations

import email.message
import email.utils
import re
from dataclasses import dataclass

from tumorseg.viewer.upload_limits import UploadError

__all__ = ["Part", "parse_multipart"]

_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body.

    Attributes:
        name: the form field.
        filename: the client's file name (None for a plain field, ``""`` for an empty file
            input).
        data: the content, a view on the request body.
    """

    name: str
    filename: str | None
    data: memoryview


def _header_params(value: str, header: str) -> email.message.Message:
    message = email.message.Message()
    message[header] = value
    return message


def parse_multipart(
    body: bytes, content_type: str, *, max_parts: int = 16, max_header_bytes: int = 8192
) -> list[Part]:
    """Split a multipart/form-data body into its parts (views on ``body``, not copies).

    Args:
        body: the request body.
        content_type: the request's Content-Type (with the boundary).
        max_parts: the most parts accepted.
        max_header_bytes: the most bytes of one part's headers.

    Raises:
        UploadError: for another content type, a bad boundary, a malformed or unterminated
            body, too many parts, or a part that is not form data.
    """
    ctype = _header_params(content_type, "Content-Type")
    if ctype.get_content_type() != "multipart/form-data":
        raise UploadError("expected a multipart/form-data upload")
    boundary = ctype.get_param("boundary")
    if not isinstance(boundary, str) or not _BOUNDARY.match(boundary) or boundary.endswith(" "):
        raise UploadError("the multipart upload has no valid boundary")
    dash = b"--" + boundary.encode("ascii")
    separator = b"\r\n" + dash
    view = memoryview(body)
    if body.startswith(dash):
        pos = 0
    else:
        pos = body.find(separator)  # after a preamble
        if pos < 0:
            raise UploadError("the multipart upload holds no part")
        pos += 2
    parts: list[Part] = []
    while True:
        pos += len(dash)
        if body[pos : pos + 2] == b"--":
            return parts  # the closing delimiter; an epilogue is ignored
        line_end = body.find(b"\r\n", pos, pos + 256)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise UploadError("malformed multipart upload: bad delimiter line")
        start = line_end + 2
        if body.startswith(b"\r\n", start):
            head, data_start = b"", start + 2
        else:
            head_end = body.find(b"\r\n\r\n", start, start + max_header_bytes)
            if head_end < 0:
                raise UploadError("malformed multipart upload: part headers missing or too long")
            head, data_start = body[start:head_end], head_end + 4
        end = body.find(separator, data_start)
        if end < 0:
            raise UploadError("malformed multipart upload: a part is not terminated")
        if len(parts) >= max_parts:
            raise UploadError(f"the upload has more than {max_parts} parts")
        parts.append(_part(head, view[data_start:end]))
        pos = end + 2


def _part(head: bytes, data: memoryview) -> Part:
    disposition = None
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            raise UploadError("malformed multipart upload: bad part header")
        if key.strip().lower() == "content-disposition":
            disposition = value.strip()
    if disposition is None:
        raise UploadError("malformed multipart upload: a part has no Content-Disposition")
    message = _header_params(disposition, "Content-Disposition")
    name = message.get_param("name", header="content-disposition")
    if message.get_content_disposition() != "form-data" or name is None:
        raise UploadError("malformed multipart upload: a part is not a named form field")
    filename = message.get_filename()
    return Part(name=email.utils.collapse_rfc2231_value(name), filename=filename, data=data)
