"""A Trio-native psycopg 3 connection.

psycopg's async API is written for asyncio: its wait functions call ``get_running_loop()``,
its connection lock is an ``asyncio.Lock``, its interruption handling catches
``asyncio.CancelledError`` and its async connect resolves host names through asyncio.
:class:`TrioConnection` keeps psycopg's whole async API (``execute``, cursors, ``stream``,
row factories, ``transaction``, ``pipeline``, ``copy``, ``notifies``) and swaps the
asyncio-specific pieces for Trio ones. psycopg drives every libpq operation through
generators that yield what they wait for (``Wait.R/W/RW``) and are resumed with what is
ready (``Ready.R/W/RW``): this module drives them with ``trio.lowlevel.wait_readable`` /
``wait_writable`` on the libpq socket.

What it overrides (``wait``, ``connect``, ``cancel_safe``, ``try_cancel``, ``transaction``,
``close``, ``__aexit__``, the ``lock``) and every private psycopg name it needs come through
:mod:`innera.compat.psycopg`, which states the psycopg versions this was written for; re-run
``tests/compat/test_psycopg.py`` and ``tests/db`` before raising the pin.

- ``connect``: every host/address tried in turn like psycopg's, host names resolved with
  ``trio.socket.getaddrinfo`` (psycopg's ``conninfo_attempts_async`` uses asyncio).
- ``wait``: the single funnel every query, fetch, commit, COPY and stream goes through;
  re-implemented on Trio, with cancellation handling (below).
- ``cancel_safe`` / ``try_cancel``: the non-blocking cancel (libpq >= 17 ``PQcancelStart``)
  driven by Trio, or ``cancel()`` in a thread.
- ``transaction``: same ``AsyncTransaction`` object, but its exit is guarded so that a Trio
  cancellation cannot skip it (psycopg's savepoint bookkeeping would be left inconsistent
  and the pooled connection unusable).
- ``close`` / ``__aexit__``: call ``trio.lowlevel.notify_closing`` before ``PQfinish`` and
  always close on ``async with`` exit.
- ``execute`` and the cursors (:class:`~innera.db.cursor.TrioCursor`): every statement takes a
  ``name`` (``conn.execute(sql, params, name="entries.read")``), timed and reported to
  ``on_query`` (set by the pool) and recorded as a Sentry span (:mod:`innera.db.cursor`).

Cancellation: when a Trio cancel scope (or Ctrl-C) interrupts a wait while the server runs a
query, the query is cancelled server-side, the interrupted operation is driven to its end
and the remaining results drained, all shielded and bounded by ``CANCEL_TIMEOUT_S``; the
connection comes back IDLE (INERROR inside a transaction) and reusable. When that fails, the
connection is closed (so a pool discards it). The ``Cancelled`` is then re-raised. A wait
that is entered while the scope is already cancelled raises before sending anything.
"""

from __future__ import annotations

import logging
import math
import select
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import trio
from psycopg import capabilities, generators, pq, waiting
from psycopg import errors as e
from psycopg.abc import (
    AdaptContext,
    ConnDict,
    ConnMapping,
    ConnParam,
    Params,
    PQGen,
    PQGenConn,
    Query,
)
from psycopg.conninfo import make_conninfo, timeout_from_conninfo
from psycopg.rows import AsyncRowFactory, Row, tuple_row
from psycopg.transaction import AsyncTransaction

from innera.compat.psycopg import (
    AsyncConnectionBase,
    WaitTimeout,
    get_param,
    get_param_def,
    is_ip_address,
    ready_now,
    split_attempts,
    transaction_exit_gen,
)
from innera.db.cursor import QueryHook, TrioCursor

if TYPE_CHECKING:
    from psycopg.cursor_async import AsyncCursor
    from psycopg.pq.abc import PGconn

__all__ = ["CANCEL_TIMEOUT_S", "TrioConnection", "wait_conn"]

log = logging.getLogger("innera.db")

#: Bound on the clean-up done after a cancellation (server-side cancel + drain, or the
#: COMMIT/ROLLBACK of a transaction block whose scope is already cancelled).
CANCEL_TIMEOUT_S = 2.0
# While recovering, how long to wait for the interrupted operation before cancelling again.
RECANCEL_INTERVAL_S = 0.5

# Like psycopg.waiting.MAX_BUSY_TIME: how long driving generators that never block (a big
# COPY into an always-writable socket) may run before yielding to the Trio scheduler.
MAX_BUSY_TIME = 0.005

WAIT_R = waiting.Wait.R
WAIT_W = waiting.Wait.W
WAIT_RW = waiting.Wait.RW
READY_R = waiting.Ready.R
READY_W = waiting.Ready.W

ACTIVE = pq.TransactionStatus.ACTIVE
_TX_ACTIVE = AsyncTransaction.Status.ACTIVE
_COPY_STATUSES = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)

_HAS_EPOLL = hasattr(select, "epoll")
_last_yield = 0.0


# --- wait functions -------------------------------------------------------------------


async def _drive(gen: PQGen[Any], fileno: int) -> Any:
    global _last_yield
    try:
        s = next(gen)
        while True:
            if s & WAIT_W:
                # A socket asked for writing is nearly always writable: poll it first.
                if ready := ready_now(fileno, s):
                    if time.monotonic() - _last_yield >= MAX_BUSY_TIME:
                        await trio.lowlevel.checkpoint()
                        _last_yield = time.monotonic()
                    s = gen.send(ready)
                    continue
                if s == WAIT_RW:
                    ready = await _wait_rw(fileno)
                else:
                    await trio.lowlevel.wait_writable(fileno)
                    ready = READY_W
            elif s == WAIT_R:
                await trio.lowlevel.wait_readable(fileno)
                ready = READY_R
            else:
                raise e.InternalError(f"bad poll status: {s}")
            _last_yield = time.monotonic()
            s = gen.send(ready)
    except StopIteration as ex:
        if time.monotonic() - _last_yield >= MAX_BUSY_TIME:
            # Completed without blocking for a while: give the scheduler a turn, but don't
            # raise Cancelled now that the operation has happened.
            await trio.lowlevel.cancel_shielded_checkpoint()
            _last_yield = time.monotonic()
        return ex.value
    except trio.ClosedResourceError as ex:
        raise e.OperationalError("the connection was closed") from ex
    except OSError as ex:
        raise e.OperationalError("connection socket closed") from ex


async def _wait_rw(fileno: int) -> int:
    """Wait until ``fileno`` is readable or writable, in this task (no nursery).

    Linux: a throw-away epoll instance watching both directions, whose own fd becomes
    readable when either is ready; Trio waits on that fd. Elsewhere: race two tasks.
    Only reached when a write would block (a large parameter or COPY block).
    """
    if _HAS_EPOLL:
        ep = select.epoll(1)
        try:
            ep.register(fileno, select.EPOLLIN | select.EPOLLOUT)
            while True:
                await trio.lowlevel.wait_readable(ep.fileno())
                ready = 0
                for _, ev in ep.poll(0):
                    if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        ready |= READY_R
                    if ev & select.EPOLLOUT:
                        ready |= READY_W
                if ready:
                    return ready
        finally:
            trio.lowlevel.notify_closing(ep.fileno())
            ep.close()

    ready = 0

    async def one(waiter: Any, flag: int, scope: trio.CancelScope) -> None:
        nonlocal ready
        await waiter(fileno)
        ready |= flag
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, trio.lowlevel.wait_readable, READY_R, nursery.cancel_scope)
        nursery.start_soon(one, trio.lowlevel.wait_writable, READY_W, nursery.cancel_scope)
    return ready


async def wait_conn(
    gen: PQGenConn[Any], timeout: float | None = None  # noqa: ASYNC109 (psycopg's API)
) -> Any:
    """Drive a psycopg connection generator (yielding ``(fileno, Wait)``, the fd may
    change) to completion on Trio. ``timeout`` raises ``WaitTimeout``."""
    with trio.move_on_after(math.inf if timeout is None else timeout):
        try:
            fileno, s = next(gen)
            while True:
                if s == WAIT_R:
                    await trio.lowlevel.wait_readable(fileno)
                    ready = READY_R
                elif s == WAIT_W:
                    await trio.lowlevel.wait_writable(fileno)
                    ready = READY_W
                elif s == WAIT_RW:
                    ready = await _wait_rw(fileno)
                else:
                    raise e.InternalError(f"bad poll status: {s}")
                fileno, s = gen.send(ready)
        except StopIteration as ex:
            return ex.value
        except trio.ClosedResourceError as ex:
            raise e.OperationalError("the connection was closed") from ex
        except OSError as ex:
            raise e.OperationalError("connection socket closed") from ex
        finally:
            gen.close()
    raise WaitTimeout("wait timeout expired")


# --- connect --------------------------------------------------------------------------


async def _conninfo_attempts(params: ConnMapping) -> list[ConnDict]:
    """psycopg's ``conninfo_attempts_async``, resolving host names with Trio (in a thread)
    so that libpq never resolves (and blocks) itself."""
    last_exc: Exception | None = None
    attempts: list[ConnDict] = []
    prefer_standby = get_param(params, "target_session_attrs") == "prefer-standby"
    if prefer_standby:
        params = {k: v for k, v in params.items() if k != "target_session_attrs"}
    for attempt in split_attempts(params):
        try:
            attempts.extend(await _resolve_hostnames(attempt))
        except OSError as ex:
            last_exc = e.OperationalError(f"failed to resolve host {attempt.get('host')!r}: {ex}")
            log.debug("%s", last_exc)
    if not attempts:
        assert last_exc is not None
        raise last_exc
    if get_param(params, "load_balance_hosts") == "random":
        import random

        random.shuffle(attempts)
    if prefer_standby:
        attempts = [{**a, "target_session_attrs": "standby"} for a in attempts] + attempts
    return attempts


async def _resolve_hostnames(params: ConnDict) -> list[ConnDict]:
    host = get_param(params, "host")
    if not host or host.startswith("/") or host[1:2] == ":":
        return [params]  # Unix socket or no host
    if get_param(params, "hostaddr"):
        return [params]
    if is_ip_address(host):
        return [{**params, "hostaddr": host}]
    if not (port := get_param(params, "port")):
        port_def = get_param_def("port")
        port = (port_def and port_def.compiled) or "5432"
    ans = await trio.socket.getaddrinfo(
        host, port, proto=trio.socket.IPPROTO_TCP, type=trio.socket.SOCK_STREAM
    )
    return [{**params, "hostaddr": str(item[4][0])} for item in ans]


# --- the connection -------------------------------------------------------------------


class TrioConnection(AsyncConnectionBase[Row]):
    """``psycopg.AsyncConnection`` running on Trio. Use ``await TrioConnection.connect()``."""

    __module__ = "innera.db"

    #: told of every statement ``(name, seconds, failed)``; the pool sets it (metrics)
    on_query: QueryHook | None = None

    def __init__(
        self,
        pgconn: PGconn,
        row_factory: AsyncRowFactory[Row] | None = None,
    ) -> None:
        super().__init__(pgconn, row_factory or cast(AsyncRowFactory[Row], tuple_row))
        self.lock = trio.Lock()  # type: ignore[assignment]
        self.cursor_factory = TrioCursor

    async def execute(  # type: ignore[override]
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool = False,
        name: str | None = None,
    ) -> AsyncCursor[Row]:
        """Run the statement named ``name`` (see :mod:`innera.db.cursor`) on a new cursor and
        return it, like ``AsyncConnection.execute``."""
        cur = cast(TrioCursor[Row], self.cursor())
        if binary:
            cur.format = pq.Format.BINARY
        return await cur.execute(query, params, prepare=prepare, name=name)

    @classmethod
    async def connect(  # type: ignore[override]
        cls,
        conninfo: str = "",
        *,
        autocommit: bool = False,
        prepare_threshold: int | None = 5,
        context: AdaptContext | None = None,
        row_factory: AsyncRowFactory[Row] | None = None,
        cursor_factory: type[AsyncCursor[Row]] | None = None,
        **kwargs: ConnParam,
    ) -> Self:
        """Connect like ``AsyncConnection.connect``: every host/address is tried in turn,
        each attempt bounded by ``connect_timeout`` (libpq rules: unset or 0 → 130 s,
        minimum 2 s). Cancellable by the caller's cancel scopes at any point."""
        params = await cls.connection_params(conninfo, **kwargs)
        timeout = timeout_from_conninfo(params)
        attempts = await _conninfo_attempts(params)
        conn_errors: list[tuple[e.Error, str]] = []
        rv: Self | None = None
        for attempt in attempts:
            descr = "host: {!r}, port: {!r}, hostaddr: {!r}".format(
                attempt.get("host"), attempt.get("port"), attempt.get("hostaddr")
            )
            try:
                gen = cls.connect_gen(make_conninfo("", **attempt))
                rv = await wait_conn(gen, timeout=timeout)
            except WaitTimeout:
                conn_errors.append((e.ConnectionTimeout("connection timeout expired"), descr))
            except e.Error as ex:
                conn_errors.append((ex, descr))
            else:
                break
        if rv is None:
            last_ex = conn_errors[-1][0]
            if len(conn_errors) == 1:
                raise last_ex.with_traceback(None)
            lines = [str(last_ex), "Multiple connection attempts failed. All failures were:"]
            lines.extend(f"- {descr}: {error}" for error, descr in conn_errors)
            raise type(last_ex)("\n".join(lines), pgconn=last_ex.pgconn).with_traceback(None)

        rv.set_connect_options(autocommit=autocommit, context=context)
        if row_factory:
            rv.row_factory = row_factory
        if cursor_factory:
            rv.cursor_factory = cursor_factory
        rv.prepare_threshold = prepare_threshold
        return rv

    async def wait(
        self,
        gen: PQGen[Any],
        interval: float = 0.0,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg's signature)
    ) -> Any:
        """Consume a generator operating on the connection (``interval`` is unused: Trio
        delivers cancellation and Ctrl-C without periodic wake-ups)."""
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            gen.close()
            if self.pgconn.transaction_status == ACTIVE:  # e.g. between two stream() rows
                await self._recover(None)
            raise
        return await self._wait_started(gen, timeout)

    async def _wait_started(
        self, gen: PQGen[Any], timeout: float | None = None  # noqa: ASYNC109
    ) -> Any:
        """``wait()`` without its initial checkpoint (for clean-up that must run)."""
        try:
            fileno = self.pgconn.socket
            if timeout is None:
                return await _drive(gen, fileno)
            with trio.move_on_after(timeout):
                return await _drive(gen, fileno)
            raise WaitTimeout("wait timeout expired")
        except (trio.Cancelled, KeyboardInterrupt) as ex:
            if self.pgconn.transaction_status == ACTIVE:
                completed, value = await self._recover(gen)
                if completed and isinstance(ex, trio.Cancelled):
                    # The server finished the operation before the cancel request reached
                    # it (e.g. a COMMIT): report what happened; the Cancelled will be
                    # raised at the caller's next checkpoint.
                    return value
            raise

    async def _recover(self, gen: PQGen[Any] | None) -> tuple[bool, Any]:
        """After an interruption during a query: cancel it server-side, finish ``gen``
        and drain the results, so that the connection is usable again; else close it.

        Returns ``(True, value)`` if ``gen`` completed successfully after all (no error,
        nothing else to drain), else ``(False, None)``.
        """
        completed, drained, ok, value = False, False, False, None
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CANCEL_TIMEOUT_S
            try:
                if not self.in_pipeline:  # draining a pipeline is not attempted
                    fileno = self.pgconn.socket
                    pending = gen
                    while True:
                        await self.cancel_safe(timeout=CANCEL_TIMEOUT_S)
                        if pending is None:
                            break
                        # A generator may send a second command after the cancelled one
                        # (BEGIN then the query): cancel again if it does not finish.
                        with trio.move_on_after(RECANCEL_INTERVAL_S):
                            try:
                                value = await _drive(pending, fileno)
                                completed = True
                            except e.Error:
                                pass  # QueryCanceled, as expected
                            pending = None
                        if pending is None:
                            break
                    while self.pgconn.transaction_status == ACTIVE:
                        drained = True
                        res = await _drive(generators.fetch(self.pgconn), fileno)
                        if res is None and self.pgconn.transaction_status == ACTIVE:
                            break
                        if res is not None and res.status in _COPY_STATUSES:
                            break
                    ok = self.pgconn.transaction_status != ACTIVE
            except Exception as ex:
                log.warning("recovering a cancelled query failed: %r", ex)
        if not ok:
            log.warning(
                "query not terminated after cancellation%s: closing the connection",
                " (timed out)" if scope.cancelled_caught else "",
            )
            self.terminate()
            return False, None
        return completed and not drained, value

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Cancel the current operation on the server (libpq >= 17: non-blocking cancel
        driven by Trio; older libpq: the blocking ``cancel()`` in a worker thread)."""
        if not self.should_cancel():
            return
        if capabilities.has_cancel_safe():
            try:
                await wait_conn(self.cancel_gen(), timeout=timeout or None)
            except WaitTimeout:
                raise e.CancellationTimeout("cancellation timeout expired") from None
        else:
            with trio.move_on_after(timeout or math.inf) as scope:
                await trio.to_thread.run_sync(self.cancel, abandon_on_cancel=True)
            if scope.cancelled_caught:
                raise e.CancellationTimeout("cancellation timeout expired")

    async def try_cancel(self, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Cancel the running query, shielded and bounded by ``CANCEL_TIMEOUT_S``; never
        raises. psycopg calls it from stream()/cursor/COPY clean-up, often in a cancelled
        scope."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + min(timeout, CANCEL_TIMEOUT_S)
            try:
                await self.cancel_safe(timeout=timeout)
            except Exception as ex:
                log.warning("query cancellation failed: %s", ex)

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[AsyncTransaction]:
        """Like ``AsyncConnection.transaction``. If the block is left by a cancellation,
        the ROLLBACK still runs (shielded, bounded by ``CANCEL_TIMEOUT_S``); if the
        enclosing scope is cancelled when the block completes, the transaction is rolled
        back instead of committed and ``Cancelled`` raised."""
        tx = AsyncTransaction(self, savepoint_name, force_rollback)
        if self.in_pipeline:
            async with self.pipeline(), _guarded(tx), self.pipeline():
                yield tx
        else:
            async with _guarded(tx):
                yield tx

    async def close(self) -> None:
        """Close the connection, waking up any task waiting on its socket."""
        if not self.closed:
            self._notify_closing()
        await super().close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc_val, exc_tb)
        finally:  # also when the COMMIT/ROLLBACK was cancelled
            await self.close()

    def _notify_closing(self) -> None:
        try:
            fileno = self.pgconn.socket
        except e.Error:
            return
        trio.lowlevel.notify_closing(fileno)

    def terminate(self) -> None:
        """Close now, without a checkpoint (for clean-up paths, e.g. a pool discarding
        the connection)."""
        if not self.closed:
            self._notify_closing()
            self.mark_closed()
            self.pgconn.finish()


def _cleanup_scope() -> trio.CancelScope:
    return trio.CancelScope(shield=True, deadline=trio.current_time() + CANCEL_TIMEOUT_S)


def _cancelled() -> bool:
    """The enclosing scope is cancelled, or its deadline has passed (and will fire at the
    next schedule point)."""
    return trio.current_effective_deadline() <= trio.current_time()


@asynccontextmanager
async def _guarded(tx: AsyncTransaction) -> AsyncIterator[AsyncTransaction]:
    conn = cast(TrioConnection[Any], tx.connection)
    try:
        await tx.__aenter__()
    except BaseException as ex:
        # psycopg undoes an interrupted BEGIN itself, unless the cancellation stopped that
        # too: the transaction is then still marked active.
        if tx.status == _TX_ACTIVE:
            with _cleanup_scope():
                await _exit(conn, tx, ex)
        raise
    try:
        yield tx
    except BaseException as ex:
        with _cleanup_scope():
            suppressed = await _exit(conn, tx, ex)
        if not suppressed:
            raise
    else:
        if _cancelled():
            with _cleanup_scope():
                await _exit(conn, tx, _Cancelled())
            await trio.lowlevel.checkpoint()  # raises Cancelled
        else:
            await _exit(conn, tx, None)


async def _exit(conn: TrioConnection[Any], tx: AsyncTransaction, exc: BaseException | None
                ) -> bool:
    """``AsyncTransaction.__aexit__``, except that a cancellation cannot skip it: taking
    the lock is shielded (bounded) and the wait has no initial checkpoint, so psycopg's
    savepoint stack is always popped; once COMMIT/ROLLBACK is sent, a cancellation goes
    through ``TrioConnection.wait``'s recovery (which reports a completed COMMIT)."""
    if conn.pgconn.status != pq.ConnStatus.OK:
        tx.status = tx.Status.FAILED
        return False
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + CANCEL_TIMEOUT_S
        await conn.lock.acquire()
    if scope.cancelled_caught:  # someone else holds the connection: give up on it
        conn.terminate()
        tx.status = tx.Status.FAILED
        raise e.OperationalError("transaction exit: timed out waiting for the connection")
    try:
        return bool(await conn._wait_started(transaction_exit_gen(tx, exc)))
    finally:
        conn.lock.release()


class _Cancelled(Exception):
    """Stands for a Trio cancellation when asking psycopg to roll a transaction back."""
