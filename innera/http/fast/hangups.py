"""Ending the request of a client that hung up, with one task for the whole server.

While the app runs a request, the connection's task is inside the app, not reading its
socket, so nothing would notice the client leaving: a search, an export listing or a slow
query would run to its end (or its deadline) for nobody. Quart-trio and Hypercorn notice it
with a second task per request waiting for ``http.disconnect``. Here each connection
registers its socket, for as long as the app runs one of its requests, with one epoll
instance (``EPOLLRDHUP``: the peer closed or reset the connection) that one task of the
server waits on; when it fires, that connection's :meth:`HTTPConnection.client_hung_up
<innera.http.fast.connection.HTTPConnection.client_hung_up>` cancels the connection's scope,
which ends the request's work (PostgreSQL queries are cancelled by the driver) and closes the
connection. The cost per request is two ``epoll_ctl`` calls.

The http scope says so with the extension :data:`EXTENSION`, so an app can leave a body-less
request without a watcher of its own (``innera/api/framework.py``). Without epoll (not Linux)
there is no watcher and no extension.
"""

from __future__ import annotations

import logging
import select
from typing import Protocol

import trio

log = logging.getLogger("innera.http")

#: the http scope's extension: the server cancels the request when the client hangs up
EXTENSION = "innera.cancelled_on_hangup"
_HANGUP = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0) \
    | getattr(select, "EPOLLERR", 0)


class Watched(Protocol):
    def client_hung_up(self) -> None: ...


class Hangups:
    """The connections whose request is running, watched for the peer hanging up."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._watched: dict[int, Watched] = {}

    @property
    def enabled(self) -> bool:
        return self._epoll is not None

    def watch(self, fileno: int, conn: Watched) -> bool:
        """Watch ``fileno`` until :meth:`unwatch`; False if it cannot be (not watched)."""
        if self._epoll is None:
            return False
        try:
            self._epoll.register(fileno, _HANGUP)
        except OSError:  # closed meanwhile
            return False
        self._watched[fileno] = conn
        return True

    def unwatch(self, fileno: int) -> None:
        if self._watched.pop(fileno, None) is not None:
            try:
                self._epoll.unregister(fileno)  # type: ignore[union-attr]
            except OSError:  # already closed: the kernel dropped it
                pass

    async def run(self) -> None:
        """Until cancelled: tell each watched connection whose peer hung up."""
        if self._epoll is None:
            return
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fileno, _ in self._epoll.poll(0):
                    conn = self._watched.get(fileno)
                    self.unwatch(fileno)
                    if conn is not None:
                        conn.client_hung_up()
        finally:
            epoll, self._epoll = self._epoll, None
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()
            self._watched.clear()
