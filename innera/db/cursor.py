"""Named statements: the cursor of :class:`innera.db.TrioConnection`.

Every statement innera runs is named at its call site, with a dotted, stable
``<area>.<what>`` (``auth.user_by_email``, ``entries.read``)::

    cur = await conn.execute("SELECT ...", params, name="entries.read")
    cur = await conn.cursor(row_factory=dict_row).execute("...", params, name="...")
    async for row in cursor.stream("...", params, name="search.scan"): ...
    async with cursor.copy("COPY ...", name="imports.copy_entries") as copy: ...

The name is what the operator sees: the label of ``innera_db_query_duration_seconds`` and
``innera_db_query_errors_total`` (through the connection's ``on_query`` hook, which the pool
sets) and the description of the statement's Sentry span (op ``db``). Names are literals, so
the label set is bounded by the code; ``tests/db/test_query_names.py`` fails on a statement
without one. A statement run without a name (a test's, a console's) is recorded as
:data:`UNNAMED`.

This is the one place statements are timed: psycopg's connection ``execute`` opens a cursor
and runs its ``execute``. The duration runs from the call (waiting for the connection's lock
included) to the statement's results; a stream's, to its last row or its closing, so it
includes the consumer's time between rows.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Self

from psycopg import AsyncCopy, AsyncCursor
from psycopg.abc import Params, Query
from psycopg.copy import AsyncWriter
from psycopg.rows import Row

from innera.observability import tracing

__all__ = ["UNNAMED", "QueryHook", "TrioCursor"]

#: the name recorded for a statement run without one
UNNAMED = "unnamed"
#: told of every statement: ``(name, seconds, failed)``
QueryHook = Callable[[str, float, bool], None]

_OP = "db"


class TrioCursor(AsyncCursor[Row]):
    """psycopg's ``AsyncCursor`` whose statements take a ``name`` and are timed (see the
    module documentation)."""

    __module__ = "innera.db"

    async def execute(  # type: ignore[override]
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
        name: str | None = None,
    ) -> Self:
        label = name or UNNAMED
        on_query: QueryHook | None = getattr(self.connection, "on_query", None)
        with tracing.span(_OP, label):
            if on_query is None:
                return await super().execute(query, params, prepare=prepare, binary=binary)
            started = time.perf_counter()
            try:
                await super().execute(query, params, prepare=prepare, binary=binary)
            except Exception:
                on_query(label, time.perf_counter() - started, True)
                raise
            on_query(label, time.perf_counter() - started, False)
            return self

    async def executemany(
        self,
        query: Query,
        params_seq: Iterable[Params],
        *,
        returning: bool = False,
        name: str | None = None,
    ) -> None:
        with self._observed(name):
            await super().executemany(query, params_seq, returning=returning)

    async def stream(  # type: ignore[override]
        self,
        query: Query,
        params: Params | None = None,
        *,
        binary: bool | None = None,
        size: int = 1,
        name: str | None = None,
    ) -> AsyncIterator[Row]:
        with self._observed(name):
            # closed explicitly: psycopg's stream cancels and drains an unfinished query in
            # its clean-up, which must happen before the connection goes back
            async with aclosing(super().stream(query, params, binary=binary,
                                               size=size)) as rows:
                async for row in rows:
                    yield row

    @asynccontextmanager
    async def copy(  # type: ignore[override]
        self,
        statement: Query,
        params: Params | None = None,
        *,
        writer: AsyncWriter | None = None,
        name: str | None = None,
    ) -> AsyncIterator[AsyncCopy]:
        with self._observed(name):
            async with super().copy(statement, params, writer=writer) as copy:
                yield copy

    @contextmanager
    def _observed(self, name: str | None) -> Iterator[None]:
        """The span and the ``on_query`` report of one statement: its name, its duration,
        whether it raised (``execute``, the hot path, inlines the same)."""
        label = name or UNNAMED
        on_query: QueryHook | None = getattr(self.connection, "on_query", None)
        with tracing.span(_OP, label):
            started = time.perf_counter()
            failed = False
            try:
                yield
            except Exception:
                failed = True
                raise
            finally:
                if on_query is not None:
                    on_query(label, time.perf_counter() - started, failed)
