"""One HTTP/1.1 request as innera's fast server (:mod:`innera.http.fast`) parses it: its head,
then its body as it arrives; the refusal of a request the server will not serve, and the
scope's path from the request target."""

from __future__ import annotations

from urllib.parse import unquote

import httptools


class Reject(Exception):
    """Raised in a parser callback: the request is refused with ``status``."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message


class Request:
    """One parsed request (its head, then its body as it arrives)."""

    __slots__ = ("body", "body_bytes", "complete", "discard", "error", "expect_continue",
                 "head_done", "headers", "keep_alive", "method", "target", "upgrade",
                 "version")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = "GET"
        self.version = "1.1"
        self.keep_alive = True
        self.head_done = False
        self.complete = False
        self.expect_continue = False
        self.upgrade: bytes | None = None  # the Upgrade header of an upgrade request
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.discard = False  # the response is done: the rest of the body is dropped
        self.error = 0  # the body is broken (parse error, timeout, peer gone)


def split_target(request: Request) -> tuple[str, bytes, bytes]:
    """The scope's ``path`` (percent-decoded), ``raw_path`` and ``query_string``."""
    target = request.target
    if target[:1] == b"/":
        raw_path, _, query = target.partition(b"?")
        if b"#" in raw_path:
            raw_path = raw_path.partition(b"#")[0]
        elif b"#" in query:
            query = query.partition(b"#")[0]
    elif target == b"*" and request.method == "OPTIONS":
        raw_path, query = b"*", b""
    else:  # absolute form
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise Reject(400, "Invalid request target") from None
        raw_path, query = url.path or b"/", url.query or b""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise Reject(400, "Invalid request target") from None
    if "%" in path:
        path = unquote(path)
    return path, raw_path, query
