"""The WebSocket hub: every open socket of this process, by user.

A socket's handler runs inside :meth:`Hub.connection`, whose cancel scope the hub may cancel
to close it with a code (4000 "Server restarting" during the graceful shutdown). The handler
then sends the close frame itself, from its own task, so no task ever writes to another
task's socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from innera.observability.metrics import Metrics

SERVER_RESTARTING = (4000, "Server restarting")


@dataclass(eq=False)
class Socket:
    user_id: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    close_code: int | None = None
    close_reason: str = ""
    closed: trio.Event = field(default_factory=trio.Event)

    def close(self, code: int, reason: str) -> None:
        """Ask the handler to close with ``code`` (it stops receiving and sends the frame)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.scope.cancel()


class Hub:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._by_user: dict[str, set[Socket]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_user.values())

    @asynccontextmanager
    async def connection(self, user_id: str) -> AsyncIterator[Socket]:
        sock = Socket(user_id)
        self._by_user.setdefault(user_id, set()).add(sock)
        self.metrics.ws_connections.inc()
        try:
            yield sock
        finally:
            sockets = self._by_user.get(user_id, set())
            sockets.discard(sock)
            if not sockets:
                self._by_user.pop(user_id, None)
            self.metrics.ws_connections.dec()
            sock.closed.set()

    async def close_all(self, code: int, reason: str, *, timeout_s: float = 5.0) -> int:
        """Close every socket with ``code``; wait (bounded) until their handlers are done."""
        sockets = [s for group in self._by_user.values() for s in group]
        for sock in sockets:
            sock.close(code, reason)
        with trio.move_on_after(timeout_s):
            for sock in sockets:
                await sock.closed.wait()
        return len(sockets)
