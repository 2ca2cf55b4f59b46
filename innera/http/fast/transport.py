"""The socket layer of innera's fast HTTP server (:mod:`innera.http.fast`): one connected
TCP socket, driven directly with non-blocking calls and :mod:`trio.lowlevel` waits, and the
settings every connection of a server shares.

Why not ``trio.SocketStream``: every stream call is a scheduler round trip, and a send has to
be shielded (a cancelled ``send_all`` leaves half a response or half a frame on the wire),
which is a cancel scope per write. Here a read or a write that the kernel can serve at once
is one system call and nothing else; only a read that has to wait parks the task
(``wait_readable``), and only a write the kernel cannot take at once enters a shielded scope,
bounded by ``send_timeout_s`` (a peer that stops reading is disconnected, never buffered for).
Writes from several tasks (an app's sender and its reader answering a ping) take turns.

:meth:`Transport.send_nowait` writes without waiting and from any task (a WebSocket broadcast
writes every socket from the pub/sub listener's task): it writes nothing while another write
is in progress, and when the kernel takes only part of the data the rest is *owed*: the next
:meth:`~Transport.send_all` (``send_all(b"")`` to write only it) sends it before anything
else, so no later write can split it.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import trio

log = logging.getLogger("innera.http")

READ_SIZE = 64 * 1024


class ClientDisconnected(OSError):
    """Raised by an ASGI ``send`` when the connection is gone (the ASGI spec asks for an
    ``OSError`` subclass), and by the transport when the peer reset the connection."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The limits and timeouts of one server (see :mod:`innera.http.fast.server` for each)."""

    keep_alive_timeout_s: float
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    linger_timeout_s: float
    idle_linger_s: float
    max_head_bytes: int
    max_headers: int
    max_body_buffer: int
    max_read_ahead_requests: int
    drain_limit_bytes: int
    ws_max_message_bytes: int
    ws_close_timeout_s: float


class Transport:
    """A connected non-blocking socket. Reads return ``b""`` at end of stream (a reset counts
    as one); writes raise :class:`ClientDisconnected` once the connection is gone."""

    __slots__ = ("_owed", "_turn", "_writing", "closed", "send_timeout_s", "sock")

    def __init__(self, sock: socket.socket, send_timeout_s: float) -> None:
        self.sock = sock
        self.send_timeout_s = send_timeout_s
        self.closed = False
        self._writing = False
        self._turn: trio.Event | None = None
        self._owed: memoryview | None = None  # the rest of a send_nowait the kernel cut

    # --- reading ------------------------------------------------------------------------

    def recv_nowait(self) -> bytes | None:
        """What the kernel has now (``b""``: end of stream), or ``None``: nothing yet."""
        if self.closed:
            return b""
        try:
            return self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:  # reset by the peer
            return b""

    async def wait_readable(self) -> None:
        """Park until the socket is readable (or closed by another task)."""
        if self.closed:
            return
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except trio.ClosedResourceError:
            pass

    async def recv(self) -> bytes:
        """The next bytes (``b""``: end of stream); a checkpoint."""
        data = self.recv_nowait()
        if data is not None:
            await trio.lowlevel.checkpoint()
            return data
        while data is None:
            await self.wait_readable()
            data = self.recv_nowait()
        return data

    # --- writing ------------------------------------------------------------------------

    async def send_all(self, data: bytes) -> None:
        """Write ``data``. A write the kernel takes at once costs one system call; otherwise
        the rest is written shielded from cancellation (a partial write would corrupt the
        stream) for at most ``send_timeout_s``, after which the connection is closed."""
        while self._writing:  # another task is in a blocked write: wait for our turn
            if self._turn is None:
                self._turn = trio.Event()
            await self._turn.wait()
        if self.closed:
            raise ClientDisconnected("the connection is closed")
        if self._owed is not None:  # the rest of a send_nowait goes first
            data, self._owed = b"".join((self._owed, data)), None
        if not data:
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.close()
            raise ClientDisconnected(str(exc)) from exc
        if sent < len(data):
            await self._send_rest(memoryview(data)[sent:])

    def send_nowait(self, data: bytes) -> int:
        """Write ``data`` if the kernel takes it now; how many bytes it took. 0: nothing was
        written (another write is in progress, the socket's buffer is full, or the connection
        is gone; a later :meth:`send_all` tells which). Fewer than ``len(data)``: the rest is
        owed, and the next :meth:`send_all` writes it first. Never waits."""
        if self._writing or self._owed is not None or self.closed:
            return 0
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:  # reset by the peer: the next send_all raises ClientDisconnected
            self.close()
            return 0
        if sent < len(data):
            self._owed = memoryview(data)[sent:]
        return sent

    async def _send_rest(self, view: memoryview) -> None:
        self._writing = True
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.send_timeout_s
                while view:
                    await trio.lowlevel.wait_writable(self.sock)
                    try:
                        sent = self.sock.send(view)
                    except BlockingIOError:
                        continue
                    view = view[sent:]
        except (OSError, trio.ClosedResourceError) as exc:
            self.close()
            raise ClientDisconnected(str(exc)) from exc
        finally:
            self._writing = False
            turn, self._turn = self._turn, None
            if turn is not None:
                turn.set()
        if scope.cancelled_caught:
            log.info("peer read nothing for %gs: closing its connection", self.send_timeout_s)
            self.close()
            raise ClientDisconnected("send timed out")

    # --- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close now; a task parked on this socket wakes up (reads see end of stream)."""
        if self.closed:
            return
        self.closed = True
        self._owed = None
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    async def close_lingering(self, timeout_s: float) -> None:
        """Close after the peer has read what was sent: half-close, then discard what the
        peer still sends until it closes too or ``timeout_s`` pass. Closing a socket with
        unread input sends a reset, which can destroy the response still in flight (an error
        answered before the request was read to its end)."""
        if self.closed:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        with trio.move_on_after(timeout_s):
            while True:
                data = self.recv_nowait()
                if data == b"":
                    break
                if data is None:
                    await self.wait_readable()
                else:  # a peer that keeps sending must not hold the loop past the timeout
                    await trio.lowlevel.checkpoint()
        self.close()
