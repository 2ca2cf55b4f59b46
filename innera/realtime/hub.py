"""The WebSocket hub: every open socket of this process, by user.

A socket's handler runs inside :meth:`Hub.connection`, whose cancel scope the hub may cancel
to close it with a code (4000 "Server restarting" during the graceful shutdown). The handler
then sends the close frame itself, from its own task, so no task ever writes to another
task's socket.

Outbound messages go through a bounded queue per socket (:data:`QUEUE_SIZE`): the pub/sub
listener only ever calls :meth:`Hub.deliver`, which uses ``send_nowait``, so a slow client
never slows the listener nor the other clients. A socket whose queue is full is closed with
1013 "Too slow" (counted in :attr:`Hub.slow_closed` and
``innera_ws_slow_clients_closed_total``, and logged).

**Written at once where the socket has room.** When the HTTP server can write a message
without waiting (:attr:`Socket.direct`, set by the endpoint's writer: innera's fast server),
:meth:`Socket.offer` writes it from the caller's task (a broadcast writes every socket of the
user in one loop, with no task switch per socket) whenever nothing of that socket is queued or
being sent (:attr:`Socket.queued` is 0); otherwise, or when the socket's buffer is full, the
message is queued as above and the writer sends it, in order. A frame the kernel took only in
part is finished by the writer (:data:`FLUSH` is queued): until then every message queues
behind it. So a message written at once never overtakes one queued before it, and a slow
client's queue fills and is closed with 1013 exactly as before.

**At most** ``WS_MAX_CONNECTIONS_PER_USER`` **sockets per user on this instance**
(``max_per_user``): when the handler admits a user's socket past it (:meth:`Hub.admit`, once
the handshake is authenticated, so a refused handshake never closes anything), the user's
**oldest** admitted socket is closed with 4008 "Too many connections" and the new one is kept
(the handshake is not refused). A socket is long-lived and a vanished peer is only noticed by
the ping timeout (up to ``PING_INTERVAL_S + PONG_TIMEOUT_S``), so a user whose phone changed
networks or whose laptop woke up would otherwise be refused while dead sockets still hold the
slots; closing the oldest favours the device or tab in use now. A client closed with 4008
must not reconnect on its own (two clients over the cap would take turns evicting each
other); the handshake rate limit (``RATE_LIMIT_WS``) bounds such a loop anyway.

The hub also tells the pub/sub listener (``innera/realtime/listener.py``) which users have
local sockets: :attr:`Hub.changed` is set whenever a user's first socket opens or last one
closes, and :meth:`Hub.user_ids` is the set the listener must be subscribed to. The listener
reports back with :meth:`mark_subscribed` / :meth:`mark_offline`, which lets a new socket
wait (bounded) until its user's channel is subscribed before the handshake completes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from innera.observability.metrics import Metrics
from innera.realtime.event_log import RESYNC_REQUIRED

log = logging.getLogger("innera.realtime")

SERVER_RESTARTING = (4000, "Server restarting")
UNAUTHORIZED = (4001, "Unauthorized")
TOKEN_EXPIRED = (4001, "Token expired")
TOO_SLOW = (1013, "Too slow")
TOO_MANY_CONNECTIONS = (4008, "Too many connections")
#: outbound messages buffered per socket before it counts as too slow
QUEUE_SIZE = 256
#: what :attr:`Socket.direct` answers: nothing written (queue the message), the whole
#: message written, or part of it (the rest is owed: the writer sends it on :data:`FLUSH`)
WROTE_NOTHING, WROTE_ALL, WROTE_PART = 0, 1, 2
#: queued after a message written in part: the writer has the server write the rest
FLUSH = None


#: what a socket's queue holds: messages, and FLUSH
Outgoing = str | None


def _channel() -> tuple[trio.MemorySendChannel[Outgoing], trio.MemoryReceiveChannel[Outgoing]]:
    return trio.open_memory_channel[Outgoing](QUEUE_SIZE)


@dataclass(eq=False, slots=True)
class Socket:
    user_id: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    close_code: int | None = None
    close_reason: str = ""
    closed: trio.Event = field(default_factory=trio.Event)
    hub: Hub | None = None
    #: authenticated and counted against the hub's per-user cap (:meth:`Hub.admit`)
    admitted: bool = False
    queue: tuple[trio.MemorySendChannel[Outgoing], trio.MemoryReceiveChannel[Outgoing]] = field(
        default_factory=_channel)
    #: writes a message without waiting, when the server can (``WROTE_*``); set by the
    #: writer while nothing it has to send first is pending (a resume's replay)
    direct: Callable[[str], int] | None = None
    #: messages queued and not yet sent by the writer (each one :meth:`sent`)
    queued: int = 0

    @property
    def outbox(self) -> trio.MemoryReceiveChannel[Outgoing]:
        """What the handler's writer sends, in order."""
        return self.queue[1]

    def close(self, code: int, reason: str) -> None:
        """Ask the handler to close with ``code`` (it stops receiving and sends the frame)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.scope.cancel()

    def offer(self, message: str) -> bool:
        """Write ``message`` now (:attr:`direct`, when nothing is queued before it) or queue
        it, without waiting; a full queue closes the socket with 1013."""
        if self.close_code is not None:
            return False
        queued: Outgoing = message
        if self.direct is not None and not self.queued:
            wrote = self.direct(message)
            if wrote == WROTE_ALL:
                return True
            if wrote == WROTE_PART:  # the writer finishes it (the queue is empty: room)
                queued = FLUSH
        try:
            self.queue[0].send_nowait(queued)
        except trio.WouldBlock:
            log.warning("websocket of user %s too slow (%d messages queued): closing with 1013",
                        self.user_id, QUEUE_SIZE)
            if self.hub is not None:
                self.hub.slow_closed += 1
                self.hub.metrics.ws_slow_closed.inc()
            self.close(*TOO_SLOW)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.queued += 1
        return True

    def sent(self) -> None:
        """The writer is done with one queued message (sent, or dropped as a duplicate)."""
        self.queued -= 1


class Hub:
    def __init__(self, metrics: Metrics, *, max_per_user: int | None = None) -> None:
        self.metrics = metrics
        #: most open sockets per user (None: no limit); past it the oldest is closed
        self.max_per_user = max_per_user
        # per user, the sockets in the order they opened (a dict keeps insertion order)
        self._by_user: dict[str, dict[Socket, None]] = {}
        #: sockets closed with 1013 because their queue was full
        self.slow_closed = 0
        #: set (and replaced) whenever the set of users with local sockets changes
        self.changed = trio.Event()
        # the listener's view: users whose channel is subscribed, and who waits for it
        self.listener_online = False
        self._subscribed: set[str] = set()
        self._sub_waiters: dict[str, trio.Event] = {}
        # (code, reason) once close_all ran: a socket that opens later (a handshake accepted
        # from the listen backlog during the drain) is closed the same way at once
        self._closing: tuple[int, str] | None = None
        # users with a socket open while the listener was offline: events published then
        # reached the log, not the socket; told to resync once their channel is back
        self._missed: set[str] = set()

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_user.values())

    def user_ids(self) -> set[str]:
        return set(self._by_user)

    def sockets_of(self, user_id: str) -> frozenset[Socket]:
        return frozenset(self._by_user.get(user_id, ()))

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @asynccontextmanager
    async def connection(self, user_id: str) -> AsyncIterator[Socket]:
        """A new socket of ``user_id`` for the handler's lifetime (it counts against
        :attr:`max_per_user` once admitted: :meth:`admit`)."""
        sock = Socket(user_id, hub=self)
        if self._closing is not None:
            sock.close(*self._closing)
        sockets = self._by_user.get(user_id)
        if not self.listener_online:
            self._missed.add(user_id)
        if sockets is None:
            sockets = self._by_user[user_id] = {}
            self._notify()
        sockets[sock] = None
        self.metrics.ws_connections.inc()
        try:
            yield sock
        finally:
            sockets = self._by_user.get(user_id, {})
            sockets.pop(sock, None)
            if not sockets and self._by_user.pop(user_id, None) is not None:
                self._notify()
            self.metrics.ws_connections.dec()
            sock.queue[0].close()
            sock.closed.set()

    def admit(self, sock: Socket) -> None:
        """``sock``'s handshake is authenticated: count it against :attr:`max_per_user` and
        close the user's oldest admitted sockets beyond it with 4008. Sockets already
        closing (their handler is on its way out) do not count."""
        sock.admitted = True
        if self.max_per_user is None:
            return
        others = [s for s in self._by_user.get(sock.user_id, ())
                  if s is not sock and s.admitted and s.close_code is None]
        for old in others[:max(0, len(others) + 1 - self.max_per_user)]:
            log.info("user %s has more than %d websockets on this instance: closing the "
                     "oldest with 4008", sock.user_id, self.max_per_user)
            old.close(*TOO_MANY_CONNECTIONS)

    def deliver(self, user_id: str, message: str) -> int:
        """Write or queue ``message`` on every local socket of ``user_id`` (never waits); how
        many took it."""
        sockets = self._by_user.get(user_id)
        if not sockets:
            return 0
        taken = 0
        for sock in tuple(sockets):
            taken += sock.offer(message)
        return taken

    def close_user(self, user_id: str, code: int, reason: str) -> int:
        """Close every local socket of ``user_id`` (account deletion, ...); how many."""
        sockets = tuple(self._by_user.get(user_id, ()))
        for sock in sockets:
            sock.close(code, reason)
        return len(sockets)

    async def close_all(self, code: int, reason: str, *, timeout_s: float = 5.0) -> int:
        """Close every socket with ``code``, and every one opened from now on; wait (bounded)
        until the handlers of those open now are done."""
        self._closing = (code, reason)
        sockets = [s for group in self._by_user.values() for s in group]
        for sock in sockets:
            sock.close(code, reason)
        with trio.move_on_after(timeout_s):
            for sock in sockets:
                await sock.closed.wait()
        return len(sockets)

    # --- the listener's side ---------------------------------------------------------

    def mark_subscribed(self, user_ids: set[str]) -> None:
        self.listener_online = True
        self._subscribed |= user_ids
        for user_id in user_ids:
            waiter = self._sub_waiters.pop(user_id, None)
            if waiter is not None:
                waiter.set()
            if user_id in self._missed:
                self._missed.discard(user_id)
                self.deliver(user_id, RESYNC_REQUIRED)

    def mark_unsubscribed(self, user_ids: set[str]) -> None:
        self._subscribed -= user_ids

    def mark_offline(self) -> None:
        """The pub/sub connection is gone: nothing is subscribed; nobody waits for it. The
        users with sockets open now (and those who connect before it is back) get
        ``resync_required`` once their channel is subscribed again: what was published
        meanwhile is in their log, not on their sockets."""
        self.listener_online = False
        self._missed |= set(self._by_user)
        self._subscribed.clear()
        for waiter in self._sub_waiters.values():
            waiter.set()
        self._sub_waiters.clear()

    async def wait_subscribed(self, user_id: str, timeout_s: float) -> bool:
        """Wait (bounded) until the listener is subscribed to ``user_id``'s channel, so
        events published from now on reach the new socket. Returns at once while the
        listener is offline (sockets work without Redis; events resume when it is back)."""
        if user_id in self._subscribed:
            return True
        if not self.listener_online:
            return False
        waiter = self._sub_waiters.setdefault(user_id, trio.Event())
        with trio.move_on_after(timeout_s):
            await waiter.wait()
        if self._sub_waiters.get(user_id) is waiter and user_id not in self._by_user:
            self._sub_waiters.pop(user_id, None)
        return user_id in self._subscribed
