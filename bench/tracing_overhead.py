"""CPU cost of the tracing and named-query hooks, in process (no HTTP, no load generator):
what one request's transaction and one statement's hook add, per variant, in µs of CPU (of
the event loop's thread, and of the whole process: the SDK's sending thread too). On a loaded
machine this is steadier than req/s: the other processes' work is not counted.

    .venv/bin/python bench/sentry_sink.py &        # the loopback Sentry endpoint (port 9411)
    .venv/bin/python bench/tracing_overhead.py [--dsn http://key@127.0.0.1:9411/1]
        [--statements 3000] [--requests 5000] [--rounds 5]

Statements: ``SELECT 1`` on one connection to the local PostgreSQL (a database of its own),
through psycopg's own cursor (the code before named queries), then through innera's cursor
with tracing off, with the metrics hook, inside an unsampled transaction and inside a sampled
one (a span each). Requests: the pipeline's transaction around a request that runs three
hooks (a statement span, a Redis span, the outcome), tracing off, at rate 0.1 and at rate 1
(the SDK sending to ``--dsn``; its thread's CPU is counted too). Variants alternate within
each round; the medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import sentry_sdk
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from innera.api.pipeline import Pipeline  # noqa: E402
from innera.db.connection import TrioConnection  # noqa: E402
from innera.observability import tracing  # noqa: E402
from innera.observability.metrics import Metrics  # noqa: E402
from innera.observability.sentry import init_sentry  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SCOPE = {"type": "http", "method": "GET", "path": "/v1/entries/abc", "headers": [
    (b"host", b"127.0.0.1"), (b"authorization", b"Bearer x")]}


def sentry(dsn: str | None, rate: float) -> None:
    client = sentry_sdk.get_client()
    if client.is_active():
        client.flush(timeout=5)
        client.close()
    sentry_sdk.get_global_scope().set_client(None)
    init_sentry(dsn, environment="bench", release="bench", traces_sample_rate=rate)


async def cpu_us(fn: Callable[[], Awaitable[None]], n: int, *, flush_every: int = 0
                 ) -> tuple[float, float]:
    """µs of CPU per call of ``fn``: of the event loop's thread, and of the whole process
    (the SDK's sending thread too). With ``flush_every``, the SDK's queue is flushed that
    often inside the measurement: every event is serialised and sent, none is dropped for a
    full queue."""
    for _ in range(min(n, 200)):  # warm-up
        await fn()
    if flush_every:
        sentry_sdk.flush(timeout=10)
    process, thread = time.process_time(), time.thread_time()
    for i in range(1, n + 1):
        await fn()
        if flush_every and i % flush_every == 0:
            sentry_sdk.flush(timeout=10)
    if flush_every:
        sentry_sdk.flush(timeout=10)
    return ((time.thread_time() - thread) / n * 1e6, (time.process_time() - process) / n * 1e6)


async def statements(conn: TrioConnection[Any], n: int, dsn: str
                     ) -> dict[str, tuple[float, float]]:
    metrics = Metrics()

    async def plain() -> None:  # psycopg's cursor: what innera ran before named queries
        await psycopg.AsyncCursor(conn).execute("SELECT 1")

    async def named() -> None:
        await conn.execute("SELECT 1", name="bench.select")

    results: dict[str, tuple[float, float]] = {}
    conn.on_query = None
    sentry(None, 0)
    results["psycopg cursor (before)"] = await cpu_us(plain, n)
    results["named, tracing off, no hook"] = await cpu_us(named, n)
    conn.on_query = metrics.observe_query
    results["named + metrics, tracing off"] = await cpu_us(named, n)
    # a rate above 0 switches tracing on; 1e-9 samples (practically) nothing
    for label, rate in (("named + metrics, unsampled transaction", 1e-9),
                        ("named + metrics, sampled: a span each", 1.0)):
        sentry(dsn, rate)
        with tracing.job_transaction("bench", "bench:1", {}):
            results[label] = await cpu_us(named, n)
    sentry(None, 0)
    return results


async def requests(n: int, dsn: str) -> dict[str, tuple[float, float]]:
    async def request() -> None:
        with Pipeline.transaction(SCOPE):
            with tracing.span("db", "entries.read"):
                pass
            with tracing.span("db.redis", "EVALSHA"):
                pass
            tracing.set_request_outcome("GET", "/v1/entries/<entry_id>", 200, "u1")
        await trio.lowlevel.checkpoint()

    async def bare() -> None:  # the harness alone: what the hooks' figures include
        await trio.lowlevel.checkpoint()

    results: dict[str, tuple[float, float]] = {}
    sentry(None, 0)
    results["no hooks at all (the harness)"] = await cpu_us(bare, n)
    for label, d, rate in (("tracing off (no DSN)", None, 0.0),
                           ("DSN, rate 0 (tracing off)", dsn, 0.0),
                           ("traced, none sampled (rate 1e-9)", dsn, 1e-9),
                           ("rate 0.1", dsn, 0.1), ("rate 1", dsn, 1.0)):
        sentry(d, rate)
        results[label] = await cpu_us(request, n, flush_every=50 if d else 0)
    sentry(None, 0)
    return results


async def main(args: argparse.Namespace) -> None:
    db = f"innera_bench_tracing_{uuid.uuid4().hex[:8]}"
    async with await TrioConnection.connect(ADMIN, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{db}"', name="bench.create")
    try:
        url = ADMIN.rsplit("/", 1)[0] + "/" + db
        by_statement: dict[str, list[tuple[float, float]]] = {}
        by_request: dict[str, list[tuple[float, float]]] = {}
        async with await TrioConnection.connect(url, autocommit=True) as conn:
            for round_ in range(args.rounds):
                for k, v in (await statements(conn, args.statements, args.dsn)).items():
                    by_statement.setdefault(k, []).append(v)
                for k, v in (await requests(args.requests, args.dsn)).items():
                    by_request.setdefault(k, []).append(v)
                print(f"round {round_ + 1} done", flush=True)
    finally:
        async with await TrioConnection.connect(ADMIN, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE "{db}"', name="bench.drop")
    table(f"per statement (SELECT 1), × {args.statements}", by_statement)
    table(f"per request (transaction, 2 spans, outcome), × {args.requests}", by_request)


def table(title: str, rows: dict[str, list[tuple[float, float]]]) -> None:
    print(f"\n{title}: µs CPU, median of the rounds (each round)")
    print(f"  {'':<44} {'loop':>8} {'process':>8}")
    for k, v in rows.items():
        loop = statistics.median(x for x, _ in v)
        process = statistics.median(y for _, y in v)
        each = " / ".join(f"{x:.0f}" for _, x in v)
        print(f"  {k:<44} {loop:8.1f} {process:8.1f}   ({each})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="http://key@127.0.0.1:9411/1")
    parser.add_argument("--statements", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    trio.run(main, parser.parse_args())
