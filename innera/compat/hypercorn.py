"""Hypercorn's internals innera relies on: its per-connection server, run without
``hypercorn.trio.serve``, minus two unbounded waits. Imported by :mod:`innera.http.hypercorn`.

``hypercorn.trio.serve`` cannot drain the way a rolling restart needs (see
:mod:`innera.http.hypercorn`), so innera runs its own accept loop and hands each accepted
stream to Hypercorn's ``TCPServer``, which is not public API: this module builds it (with
``WorkerContext``, ``ConnectionState`` and ``wrap_app``) and overrides two of its methods,
``_read_data`` and ``protocol_send``, reaching into ``idle_task``, ``send_lock``, ``stream``
and ``protocol.handle`` with Hypercorn's ``RawData`` and ``Closed`` events.
:data:`SUPPORTED` is the range this was written for; ``tests/compat/test_hypercorn.py``
checks the installed version and every name used here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from innera.compat import Supported

__all__ = ["SUPPORTED", "connection_server"]

SUPPORTED = Supported("hypercorn", "0.18", "0.19", "innera/compat/hypercorn.py")

log = logging.getLogger("innera.http")


class _TCPServer(TCPServer):
    """Hypercorn's per-connection server, minus two unbounded waits:

    - when the peer closes, Hypercorn still waited for the connection's keep-alive timer (up
      to 5 s) before the connection's task ended, which held every drain for 5 s after the
      last client had left;
    - its sends are shielded with no deadline, so a peer that stops reading (a stuck
      WebSocket client) held the connection, its handler and the shutdown drain for as long
      as it kept the socket open. A send now gets ``send_timeout_s``; past it the connection
      is closed (a partly sent stream cannot be used again anyway).
    """

    def __init__(self, app: Any, config: Config, context: WorkerContext,
                 state: ConnectionState, stream: trio.SocketStream,
                 send_timeout_s: float) -> None:
        super().__init__(app, config, context, state, stream)
        self.send_timeout_s = send_timeout_s

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.send_timeout_s
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
            if scope.cancelled_caught:
                log.info("peer read nothing for %gs: closing its connection",
                         self.send_timeout_s)
                with trio.CancelScope(shield=True):
                    await self.stream.aclose()
                await self.protocol.handle(Closed())


def connection_server(app: Any, config: Config, send_timeout_s: float
                      ) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """The coroutine function that serves one accepted stream with Hypercorn (HTTP/1.1,
    HTTP/2 and WebSocket, as ``config`` says) until the connection ends; a send the peer does
    not take within ``send_timeout_s`` closes the connection. Checks the installed Hypercorn
    against :data:`SUPPORTED` first (:class:`~innera.compat.UnsupportedVersion` outside it)."""
    SUPPORTED.check()
    context = WorkerContext(None)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")

    async def serve(stream: trio.SocketStream) -> None:
        await _TCPServer(wrapped, config, context, ConnectionState({}), stream,
                         send_timeout_s).run()

    return serve
