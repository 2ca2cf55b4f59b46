"""Listening, accepting and the drain, shared by both HTTP server implementations.

:func:`serve_listeners` opens the listeners, accepts until ``stop_accepting`` is set and
hands every accepted socket to the implementation's ``accepted`` callback, which starts the
connection's task in the ``connections`` nursery it is given. When ``stop_accepting`` is
set, the listeners close at once (new connections are refused) and the function returns
when the last connection task has ended: the drain, bounded by the caller's deadline.
With ``max_connections``, a connection accepted while that many are open is closed at once
(the metrics port's bound; the public port has none of its own).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("innera.http")

#: ``accepted(sock, address, connections)``: start the connection's task in ``connections``
Accepted = Callable[[trio.socket.SocketType, Any, trio.Nursery], None]

# accept() errors that mean "out of resources right now": wait and accept again.
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept_loop(listener: trio.SocketListener, accepted: Accepted,
                       connections: trio.Nursery) -> None:
    listening = listener.socket
    while True:
        try:
            sock, address = await listening.accept()
        except OSError as exc:
            if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                raise
            log.error("accept() failed: %s; pausing accepts for 100 ms", exc)
            await trio.sleep(0.1)
            continue
        accepted(sock, address, connections)


async def serve_listeners(
    host: str,
    port: int,
    stop_accepting: trio.Event,
    accepted: Accepted,
    *,
    max_connections: int | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port``, report the bound addresses, serve until ``stop_accepting``
    is set, then drain (see the module doc)."""
    if max_connections is not None:
        accepted = _capped(accepted, max_connections)
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    addresses = [listener.socket.getsockname()[:2] for listener in listeners]
    async with trio.open_nursery() as connections:
        try:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(_accept_loop, listener, accepted, connections)
                task_status.started(addresses)
                await stop_accepting.wait()
                acceptors.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()
        if connections.child_tasks:
            log.info("draining %d open connection(s)", len(connections.child_tasks))


def _capped(accepted: Accepted, max_connections: int) -> Accepted:
    """``accepted``, closing instead a connection beyond ``max_connections`` open ones (one
    warning each time the cap is reached)."""
    at_cap = False

    def accept_below_cap(sock: trio.socket.SocketType, address: Any,
                         connections: trio.Nursery) -> None:
        nonlocal at_cap
        if len(connections.child_tasks) >= max_connections:
            if not at_cap:
                log.warning("%d connections open: closing new ones until one ends",
                            max_connections)
            at_cap = True
            sock.close()
            return
        at_cap = False
        accepted(sock, address, connections)

    return accept_below_cap
