"""Named statements (innera/db/cursor.py) against the real PostgreSQL: every way innera runs
a statement reports its name, its duration and whether it failed to the connection's
``on_query`` hook, which the pool sets on each of its connections."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import psycopg
import pytest
import trio
from psycopg.rows import dict_row

from innera.db.connection import TrioConnection
from innera.db.cursor import UNNAMED
from innera.db.pool import Pool

pytestmark = pytest.mark.timeout(10)

IDLE = psycopg.pq.TransactionStatus.IDLE

Record = tuple[str, float, bool]


def recording(conn: TrioConnection[Any]) -> list[Record]:
    records: list[Record] = []
    conn.on_query = lambda name, seconds, failed: records.append((name, seconds, failed))
    return records


async def test_every_kind_of_statement_reports_its_name(db_conn: TrioConnection[Any]) -> None:
    records = recording(db_conn)
    await db_conn.execute("CREATE TEMP TABLE t (n int)", name="test.create")
    cur = await db_conn.execute("SELECT 1", name="test.select", binary=True)
    assert await cur.fetchone() == (1,)
    cur = await db_conn.cursor(row_factory=dict_row).execute("SELECT 2 AS n", name="test.dict")
    assert await cur.fetchone() == {"n": 2}
    await db_conn.cursor().executemany("INSERT INTO t VALUES (%s)", [(1,), (2,)],
                                       name="test.many")
    async with db_conn.cursor().copy("COPY t FROM STDIN", name="test.copy") as copy:
        await copy.write_row((3,))
    async with aclosing(db_conn.cursor().stream("SELECT n FROM t ORDER BY n",
                                                name="test.stream")) as rows:
        assert [row async for row in rows] == [(1,), (2,), (3,)]
    assert [(name, failed) for name, _, failed in records] == [
        ("test.create", False), ("test.select", False), ("test.dict", False),
        ("test.many", False), ("test.copy", False), ("test.stream", False)]
    assert all(seconds >= 0 for _, seconds, _ in records)


async def test_a_failed_statement_is_counted_and_an_unnamed_one_is_unnamed(
    db_conn: TrioConnection[Any],
) -> None:
    records = recording(db_conn)
    with pytest.raises(psycopg.errors.UndefinedTable):
        await db_conn.execute("SELECT * FROM no_such_table", name="test.broken")
    await db_conn.execute("SELECT 1")
    assert [(name, failed) for name, _, failed in records] == [
        ("test.broken", True), (UNNAMED, False)]


async def test_a_stream_left_early_is_drained_and_the_connection_reused(
    db_conn: TrioConnection[Any],
) -> None:
    """The cursor closes psycopg's stream itself: the unfinished query is cancelled and
    drained before the connection is used again (a stream left to the collector would hand
    the pool a busy connection)."""
    records = recording(db_conn)
    async with aclosing(db_conn.cursor().stream(
            "SELECT n FROM generate_series(1, 100000) n", size=100, name="test.stream")) as rows:
        async for (n,) in rows:
            if n == 5:
                break
    assert db_conn.info.transaction_status == IDLE and not db_conn.closed
    assert await (await db_conn.execute("SELECT 2", name="test.after")).fetchone() == (2,)
    assert [(name, failed) for name, _, failed in records] == [
        ("test.stream", False), ("test.after", False)]


async def test_the_pool_hands_its_hook_to_every_connection(
    database_url: str, nursery: trio.Nursery,
) -> None:
    records: list[Record] = []
    pool = Pool(database_url, min_size=1, max_size=2,
                on_query=lambda *record: records.append(record))
    await nursery.start(pool.run)

    async def query(name: str) -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(0.05)", name=name)

    async with trio.open_nursery() as both:  # two connections at once
        both.start_soon(query, "test.one")
        both.start_soon(query, "test.two")
    assert sorted(name for name, _, _ in records) == ["test.one", "test.two"]
    assert all(seconds > 0 for _, seconds, _ in records)
    nursery.cancel_scope.cancel()
