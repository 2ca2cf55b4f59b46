"""HTTP/1.1 connections of innera's fast server (:mod:`innera.http.fast`): parsing with
httptools, the limits on request heads, keep-alive and pipelining, flow control, running the
app for each request (its ASGI cycle is :mod:`innera.http.fast.cycle`), and the hand-off of
WebSocket upgrades to :mod:`innera.http.fast.websocket`.

One task per connection runs :meth:`HTTPConnection.run`. The parser is fed only when someone
needs bytes: the connection loop waiting for the next request head, or the app's ``receive``
waiting for body. It parses whatever was read, so the requests a client pipelined are queued
(``pending``) and answered strictly in order. Reading stops while the app has not consumed
the body received so far, or while ``max_read_ahead_requests`` requests wait; that, the size
limits on heads and the bounded read size keep every connection's buffers bounded. A request
the parser refuses is answered (400, 431, 501, 505) after the ones before it, then the
connection closes.

Per request there are two small objects (a :class:`~innera.http.fast.request.Request`, a
:class:`~innera.http.fast.cycle.Cycle`) and the scope dict: no task, memory channel or cancel
scope, except while the app's ``receive`` has to wait for the network (body still arriving,
or the body was delivered and the app waits for ``http.disconnect``: that wait reads the
socket, so a client that goes away mid-request is noticed, and ends when the response is
complete). The keep-alive and head timeouts move the
deadline of the connection's one cancel scope, which is infinite while the app runs.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import httptools
import trio

from innera.http.fast.asgi import ASGI_VERSION, ASGIApp
from innera.http.fast.cycle import Cycle
from innera.http.fast.hangups import EXTENSION as HANGUP_EXTENSION
from innera.http.fast.hangups import Hangups
from innera.http.fast.request import Reject, Request, split_target
from innera.http.fast.responses import error_response
from innera.http.fast.transport import ClientDisconnected, Settings, Transport

log = logging.getLogger("innera.http")

# the lower-cased names of common request headers, by their usual spellings: one shared
# bytes object per name (less memory per scope, no lower() call)
_HEADER_NAMES = {
    spelling: name
    for name in (b"host", b"user-agent", b"accept", b"accept-encoding", b"accept-language",
                 b"connection", b"content-type", b"content-length", b"transfer-encoding",
                 b"authorization", b"cookie", b"origin", b"referer", b"upgrade", b"expect",
                 b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"range",
                 b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip", b"x-request-id",
                 b"idempotency-key", b"x-reauth-token", b"sec-websocket-key",
                 b"sec-websocket-version", b"sec-websocket-protocol",
                 b"sec-websocket-extensions", b"sec-fetch-mode", b"sec-fetch-site",
                 b"sec-fetch-dest", b"priority", b"te", b"via", b"dnt")
    for spelling in (name, name.title(), name.upper(),
                     name.title().replace(b"Websocket", b"WebSocket"))
}


_HANGUP_EXTENSIONS: dict[str, dict[str, Any]] = {HANGUP_EXTENSION: {}}
_NO_EXTENSIONS: dict[str, dict[str, Any]] = {}


class HTTPConnection:
    """Serves the HTTP/1.1 requests of one connection; see the module doc."""

    __slots__ = ("_cl", "_extensions", "_head_bytes", "_head_deadline", "_headers", "_host",
                 "_raw_head", "_te", "app", "buffered", "client", "cycle", "draining", "eof",
                 "hangups", "idle_timed_out", "parse_error", "parser", "parsing", "pending",
                 "scope", "server", "settings", "stop_reading", "transport", "upgrade_tail")

    def __init__(self, app: ASGIApp, settings: Settings, draining: trio.Event,
                 transport: Transport, client: tuple[str, int] | None,
                 server: tuple[str, int] | None, hangups: Hangups | None = None) -> None:
        self.app = app
        self.hangups = hangups if hangups is not None and hangups.enabled else None
        self._extensions = _HANGUP_EXTENSIONS if self.hangups is not None else _NO_EXTENSIONS
        self.cycle: Cycle | None = None  # the request the app is running
        self.settings = settings
        self.draining = draining
        self.transport = transport
        self.client = client
        self.server = server
        self.parser: Any = httptools.HttpRequestParser(self)
        self.pending: deque[Request] = deque()
        self.parsing: Request | None = None
        self.parse_error: Reject | None = None
        self.stop_reading = False  # after a parse error or an upgrade: feed nothing more
        self.eof = False
        self.buffered = 0  # body bytes parsed and not yet handed to the app
        self.upgrade_tail = b""
        self.idle_timed_out = False  # run() ended at the keep-alive timeout
        self.scope = trio.CancelScope()
        self._head_deadline = math.inf
        self._head_bytes = self._headers = self._raw_head = 0
        self._cl = self._host = 0
        self._te: bytes | None = None

    # --- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        request = Request()
        self.parsing = request
        self.pending.append(request)
        self._head_bytes = 16  # method, version, spaces and line ends, roughly
        self._headers = self._raw_head = self._cl = self._host = 0
        self._te = None

    def on_url(self, url: bytes) -> None:
        request = self.parsing
        assert request is not None
        request.target += url
        self._head_bytes += len(url)
        if self._head_bytes > self.settings.max_head_bytes:
            raise Reject(431, "The request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        assert request is not None
        self._head_bytes += len(name) + len(value) + 4
        self._headers += 1
        if self._head_bytes > self.settings.max_head_bytes:
            raise Reject(431)
        if self._headers > self.settings.max_headers:
            raise Reject(431, f"More than {self.settings.max_headers} header fields")
        if request.head_done:  # a trailer field of a chunked body: dropped
            return
        name = _HEADER_NAMES.get(name) or name.lower()
        if name == b"content-length":
            self._cl += 1
            if self._cl > 1 or not value.isdigit() or len(value) > 18:
                raise Reject(400, "Invalid or repeated Content-Length")
        elif name == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b"," + value
        elif name == b"host":
            self._host += 1
        elif name == b"expect":
            request.expect_continue = value.lower() == b"100-continue"
        elif name == b"upgrade":
            request.upgrade = value.lower()
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.parsing
        assert request is not None
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise Reject(505)
        if self._te is not None:
            codings = [c.strip() for c in self._te.lower().split(b",")]
            if self._cl or version == "1.0" or codings[-1] != b"chunked":
                raise Reject(400, "Invalid Transfer-Encoding")
            if len(codings) > 1:
                raise Reject(501)
        if self._host > 1 or (self._host == 0 and version == "1.1"):
            raise Reject(400, "An HTTP/1.1 request needs exactly one Host header")
        request.version = version
        if version == "1.0":
            request.expect_continue = False  # (no 100 Continue for HTTP/1.0 clients)
        request.method = parser.get_method().decode("ascii")
        # HTTP/1.0 connections close after one response (as h11 does)
        request.keep_alive = version == "1.1" and parser.should_keep_alive()
        if not parser.should_upgrade():
            request.upgrade = None
        request.head_done = True
        self._head_deadline = math.inf

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        assert request is not None
        if request.discard:
            return
        request.body.append(body)
        request.body_bytes += len(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        request.complete = True
        self.parsing = None

    # --- reading ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data``; problems are recorded, to be answered in turn."""
        parsing = self.parsing
        head_before = parsing if parsing is not None and not parsing.head_done else None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            request = self.pending[-1]
            if request.upgrade == b"websocket":
                self.upgrade_tail = data[exc.args[0]:]
            else:  # an upgrade innera does not speak: answered as plain HTTP, then closed
                request.keep_alive = False
                request.upgrade = None
            self.stop_reading = True
            return
        except httptools.HttpParserError as exc:
            context = exc.__context__
            if isinstance(context, Reject):
                self._fail(context)
            else:
                self._fail(Reject(400, str(exc) or None))
            return
        request = self.parsing
        if request is not None and request is head_before and not request.head_done:
            self._raw_head += len(data)  # every byte of this read belongs to the head
            if self._raw_head > self.settings.max_head_bytes:
                self._fail(Reject(431))

    def _fail(self, reject: Reject) -> None:
        self.stop_reading = True
        request = self.parsing
        if request is not None and request.head_done:  # broken in the body
            request.error = reject.status
            return
        if request is not None:  # broken in the head: never dispatched
            self.pending.pop()
        self.parse_error = reject

    def may_read_ahead(self) -> bool:
        return (not self.stop_reading and not self.eof
                and len(self.pending) <= self.settings.max_read_ahead_requests
                and self.buffered <= self.settings.max_body_buffer)

    async def _next_request(self) -> Request | None:
        """The next request whose head is complete, or ``None``: close the connection."""
        waited = False
        transport = self.transport
        idle_deadline = math.inf  # set once: bytes that start no request (bare CRLFs,
        # which httptools skips) do not keep an idle connection open
        while True:
            pending = self.pending
            if pending:
                request = pending[0]
                if request.head_done:
                    if not waited:  # a pipelined request: let other tasks run
                        await trio.lowlevel.checkpoint()
                    return request
                deadline = self._head_deadline  # the head must arrive within header_timeout_s
                if deadline == math.inf:  # of the first time it was waited for
                    deadline = trio.current_time() + self.settings.header_timeout_s
                    self._head_deadline = deadline
            else:
                if self.parse_error is not None:
                    await self._refuse(self.parse_error)
                    return None
                if idle_deadline == math.inf:
                    idle_deadline = trio.current_time() + self.settings.keep_alive_timeout_s
                deadline = idle_deadline
            if self.eof or self.stop_reading:
                return None
            data = transport.recv_nowait()
            if data is None:
                waited = True
                self.scope.deadline = deadline
                await transport.wait_readable()
                self.scope.deadline = math.inf
                if self.scope.cancel_called:  # the deadline passed just as data arrived
                    return None
                continue
            if not data:
                self.eof = True
                return None
            self.feed(data)

    async def _refuse(self, reject: Reject) -> None:
        log.debug("refused a request from %s: %s %s", self.client, reject.status, reject)
        try:
            await self.transport.send_all(error_response(reject.status, reject.message))
        except ClientDisconnected:
            return
        await self.transport.close_lingering(self.settings.linger_timeout_s)

    # --- the connection -------------------------------------------------------------------

    async def run(self) -> Request | None:
        """Serve requests until the connection is to close (the caller closes it). A valid
        WebSocket upgrade request is returned instead: the caller serves the socket, with
        :attr:`upgrade_tail` as the first bytes."""
        with self.scope:
            while True:
                request = await self._next_request()
                if request is None:
                    return None
                if request.upgrade is not None:
                    self.parser = None  # (a reference cycle through the callbacks)
                    self.pending.clear()
                    return request
                if request.error:  # broken before the app saw it
                    await self._refuse(Reject(request.error))
                    return None
                if not await self._respond(request):
                    return None
                self.pending.popleft()
                self.buffered -= request.body_bytes
        # a head or keep-alive deadline passed (keep-alive: no request begun)
        self.idle_timed_out = not self.pending
        return None

    def client_hung_up(self) -> None:
        """The peer closed or reset the connection while the app ran a request (see
        :mod:`innera.http.fast.hangups`): unless its response is complete, the request's work
        is cancelled, with the connection. As with Hypercorn's ``http.disconnect``, a client
        that only shuts down its sending side counts as gone."""
        cycle = self.cycle
        if cycle is not None and not cycle.complete:
            log.debug("client %s hung up during a request: cancelling it", self.client)
            self.scope.cancel()

    def _scope(self, request: Request) -> dict[str, Any]:
        path, raw_path, query = split_target(request)
        return {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": request.version,
            "method": request.method,
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": self.client,
            "server": self.server,
            "extensions": self._extensions,
        }

    async def _respond(self, request: Request) -> bool:
        """Run the app for ``request``; whether the connection stays open."""
        try:
            scope = self._scope(request)
        except Reject as reject:
            await self._refuse(reject)
            return False
        cycle = Cycle(self, request)
        fileno = self.transport.sock.fileno()
        watched = self.hangups is not None and self.hangups.watch(fileno, self)
        self.cycle = cycle
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except Exception as exc:
            if _only_disconnects(exc):
                log.debug("client %s went away during a request", self.client)
                return False
            log.exception("ASGI app failed on %s %s", request.method, scope["path"])
            if cycle.head is None and not self.transport.closed:
                await self._refuse(Reject(500))
            return False
        finally:
            self.cycle = None
            if watched:
                self.hangups.unwatch(fileno)  # type: ignore[union-attr]
        if not cycle.complete:
            if self.eof or self.transport.closed:
                log.debug("client %s went away during a request", self.client)
            elif cycle.head is None:
                if not request.error:
                    log.error("ASGI app returned without a response to %s %s",
                              request.method, scope["path"])
                await self._refuse(Reject(request.error or 500))
            return False
        if request.error or self.eof:
            if not self.eof:
                await self.transport.close_lingering(self.settings.linger_timeout_s)
            return False
        if not request.complete:
            if cycle.keep_alive and await self._drain(request, cycle):
                return True
            await self.transport.close_lingering(self.settings.linger_timeout_s)
            return False
        if not cycle.keep_alive:
            if len(self.pending) > 1 or self.parsing is not None:  # the client sent more
                await self.transport.close_lingering(self.settings.linger_timeout_s)
            return False
        return True

    async def _drain(self, request: Request, cycle: Cycle) -> bool:
        """The response went out before the body was read: read the rest and drop it (up to
        ``drain_limit_bytes``), so that the connection can serve its next request."""
        if request.expect_continue and not cycle.continue_sent:
            return False  # the client may never send that body
        request.discard = True
        self.buffered -= request.body_bytes
        request.body.clear()
        request.body_bytes = 0
        limit = self.settings.drain_limit_bytes
        transport = self.transport
        with trio.move_on_after(self.settings.body_timeout_s):
            while not request.complete and not request.error and limit > 0:
                data = transport.recv_nowait()
                if data is None:
                    await transport.wait_readable()
                    continue
                if not data:
                    self.eof = True
                    return False
                limit -= len(data)
                self.feed(data)
        return request.complete and not request.error


def _only_disconnects(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_disconnects(e) for e in exc.exceptions)
    return isinstance(exc, ClientDisconnected)


