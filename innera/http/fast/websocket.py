"""WebSocket connections of innera's fast server (:mod:`innera.http.fast`): the opening
handshake, validated here from the request httptools parsed, then one ASGI ``websocket``
session over wsproto's frame protocol.

One task per socket: the app runs in the connection's task, its ``receive`` reads the socket
(so an app that stops reading stops the reading: back-pressure), answers pings and the
peer's close, reassembles fragmented messages and closes with 1009 past
``ws_max_message_bytes``. Outgoing data frames are encoded here (server frames are not
masked, so the same text sent to many sockets is encoded once); wsproto encodes the control
frames. No permessage-deflate: its compressor state would cost every socket far more memory
than the socket itself.

The ``websocket.http.response`` extension is advertised: before accepting, an app may answer
with a plain HTTP response (innera's ``/v1/ws`` answers 401 that way).

So is :data:`SEND_NOWAIT_EXTENSION`, for an app that writes one message to many sockets
(innera's hub broadcasting an event to a user's sockets, all from one task). Its
``send_nowait_of(send)`` gives, for the ``send`` callable the app was called with, the
session's ``send_nowait`` (``None`` for any other callable); ``send_nowait(text)`` writes a
text message's frame at once when the socket's buffer has room, from the caller's task, with
no task switch and no waiting, and answers how much it wrote: :data:`WROTE_NOTHING` (the
buffer is full, another write is in progress, or the session is not open: send the message
the ordinary way), :data:`WROTE_ALL`, or :data:`WROTE_PART`: the kernel took part of the
frame and the rest is owed; every later write of the session sends it first, and the app
sends ``{"type": FLUSH}`` to have it written when nothing else follows (the ordinary send
path, bounded and shielded like every send). The app keeps the order: it must not call
``send_nowait`` while a message it sent the ordinary way is not done.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import struct
from collections.abc import Callable
from typing import Any

import trio
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode, ParseFailed

from innera.http.fast.asgi import ASGI_VERSION, Message
from innera.http.fast.request import Reject, Request, split_target
from innera.http.fast.responses import error_response, response_head
from innera.http.fast.transport import ClientDisconnected, Settings, Transport

log = logging.getLogger("innera.http")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: the websocket scope's extension ``{"send_nowait_of": callable}`` (see the module doc)
SEND_NOWAIT_EXTENSION = "innera.websocket.send_nowait"
#: the ASGI message type writing what ``send_nowait`` owes (the rest of a frame)
FLUSH = "innera.websocket.flush"
#: what ``send_nowait`` answers
WROTE_NOTHING, WROTE_ALL, WROTE_PART = 0, 1, 2
# session states
_HANDSHAKE, _RESPONSE, _CONNECTED, _CLOSING, _CLOSED = range(5)

_cached_text: str | None = None
_cached_frame = b""


def _frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


def _text_frame(text: str) -> bytes:
    """A final text frame; the last one is kept (a broadcast sends one text to every socket)."""
    global _cached_text, _cached_frame
    if text is not _cached_text:
        _cached_frame = _frame(0x1, text.encode("utf-8"))
        _cached_text = text
    return _cached_frame


def _send_nowait_of(send: Any) -> Callable[[str], int] | None:
    """The :data:`SEND_NOWAIT_EXTENSION`: the ``send_nowait`` of the session whose ``send``
    this is (nothing is kept per socket for the extension: the scope's dict is shared)."""
    session = getattr(send, "__self__", None)
    return session.send_nowait if isinstance(session, WebSocket) else None


_EXTENSIONS = {"websocket.http.response": {},
               SEND_NOWAIT_EXTENSION: {"send_nowait_of": _send_nowait_of}}


def handshake_problem(request: Request) -> bytes | None:
    """The HTTP response refusing an invalid opening handshake, or ``None``."""
    if request.method != "GET" or request.version != "1.1":
        return error_response(400, "A WebSocket handshake is an HTTP/1.1 GET")
    key = version = None
    for name, value in request.headers:
        if name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value
    if version != b"13":
        return (b"HTTP/1.1 426 Upgrade Required\r\nsec-websocket-version: 13\r\n"
                b"content-length: 0\r\nconnection: close\r\n\r\n")
    try:
        if key is None or len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        return error_response(400, "Invalid Sec-WebSocket-Key")
    return None


class WebSocket:
    """The ASGI ``websocket`` session of one upgraded connection."""

    __slots__ = ("accept_waiter", "close_code", "close_reason", "connect_sent", "frames",
                 "key", "parts", "parts_size", "proto", "response_chunked", "response_start",
                 "settings", "state", "tail", "transport")

    def __init__(self, settings: Settings, transport: Transport, key: bytes, tail: bytes
                 ) -> None:
        self.settings = settings
        self.transport = transport
        self.key = key
        self.tail = tail
        self.state = _HANDSHAKE
        self.connect_sent = False
        self.proto: FrameProtocol | None = None  # once accepted
        self.frames: Any = None  # the frames parsed from the last read, while some are left
        self.parts: list[Any] | None = None  # the fragments of a message being received
        self.parts_size = 0
        self.close_code = 1006
        self.close_reason = ""
        self.response_chunked = False
        self.response_start: Message | None = None
        self.accept_waiter: trio.CancelScope | None = None

    # --- around the app (which fast/server.py runs itself) ----------------------------------------

    async def app_failed(self, exc: Exception, scope: dict[str, Any]) -> None:
        """The app raised: a 500 before the accept, a 1011 close after it."""
        if isinstance(exc, ClientDisconnected) or self.transport.closed:
            log.debug("websocket peer %s went away", scope.get("client"))
            self.state = _CLOSED
            return
        log.exception("ASGI app failed on websocket %s", scope.get("path"))
        if self.state == _HANDSHAKE:
            self.state = _CLOSED
            await self._send_quietly(error_response(500))
        elif self.state == _CONNECTED:
            await self._close(1011, "Internal error")

    async def finish(self, scope: dict[str, Any]) -> None:
        """After the app: refuse a handshake it neither accepted nor refused (500), close a
        session it left open (1000), and give the peer ``ws_close_timeout_s`` to answer our
        close (the caller then closes the socket)."""
        if self.state == _HANDSHAKE:
            log.error("ASGI app returned without accepting or refusing websocket %s",
                      scope.get("path"))
            await self._send_quietly(error_response(500))
        elif self.state == _CONNECTED:
            await self._close(1000, "")
        with trio.move_on_after(self.settings.ws_close_timeout_s):
            while self.state == _CLOSING:
                try:
                    frame = self._pull()
                except ParseFailed:
                    return
                if frame is None:
                    await self._wait_readable()
                elif frame.opcode is Opcode.CLOSE:
                    self.state = _CLOSED  # the peer answered
                # anything else after our close is dropped

    # --- receive --------------------------------------------------------------------------

    async def receive(self) -> Message:
        state = self.state
        if state == _HANDSHAKE and not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        if state == _HANDSHAKE or state == _RESPONSE:
            await self._wait_for_accept()
        waited = False
        while self.state == _CONNECTED:
            try:
                frame = self._pull()
            except ParseFailed as exc:  # the peer broke the protocol
                await self._close(int(exc.code), "")
                break
            if frame is None:  # (waited for here, not in a helper: an idle socket is parked
                waited = True  # under as few coroutine frames as possible)
                await self._wait_readable()
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                message = await self._message(frame)
                if message is not None:
                    if not waited:
                        await trio.lowlevel.checkpoint()
                    return message
            elif opcode is Opcode.PING:
                assert self.proto is not None
                await self._send_quietly(bytes(self.proto.pong(frame.payload)))
            elif opcode is Opcode.CLOSE:
                await self._closed_by_peer(*frame.payload)
        if not waited:
            await trio.lowlevel.checkpoint()
        return {"type": "websocket.disconnect", "code": self.close_code,
                "reason": self.close_reason}

    def _pull(self) -> Frame | None:
        """The next frame from what was read, reading what the socket has if needed;
        ``None``: wait for the socket. At the end of the stream the session is closed."""
        while True:
            if self.frames is not None:
                frame = next(self.frames, None)
                if frame is not None:
                    return frame
                self.frames = None
            data = self.transport.recv_nowait()
            if data is None:
                return None
            if not data:
                self.state = _CLOSED
                return None
            assert self.proto is not None
            self.proto.receive_bytes(data)
            self.frames = self.proto.received_frames()

    async def _wait_readable(self) -> None:
        if self.state == _CLOSED:  # (the stream ended)
            await trio.lowlevel.checkpoint()
            return
        try:
            await trio.lowlevel.wait_readable(self.transport.sock)
        except trio.ClosedResourceError:
            self.state = _CLOSED

    async def _wait_for_accept(self) -> None:
        """The app reads before it has accepted (Quart's reader task does): wait for the
        accept, noticing a client that goes away meanwhile. What the client sends before the
        accept is kept (up to the message size limit) for the session."""
        transport = self.transport
        with trio.CancelScope() as self.accept_waiter:
            while self.state == _HANDSHAKE or self.state == _RESPONSE:
                if len(self.tail) > self.settings.ws_max_message_bytes:
                    await trio.sleep_forever()  # until the app accepts, refuses or gives up
                data = await transport.recv()
                if not data:
                    self.state = _CLOSED
                elif self.state == _HANDSHAKE or self.state == _RESPONSE:
                    self.tail += data
        self.accept_waiter = None

    async def _message(self, frame: Frame) -> Message | None:
        if self.state != _CONNECTED:
            return None  # the rest of a message after our close: dropped
        data = frame.payload
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
        finished = frame.message_finished
        if self.parts is None and finished:
            if size > self.settings.ws_max_message_bytes:
                await self._too_big()
                return None
            return _received(data)
        if self.parts is None:
            self.parts, self.parts_size = [], 0
        self.parts.append(data)
        self.parts_size += size
        if self.parts_size > self.settings.ws_max_message_bytes:
            await self._too_big()
            return None
        if not finished:
            return None
        parts, self.parts = self.parts, None
        joined = "".join(parts) if isinstance(data, str) else b"".join(parts)
        return _received(joined)

    async def _too_big(self) -> None:
        """Past the size limit: the session ends for the app; close with 1009."""
        self.parts = None
        await self._close(1009, "Message too big")

    async def _closed_by_peer(self, code: int, reason: str) -> None:
        if self.state == _CONNECTED:  # the peer starts the closing handshake: answer it
            self.close_code, self.close_reason = int(code), reason or ""
            assert self.proto is not None
            await self._send_quietly(bytes(self.proto.close(code, reason or None)))
        self.state = _CLOSED  # (or the peer answered ours)

    # --- send -----------------------------------------------------------------------------

    def send_nowait(self, text: str) -> int:
        """The :data:`SEND_NOWAIT_EXTENSION`: write ``text``'s frame if the socket takes it
        now; :data:`WROTE_NOTHING`, :data:`WROTE_ALL` or :data:`WROTE_PART`."""
        if self.state != _CONNECTED:
            return WROTE_NOTHING
        frame = _text_frame(text)
        sent = self.transport.send_nowait(frame)
        if sent == len(frame):
            return WROTE_ALL
        return WROTE_PART if sent else WROTE_NOTHING

    async def send(self, message: Message) -> None:
        kind = message["type"]
        state = self.state
        if kind == "websocket.send":
            if state != _CONNECTED:
                if state == _HANDSHAKE or state == _RESPONSE:
                    raise RuntimeError("websocket.send before websocket.accept")
                raise ClientDisconnected("the websocket is closed")
            data = message.get("bytes")
            if data is None:
                await self.transport.send_all(_text_frame(message["text"]))
            else:
                await self.transport.send_all(_frame(0x2, bytes(data)))
        elif kind == FLUSH:  # what send_nowait owes (a close or a pong sent it already)
            if state != _CONNECTED and state != _CLOSING:
                raise ClientDisconnected("the websocket is closed")
            await self.transport.send_all(b"")
        elif kind == "websocket.accept":
            if state != _HANDSHAKE:
                raise RuntimeError("websocket.accept in the wrong state")
            await self._accept(message)
        elif kind == "websocket.close":
            if state == _HANDSHAKE:  # refused before accepting: HTTP 403 (ASGI)
                self._handshake_done(_CLOSED)
                await self.transport.send_all(
                    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            elif state == _CONNECTED:
                await self._close(message.get("code") or 1000, message.get("reason") or "")
        elif kind == "websocket.http.response.start":
            if state != _HANDSHAKE:
                raise RuntimeError("websocket.http.response.start in the wrong state")
            self.state = _RESPONSE
            self.response_start = message
        elif kind == "websocket.http.response.body":
            await self._response_body(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in a websocket session")

    async def _accept(self, message: Message) -> None:
        accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
        extra = b"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: %s\r\n" \
            % accept
        subprotocol = message.get("subprotocol")
        if subprotocol:
            extra += b"sec-websocket-protocol: %s\r\n" % subprotocol.encode("ascii")
        head = response_head(101, message.get("headers") or (), extra)
        self.proto = FrameProtocol(client=False, extensions=[])
        if self.tail:
            self.proto.receive_bytes(self.tail)
            self.frames = self.proto.received_frames()
        self.tail = b""
        self.key = b""
        self._handshake_done(_CONNECTED)
        await self.transport.send_all(head)

    def _handshake_done(self, state: int) -> None:
        self.state = state
        if self.accept_waiter is not None:  # a receive waiting for the accept: it may go on
            self.accept_waiter.cancel()

    async def _response_body(self, message: Message) -> None:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.state == _RESPONSE and self.response_start is not None:
            start, self.response_start = self.response_start, None
            if more:
                self.response_chunked = True
                framing = b"transfer-encoding: chunked\r\nconnection: close\r\n"
            else:
                framing = b"content-length: %d\r\nconnection: close\r\n" % len(body)
            data = response_head(start["status"], start.get("headers") or (), framing)
        elif self.state == _RESPONSE:
            data = b""
        else:
            raise RuntimeError("websocket.http.response.body in the wrong state")
        if self.response_chunked:
            if body:
                data += b"%x\r\n%s\r\n" % (len(body), body)
            if not more:
                data += b"0\r\n\r\n"
        else:
            data += body
        if not more:
            self._handshake_done(_CLOSED)
        if data:
            await self.transport.send_all(data)

    async def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake (the peer's answer is awaited after the app)."""
        assert self.proto is not None
        self.close_code, self.close_reason = code, reason
        self.state = _CLOSING
        await self._send_quietly(bytes(self.proto.close(code, reason or None)))

    async def _send_quietly(self, data: bytes) -> None:
        try:
            await self.transport.send_all(data)
        except ClientDisconnected:
            self.state = _CLOSED


def _received(data: str | bytes) -> Message:
    if isinstance(data, str):
        return {"type": "websocket.receive", "text": data, "bytes": None}
    return {"type": "websocket.receive", "bytes": bytes(data), "text": None}


def prepare_websocket(settings: Settings, transport: Transport, request: Request,
                      tail: bytes, client: tuple[str, int] | None,
                      server: tuple[str, int] | None) -> tuple[WebSocket, dict[str, Any]] | bytes:
    """The session and ASGI scope of the upgrade ``request``, or the HTTP response refusing
    an invalid handshake."""
    problem = handshake_problem(request)
    if problem is not None:
        return problem
    try:
        path, raw_path, query = split_target(request)
    except Reject as reject:
        return error_response(reject.status, reject.message)
    subprotocols: list[str] = []
    key = b""
    for name, value in request.headers:
        if name == b"sec-websocket-protocol":
            subprotocols += (p.strip() for p in value.decode("latin-1").split(",") if p.strip())
        elif name == b"sec-websocket-key":
            key = value
    scope = {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": request.headers,
        "client": client,
        "server": server,
        "subprotocols": subprotocols,
        "extensions": _EXTENSIONS,
    }
    return WebSocket(settings, transport, key, tail), scope
