"""The psycopg internals behind the Trio adapter (``innera/db/connection.py``, its one importer).

psycopg's async API is written for asyncio; :class:`innera.db.TrioConnection` keeps it and
swaps the asyncio-specific pieces for Trio ones. Doing so needs names psycopg keeps private;
this module holds every one of them, under names of ours:

- :data:`WaitTimeout`: ``psycopg.errors._WaitTimeout``, raised by the wait functions when
  their timeout expires (``AsyncConnection.connect`` turns it into ``ConnectionTimeout``).
- :data:`ready_now`: ``psycopg.waiting._ready(fileno, Wait) -> Ready``, the zero-timeout
  readiness probe (C implementation in psycopg-binary) psycopg's ``wait_async`` polls a
  socket with before waiting on a write.
- :func:`split_attempts`, :func:`get_param`, :func:`get_param_def`, :func:`is_ip_address`:
  ``psycopg._conninfo_utils``, the pieces of ``conninfo_attempts_async`` (which resolves
  host names through asyncio, so the adapter re-implements it on Trio).
- :func:`transaction_exit_gen`: ``AsyncTransaction._exit_gen(exc_type, exc, tb)``, the
  COMMIT/ROLLBACK generator of a transaction block (the adapter drives it itself so that a
  cancellation cannot skip it).
- :class:`AsyncConnectionBase`: ``psycopg.AsyncConnection`` with its private members
  under public names: ``_get_connection_params``, ``_connect_gen`` (class methods),
  ``_autocommit`` / ``_adapters`` (set after connecting, like ``AsyncConnection.connect``),
  ``_pipeline``, ``_should_cancel``, ``_cancel_gen``, ``_closed``, and the
  ``_try_cancel`` hook psycopg calls from ``stream()``, cursor and COPY clean-up.

The adapter also relies on public but undocumented members, checked by the same test:
``AsyncConnection.lock`` (an ``asyncio.Lock`` it replaces), ``AsyncConnection.wait`` (the
funnel every operation goes through), ``psycopg.generators.fetch`` and
``psycopg.waiting.Wait`` / ``Ready``.

``tests/compat/test_psycopg.py`` checks that each of these exists with the shape used; re-run
it and ``tests/db`` before widening :data:`SUPPORTED` (and the pin in ``pyproject.toml``).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import errors, waiting
from psycopg._conninfo_utils import get_param, get_param_def, is_ip_address, split_attempts
from psycopg.abc import AdaptContext, ConnDict, PQGen, PQGenConn, ReadyFunc
from psycopg.adapt import AdaptersMap
from psycopg.rows import Row
from psycopg.transaction import AsyncTransaction

from innera.compat import Supported

__all__ = [
    "SUPPORTED",
    "AsyncConnectionBase",
    "WaitTimeout",
    "get_param",
    "get_param_def",
    "is_ip_address",
    "ready_now",
    "split_attempts",
    "transaction_exit_gen",
]

SUPPORTED = Supported("psycopg", "3.3.9", "3.4", "innera/compat/psycopg.py")

#: Raised by the wait functions when their timeout expires.
WaitTimeout: type[errors.OperationalError] = errors._WaitTimeout

#: ``(fileno, Wait) -> Ready``: which of the awaited directions are ready, without waiting.
ready_now: ReadyFunc = waiting._ready


def transaction_exit_gen(tx: AsyncTransaction, exc: BaseException | None) -> PQGen[bool]:
    """The generator ending ``tx`` (COMMIT/RELEASE, or ROLLBACK when ``exc`` is given);
    it returns True when ``exc`` is to be suppressed (``psycopg.Rollback``)."""
    exc_type: type[BaseException] | None = type(exc) if exc is not None else None
    tb: TracebackType | None = exc.__traceback__ if exc is not None else None
    return tx._exit_gen(exc_type, exc, tb)


class AsyncConnectionBase(psycopg.AsyncConnection[Row]):
    """``psycopg.AsyncConnection`` whose private members a subclass needs, under public names.

    A subclass overrides :meth:`try_cancel` rather than psycopg's ``_try_cancel`` hook.
    """

    @classmethod
    async def connection_params(cls, conninfo: str, **kwargs: Any) -> ConnDict:
        """The connection parameters ``connect()`` uses (``_get_connection_params``)."""
        return await cls._get_connection_params(conninfo, **kwargs)

    @classmethod
    def connect_gen(cls, conninfo: str) -> PQGenConn[Self]:
        """The generator connecting to one address and making an instance (``_connect_gen``)."""
        return cls._connect_gen(conninfo)

    def set_connect_options(self, *, autocommit: bool, context: AdaptContext | None) -> None:
        """What ``AsyncConnection.connect`` sets on a new connection, without a round trip."""
        self._autocommit = bool(autocommit)
        if context:
            self._adapters = AdaptersMap(context.adapters)

    @property
    def in_pipeline(self) -> bool:
        """The connection is in pipeline mode (``async with conn.pipeline()``)."""
        return self._pipeline is not None

    def should_cancel(self) -> bool:
        """Whether ``cancel()`` would act (not closed; raises inside a prepared 2PC)."""
        return self._should_cancel()

    def cancel_gen(self) -> PQGenConn[None]:
        """The non-blocking cancel request (libpq >= 17 ``PQcancelStart``) as a generator."""
        return self._cancel_gen()

    def mark_closed(self) -> None:
        """Record an explicit close (``closed`` true, ``broken`` false), as ``close()`` does."""
        self._closed = True

    async def try_cancel(self, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Cancel the running query, never raising (psycopg's clean-up of an interrupted
        ``stream()``, cursor or COPY calls this)."""
        await super()._try_cancel(timeout=timeout)

    async def _try_cancel(self, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.try_cancel(timeout=timeout)
