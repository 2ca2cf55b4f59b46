"""TrioConnection against the real PostgreSQL: the psycopg async API on Trio."""

from __future__ import annotations

import datetime as dt
import random
import socket
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import trio
from psycopg import errors as e
from psycopg.rows import class_row, dict_row, namedtuple_row
from psycopg.types.json import Jsonb
from psycopg.waiting import READY_R, READY_W

from innera.db import connection as connection_module
from innera.db.connection import TrioConnection

pytestmark = pytest.mark.timeout(10)

IDLE = psycopg.pq.TransactionStatus.IDLE


async def backend_state(url: str, pid: int) -> tuple[str | None, str | None]:
    """(state, query) of a backend, seen from another connection."""
    async with await TrioConnection.connect(url, autocommit=True) as other:
        cur = await other.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
    return (row[0], row[1]) if row else (None, None)


async def test_execute_params_and_types(db_conn: TrioConnection[Any]) -> None:
    u = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    cur = await db_conn.execute(
        "SELECT %s::int + 1, %s::text, %s::uuid, %s::timestamptz, %s::jsonb, %s::int[], %s",
        (41, "héllo", u, now, Jsonb({"a": [1, 2]}), [1, 2, 3], None),
    )
    assert await cur.fetchone() == (42, "héllo", u, now, {"a": [1, 2]}, [1, 2, 3], None)
    assert cur.rowcount == 1


async def test_row_factories(db_conn: TrioConnection[Any]) -> None:
    @dataclass
    class Point:
        x: int
        y: int

    q = "SELECT n AS x, n * 2 AS y FROM generate_series(1, 3) n"
    async with db_conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q)
        assert await cur.fetchall() == [{"x": 1, "y": 2}, {"x": 2, "y": 4}, {"x": 3, "y": 6}]
    async with db_conn.cursor(row_factory=namedtuple_row) as cur:
        await cur.execute(q)
        assert (await cur.fetchone()).y == 2  # type: ignore[union-attr]
    async with db_conn.cursor(row_factory=class_row(Point)) as cur:
        await cur.execute(q)
        assert await cur.fetchmany(2) == [Point(1, 2), Point(2, 4)]
        assert [p async for p in cur] == [Point(3, 6)]


async def test_transactions_commit_rollback_savepoints(db_conn: TrioConnection[Any]) -> None:
    await db_conn.execute("CREATE TABLE t (x int)")
    async with db_conn.transaction():
        await db_conn.execute("INSERT INTO t VALUES (1)")
        assert db_conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    with pytest.raises(ZeroDivisionError):
        async with db_conn.transaction():
            await db_conn.execute("INSERT INTO t VALUES (2)")
            1 / 0  # noqa: B018
    async with db_conn.transaction():
        await db_conn.execute("INSERT INTO t VALUES (3)")
        async with db_conn.transaction() as inner:
            await db_conn.execute("INSERT INTO t VALUES (4)")
            raise psycopg.Rollback(inner)
    cur = await db_conn.execute("SELECT array_agg(x ORDER BY x) FROM t")
    assert await cur.fetchone() == ([1, 3],)
    assert db_conn.info.transaction_status == IDLE


async def test_errors_leave_connection_usable(db_conn: TrioConnection[Any]) -> None:
    await db_conn.execute("CREATE TABLE u (k text PRIMARY KEY)")
    await db_conn.execute("INSERT INTO u VALUES ('a')")
    with pytest.raises(e.UniqueViolation):
        await db_conn.execute("INSERT INTO u VALUES ('a')")
    with pytest.raises(e.UndefinedTable):
        async with db_conn.transaction():
            await db_conn.execute("SELECT * FROM nope")
    with pytest.raises(e.SyntaxError):
        await db_conn.execute("SELEC 1")
    assert await (await db_conn.execute("SELECT 1")).fetchone() == (1,)
    assert db_conn.info.transaction_status == IDLE


async def test_stream_and_fetch_many_rows(db_conn: TrioConnection[Any]) -> None:
    n = 200_000
    total = count = 0
    async with aclosing(db_conn.cursor().stream(
            "SELECT g, repeat('x', 20) FROM generate_series(1, %s) g", (n,))) as rows:
        async for g, _ in rows:
            total += g
            count += 1
    assert (count, total) == (n, n * (n + 1) // 2)
    cur = await db_conn.execute("SELECT g FROM generate_series(1, %s) g", (n,))
    assert len(await cur.fetchall()) == n


async def test_large_values(db_conn: TrioConnection[Any]) -> None:
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than a socket buffer holds
    cur = await db_conn.execute("SELECT %s::bytea, md5(%s::bytea)", (big, big))
    back, digest = await cur.fetchone()  # type: ignore[misc]
    assert back == big
    import hashlib

    assert digest == hashlib.md5(big).hexdigest()
    text = "é" * 1_000_000
    assert await (await db_conn.execute("SELECT %s::text", (text,))).fetchone() == (text,)


@pytest.mark.parametrize("epoll", [True, False], ids=["epoll", "two-tasks"])
async def test_read_or_write_wait_on_a_full_socket(
        epoll: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait.RW (libpq sending more than the socket buffer holds) returns when the server
    answers or drains the buffer, and not before; whether a real query reaches it depends
    on how fast the server reads, so the wait is driven here on a socket pair."""
    monkeypatch.setattr(connection_module, "_HAS_EPOLL", epoll)
    ours, server = socket.socketpair()
    with ours, server:
        ours.setblocking(False)
        server.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            while True:
                sent += ours.send(b"x" * 65536)
        with trio.move_on_after(0.1) as waiting:
            await connection_module._wait_rw(ours.fileno())
        assert waiting.cancelled_caught  # neither readable nor writable yet

        server.send(b"answer")
        assert await connection_module._wait_rw(ours.fileno()) == READY_R
        assert ours.recv(100) == b"answer"

        while sent:  # the server reads everything: writable again
            sent -= len(server.recv(1 << 20))
        assert await connection_module._wait_rw(ours.fileno()) == READY_W


async def test_executemany_pipeline_copy(db_conn: TrioConnection[Any]) -> None:
    await db_conn.execute("CREATE TABLE p (a int, b text)")
    async with db_conn.cursor() as cur:
        await cur.executemany("INSERT INTO p VALUES (%s, %s)", [(i, f"r{i}") for i in range(500)])
        async with db_conn.pipeline():
            for i in range(500, 600):
                await cur.execute("INSERT INTO p VALUES (%s, %s)", (i, f"r{i}"))
        async with cur.copy("COPY p (a, b) FROM STDIN") as copy:
            for i in range(600, 10_600):
                await copy.write_row((i, f"r{i}"))
        rows = []
        async with cur.copy("COPY (SELECT a, b FROM p ORDER BY a) TO STDOUT") as copy:
            async for row in copy.rows():
                rows.append(row)
    assert len(rows) == 10_600 and rows[-1] == ("10599", "r10599")


async def test_server_side_cursor_and_notifies(database_url: str,
                                               db_conn: TrioConnection[Any]) -> None:
    async with db_conn.transaction(), db_conn.cursor("named") as cur:
        await cur.execute("SELECT generate_series(1, 1000)")
        assert len(await cur.fetchmany(10)) == 10
        assert len([r async for r in cur]) == 990

    await db_conn.execute("LISTEN chan")
    async with await TrioConnection.connect(database_url, autocommit=True) as other:
        await other.execute("SELECT pg_notify('chan', 'hello')")
    got = [n.payload async for n in db_conn.notifies(timeout=2, stop_after=1)]
    assert got == ["hello"]
    # the timeout path (psycopg's _WaitTimeout) returns without hanging
    assert [n async for n in db_conn.notifies(timeout=0.1)] == []


async def test_concurrent_tasks_on_one_connection_are_serialised(
        db_conn: TrioConnection[Any]) -> None:
    assert isinstance(db_conn.lock, trio.Lock)
    results: list[int] = []

    async def one(i: int) -> None:
        cur = await db_conn.execute("SELECT %s::int", (i,))
        results.append((await cur.fetchone())[0])  # type: ignore[index]

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(one, i)
    assert sorted(results) == list(range(100))


async def test_many_connections_concurrently(database_url: str) -> None:
    async def worker(i: int) -> int:
        async with await TrioConnection.connect(database_url, autocommit=True) as conn:
            s = 0
            for j in range(30):
                s += (await (await conn.execute("SELECT %s::int", (j,))).fetchone())[0]
            return s

    out: list[int] = []

    async def run(i: int) -> None:
        out.append(await worker(i))

    async with trio.open_nursery() as nursery:
        for i in range(15):
            nursery.start_soon(run, i)
    assert out == [435] * 15


# --- cancellation ---------------------------------------------------------------------


async def test_cancelled_query_is_cancelled_server_side(
        database_url: str, db_conn: TrioConnection[Any]) -> None:
    pid = db_conn.info.backend_pid
    t0 = time.monotonic()
    with trio.move_on_after(0.3) as scope:
        await db_conn.execute("SELECT pg_sleep(10)")
    elapsed = time.monotonic() - t0
    assert scope.cancelled_caught
    assert elapsed < 0.8, elapsed
    assert db_conn.info.transaction_status == IDLE and not db_conn.closed
    state, query = await backend_state(database_url, pid)
    assert state == "idle", (state, query)  # no longer running pg_sleep
    assert await (await db_conn.execute("SELECT 1")).fetchone() == (1,)


async def test_cancel_inside_transaction_rolls_back(
        database_url: str, db_conn: TrioConnection[Any]) -> None:
    await db_conn.execute("CREATE TABLE c (x int)")
    t0 = time.monotonic()
    with trio.move_on_after(0.3):
        async with db_conn.transaction():
            await db_conn.execute("INSERT INTO c VALUES (1)")
            await db_conn.execute("SELECT pg_sleep(10)")
    assert time.monotonic() - t0 < 0.8
    assert db_conn.info.transaction_status == IDLE
    assert await (await db_conn.execute("SELECT count(*) FROM c")).fetchone() == (0,)
    async with db_conn.transaction():  # psycopg's transaction bookkeeping is consistent
        await db_conn.execute("INSERT INTO c VALUES (2)")
    assert await (await db_conn.execute("SELECT count(*) FROM c")).fetchone() == (1,)


async def test_cancelled_scope_at_commit_rolls_back(db_conn: TrioConnection[Any]) -> None:
    await db_conn.execute("CREATE TABLE d (x int)")
    with trio.CancelScope() as scope:
        async with db_conn.transaction():
            await db_conn.execute("INSERT INTO d VALUES (1)")
            scope.cancel()  # no checkpoint before the block ends
    assert scope.cancelled_caught
    assert db_conn.info.transaction_status == IDLE
    assert await (await db_conn.execute("SELECT count(*) FROM d")).fetchone() == (0,)


async def test_transaction_entered_in_cancelled_scope(db_conn: TrioConnection[Any]) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        async with db_conn.transaction():
            pytest.fail("not entered")
    assert scope.cancelled_caught and db_conn.info.transaction_status == IDLE
    async with db_conn.transaction():
        await db_conn.execute("SELECT 1")


async def test_random_cancellations_keep_the_connection_consistent(
        db_conn: TrioConnection[Any]) -> None:
    """Cancel at random points (BEGIN, INSERT, pg_sleep, COMMIT): the connection always
    comes back IDLE and open, and exactly the committed transactions are visible."""
    await db_conn.execute("CREATE TABLE rc (i int)")
    rng = random.Random(1234)
    committed = 0
    for i in range(60):
        with trio.move_on_after(rng.uniform(0, 0.004)):
            async with db_conn.transaction():
                await db_conn.execute("INSERT INTO rc VALUES (%s)", (i,))
                await db_conn.execute("SELECT pg_sleep(0.001)")
            committed += 1
        assert db_conn.info.transaction_status == IDLE and not db_conn.closed
    cur = await db_conn.execute("SELECT count(*) FROM rc")
    assert await cur.fetchone() == (committed,)
    assert 0 < committed < 60


async def test_already_cancelled_sends_nothing(db_conn: TrioConnection[Any]) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await db_conn.execute("CREATE TABLE never (x int)")
    assert scope.cancelled_caught
    cur = await db_conn.execute("SELECT to_regclass('never') IS NULL")
    assert await cur.fetchone() == (True,)


async def test_cancel_during_stream(db_conn: TrioConnection[Any]) -> None:
    seen = 0
    t0 = time.monotonic()
    with trio.move_on_after(0.3):
        async with aclosing(db_conn.cursor().stream(
                "SELECT repeat('x', 2000), pg_sleep(0.001) FROM generate_series(1, 100000)"
        )) as rows:
            async for _ in rows:
                seen += 1
    assert 0 < seen < 100_000
    assert time.monotonic() - t0 < 1.0
    assert db_conn.info.transaction_status == IDLE and not db_conn.closed
    assert await (await db_conn.execute("SELECT 2")).fetchone() == (2,)


async def test_close_wakes_a_waiting_task(db_conn: TrioConnection[Any]) -> None:
    errors: list[BaseException] = []

    async def query() -> None:
        try:
            await db_conn.execute("SELECT pg_sleep(10)")
        except psycopg.OperationalError as ex:
            errors.append(ex)

    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(query)
        await trio.sleep(0.2)
        await db_conn.close()
    assert time.monotonic() - t0 < 1.0
    assert len(errors) == 1 and db_conn.closed


async def test_server_terminated_connection(database_url: str,
                                            db_conn: TrioConnection[Any]) -> None:
    async with await TrioConnection.connect(database_url, autocommit=True) as other:
        await other.execute("SELECT pg_terminate_backend(%s)", (db_conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        await db_conn.execute("SELECT 1")
    assert db_conn.closed and db_conn.broken


# --- connect --------------------------------------------------------------------------


async def test_connect_resolves_host_names_with_trio(database_url: str) -> None:
    url = database_url.replace("127.0.0.1", "localhost")
    assert "localhost" in url
    async with await TrioConnection.connect(url, row_factory=dict_row) as conn:
        assert conn.info.hostaddr in ("127.0.0.1", "::1")
        assert not conn.autocommit
        assert await (await conn.execute("SELECT 1 AS one")).fetchone() == {"one": 1}


async def test_connect_refused_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        await TrioConnection.connect("postgresql://postgres@127.0.0.1:1/postgres")
    assert time.monotonic() - t0 < 1.0


async def test_connect_timeout_and_cancellation_on_a_hanging_server(tcp_proxy: Any) -> None:
    proxy = await tcp_proxy.start("127.0.0.1", 5432)
    proxy.set_mode("hang")
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    t0 = time.monotonic()
    with trio.move_on_after(0.2) as scope:
        await TrioConnection.connect(url)
    assert scope.cancelled_caught and time.monotonic() - t0 < 0.5
    t0 = time.monotonic()
    with pytest.raises(e.ConnectionTimeout):
        await TrioConnection.connect(url, connect_timeout=2)  # libpq's minimum is 2 s
    assert 1.9 < time.monotonic() - t0 < 3.0
