"""The Hypercorn implementation of :func:`innera.http.serve_http`.

``hypercorn.trio.serve`` cannot drain the way a rolling restart needs: on its shutdown
trigger it closes idle keep-alive connections at once, so a request a load balancer sends
on such a connection at that moment is reset. innera therefore runs its own accept loop
(:mod:`innera.http.listeners`) and uses Hypercorn only per connection (``TCPServer``): when
draining starts the listeners close, but open connections live on until their next response
(sent with ``Connection: close`` once the listeners are closed) or until Hypercorn's
keep-alive timeout closes them. During SHUTDOWN_DRAIN_DELAY_S nothing of this has started:
the accept loop is innera's, so it simply goes on. That
per-connection server, and the two unbounded waits of Hypercorn's taken out of it (a send
gets :data:`SEND_TIMEOUT_S`), are :mod:`innera.compat.hypercorn`: the one place relying on
Hypercorn's internals.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config

from innera.compat.hypercorn import connection_server
from innera.http.listeners import serve_listeners

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[..., Any], Callable[..., Any]], Awaitable[None]
]

KEEP_ALIVE_TIMEOUT_S = 5.0
FINAL_SEND_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0


def _hypercorn_config() -> Config:
    config = Config()
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    config.read_timeout = 60  # a client that sends nothing for a minute is dropped
    config.include_server_header = False
    config.accesslog = None  # innera logs one completion line per request itself
    config.errorlog = logging.getLogger("hypercorn.error")
    config.websocket_max_message_size = 64 * 1024
    return config


class _ServerMiddleware:
    """ASGI middleware for two server-side duties:

    - once draining, every response says ``Connection: close``;
    - the final ``http.response.body`` send is shielded (bounded). Quart-trio cancels its
      request nursery when it receives ``http.disconnect``, and Hypercorn delivers that
      disconnect from *inside* the final send, while it is restarting the connection's
      keep-alive timer; the cancellation aborted that restart, so idle keep-alive connections
      never timed out (measured: still open after 8 s, against 5.0 s for a bare ASGI app).
    """

    def __init__(self, app: ASGIApp, draining: trio.Event) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def server_send(message: MutableMapping[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start" and self.draining.is_set():
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            elif kind == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True) as scope_:
                    scope_.deadline = trio.current_time() + FINAL_SEND_TIMEOUT_S
                    await send(message)
                return
            await send(message)

        await self.app(scope, receive, server_send)


async def serve_http(
    app: ASGIApp,
    host: str,
    port: int,
    stop_accepting: trio.Event,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``stop_accepting`` is set, then drain (see the module doc)."""
    draining = trio.Event()  # set once the listeners are closed (innera/http/listeners.py)
    handle = connection_server(_ServerMiddleware(app, draining), _hypercorn_config(),
                               SEND_TIMEOUT_S)

    def accepted(sock: socket.socket, _: Any, connections: trio.Nursery) -> None:
        try:
            # non-blocking, and TCP_NODELAY as SocketListener sets it
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        except OSError:  # already gone
            sock.close()
            return
        connections.start_soon(handle, stream)

    await serve_listeners(host, port, stop_accepting, accepted, draining,
                          task_status=task_status)
