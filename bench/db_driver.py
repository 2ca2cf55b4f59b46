"""Throughput of the Trio PostgreSQL driver against sync psycopg in worker threads.

    .venv/bin/python bench/db_driver.py [--url URL] [--tasks 16] [--seconds 3]

For each workload (``SELECT 1`` and a ~1 KB row fetched by primary key), N concurrent Trio
tasks run queries for a fixed time through:

  (a)  TrioConnection, one connection per task;
  (a') TrioConnection through innera's Pool (max_size = N);
  (b)  sync psycopg, one connection per task, each query in ``trio.to_thread.run_sync``.

Then a micro-benchmark of the two ways to wait for "readable or writable" on one socket in
a single Trio task (innera.db.connection._wait_rw's nested epoll vs a two-task nursery).
Creates and drops a table ``innera_bench_<pid>`` in the target database.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import trio

from innera.db import connection as connection_module
from innera.db.connection import TrioConnection
from innera.db.pool import Pool

ROWS = 1000
TABLE = f"innera_bench_{os.getpid()}"
QUERIES = {
    "select1": ("SELECT 1", lambda: None),
    "row1k": (f"SELECT id, payload FROM {TABLE} WHERE id = %s",
              lambda: (random.randint(1, ROWS),)),
}


async def timed_loop(tasks: int, seconds: float,
                     make_worker: Callable[[int], Awaitable[Callable[[], Awaitable[Any]]]]
                     ) -> float:
    """Run ``tasks`` workers for ``seconds``; return requests per second."""
    count = 0
    ready = trio.Event()
    stop_at = 0.0

    async def worker(i: int) -> None:
        nonlocal count
        one = await make_worker(i)
        await ready.wait()
        while trio.current_time() < stop_at:
            await one()
            count += 1

    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(worker, i)
        await trio.sleep(0.5)  # connections opened
        stop_at = trio.current_time() + seconds
        ready.set()
    return count / seconds


async def bench_trio(url: str, query: str, params: Callable[[], Any], tasks: int,
                     seconds: float) -> float:
    conns: list[TrioConnection[Any]] = []

    async def make(i: int) -> Callable[[], Awaitable[Any]]:
        conn = await TrioConnection.connect(url, autocommit=True)
        conns.append(conn)

        async def one() -> Any:
            cur = await conn.execute(query, params())
            return await cur.fetchall()

        return one

    try:
        return await timed_loop(tasks, seconds, make)
    finally:
        for conn in conns:
            await conn.close()


async def bench_pool(url: str, query: str, params: Callable[[], Any], tasks: int,
                     seconds: float) -> float:
    pool = Pool(url, min_size=tasks, max_size=tasks)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)

        async def make(i: int) -> Callable[[], Awaitable[Any]]:
            async def one() -> Any:
                async with pool.connection() as conn:
                    cur = await conn.execute(query, params())
                    return await cur.fetchall()

            return one

        rate = await timed_loop(tasks, seconds, make)
        nursery.cancel_scope.cancel()
    return rate


async def bench_threads(url: str, query: str, params: Callable[[], Any], tasks: int,
                        seconds: float) -> float:
    conns: list[psycopg.Connection[Any]] = []
    limiter = trio.CapacityLimiter(tasks)

    async def make(i: int) -> Callable[[], Awaitable[Any]]:
        conn = await trio.to_thread.run_sync(
            lambda: psycopg.connect(url, autocommit=True), limiter=limiter)
        conns.append(conn)

        def run() -> Any:
            return conn.execute(query, params()).fetchall()

        async def one() -> Any:
            return await trio.to_thread.run_sync(run, limiter=limiter)

        return one

    try:
        return await timed_loop(tasks, seconds, make)
    finally:
        for conn in conns:
            conn.close()


async def bench_rw_wait(rounds: int = 20_000) -> tuple[float, float]:
    """µs per 'readable or writable' wait on an (immediately writable) socket."""
    a, b = socket.socketpair()
    a.setblocking(False)
    fileno = a.fileno()

    async def nursery_race() -> None:
        async def one(waiter: Any, scope: trio.CancelScope) -> None:
            await waiter(fileno)
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, trio.lowlevel.wait_readable, nursery.cancel_scope)
            nursery.start_soon(one, trio.lowlevel.wait_writable, nursery.cancel_scope)

    out = []
    for fn in (connection_module._wait_rw, None):
        t0 = time.perf_counter()
        for _ in range(rounds):
            if fn is None:
                await nursery_race()
            else:
                await fn(fileno)
        out.append((time.perf_counter() - t0) / rounds * 1e6)
    a.close()
    b.close()
    return out[0], out[1]


def setup_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, payload text NOT NULL)")
        conn.execute(f"INSERT INTO {TABLE} SELECT g, repeat(md5(g::text), 32)"
                     f" FROM generate_series(1, {ROWS}) g")  # 32 × 32 = 1024 chars
        conn.execute(f"ANALYZE {TABLE}")


def drop_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


async def main(url: str, tasks: int, seconds: float, repeat: int) -> None:
    print(f"{tasks} concurrent tasks, {seconds:g} s per run, best of {repeat};"
          f" psycopg {psycopg.__version__} ({psycopg.pq.__impl__},"
          f" libpq {psycopg.pq.version()}), trio {trio.__version__}, {os.cpu_count()} CPUs")
    drivers = {"(a) TrioConnection": bench_trio, "(a') Trio + Pool": bench_pool,
               "(b) sync + to_thread": bench_threads}
    for name, (query, params) in QUERIES.items():
        rates: dict[str, float] = {}
        for label, fn in drivers.items():
            rates[label] = max([await fn(url, query, params, tasks, seconds)
                                for _ in range(repeat)])
        base = rates["(b) sync + to_thread"]
        print(f"\n{name}: {query}")
        for label, rate in rates.items():
            print(f"  {label:<22} {rate:>9,.0f} req/s   ×{rate / base:.2f} vs (b)")
    epoll_us, nursery_us = await bench_rw_wait()
    print(f"\nWait.RW primitive: nested epoll {epoll_us:.1f} µs, two-task nursery"
          f" {nursery_us:.1f} µs per wait (×{nursery_us / epoll_us:.1f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get(
        "INNERA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    setup_table(args.url)
    try:
        trio.run(main, args.url, args.tasks, args.seconds, args.repeat)
    finally:
        drop_table(args.url)
