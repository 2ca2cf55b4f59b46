"""The response heads innera's fast server (:mod:`innera.http.fast`) writes itself: its
status lines, its error responses (innera's error contract, ``Connection: close``) and the
head of a response given as ASGI headers."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from innera.ids import new_uuid4

#: ``status`` → its ``HTTP/1.1`` status line
STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii"))
                for s in HTTPStatus}
CONNECTION_CLOSE = b"connection: close\r\n"
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_ERROR_CODES = {
    400: ("bad_request", "The request is malformed"),
    408: ("request_timeout", "The request took too long to arrive"),
    431: ("request_header_fields_too_large", "The request's header fields are too large"),
    500: ("internal_error", "Internal server error"),
    501: ("not_implemented", "This transfer coding is not supported"),
    505: ("http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are supported"),
}


def error_response(status: int, message: str | None = None) -> bytes:
    """A complete ``Connection: close`` response in the error contract: the JSON error body
    with a fresh ``requestId``, also sent as ``X-Request-Id``, like every error the app
    answers (the request never reached the app: no log line carries the id)."""
    code, default = _ERROR_CODES.get(status, ("http_error", "HTTP error"))
    request_id = new_uuid4()
    body = json.dumps({"error": {"code": code, "message": message or default},
                       "requestId": request_id}, separators=(",", ":")).encode()
    return b"".join((STATUS_LINES.get(status, b"HTTP/1.1 %d \r\n" % status),
                     b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
                     b"x-request-id: %s\r\n" % request_id.encode(), CONNECTION_CLOSE,
                     b"\r\n", body))


def response_head(status: int, headers: Any, extra: bytes = b"") -> bytes:
    """A response head from ASGI ``headers`` (framing and Connection headers dropped) and
    ``extra`` (complete header lines); refuses line breaks inside a header."""
    parts = [STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
    lines = 2 + extra.count(b"\n")
    for name, value in headers:
        if name.lower() in _FRAMING_HEADERS:
            continue
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    parts += (extra, b"\r\n")
    head = b"".join(parts)
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise RuntimeError("a response header contains a line break")
    return head
