"""innera's fast HTTP/1.1 + WebSocket server (innera/http/fast/) over raw sockets, so that
each test controls the bytes: a small ASGI app of the test's own in the test's nursery, and a
few requests through the real innera app (``INNERA_HTTP_SERVER=fast``)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from innera.http import fast
from innera.http.fast import server as fast_server

pytestmark = pytest.mark.timeout(60)


# --- the app under the server -----------------------------------------------------------


class App:
    """An ASGI app whose routes exercise the server; it records what it saw."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.received: list[str] = []  # message types the app's receive returned, in order
        self.disconnected = trio.Event()
        self.release = trio.Event()
        self.send_error: BaseException | None = None
        self.send_failed = trio.Event()
        self.ws_disconnects: list[int] = []
        self.scopes: list[dict[str, Any]] = []
        self.cancelled = trio.Event()
        self.nowait_answers: list[int] = []  # what send_nowait answered (/ws/nowait)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        self.paths.append(scope["path"])
        route = scope["path"].split("/")[1] if "/" in scope["path"] else "echo"
        await getattr(self, "http_" + route.replace("-", "_"), self.http_echo)(
            scope, receive, send)

    async def body(self, receive: Any) -> bytes:
        data = bytearray()
        while True:
            message = await receive()
            self.received.append(message["type"])
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return bytes(data)
            data += message["body"]
            if not message["more_body"]:
                return bytes(data)

    async def respond(self, send: Any, body: bytes, status: int = 200,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def http_echo(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await self.body(receive)
        if self.disconnected.is_set():
            return
        digest = hashlib.sha256(body).hexdigest()[:16]
        await self.respond(send, b"%s %s %s %d %s" % (
            scope["method"].encode(), scope["raw_path"], scope["query_string"], len(body),
            digest.encode()))

    async def http_scope(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.body(receive)
        shown = {k: v for k, v in scope.items()}
        shown["raw_path"] = scope["raw_path"].decode()
        shown["query_string"] = scope["query_string"].decode()
        shown["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        await self.respond(send, json.dumps(shown).encode())

    async def http_stream(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b""):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"three"})

    async def http_noread(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.respond(send, b"not read")

    async def http_slow(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.body(receive)
        await trio.sleep(float(scope["query_string"] or b"0.5"))
        await self.respond(send, b"slept")

    async def http_linger(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Works for 30 s without reading (as a body-less request in Quart does)."""
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            self.cancelled.set()
            raise
        await self.respond(send, b"too late")

    async def http_boom(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("secret internals")

    async def http_boom_late(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("after the start")

    async def http_nothing(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.body(receive)

    async def http_injection(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.respond(send, b"x", headers=[(b"x-evil", b"a\r\nset-cookie: stolen=1")])

    async def http_wait(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Reads the body, then waits for the next message (as Quart's reader task does)."""
        await self.body(receive)
        message = await receive()
        self.received.append(message["type"])
        if message["type"] == "http.disconnect":
            self.disconnected.set()

    async def http_after(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.body(receive)
        await self.respond(send, b"done")
        with trio.fail_after(1):
            message = await receive()
        self.received.append(message["type"])

    async def http_hold(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Reads nothing until released, then counts the body."""
        await self.release.wait()
        await self.respond(send, b"%d" % len(await self.body(receive)))

    async def http_big(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(512):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError as exc:
            self.send_error = exc
            self.send_failed.set()

    async def websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        path = scope["path"]
        if path == "/ws/refuse":
            body = b'{"error":"unauthorized"}'
            await send({"type": "websocket.http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        if path == "/ws/deny":
            await send({"type": "websocket.close", "code": 1000})
            return
        subprotocols = scope["subprotocols"]
        await send({"type": "websocket.accept",
                    "subprotocol": subprotocols[0] if subprotocols else None,
                    "headers": [(b"x-accepted", b"yes")]})
        if path == "/ws/close":
            await send({"type": "websocket.send", "text": "bye"})
            await send({"type": "websocket.close", "code": 4000, "reason": "Server restarting"})
            return
        if path == "/ws/nowait":  # three writes without waiting, the second too big for them
            nowait = scope["extensions"][fast.SEND_NOWAIT_EXTENSION]["send_nowait_of"](send)
            for text in ("first", BIG, "overtaking?"):
                self.nowait_answers.append(nowait(text))
            if scope["query_string"] == b"then=flush":  # the app finishes what is owed
                await send({"type": fast.FLUSH})
                await send({"type": "websocket.send", "text": "after"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.ws_disconnects.append(message["code"])
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


# --- the server, raw clients ----------------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    stop: trio.Event
    done: trio.Event = field(default_factory=trio.Event)
    streams: list[trio.SocketStream] = field(default_factory=list)  # closed at the end

    async def open_stream(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(self.host, self.port)
        self.streams.append(stream)
        return stream

    async def connect(self) -> Client:
        return Client(await self.open_stream())


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[Server]:
    """The server on a free port for the block, cancelled at its end; a test of the drain
    sets ``stop`` and waits for ``done`` (set when serve_http returns)."""
    async with trio.open_nursery() as nursery:
        stop, done = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            await fast_server.serve_http(app, "127.0.0.1", 0, stop, task_status=task_status)
            done.set()

        addresses = await nursery.start(run)
        server = Server(addresses[0][0], addresses[0][1], stop, done)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
            for stream in server.streams:
                stream.socket.close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes


class Client:
    """A raw HTTP/1.1 client: it sends bytes and parses what comes back itself."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            raise EOFError("the server closed the connection")
        self.buffer += data

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            await self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def response(self, *, head: bool = False, timeout_s: float = 5.0) -> Response:
        with trio.fail_after(timeout_s):
            raw_head = await self._read_until(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                assert name.lower() not in headers, f"repeated header {name}"
                headers[name.lower()] = value.strip()
            if head or status < 200 or status in (204, 304):
                body = b""
            elif "content-length" in headers:
                body = await self._read_exactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    size = int((await self._read_until(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await self._read_until(b"\r\n")
                        break
                    body += await self._read_exactly(size)
                    assert await self._read_exactly(2) == b"\r\n"
            else:
                body = await self.rest()
            return Response(status, headers, body, raw_head)

    async def rest(self, timeout_s: float = 5.0) -> bytes:
        """Everything until the server closes the connection."""
        with trio.fail_after(timeout_s):
            while not self.eof:
                try:
                    await self._fill()
                except EOFError:
                    break
                except trio.BrokenResourceError:  # reset
                    self.eof = True
        data, self.buffer = self.buffer, b""
        return data

    async def closed_within(self, timeout_s: float) -> bool:
        with trio.move_on_after(timeout_s):
            await self.rest(timeout_s + 1)
            return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


async def wait_until(condition: Any, timeout_s: float = 2.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- ASGI compliance ------------------------------------------------------------------


async def test_the_http_scope_is_asgi_3() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("/scope/caf%C3%A9%20x?a=1&b=%20", "X-Custom: Value",
                              "X-Forwarded-For: 203.0.113.9"))
        r = await client.response()
        scope = json.loads(r.body)
        local = client.stream.socket.getsockname()
        assert scope["type"] == "http"
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert scope["http_version"] == "1.1" and scope["method"] == "GET"
        assert scope["scheme"] == "http" and scope["root_path"] == ""
        assert scope["path"] == "/scope/café x"
        assert scope["raw_path"] == "/scope/caf%C3%A9%20x"
        assert scope["query_string"] == "a=1&b=%20"
        assert ["x-custom", "Value"] in scope["headers"]  # names lower-cased, values kept
        assert scope["client"] == [local[0], local[1]]  # the socket peer, not X-Forwarded-For
        assert scope["server"] == [server.host, server.port]
        # no Server header, a Content-Length from a single body message
        assert "server" not in r.headers and r.headers["content-length"] == str(len(r.body))
        await client.aclose()


async def test_absolute_form_and_asterisk_targets() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("http://example.com/echo/abs?q=1") + get("*", method="OPTIONS"))
        assert (await client.response()).body.startswith(b"GET /echo/abs q=1 0 ")
        assert (await client.response()).body.startswith(b"OPTIONS * ")
        assert app.paths == ["/echo/abs", "*"]
        await client.aclose()


# --- keep-alive, pipelining, framing --------------------------------------------------


PIPELINE = b"".join([
    get("/echo?a=1"),
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
    get("/echo", method="HEAD"),
    get("/stream"),
    b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd",
    get("/echo/%7Elast", "Connection: close"),
])


async def _answers(pieces: list[bytes], pause_s: float) -> bytes:
    async with serving(App()) as server:
        client = await server.connect()
        for piece in pieces:
            await client.send(piece)
            if pause_s:
                await trio.sleep(pause_s)
        return await client.rest()


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(PIPELINE) - 1), max_size=12,
                unique=True))
async def test_pipelined_requests_split_anywhere_get_identical_responses(cuts: list[int]
                                                                         ) -> None:
    reference = await _answers([PIPELINE], 0)
    assert reference.count(b"HTTP/1.1 200 OK") == 7
    bounds = [0, *sorted(cuts), len(PIPELINE)]
    pieces = [PIPELINE[a:b] for a, b in itertools.pairwise(bounds)]
    assert await _answers(pieces, 0.002) == reference


async def test_a_pipeline_sent_byte_by_byte_gets_the_same_responses() -> None:
    reference = await _answers([PIPELINE], 0)
    assert await _answers([PIPELINE[i:i + 1] for i in range(len(PIPELINE))], 0) == reference
    assert reference.count(b"POST /echo  11 b94d27b9934d3e08") == 2  # by length, chunked
    for line in (b"GET /echo a=1 0 e3b0c44298fc1c14",
                 b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n", b"not read",
                 b"GET /echo/%7Elast  0"):
        assert line in reference


async def test_100_pipelined_requests_in_one_write_are_answered_in_order() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(b"".join(get(f"/echo?i={i}") for i in range(100)))
        for i in range(100):
            r = await client.response()
            assert r.status == 200
            assert r.body.startswith(b"GET /echo i=%d 0 " % i)
        await client.send(get("/echo?after"))  # the connection is still usable
        assert (await client.response()).body.startswith(b"GET /echo after")
        await client.aclose()


async def test_chunked_request_bodies_and_responses() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        body = bytes(range(256)) * 1000
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7000]), body[i:i + 7000])
                          for i in range(0, len(body), 7000))
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + chunks + b"0\r\n\r\n")
        r = await client.response()
        assert r.body.split()[-2:] == [b"256000", hashlib.sha256(body).hexdigest()[:16].encode()]
        await client.send(get("/stream"))
        r = await client.response()
        assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
        assert r.body == b"one,two,three"
        await client.aclose()


async def test_head_keeps_the_headers_and_sends_no_body() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/echo", method="HEAD") + get("/echo?next"))
        head = await client.response(head=True)
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(len(b"HEAD /echo  0 e3b0c44298fc1c14"))
        r = await client.response()  # the framing held: the next response parses
        assert r.body.startswith(b"GET /echo next")
        await client.aclose()


async def test_http_1_0_responses_close_the_connection() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/echo", version="1.0"))
        r = await client.response()
        assert r.headers["connection"] == "close" and r.body.startswith(b"GET /echo")
        assert await client.closed_within(1)
        client = await server.connect()
        await client.send(get("/stream", version="1.0"))
        r = await client.response()  # close-delimited: no chunked framing for HTTP/1.0
        assert "transfer-encoding" not in r.headers and r.body == b"one,two,three"


async def test_expect_100_continue_is_answered_when_the_app_reads() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        interim = await client.response()
        assert interim.status == 100
        await client.send(b"hello")
        r = await client.response()
        assert r.body.startswith(b"POST /echo  5 ") and "connection" not in r.headers
        # an app that answers without reading: no 100, and the connection closes
        await client.send(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        r = await client.response()
        assert r.status == 200 and r.body == b"not read" and r.headers["connection"] == "close"
        assert await client.closed_within(3)


async def test_a_body_the_app_did_not_read_is_skipped_and_the_connection_kept() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        r = await client.response()
        assert r.body == b"not read"
        await client.send(b"y" * 100000 + get("/echo?next"))
        assert (await client.response()).body.startswith(b"GET /echo next")
        await client.aclose()


async def test_an_idle_keep_alive_connection_closes_at_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_server, "KEEP_ALIVE_TIMEOUT_S", 0.4)
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/echo"))
        await client.response()
        started = trio.current_time()
        assert await client.closed_within(2)
        assert 0.3 < trio.current_time() - started < 1.2


async def test_bare_line_breaks_do_not_keep_an_idle_connection_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """httptools skips CRLFs before a request line: a client sending one now and then starts
    no request, so the keep-alive timeout still closes its connection (else a few such
    clients hold connections, and the metrics port's 16, for ever)."""
    monkeypatch.setattr(fast_server, "KEEP_ALIVE_TIMEOUT_S", 0.4)
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/echo"))
        await client.response()

        async def trickle() -> None:
            for _ in range(40):
                await trio.sleep(0.1)
                try:
                    await client.send(b"\r\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            assert await client.closed_within(2)
            nursery.cancel_scope.cancel()


async def test_a_request_crossing_the_keep_alive_close_meets_a_close_not_a_reset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic keep-alive race: the client reuses its idle connection just as the server
    closes it. The server half-closes and reads what still comes (IDLE_LINGER_S), so the
    client sees the connection closed, which clients take as "retry on a new connection";
    a plain close would answer that request with a reset."""
    monkeypatch.setattr(fast_server, "KEEP_ALIVE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(fast_server, "IDLE_LINGER_S", 5.0)
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/echo"))
        await client.response()
        assert await client.rest() == b""  # the server's FIN, at its keep-alive timeout
        # the request the client had sent before that FIN reached it
        await client.send(get("/echo?crossed"))
        try:
            await client.stream.send_eof()
            with trio.fail_after(2):
                # the server read the request, then saw our FIN and closed
                assert await client.stream.receive_some(100) == b""
        except trio.BrokenResourceError as exc:
            pytest.fail(f"the server reset the connection: {exc}")
        assert client.stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


# --- refusals ---------------------------------------------------------------------------


SMUGGLING = {
    "cl-and-te": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                 b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    "te-and-cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    "duplicate-cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                    b"Content-Length: 4\r\n\r\nabcd",
    "conflicting-cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                      b"Content-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    "cl-list": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4, 4\r\n\r\nabcd",
    "cl-sign": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +4\r\n\r\nabcd",
    "cl-negative": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    "cl-garbage": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4x\r\n\r\nabcd",
    "te-not-final-chunked": b"POST /echo HTTP/1.1\r\nHost: t\r\n"
                            b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n",
    "te-xchunked": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n"
                   b"0\r\n\r\n",
    "te-twice": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n"
                             b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    "te-vertical-tab": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\x0bchunked\r\n\r\n"
                       b"0\r\n\r\n",
    "te-in-http-1.0": b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-not-hex": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                           b"\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                           b"\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-longer-than-size": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                              b"\r\n3\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    "bare-lf": b"GET /echo HTTP/1.1\nHost: t\n\n",
    "bare-cr-in-value": b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: 1\rTransfer-Encoding: chunked\r\n"
                        b"\r\n",
    "no-host": b"GET /echo HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "garbage": b"NOT HTTP AT ALL\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_request_smuggling_shapes_are_400_and_close(name: str) -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(SMUGGLING[name])
        r = await client.response()
        assert r.status == 400, r
        assert r.headers["connection"] == "close"
        assert json.loads(r.body)["error"]["code"] == "bad_request"
        assert await client.rest() == b""  # nothing more, then closed
        assert "/smuggled" not in app.paths


async def test_an_unsupported_transfer_coding_is_501() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked"
                          b"\r\n\r\n0\r\n\r\n")
        r = await client.response()
        assert r.status == 501 and r.headers["connection"] == "close"
        assert await client.closed_within(3)


async def test_requests_before_a_malformed_one_are_still_answered() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("/echo?1") + get("/echo?2") + SMUGGLING["cl-and-te"])
        assert (await client.response()).body.startswith(b"GET /echo 1")
        assert (await client.response()).body.startswith(b"GET /echo 2")
        assert (await client.response()).status == 400
        assert await client.closed_within(3)
        assert app.paths == ["/echo", "/echo"]


@pytest.mark.parametrize("head", [
    get("/echo", "X-Big: " + "a" * 70_000),
    get("/echo", *(f"X-H{i}: {'b' * 700}" for i in range(95))),
    get("/echo?" + "q" * 70_000),
    get("/echo", *(f"X-H{i}: 1" for i in range(101))),
])
async def test_oversized_heads_are_431(head: bytes) -> None:
    async with serving(App()) as server:
        client = await server.connect()
        with trio.move_on_after(2):  # the server may answer before it has read everything
            await client.send(head)
        r = await client.response()
        assert r.status == 431 and r.headers["connection"] == "close"
        error = json.loads(r.body)  # the error contract, request id included
        assert error["error"]["code"] == "request_header_fields_too_large"
        assert error["requestId"] == r.headers["x-request-id"]
        assert await client.closed_within(3)


async def test_a_head_under_the_limits_is_served() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/echo", *(f"X-H{i}: {'c' * 600}" for i in range(99))))
        assert (await client.response()).status == 200
        await client.aclose()


async def test_a_trickled_head_is_cut_off_at_the_header_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_server, "HEADER_TIMEOUT_S", 0.5)
    async with serving(App()) as server:
        client = await server.connect()
        started = trio.current_time()

        async def trickle() -> None:
            await client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            for _ in range(50):
                await trio.sleep(0.05)
                try:
                    await client.send(b"a")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            data = await client.rest(5)
            nursery.cancel_scope.cancel()
        assert data == b""  # closed without an answer
        assert 0.4 < trio.current_time() - started < 1.5


# --- bodies, flow control, disconnects ----------------------------------------------------


async def test_the_server_stops_reading_while_the_app_does_not_take_the_body() -> None:
    app = App()
    total = 64 * 1024 * 1024
    async with serving(app) as server:
        client = await server.connect()
        await client.send(b"POST /hold HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"z" * 65536
        sent = 0
        with trio.move_on_after(1):
            while sent < total:
                await client.send(chunk)
                sent += len(chunk)
        # only what the kernel buffers got through; the server held back
        assert sent < 16 * 1024 * 1024, sent
        app.release.set()
        while sent < total:
            await client.send(chunk)
            sent += len(chunk)
        r = await client.response(timeout_s=20)
        assert r.body == b"%d" % total
        await client.aclose()


async def test_a_client_leaving_mid_body_gives_the_app_http_disconnect() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        await wait_until(lambda: app.received == ["http.request"])  # "abc", more to come
        await client.aclose()
        with trio.fail_after(2):
            await app.disconnected.wait()
        assert app.received[-1] == "http.disconnect"


async def test_a_client_leaving_while_the_app_works_gives_http_disconnect() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("/wait"))
        await wait_until(lambda: app.received == ["http.request"])  # now waiting
        assert not app.disconnected.is_set()
        await client.aclose()
        with trio.fail_after(2):
            await app.disconnected.wait()
        assert app.received == ["http.request", "http.disconnect"]


async def test_receive_after_the_response_is_http_disconnect() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("/after"))
        assert (await client.response()).body == b"done"
        await wait_until(lambda: len(app.received) == 2)
        assert app.received == ["http.request", "http.disconnect"]
        await client.aclose()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_request_whose_client_hangs_up_is_cancelled(how: str) -> None:
    """The app is not reading (no task waits for http.disconnect), yet the server cancels
    its work when the client goes, and says so in the scope."""
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("/linger"))
        await wait_until(lambda: "/linger" in app.paths)
        assert "innera.cancelled_on_hangup" in app.scopes[-1]["extensions"]
        if how == "reset":  # RST instead of FIN
            client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                            struct.pack("ii", 1, 0))
        await client.aclose()
        with trio.fail_after(2):
            await app.cancelled.wait()
        other = await server.connect()  # the server goes on
        await other.send(get("/echo"))
        assert (await other.response()).status == 200


async def test_requests_pipelined_behind_a_slow_one_do_not_count_as_a_hang_up() -> None:
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("/slow?0.3"))
        await wait_until(lambda: "/slow" in app.paths)
        await client.send(get("/echo?2") + get("/slow?0.1"))  # arrives while the app runs
        for expected in (b"slept", b"GET /echo 2", b"slept"):
            assert (await client.response()).body.startswith(expected)
        await client.aclose()


async def test_a_stalled_body_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_server, "BODY_TIMEOUT_S", 0.4)
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        r = await client.response()
        assert r.status == 408 and r.headers["connection"] == "close"
        assert app.disconnected.is_set()
        assert await client.closed_within(3)


async def test_a_client_that_does_not_read_is_disconnected_at_the_send_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_server, "SEND_TIMEOUT_S", 0.5)
    app = App()
    async with serving(app) as server:
        client = await server.connect()
        await client.send(get("/big"))
        with trio.fail_after(10):
            await app.send_failed.wait()  # the app's send raised an OSError: the peer is gone
        assert isinstance(app.send_error, OSError)
        await client.aclose()


# --- errors -----------------------------------------------------------------------------


async def test_an_app_error_before_the_response_is_a_500_without_internals() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/boom"))
        r = await client.response()
        assert r.status == 500 and r.headers["connection"] == "close"
        body = json.loads(r.body)
        assert body == {"error": {"code": "internal_error", "message": "Internal server error"},
                        "requestId": r.headers["x-request-id"]}
        assert await client.closed_within(3)
        for path in ("/nothing", "/injection"):  # no response at all; a header with CR LF
            client = await server.connect()
            await client.send(get(path))
            r = await client.response()
            assert r.status == 500 and b"stolen" not in r.raw_head
            assert await client.closed_within(3)


async def test_an_app_error_after_the_response_started_closes_the_connection() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/boom-late"))
        data = await client.rest()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"partial" in data
        assert not data.endswith(b"0\r\n\r\n")  # the body was cut: the client can tell


# --- WebSocket ----------------------------------------------------------------------------


#: a message larger than any socket buffer (tcp_wmem and tcp_rmem's maximum together)
BIG = "0123456789abcdef" * (1024 * 1024)


class Ws:
    """A WebSocket client (wsproto) over a raw stream; handshake result in ``accepted``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []
        self.accepted: AcceptConnection | None = None

    @classmethod
    async def connect(cls, server: Server, path: str, subprotocols: list[str] | None = None
                      ) -> Ws:
        client = cls(await server.open_stream())
        await client.send(Request(host="test", target=path, subprotocols=subprotocols or []))
        event = await client.event()
        if isinstance(event, AcceptConnection):
            client.accepted = event
        else:
            client.pending.insert(0, event)
        return client

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def event(self, timeout_s: float = 5.0) -> Event:
        with trio.fail_after(timeout_s):
            while not self.pending:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def message(self) -> str | bytes:
        """The next whole message (wsproto hands over frames as they arrive)."""
        parts = []
        while True:
            event = await self.event()
            assert isinstance(event, TextMessage | BytesMessage), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts) if isinstance(event.data, str) else b"".join(parts)

    async def eof(self, timeout_s: float = 3.0) -> bool:
        with trio.move_on_after(timeout_s):
            while await self.stream.receive_some(65536):
                pass
            return True
        return False


async def test_websocket_handshake_and_echo() -> None:
    app = App()
    async with serving(app) as server:
        ws = await Ws.connect(server, "/ws/echo?x=1", ["chat", "superchat"])
        assert ws.accepted is not None
        assert ws.accepted.subprotocol == "chat"
        assert (b"x-accepted", b"yes") in ws.accepted.extra_headers
        scope = app.scopes[-1]
        assert scope["type"] == "websocket" and scope["scheme"] == "ws"
        assert scope["path"] == "/ws/echo" and scope["query_string"] == b"x=1"
        assert scope["subprotocols"] == ["chat", "superchat"]
        assert "websocket.http.response" in scope["extensions"]
        await ws.send(TextMessage(data="héllo"))
        assert await ws.message() == "héllo"
        await ws.send(BytesMessage(data=b"\x00\x01binary"))
        assert await ws.message() == b"\x00\x01binary"


async def test_a_message_written_without_waiting_in_part_is_finished_before_the_next(
) -> None:
    """``send_nowait`` (the extension a broadcast writes with): a message the socket takes
    at once is written whole; one larger than the buffers is written in part and the rest is
    owed, so the next ``send_nowait`` writes nothing (it would split the frame); the app's
    ``FLUSH`` writes the rest once the client reads, and the next message follows it."""
    app = App()
    async with serving(app) as server:
        ws = await Ws.connect(server, "/ws/nowait?then=flush")
        assert await ws.message() == "first"
        assert await ws.message() == BIG
        assert await ws.message() == "after"
        assert app.nowait_answers == [fast.WROTE_ALL, fast.WROTE_PART, fast.WROTE_NOTHING]


async def test_a_pong_waits_for_the_rest_of_a_message_written_in_part() -> None:
    """The server's own writes (a pong answering the client's ping) go after what a
    ``send_nowait`` owes, never into the middle of that frame."""
    app = App()
    async with serving(app) as server:
        ws = await Ws.connect(server, "/ws/nowait")
        await ws.send(Ping(payload=b"still there?"))
        assert await ws.message() == "first"
        assert await ws.message() == BIG
        assert await ws.event() == Pong(payload=b"still there?")
        await ws.send(TextMessage(data="echo me"))
        assert await ws.message() == "echo me"
        assert app.nowait_answers == [fast.WROTE_ALL, fast.WROTE_PART, fast.WROTE_NOTHING]


async def test_websocket_handshake_by_hand_gets_the_rfc_accept_key() -> None:
    async with serving(App()) as server:
        client = await server.connect()
        key = base64.b64encode(b"0123456789abcdef")
        await client.send(get("/ws/echo", "Upgrade: websocket", "Connection: Upgrade",
                              f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13"))
        r = await client.response(head=True)
        assert r.status == 101
        expected = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        assert r.headers["sec-websocket-accept"] == expected
        assert r.headers["upgrade"].lower() == "websocket"


@pytest.mark.parametrize(("extra", "status"), [
    (("Sec-WebSocket-Version: 12", "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg=="), 426),
    (("Sec-WebSocket-Version: 13",), 400),
    (("Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: short"), 400),
])
async def test_an_invalid_websocket_handshake_is_refused(extra: tuple[str, ...], status: int
                                                         ) -> None:
    async with serving(App()) as server:
        client = await server.connect()
        await client.send(get("/ws/echo", "Upgrade: websocket", "Connection: Upgrade", *extra))
        r = await client.response()
        assert r.status == status
        assert await client.closed_within(3)


async def test_fragmented_messages_are_reassembled() -> None:
    async with serving(App()) as server:
        ws = await Ws.connect(server, "/ws/echo")
        await ws.send(TextMessage(data="frag", message_finished=False))
        await ws.send(TextMessage(data="men", message_finished=False))
        await ws.send(Ping(payload=b"in-between"))  # a control frame between fragments
        await ws.send(TextMessage(data="ted", message_finished=True))
        assert await ws.event() == Pong(payload=b"in-between")
        assert await ws.message() == "fragmented"
        await ws.send(BytesMessage(data=b"ab", message_finished=False))
        await ws.send(BytesMessage(data=b"cd", message_finished=True))
        assert await ws.message() == b"abcd"


async def test_pings_are_answered_with_pongs() -> None:
    async with serving(App()) as server:
        ws = await Ws.connect(server, "/ws/echo")
        await ws.send(Ping(payload=b"are you there"))
        assert await ws.event() == Pong(payload=b"are you there")


async def test_a_close_from_the_client_is_answered_and_reaches_the_app() -> None:
    app = App()
    async with serving(app) as server:
        ws = await Ws.connect(server, "/ws/echo")
        await ws.send(CloseConnection(code=4321, reason="bye"))
        event = await ws.event()
        assert isinstance(event, CloseConnection) and event.code == 4321
        assert await ws.eof()
        assert app.ws_disconnects == [4321]


async def test_a_close_from_the_app_reaches_the_client_and_the_socket_ends() -> None:
    async with serving(App()) as server:
        ws = await Ws.connect(server, "/ws/close")
        assert await ws.message() == "bye"
        event = await ws.event()
        assert isinstance(event, CloseConnection)
        assert (event.code, event.reason) == (4000, "Server restarting")
        await ws.send(event.response())
        assert await ws.eof(1)  # the server closes the TCP connection after the handshake


async def test_a_message_over_64_kib_closes_with_1009() -> None:
    app = App()
    async with serving(app) as server:
        ws = await Ws.connect(server, "/ws/echo")
        await ws.send(TextMessage(data="x" * 64 * 1024))  # exactly the limit
        assert await ws.message() == "x" * 64 * 1024
        await ws.send(BytesMessage(data=b"y" * 40 * 1024, message_finished=False))
        await ws.send(BytesMessage(data=b"y" * 40 * 1024, message_finished=True))
        event = await ws.event()
        assert isinstance(event, CloseConnection) and event.code == 1009
        assert app.ws_disconnects == [1009]
        ws2 = await Ws.connect(server, "/ws/echo")
        await ws2.send(TextMessage(data="z" * (65 * 1024)))
        event = await ws2.event()
        assert isinstance(event, CloseConnection) and event.code == 1009


async def test_the_http_response_extension_refuses_before_accepting() -> None:
    async with serving(App()) as server:
        ws = await Ws.connect(server, "/ws/refuse")
        event = await ws.event()
        assert isinstance(event, RejectConnection) and event.status_code == 401
        body = b""
        while not body.endswith(b"}"):
            data = await ws.event()
            assert isinstance(data, RejectData)
            body += data.data
        assert json.loads(body) == {"error": "unauthorized"}
        denied = await Ws.connect(server, "/ws/deny")  # websocket.close before accept: 403
        event = await denied.event()
        assert isinstance(event, RejectConnection) and event.status_code == 403


# --- draining ---------------------------------------------------------------------------


async def test_graceful_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_server, "KEEP_ALIVE_TIMEOUT_S", 1.0)
    app = App()
    async with serving(app) as server:
        reused = await server.connect()  # idle keep-alive, used again while draining
        await reused.send(get("/echo"))
        assert "connection" not in (await reused.response()).headers
        idle = await server.connect()  # idle keep-alive, never used again
        await idle.send(get("/echo"))
        await idle.response()
        busy = await server.connect()
        await busy.send(get("/slow?0.6"))
        await wait_until(lambda: "/slow" in app.paths)

        stopped = trio.current_time()
        server.stop.set()
        with pytest.raises(OSError):  # new connections are refused
            with trio.fail_after(2):
                while True:  # (until the listener has closed)
                    (await trio.open_tcp_stream(server.host, server.port)).socket.close()
                    await trio.sleep(0.01)
        await reused.send(get("/echo?draining"))
        r = await reused.response()
        assert r.body.startswith(b"GET /echo draining") and r.headers["connection"] == "close"
        r = await busy.response()  # the request in flight finishes
        assert r.body == b"slept" and r.headers["connection"] == "close"
        for client in (reused, busy, idle):  # the idle one at its keep-alive timeout
            assert await client.closed_within(2)
        with trio.fail_after(2):
            await server.done.wait()
        assert trio.current_time() - stopped < 2.0


# --- through the real innera app -----------------------------------------------------------


async def test_innera_on_the_fast_server(nursery: trio.Nursery, database_url: str,
                                         redis_url: str, tmp_path: Path) -> None:
    from innera.config import load_settings
    from tests.fixtures.accounts import signup
    from tests.fixtures.server import server_environ, start_server
    from tests.fixtures.ws import WsClient

    srv = await start_server(nursery, load_settings(server_environ(
        database_url, redis_url, tmp_path / "data", INNERA_HTTP_SERVER="fast")))
    host, port = srv.started.addresses[0]
    async with srv.client:
        # pipelined requests through Quart, answered in order
        client = Client(await trio.open_tcp_stream(host, port))
        await client.send(get("/health") * 20)
        ids = set()
        for _ in range(20):
            r = await client.response()
            assert r.status == 200 and json.loads(r.body) == {"status": "pass"}
            ids.add(r.headers["x-request-id"])
        assert len(ids) == 20
        # a chunked JSON body reaches the route
        await client.send(b"POST /_test/echo HTTP/1.1\r\nHost: t\r\n"
                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"6\r\n{\"a\": \r\n2\r\n1}\r\n0\r\n\r\n")
        r = await client.response()
        assert r.status == 200 and json.loads(r.body) == {"json": {"a": 1}}
        await client.aclose()
        # /v1/ws: 401 through the websocket.http.response extension; then a real socket
        refused = await Ws.connect(Server(host, port, trio.Event()), "/v1/ws")
        event = await refused.event()
        assert isinstance(event, RejectConnection) and event.status_code == 401
        await refused.stream.aclose()
        account = await signup(srv.client)
        ws = await WsClient.connect(host, port, "/v1/ws",
                                    [("authorization", f"Bearer {account.access}")])
        await ws.send_text('{"type":"ping"}')
        with trio.fail_after(5):
            assert json.loads(await ws.receive()) == {"type": "pong"}
        await ws.aclose()
    await srv.stop()
