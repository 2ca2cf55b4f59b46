"""A Trio connection pool for PostgreSQL with node-postgres (``pg-pool``) semantics.

- Connections are opened on demand up to ``max_size``; a background task keeps at least
  ``min_size`` open and closes the ones idle longer than ``idle_timeout_s`` above that.
- ``async with pool.connection() as conn`` waits at most ``acquire_timeout_s`` in total
  (queueing and connecting included), then raises :class:`DatabaseUnavailable`; so does a
  failed connect. Waiters are served first in, first out.
- Connections are **autocommit**: every statement commits on its own; use
  ``async with conn.transaction():`` for a multi-statement transaction.
- On release, a connection that is closed, broken, still busy, or left inside a transaction
  that cannot be rolled back is discarded (and reported through ``on_error``); a connection
  left inside a transaction is rolled back first. A broken connection makes the block's
  ``psycopg.OperationalError`` surface as :class:`DatabaseUnavailable`.
- Idle connections are checked (a non-blocking poll of their socket) when handed out and
  by the background task, so connections the server closed are dropped without failing a
  request.
- ``on_query``, if given, is told of every named statement run on the pool's connections
  (``(name, seconds, failed)``: the query metrics, :mod:`innera.db.cursor`).

Lifetime: the process runs ``await nursery.start(pool.run)``; ``run`` opens the first
connections (raising :class:`DatabaseUnavailable` if PostgreSQL cannot be reached, with the
reason ``explain_connect_error`` gives, e.g. why a certificate was refused), then
maintains the pool until it is cancelled, when it closes every connection (bounded).
"""

from __future__ import annotations

import logging
import select
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import psycopg
import trio
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from innera.db.connection import TrioConnection
from innera.db.cursor import QueryHook
from innera.errors import DatabaseUnavailable

__all__ = ["ConnectionDiscarded", "Pool"]

log = logging.getLogger("innera.db")

IDLE = pq.TransactionStatus.IDLE
INTRANS = pq.TransactionStatus.INTRANS
INERROR = pq.TransactionStatus.INERROR

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"


class ConnectionDiscarded(Exception):
    """Reported to ``on_error`` when the pool drops a connection (the cause is chained)."""


class _Waiter:
    __slots__ = ("conn", "event", "slot")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.conn: TrioConnection[Any] | None = None  # a connection handed over
        self.slot = False  # or the right to open one (reserved in Pool._opening)


def _default_on_error(exc: BaseException) -> None:
    log.error("Unexpected DB pool error", exc_info=exc)


class Pool:
    """See the module documentation."""

    #: Bound on the shutdown: waiting for connections in use to come back, then closing.
    CLOSE_TIMEOUT_S = 5.0
    #: Bound on the ROLLBACK of a connection released inside a transaction.
    RELEASE_TIMEOUT_S = 2.0
    #: Back-off between refill attempts while the server is down.
    MIN_BACKOFF_S = 0.1
    MAX_BACKOFF_S = 10.0

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 5,
        max_size: int = 20,
        idle_timeout_s: float = 30.0,
        acquire_timeout_s: float = 5.0,
        connect_kwargs: dict[str, Any] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        explain_connect_error: Callable[[psycopg.Error], Awaitable[str]] | None = None,
        name: str = "innera",
        on_query: QueryHook | None = None,
    ) -> None:
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError(f"need 0 <= min_size <= max_size, 1 <= max_size; "
                             f"got min_size={min_size}, max_size={max_size}")
        self.name = name
        self.min_size = min_size
        self.max_size = max_size
        self.idle_timeout_s = idle_timeout_s
        self.acquire_timeout_s = acquire_timeout_s
        self._conninfo = conninfo
        kwargs = dict(connect_kwargs or {})
        kwargs["autocommit"] = True
        if "application_name" not in kwargs and "application_name" not in conninfo_to_dict(
            conninfo
        ):
            kwargs["application_name"] = name
        self._connect_kwargs = kwargs
        self._on_error = on_error or _default_on_error
        self._explain = explain_connect_error
        self._on_query = on_query
        self._state = _NEW
        self._idle: deque[tuple[TrioConnection[Any], float]] = deque()  # oldest on the left
        self._active: set[TrioConnection[Any]] = set()
        self._opening = 0  # connects in progress (each holds a slot)
        self._waiters: deque[_Waiter] = deque()
        self._nudge: trio.Event | None = None
        self._all_released: trio.Event | None = None

    # --- public ---------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Gauges for metrics: ``size`` = ``active`` + ``idle`` open connections."""
        idle, active = len(self._idle), len(self._active)
        return {"size": idle + active, "active": active, "idle": idle,
                "waiting": len(self._waiters), "max": self.max_size}

    def connection(self) -> AbstractAsyncContextManager[TrioConnection[Any]]:
        """``async with pool.connection() as conn``: borrow a connection (autocommit) for
        the duration of the block."""
        return _Lease(self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The pool's task: open the first connections, report started, maintain the
        pool until cancelled, then close every connection."""
        if self._state != _NEW:
            raise RuntimeError("Pool.run() can only be called once")
        self._nudge = trio.Event()
        try:
            await self._open_initial()
            self._state = _RUNNING
            task_status.started()
            await self._maintain()
        finally:
            self._state = _CLOSED
            with trio.CancelScope(shield=True):  # bounded inside
                await self._shutdown()

    # --- acquire / release ----------------------------------------------------------

    async def _acquire(self) -> TrioConnection[Any]:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state != _RUNNING:
            raise DatabaseUnavailable("pool closed" if self._state == _CLOSED
                                      else "pool not started")
        if conn := self._take_idle():  # fast path: no cancel scope (≈6 µs) needed
            return conn
        with trio.move_on_after(self.acquire_timeout_s):
            return await self._acquire_inner()
        raise DatabaseUnavailable(
            f"Timed out after {self.acquire_timeout_s:g} s waiting for a database connection"
        )

    async def _acquire_inner(self) -> TrioConnection[Any]:
        while True:
            if conn := self._take_idle():
                return conn
            if self._total() < self.max_size:
                self._opening += 1
                return await self._open_reserved()
            waiter = _Waiter()
            self._waiters.append(waiter)
            try:
                await waiter.event.wait()
            except BaseException:
                # Handed something between the cancellation and now: pass it on.
                if waiter.conn is not None:
                    self._active.discard(waiter.conn)
                    self._give(waiter.conn)
                elif waiter.slot:
                    self._opening -= 1
                    self._slot_freed()
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            if waiter.conn is not None:
                return waiter.conn
            if waiter.slot:
                return await self._open_reserved()
            raise DatabaseUnavailable("pool closed")

    def _take_idle(self) -> TrioConnection[Any] | None:
        while self._idle:
            conn, _ = self._idle.pop()  # most recently used: lets the others expire
            if reason := _idle_problem(conn):
                self._discard(conn, reason)
                continue
            self._active.add(conn)
            return conn
        return None

    async def _open_reserved(self) -> TrioConnection[Any]:
        """Open a connection for a slot already counted in ``_opening``."""
        try:
            conn = await self._connect()
        except BaseException as ex:
            self._opening -= 1
            self._slot_freed()
            if isinstance(ex, psycopg.Error):
                raise DatabaseUnavailable("Cannot connect to the database") from ex
            raise
        self._opening -= 1
        if self._state == _CLOSED:
            await conn.close()
            raise DatabaseUnavailable("pool closed")
        self._active.add(conn)
        return conn

    async def _release(self, conn: TrioConnection[Any], error: BaseException | None) -> None:
        reason = _busy_problem(conn)
        if reason is None and (conn.pgconn.transaction_status != IDLE or not conn.autocommit):
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.RELEASE_TIMEOUT_S
                try:
                    if conn.pgconn.transaction_status in (INTRANS, INERROR):
                        await conn.rollback()
                    if not conn.autocommit:
                        await conn.set_autocommit(True)
                except Exception as ex:
                    reason, error = f"reset failed: {ex!r}", ex
            if scope.cancelled_caught:
                reason = "rollback timed out"
            reason = reason or _busy_problem(conn)
            if reason is None and conn.pgconn.transaction_status != IDLE:
                reason = f"still in state {conn.pgconn.transaction_status.name} after rollback"
        self._active.discard(conn)
        if self._state == _CLOSED:
            await conn.close()
            self._check_all_released()
        elif reason is not None:
            self._discard(conn, reason, error)
        else:
            self._give(conn)

    def _give(self, conn: TrioConnection[Any]) -> None:
        """Hand a healthy connection to the first waiter, or make it idle."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.conn = conn
            self._active.add(conn)
            waiter.event.set()
            return
        self._idle.append((conn, trio.current_time()))
        self._check_all_released()

    def _slot_freed(self) -> None:
        """A connection slot was freed: let the first waiter open a connection, or ask the
        maintenance task to refill up to ``min_size``."""
        if self._state != _RUNNING:
            self._check_all_released()
            return
        if self._waiters and self._total() < self.max_size:
            waiter = self._waiters.popleft()
            waiter.slot = True
            self._opening += 1
            waiter.event.set()
        elif self._total() < self.min_size and self._nudge is not None:
            self._nudge.set()

    def _discard(self, conn: TrioConnection[Any], reason: str,
                 cause: BaseException | None = None) -> None:
        conn.terminate()
        exc = ConnectionDiscarded(f"{self.name}: discarded a database connection: {reason}")
        exc.__cause__ = cause
        try:
            self._on_error(exc)
        except Exception:
            log.exception("on_error failed")
        self._slot_freed()

    def _total(self) -> int:
        return len(self._idle) + len(self._active) + self._opening

    async def _connect(self) -> TrioConnection[Any]:
        conn: TrioConnection[Any] = await TrioConnection.connect(self._conninfo,
                                                                 **self._connect_kwargs)
        conn.on_query = self._on_query
        return conn

    # --- the pool's task ------------------------------------------------------------

    async def _open_initial(self) -> None:
        """Open max(min_size, 1) connections concurrently (one at least, to check that
        PostgreSQL can be reached), within ``acquire_timeout_s``."""
        opened: list[TrioConnection[Any]] = []
        errors: list[BaseException] = []

        async def open_one() -> None:
            try:
                opened.append(await self._connect())
            except psycopg.Error as ex:
                errors.append(ex)

        with trio.move_on_after(self.acquire_timeout_s) as scope:
            async with trio.open_nursery() as nursery:
                for _ in range(max(self.min_size, 1)):
                    nursery.start_soon(open_one)
        if errors or scope.cancelled_caught:
            for conn in opened:
                conn.terminate()
            if errors:
                error = errors[0]
                detail = await self._explain(error) if self._explain else str(error).strip()
                raise DatabaseUnavailable(f"Cannot connect to PostgreSQL: {detail}") from error
            raise DatabaseUnavailable(
                f"Cannot connect to PostgreSQL: no connection after "
                f"{self.acquire_timeout_s:g} s")
        now = trio.current_time()
        self._idle.extend((conn, now) for conn in opened)

    def _check_interval(self) -> float:
        return min(1.0, max(0.02, self.idle_timeout_s / 4))

    async def _maintain(self) -> None:
        """Every check interval (or when nudged): drop dead and expired idle connections,
        refill to ``min_size`` with exponential back-off while connects fail."""
        backoff = self.MIN_BACKOFF_S
        failing = False
        while True:
            assert self._nudge is not None
            with trio.move_on_after(self._check_interval()):
                await self._nudge.wait()
            self._nudge = trio.Event()
            self._sweep_idle()
            while self._total() < self.min_size:
                self._opening += 1
                try:
                    with trio.fail_after(max(self.acquire_timeout_s, 1.0)):
                        conn = await self._connect()
                except (psycopg.Error, trio.TooSlowError) as ex:
                    self._opening -= 1
                    if not failing:
                        log.warning("%s: cannot reconnect to PostgreSQL (%s); retrying",
                                    self.name, str(ex).strip() or type(ex).__name__)
                    failing = True
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.MAX_BACKOFF_S)
                    break
                self._opening -= 1
                if failing:
                    log.warning("%s: reconnected to PostgreSQL", self.name)
                failing, backoff = False, self.MIN_BACKOFF_S
                self._give(conn)

    def _sweep_idle(self) -> None:
        now = trio.current_time()
        # Expired: the oldest first, down to min_size.
        while (self._idle and now - self._idle[0][1] > self.idle_timeout_s
               and self._total() > self.min_size):
            conn, _ = self._idle.popleft()
            conn.terminate()
        for item in list(self._idle):
            if reason := _idle_problem(item[0]):
                self._idle.remove(item)
                self._discard(item[0], reason)

    async def _shutdown(self) -> None:
        for waiter in self._waiters:
            waiter.event.set()  # neither conn nor slot: raises "pool closed"
        self._waiters.clear()
        while self._idle:
            self._idle.popleft()[0].terminate()
        if self._active:
            self._all_released = trio.Event()
            with trio.move_on_after(self.CLOSE_TIMEOUT_S):
                await self._all_released.wait()
            for conn in list(self._active):  # still in use: their tasks get an error
                conn.terminate()

    def _check_all_released(self) -> None:
        if self._state == _CLOSED:
            while self._idle:
                self._idle.popleft()[0].terminate()
            if not self._active and self._all_released is not None:
                self._all_released.set()


class _Lease:
    """What ``Pool.connection()`` returns (a class: cheaper than @asynccontextmanager)."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._conn: TrioConnection[Any] | None = None

    async def __aenter__(self) -> TrioConnection[Any]:
        self._conn = await self._pool._acquire()
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        await self._pool._release(conn, exc)
        if isinstance(exc, psycopg.OperationalError) and conn.closed:
            raise DatabaseUnavailable("Lost the database connection") from exc


def _busy_problem(conn: TrioConnection[Any]) -> str | None:
    """Why a returned connection cannot be reused as it is, if it cannot."""
    if conn.closed:
        return "connection closed" if not conn.broken else "connection broken"
    if conn.lock.locked():
        return "connection still in use (an unclosed stream or cursor?)"
    if conn.in_pipeline:
        return "connection left in pipeline mode"
    status = conn.pgconn.transaction_status
    if status not in (IDLE, INTRANS, INERROR):
        return f"connection left in state {status.name}"
    return None


def _idle_problem(conn: TrioConnection[Any]) -> str | None:
    """Check an idle connection without blocking: the server may have closed it."""
    if conn.closed:
        return "connection closed while idle"
    pgconn = conn.pgconn
    try:
        # A notice, a notification, or the server hanging up (a FATAL message, then EOF:
        # libpq sees the EOF on a second read).
        for _ in range(3):
            if not _readable_now(pgconn.socket):
                break
            pgconn.consume_input()
    except (psycopg.Error, OSError) as ex:
        return f"connection lost while idle ({str(ex).strip()})"
    if pgconn.status != pq.ConnStatus.OK:
        return "connection lost while idle"
    if pgconn.transaction_status != IDLE:
        return f"idle connection in state {pgconn.transaction_status.name}"
    return None


def _readable_now(fileno: int) -> bool:
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    return bool(poller.poll(0))

