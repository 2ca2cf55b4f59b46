"""Pool against the real PostgreSQL (and a TCP proxy to cut or hang it)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import psycopg
import pytest
import trio
from psycopg.rows import dict_row

from innera.db.connection import TrioConnection
from innera.db.pool import ConnectionDiscarded, Pool
from innera.errors import DatabaseUnavailable

pytestmark = pytest.mark.timeout(15)

IDLE = psycopg.pq.TransactionStatus.IDLE


@asynccontextmanager
async def running(pool: Pool) -> AsyncIterator[Pool]:
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


async def pid_of(pool: Pool) -> int:
    async with pool.connection() as conn:
        return conn.info.backend_pid


async def terminate(url: str, *pids: int) -> None:
    async with await TrioConnection.connect(url, autocommit=True) as admin:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def wait_until(predicate: Any, limit_s: float = 5.0) -> None:
    with trio.fail_after(limit_s):
        while not predicate():
            await trio.sleep(0.01)


def proxied(database_url: str, port: int) -> str:
    return database_url.replace(":5432/", f":{port}/")


async def test_stats_and_reuse(db_pool: Pool) -> None:
    assert db_pool.stats() == {"size": 1, "active": 0, "idle": 1, "waiting": 0, "max": 5}
    async with db_pool.connection() as c1:
        assert c1.autocommit
        assert db_pool.stats()["active"] == 1
        async with db_pool.connection() as c2, db_pool.connection() as c3:
            assert len({c1, c2, c3}) == 3
            assert db_pool.stats() == {"size": 3, "active": 3, "idle": 0, "waiting": 0,
                                       "max": 5}
    assert db_pool.stats() == {"size": 3, "active": 0, "idle": 3, "waiting": 0, "max": 5}
    async with db_pool.connection() as again:
        assert again is c1  # the most recently released first (LIFO, like pg-pool)


async def test_many_tasks_share_the_pool(db_pool: Pool) -> None:
    peak = 0
    done = 0

    async def worker(i: int) -> None:
        nonlocal peak, done
        for j in range(5):
            async with db_pool.connection() as conn:
                peak = max(peak, db_pool.stats()["size"])
                cur = await conn.execute("SELECT %s::int * %s::int", (i, j))
                assert await cur.fetchone() == (i * j,)
        done += 1

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(worker, i)
    assert done == 200 and peak == 5
    stats = db_pool.stats()
    assert stats["active"] == 0 and stats["waiting"] == 0 and stats["size"] == 5


async def test_acquire_timeout_when_all_busy(database_url: str) -> None:
    pool = Pool(database_url, min_size=1, max_size=2, acquire_timeout_s=0.3)
    async with running(pool):
        async with pool.connection(), pool.connection():
            t0 = time.monotonic()
            with pytest.raises(DatabaseUnavailable,
                               match=r"Timed out after 0.3 s waiting for a database connection"):
                async with pool.connection():
                    pass
            assert 0.29 < time.monotonic() - t0 < 0.5
            assert pool.stats()["waiting"] == 0
        async with pool.connection() as conn:  # and the pool is still fine
            await conn.execute("SELECT 1")


async def test_waiters_are_served_fifo(database_url: str) -> None:
    pool = Pool(database_url, min_size=1, max_size=1, acquire_timeout_s=5)
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with pool.connection():
            order.append(i)
            await trio.sleep(0.01)

    async with running(pool), trio.open_nursery() as nursery:
        async with pool.connection():
            for i in range(6):
                nursery.start_soon(waiter, i)
                await wait_until(lambda i=i: pool.stats()["waiting"] == i + 1)
    assert order == list(range(6))


async def test_cancelled_waiter_leaves_the_queue(database_url: str) -> None:
    pool = Pool(database_url, min_size=1, max_size=1)
    async with running(pool):
        async with pool.connection():
            with trio.move_on_after(0.1):
                async with pool.connection():
                    pytest.fail("should not get a connection")
            assert pool.stats()["waiting"] == 0
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")


async def test_cancelled_query_returns_a_healthy_connection(database_url: str) -> None:
    errors: list[BaseException] = []
    pool = Pool(database_url, min_size=1, max_size=2, on_error=errors.append)
    async with running(pool):
        t0 = time.monotonic()
        with trio.move_on_after(0.3):
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - t0 < 0.8
        assert pool.stats() == {"size": 1, "active": 0, "idle": 1, "waiting": 0, "max": 2}
        async with pool.connection() as again:
            assert again is conn
            assert await (await again.execute("SELECT 1")).fetchone() == (1,)
    assert errors == []


async def test_release_rolls_back_an_open_transaction(db_pool: Pool) -> None:
    async with db_pool.connection() as conn:
        await conn.execute("CREATE TABLE r (x int)")
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO r VALUES (1)")
    async with db_pool.connection() as again:
        assert again is conn and again.info.transaction_status == IDLE
        assert await (await again.execute("SELECT count(*) FROM r")).fetchone() == (0,)
        await again.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            await again.execute("SELECT 1/0")  # INERROR
    async with db_pool.connection() as third:
        assert third is conn and third.info.transaction_status == IDLE
        await third.set_autocommit(False)
    async with db_pool.connection() as fourth:
        assert fourth is conn and fourth.autocommit


async def test_terminated_idle_connection_is_discarded(database_url: str) -> None:
    errors: list[BaseException] = []
    pool = Pool(database_url, min_size=1, max_size=3, on_error=errors.append)
    async with running(pool):
        pid = await pid_of(pool)
        await terminate(database_url, pid)
        await trio.sleep(0.05)  # the FATAL message reaches the idle socket
        async with pool.connection() as conn:  # served by a new connection, no error
            assert conn.info.backend_pid != pid
            await conn.execute("SELECT 1")
    assert len(errors) == 1 and isinstance(errors[0], ConnectionDiscarded)
    assert "lost while idle" in str(errors[0])


async def test_terminated_connection_in_use(database_url: str) -> None:
    errors: list[BaseException] = []
    pool = Pool(database_url, min_size=2, max_size=3, on_error=errors.append)
    async with running(pool):
        with pytest.raises(DatabaseUnavailable, match="Lost the database connection") as info:
            async with pool.connection() as conn:
                await terminate(database_url, conn.info.backend_pid)
                await conn.execute("SELECT 1")
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        assert len(errors) == 1
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        await wait_until(lambda: pool.stats()["size"] == 2)  # refilled to min_size


async def test_refills_to_min_size_after_discards(database_url: str) -> None:
    pool = Pool(database_url, min_size=3, max_size=5, idle_timeout_s=0.2, on_error=lambda _: None)
    async with running(pool):
        pids = set()
        async with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            pids = {a.info.backend_pid, b.info.backend_pid, c.info.backend_pid}
        await terminate(database_url, *pids)
        await trio.sleep(0.3)  # the sweep finds them dead, the refill replaces them
        await wait_until(lambda: pool.stats()["size"] == 3)
        async with pool.connection() as conn:
            assert conn.info.backend_pid not in pids


async def test_idle_connections_above_min_are_closed(database_url: str) -> None:
    pool = Pool(database_url, min_size=1, max_size=5, idle_timeout_s=0.2)
    async with running(pool):
        async with (pool.connection(), pool.connection(), pool.connection(),
                    pool.connection()):
            pass
        assert pool.stats()["idle"] == 4
        t0 = time.monotonic()
        await wait_until(lambda: pool.stats()["size"] == 1, limit_s=2)
        assert 0.2 <= time.monotonic() - t0 < 0.6
        await trio.sleep(0.4)
        assert pool.stats() == {"size": 1, "active": 0, "idle": 1, "waiting": 0, "max": 5}


async def test_unreachable_server_at_start_is_fatal() -> None:
    pool = Pool("postgresql://postgres@127.0.0.1:1/postgres", min_size=2, max_size=4)
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        with pytest.raises(DatabaseUnavailable, match="Cannot connect to PostgreSQL") as info:
            await nursery.start(pool.run)
    assert time.monotonic() - t0 < 1.0
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    with pytest.raises(DatabaseUnavailable, match="pool closed"):
        async with pool.connection():
            pass


async def test_server_goes_away_and_comes_back(database_url: str, tcp_proxy: Any) -> None:
    proxy = await tcp_proxy.start("127.0.0.1", 5432)
    pool = Pool(proxied(database_url, proxy.port), min_size=2, max_size=4,
                acquire_timeout_s=1.0, on_error=lambda _: None)
    async with running(pool):
        proxy.set_mode("refuse")  # open connections cut, new ones closed at once
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
            assert time.monotonic() - t0 < 1.0
        proxy.set_mode("hang")  # new connections accepted but never answered
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="Timed out after 1 s"):
            async with pool.connection():
                pass
        assert 0.95 < time.monotonic() - t0 < 1.3
        proxy.set_mode("pass")
        await wait_until(lambda: pool.stats()["size"] == 2, limit_s=5)  # refilled alone
        async with pool.connection() as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


async def test_pool_closed_after_run_ends(database_url: str) -> None:
    pool = Pool(database_url, min_size=2, max_size=3, name="innera-close-test")
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        async with pool.connection():
            pass
        nursery.cancel_scope.cancel()
    with pytest.raises(DatabaseUnavailable, match="pool closed"):
        async with pool.connection():
            pass
    assert pool.stats()["size"] == 0
    async with await TrioConnection.connect(database_url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            ("innera-close-test",))
        assert await cur.fetchone() == (0,)


async def test_shutdown_fails_waiters_and_closes_busy_connections(database_url: str) -> None:
    pool = Pool(database_url, min_size=1, max_size=1)
    pool.CLOSE_TIMEOUT_S = 0.3
    outcome: list[str] = []

    async def busy(task_status: trio.TaskStatus[None]) -> None:
        try:
            async with pool.connection() as conn:
                task_status.started()
                await conn.execute("SELECT pg_sleep(10)")
        except DatabaseUnavailable:
            outcome.append("busy: unavailable")

    async def waiter() -> None:
        try:
            async with pool.connection():
                pass
        except DatabaseUnavailable as ex:
            outcome.append(f"waiter: {ex}")

    t0 = time.monotonic()
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as pool_nursery:
            await pool_nursery.start(pool.run)
            await outer.start(busy)
            outer.start_soon(waiter)
            await wait_until(lambda: pool.stats()["waiting"] == 1)
            pool_nursery.cancel_scope.cancel()
    assert time.monotonic() - t0 < 1.5
    assert sorted(outcome) == ["busy: unavailable", "waiter: pool closed"]


async def test_abandoned_stream_connection_is_discarded(db_pool: Pool) -> None:
    errors: list[BaseException] = []
    db_pool._on_error = errors.append
    async with db_pool.connection() as conn:
        async for (n,) in conn.cursor().stream("SELECT generate_series(1, 100000)"):
            if n == 10:
                break  # without aclosing(): the stream keeps the connection locked
    assert len(errors) == 1 and "still in use" in str(errors[0])
    async with db_pool.connection() as again:
        assert again is not conn
        await again.execute("SELECT 1")


async def test_connect_kwargs_and_default_error_logging(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    pool = Pool(database_url, min_size=1, max_size=2, connect_kwargs={"row_factory": dict_row})
    async with running(pool):
        async with pool.connection() as conn:
            assert await (await conn.execute("SELECT 1 AS one")).fetchone() == {"one": 1}
            app = await (await conn.execute("SHOW application_name")).fetchone()
            assert app == {"application_name": "innera"}
            await conn.close()
    assert "Unexpected DB pool error" in caplog.text
    assert any(r.name == "innera.db" and r.levelno == logging.ERROR for r in caplog.records)


async def test_random_cancellations_never_cost_a_connection(db_pool: Pool) -> None:
    """Many tasks whose requests are cancelled at random points (waiting for a
    connection, mid-query, mid-stream, mid-fetch): every connection is recovered."""
    errors: list[BaseException] = []
    db_pool._on_error = errors.append
    outcomes = {"ok": 0, "cancelled": 0}

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            with trio.move_on_after(rng.uniform(0, 0.04)) as scope:
                async with db_pool.connection() as conn:
                    k = rng.random()
                    if k < 0.3:
                        await conn.execute("SELECT pg_sleep(0.002)")
                    elif k < 0.6:
                        async with aclosing(conn.cursor().stream(
                                "SELECT repeat('x', 3000) FROM generate_series(1, 300)")) as rows:
                            async for _ in rows:
                                pass
                    else:
                        await (await conn.execute("SELECT generate_series(1, 2000)")).fetchall()
            outcomes["cancelled" if scope.cancelled_caught else "ok"] += 1

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(worker, i)
    assert outcomes["cancelled"] > 20 and outcomes["ok"] > 20, outcomes
    assert errors == []
    assert db_pool.stats()["active"] == 0
    for conn, _ in db_pool._idle:
        assert conn.info.transaction_status == IDLE and not conn.closed
