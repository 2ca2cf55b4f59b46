"""innera's Trio-native HTTP/1.1 + WebSocket server: the ``fast`` implementation of
:func:`innera.http.serve_http` (``INNERA_HTTP_SERVER=fast``).

Layout (the package :mod:`innera.http.fast`): this module serves each accepted connection
(listening, accepting and the drain are :mod:`innera.http.listeners`, shared with Hypercorn);
:mod:`~innera.http.fast.connection` serves the HTTP/1.1 requests of a connection (httptools),
:mod:`~innera.http.fast.request` is one parsed request, :mod:`~innera.http.fast.cycle` the
ASGI cycle of one request (receive, send, response framing),
:mod:`~innera.http.fast.responses` the response heads the server writes itself,
:mod:`~innera.http.fast.websocket` the WebSocket sessions (wsproto),
:mod:`~innera.http.fast.transport` drives the sockets, :mod:`~innera.http.fast.asgi` holds
the ASGI types.

One task per connection, nothing per request beyond two small objects and the ASGI scope
(see :mod:`~innera.http.fast.connection`'s doc). What it does, and the limits it enforces:

- ASGI 3 ``http`` and ``websocket`` scopes (spec 2.4), with the ``websocket.http.response``
  extension; no ``lifespan`` (innera starts its services itself, in innera/process.py), no
  HTTP/2, no TLS (TLS ends at the load balancer; use ``hypercorn`` for either);
- keep-alive (:data:`KEEP_ALIVE_TIMEOUT_S` idle; then the connection is half-closed and
  what the client still sends is read and dropped for :data:`IDLE_LINGER_S`: a request that
  crossed the server's FIN on the wire meets a closed connection, which clients retry on a
  new one, not a reset), pipelining (answered in order), chunked request and response
  bodies (a response without Content-Length whose first body message is also its last gets
  a Content-Length; otherwise chunked, or close-delimited for HTTP/1.0 clients, whose
  connections close after one response as with h11), ``Expect: 100-continue`` (answered
  when the app first asks for the body), HEAD;
- refused with an error response and closed: a head over :data:`MAX_HEAD_BYTES` or with
  more than :data:`MAX_HEADERS` fields (431), every request-smuggling shape (Content-Length
  with Transfer-Encoding, a repeated or invalid Content-Length, a Transfer-Encoding that is
  not exactly ``chunked``, a bad chunk: 400; ``gzip, chunked``: 501), HTTP/1.1 without
  exactly one Host (400), other versions (505);
- timeouts: the whole head within :data:`HEADER_TIMEOUT_S` of its first byte (slowloris),
  :data:`BODY_TIMEOUT_S` without body data (the app's receive gets ``http.disconnect``),
  a write the peer does not read within :data:`SEND_TIMEOUT_S` closes the connection;
- flow control: the socket is read only when a request head or body is wanted; at most
  :data:`MAX_BODY_BUFFER` bytes of body the app has not taken are held, at most
  :data:`MAX_READ_AHEAD_REQUESTS` pipelined requests are read ahead;
- WebSocket: messages over :data:`WS_MAX_MESSAGE_BYTES` close with 1009, fragments are
  reassembled, pings answered, the closing handshake both ways (the peer gets
  :data:`WS_CLOSE_TIMEOUT_S` to answer ours);
- a client that hangs up while the app runs its request has that request cancelled
  (:mod:`innera.http.fast.hangups`: one watcher task for the server, not one per request;
  the scope's ``innera.cancelled_on_hangup`` extension says so);
- the scope's ``client`` is the socket peer; X-Forwarded-* are left to innera (TRUST_PROXY);
  no Server header, no Date header; an app exception before the response starts is a 500
  with a JSON error body, after it the connection is closed. The server logs connection
  problems only (innera logs each request itself).

Draining (``stop_accepting`` set): the listeners close at once (what the kernel had
completed is accepted first; new connections are refused), responses from then on say
``Connection: close``, a request that still arrives on an open keep-alive connection is
answered (with ``Connection: close``), idle connections close at their keep-alive timeout
(or when the client closes them), WebSockets are left to the app (innera's hub closes them
with 4000), and :func:`serve_http` returns when the last connection has ended.

The module constants are read when :func:`serve_http` starts (tests make them small).
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from typing import Any

import trio

from innera.http.fast.asgi import ASGIApp
from innera.http.fast.connection import HTTPConnection
from innera.http.fast.hangups import Hangups
from innera.http.fast.transport import ClientDisconnected, Settings, Transport
from innera.http.fast.websocket import prepare_websocket
from innera.http.listeners import serve_listeners

log = logging.getLogger("innera.http")

KEEP_ALIVE_TIMEOUT_S = 5.0
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 10.0
LINGER_TIMEOUT_S = 2.0  # after an error: how long the client's remaining input is discarded
IDLE_LINGER_S = 0.5  # after the keep-alive timeout: how long a request crossing our FIN is
#                      read and dropped (it arrives within a round trip of the FIN)
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_BODY_BUFFER = 256 * 1024
MAX_READ_AHEAD_REQUESTS = 16
DRAIN_LIMIT_BYTES = 1024 * 1024  # a body left unread by a finished response: read and dropped
WS_MAX_MESSAGE_BYTES = 64 * 1024
WS_CLOSE_TIMEOUT_S = 2.0


def current_settings() -> Settings:
    """The module constants, as the connections of a server starting now use them."""
    return Settings(
        keep_alive_timeout_s=KEEP_ALIVE_TIMEOUT_S,
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        send_timeout_s=SEND_TIMEOUT_S,
        linger_timeout_s=LINGER_TIMEOUT_S,
        idle_linger_s=IDLE_LINGER_S,
        max_head_bytes=MAX_HEAD_BYTES,
        max_headers=MAX_HEADERS,
        max_body_buffer=MAX_BODY_BUFFER,
        max_read_ahead_requests=MAX_READ_AHEAD_REQUESTS,
        drain_limit_bytes=DRAIN_LIMIT_BYTES,
        ws_max_message_bytes=WS_MAX_MESSAGE_BYTES,
        ws_close_timeout_s=WS_CLOSE_TIMEOUT_S,
    )


async def _serve_connection(app: ASGIApp, settings: Settings, draining: trio.Event,
                            hangups: Hangups, sock: socket.socket,
                            client: tuple[str, int] | None) -> None:
    transport = Transport(sock, settings.send_timeout_s)
    try:
        try:
            server = sock.getsockname()[:2]
        except OSError:  # already reset by the peer
            return
        conn = HTTPConnection(app, settings, draining, transport, client, server, hangups)
        request = await conn.run()
        if request is None:
            if conn.idle_timed_out:
                await transport.close_lingering(settings.idle_linger_s)
            return
        # a WebSocket upgrade: the HTTP state is not kept for the socket's lifetime
        prepared = prepare_websocket(settings, transport, request, conn.upgrade_tail, client,
                                     server)
        del conn, request
        if isinstance(prepared, bytes):  # an invalid handshake
            await transport.send_all(prepared)
            await transport.close_lingering(settings.linger_timeout_s)
            return
        session, scope = prepared
        del prepared
        # the app runs here rather than in a method of the session: one coroutine frame
        # less on every idle socket
        try:
            await app(scope, session.receive, session.send)
        except Exception as exc:
            await session.app_failed(exc, scope)
        await session.finish(scope)
    except ClientDisconnected:
        pass
    except Exception:
        log.exception("connection from %s failed", client)
    finally:
        transport.close()


def _accepted(app: ASGIApp, settings: Settings, draining: trio.Event, hangups: Hangups,
              sock: socket.socket, address: Any, connections: trio.Nursery) -> None:
    # the connection is driven through the plain socket (see fast/transport.py)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # already gone
        sock.close()
        return
    client = (address if len(address) == 2 else address[:2]) if isinstance(address, tuple) \
        else None
    connections.start_soon(_serve_connection, app, settings, draining, hangups, sock, client)


async def serve_http(
    app: ASGIApp,
    host: str,
    port: int,
    stop_accepting: trio.Event,
    *,
    max_connections: int | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``stop_accepting`` is set, then drain (see the module doc).
    ``max_connections``: connections beyond it are closed at once (the metrics port)."""
    hangups = Hangups()
    draining = trio.Event()  # set once the listeners are closed (innera/http/listeners.py)
    async with trio.open_nursery() as watcher:
        watcher.start_soon(hangups.run)
        accepted = partial(_accepted, app, current_settings(), draining, hangups)
        await serve_listeners(host, port, stop_accepting, accepted, draining,
                              max_connections=max_connections, task_status=task_status)
        watcher.cancel_scope.cancel()
