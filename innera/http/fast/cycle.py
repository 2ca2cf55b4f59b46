"""The ASGI ``http`` cycle of one request on innera's fast server (:mod:`innera.http.fast`):
the app's ``receive`` (the body as it arrives, ``Expect: 100-continue``, ``http.disconnect``)
and ``send`` (the response head and its framing: Content-Length, chunked, or the end of the
connection).

The connection (:class:`innera.http.fast.connection.HTTPConnection`, seen here through
:class:`Connection`: the connection imports this module, not the other way round) owns the
socket and the parser; a cycle reads through it only when the app asks for body it does not
have yet, or waits for ``http.disconnect`` (reading ahead, within the connection's limits, so
that a client that goes away is noticed). A response is written with one ``send_all`` per
ASGI message, the head together with the first body part.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from innera.http.fast.asgi import Message
from innera.http.fast.request import Request
from innera.http.fast.responses import CONNECTION_CLOSE, STATUS_LINES
from innera.http.fast.transport import ClientDisconnected, Settings, Transport

log = logging.getLogger("innera.http")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_NO_BODY_STATUSES = frozenset((204, 304))


class Connection(Protocol):
    """What a cycle uses of its HTTP/1.1 connection."""

    settings: Settings
    draining: trio.Event
    transport: Transport
    client: tuple[str, int] | None
    eof: bool
    stop_reading: bool
    buffered: int

    def feed(self, data: bytes) -> None:
        """Parse ``data`` (the requests it completes are queued on the connection)."""

    def may_read_ahead(self) -> bool:
        """Whether the connection's limits allow reading the socket ahead of the app."""


def _disconnect() -> Message:
    return {"type": "http.disconnect"}


class Cycle:
    """The ASGI ``receive``/``send`` of one request."""

    __slots__ = ("chunked", "complete", "conn", "continue_sent", "delivered", "head",
                 "head_only", "keep_alive", "remaining", "request", "start", "waiter")

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.start: Message | None = None  # http.response.start, until the head is written
        self.head: bytes | None = None  # the head, once written
        self.complete = False
        self.delivered = False  # the last http.request event was given to the app
        self.continue_sent = False
        self.keep_alive = request.keep_alive
        self.head_only = request.method == "HEAD"
        self.chunked = False
        self.remaining = -1  # Content-Length bytes still to send (-1: not length-delimited)
        self.waiter: trio.CancelScope | None = None

    # --- receive --------------------------------------------------------------------------

    async def receive(self) -> Message:
        request = self.request
        if self.complete or self.delivered or request.error:
            if self.complete or request.error or self.conn.eof or self.conn.transport.closed:
                await trio.lowlevel.checkpoint()
                return _disconnect()
            return await self._wait_for_disconnect()
        if not request.body and not request.complete:
            await self._read_body()
            if request.error:
                return _disconnect()
        if not request.complete:
            # More body to come: yield before handing this part over. Reading the socket
            # (recv_nowait) is no schedule point while data is waiting, so without this the
            # app's body reader (Quart buffers what it receives) would drain a fast client
            # into memory before the route consumes any of it.
            await trio.lowlevel.checkpoint()
        body = request.body
        if len(body) == 1:
            data = body[0]
        elif body:
            data = b"".join(body)
        else:
            data = b""
        if body:
            body.clear()
            self.conn.buffered -= request.body_bytes
            request.body_bytes = 0
        more = not request.complete
        if not more:
            self.delivered = True
        return {"type": "http.request", "body": data, "more_body": more}

    async def _read_body(self) -> None:
        """Wait until some body arrived (or the body ended, or broke)."""
        conn = self.conn
        request = self.request
        transport = conn.transport
        if request.expect_continue and not self.continue_sent and self.head is None \
                and self.start is None:
            self.continue_sent = True
            try:
                await transport.send_all(_CONTINUE)
            except ClientDisconnected:
                request.error = 400
                return
        while not request.body and not request.complete and not request.error:
            if conn.eof or conn.stop_reading:
                request.error = 400
                return
            data = transport.recv_nowait()
            if data is None:
                with trio.move_on_after(conn.settings.body_timeout_s) as waited:
                    await transport.wait_readable()
                if waited.cancelled_caught:
                    log.info("no request body from %s for %gs: closing", conn.client,
                             conn.settings.body_timeout_s)
                    request.error = 408
                    return
                continue
            if not data:
                conn.eof = True
                request.error = 400
                return
            conn.feed(data)

    async def _wait_for_disconnect(self) -> Message:
        """The body was delivered: wait for the end of the response (or for the client to
        go away), reading ahead the requests a client pipelined, within the limits."""
        conn = self.conn
        transport = conn.transport
        with trio.CancelScope() as waiter:
            self.waiter = waiter
            while not conn.eof and not transport.closed:
                if not conn.may_read_ahead():
                    await trio.sleep_forever()
                data = transport.recv_nowait()
                if data is None:
                    await transport.wait_readable()
                elif data:
                    conn.feed(data)
                else:
                    conn.eof = True
        self.waiter = None
        return _disconnect()

    # --- send -----------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self.complete:
                raise RuntimeError("http.response.body after the response was complete")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self.head is None:
                data = self._head(body, more)
            elif self.head_only:
                data = b""
            elif self.chunked:
                if body:
                    data = b"%x\r\n%s\r\n" % (len(body), body)
                    if not more:
                        data += _LAST_CHUNK
                else:
                    data = b"" if more else _LAST_CHUNK
            else:
                data = self._counted(body)
            if not more:
                self.complete = True
                if self.remaining > 0:  # shorter than its Content-Length: the framing is lost
                    self.keep_alive = False
                if self.waiter is not None:
                    self.waiter.cancel()
            if data:
                await self.conn.transport.send_all(data)
            if self.complete and not self.keep_alive and self.remaining > 0:
                self.conn.transport.close()
        elif kind == "http.response.start":
            if self.start is not None or self.head is not None:
                raise RuntimeError("http.response.start sent twice")
            self.start = message
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an HTTP cycle")

    def _counted(self, body: bytes) -> bytes:
        if self.head_only:
            return b""
        if self.remaining >= 0:
            if len(body) > self.remaining:
                raise RuntimeError("the response body is longer than its Content-Length")
            self.remaining -= len(body)
        return body

    def _head(self, body: bytes, more: bool) -> bytes:
        """The response head (and ``body``, framed): one write for both."""
        start = self.start
        if start is None:
            raise RuntimeError("http.response.body before http.response.start")
        status = start["status"]
        parts = [STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        content_length = None
        lines = 2
        for name, value in start.get("headers", ()):
            lname = name.lower()
            if lname == b"content-length":
                content_length = value
                continue
            if lname == b"transfer-encoding":
                continue  # the framing is the server's
            elif lname == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        no_body = status < 200 or status in _NO_BODY_STATUSES
        if content_length is not None:
            parts += (b"content-length: ", content_length, b"\r\n")
            lines += 1
            if not no_body and not self.head_only:
                try:
                    self.remaining = int(content_length)
                except ValueError:
                    raise RuntimeError("invalid Content-Length in the response") from None
        elif no_body:
            pass
        elif not more:  # the whole body at once (for HEAD: the length a GET would have)
            parts.append(b"content-length: %d\r\n" % len(body))
            lines += 1
        elif self.head_only:
            pass
        elif self.request.version == "1.1":
            self.chunked = True
            parts.append(_CHUNKED)
            lines += 1
        else:  # HTTP/1.0 streaming: the end of the body is the end of the connection
            self.keep_alive = False
        if self.keep_alive and (self.conn.draining.is_set() or self.request.error
                                or (not self.request.complete
                                and self.request.expect_continue
                                and not self.continue_sent)):
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(CONNECTION_CLOSE)
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise RuntimeError("a response header contains a line break")
        self.head = head
        self.start = None
        if no_body or self.head_only:
            return head
        if self.chunked:
            if body:
                head += b"%x\r\n%s\r\n" % (len(body), body)
            return head + _LAST_CHUNK if not more else head
        return head + self._counted(body) if body else head
