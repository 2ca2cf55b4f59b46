"""Listening, accepting and the drain, shared by both HTTP server implementations.

:func:`serve_listeners` opens the listeners, accepts until ``stop_accepting`` is set and
hands every accepted socket to the implementation's ``accepted`` callback, which starts the
connection's task in the ``connections`` nursery it is given. When ``stop_accepting`` is
set, the listeners close at once (new connections are refused), then ``draining`` is set
(the implementation's responses say ``Connection: close`` from then on), and the function
returns when the last connection task has ended: the drain, bounded by the caller's
deadline.
With ``max_connections``, a connection accepted while that many are open is closed at once
(the metrics port's bound; the public port has none of its own).

Two things make that close cut nothing (issue 17: 1 request in about 6,000 reset by a
SIGTERM under keep-alive load; ``bench/shutdown_under_load.py`` measures it):

- The kernel completes the TCP handshake of a new connection before ``accept()`` takes it:
  a client whose connection waits in the listen backlog has connected and sent its request,
  and closing the listening socket resets it. So the listeners close only after every
  connection the kernel holds has been accepted (and will be served), with no checkpoint
  between the last ``accept()`` and the ``close()``.
- A response saying ``Connection: close`` makes its client open a new connection at once;
  had it said so before the listeners closed, that connection could land in the backlog in
  the moment before the close. So ``draining`` (and every ``Connection: close`` of the
  drain) comes only after the listeners are closed: such a client is refused, cleanly, and
  goes elsewhere.

The listening sockets are driven as plain non-blocking sockets with :mod:`trio.lowlevel`
waits, as the fast server drives its connections (``fast/transport.py``): Trio's socket API
has no ``accept()`` that returns at once when nothing is pending.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("innera.http")

#: ``accepted(sock, address, connections)``: start the connection's task in ``connections``
#: (``sock`` is a connected stdlib socket the callee owns)
Accepted = Callable[[socket.socket, Any, trio.Nursery], None]

# accept() errors that mean "out of resources right now": wait and accept again.
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# accept() errors that concern only the connection being accepted (gone before it was taken)
_CONNECTION_GONE_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


async def _accept_loop(listening: socket.socket, accepted: Accepted,
                       connections: trio.Nursery) -> None:
    while True:
        try:
            sock, address = listening.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listening)
            continue
        except OSError as exc:
            if exc.errno in _CONNECTION_GONE_ERRORS:
                continue
            if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                raise
            log.error("accept() failed: %s; pausing accepts for 100 ms", exc)
            await trio.sleep(0.1)
            continue
        accepted(sock, address, connections)
        await trio.lowlevel.checkpoint()


def _accept_backlog(listening: socket.socket, accepted: Accepted,
                    connections: trio.Nursery) -> int:
    """Accept, without waiting, every connection the kernel has completed; how many."""
    taken = 0
    while True:
        try:
            sock, address = listening.accept()
        except BlockingIOError:
            return taken
        except OSError as exc:
            if exc.errno in _CONNECTION_GONE_ERRORS:
                continue
            log.error("accept() failed while closing the listener: %s", exc)
            return taken
        accepted(sock, address, connections)
        taken += 1


def _close(listening: socket.socket) -> None:
    trio.lowlevel.notify_closing(listening)
    listening.close()


async def serve_listeners(
    host: str,
    port: int,
    stop_accepting: trio.Event,
    accepted: Accepted,
    draining: trio.Event,
    *,
    max_connections: int | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port``, report the bound addresses, serve until ``stop_accepting``
    is set, then close the listeners, set ``draining`` and drain (see the module doc)."""
    if max_connections is not None:
        accepted = _capped(accepted, max_connections)
    sockets = []
    for listener in await trio.open_tcp_listeners(port, host=host or None):
        listening = socket.socket(fileno=listener.socket.detach())
        listening.setblocking(False)
        sockets.append(listening)
    addresses = [listening.getsockname()[:2] for listening in sockets]
    async with trio.open_nursery() as connections:
        try:
            async with trio.open_nursery() as acceptors:
                for listening in sockets:
                    acceptors.start_soon(_accept_loop, listening, accepted, connections)
                task_status.started(addresses)
                await stop_accepting.wait()
                acceptors.cancel_scope.cancel()
            # no checkpoint from here to the last close: what the kernel accepted is served
            late = 0
            for listening in sockets:
                late += _accept_backlog(listening, accepted, connections)
                _close(listening)
        finally:
            for listening in sockets:
                if listening.fileno() != -1:
                    _close(listening)
        draining.set()
        if late:
            log.info("accepted %d connection(s) from the backlog while closing", late)
        if connections.child_tasks:
            log.info("draining %d open connection(s)", len(connections.child_tasks))


def _capped(accepted: Accepted, max_connections: int) -> Accepted:
    """``accepted``, closing instead a connection beyond ``max_connections`` open ones (one
    warning each time the cap is reached)."""
    at_cap = False

    def accept_below_cap(sock: socket.socket, address: Any,
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
