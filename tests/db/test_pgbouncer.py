"""innera behind a real PgBouncer in transaction mode (pool size 4, ``tests/fixtures/
pgbouncer.py``) with the settings the README gives: DB_PREPARED_STATEMENTS=false and
DATABASE_MIGRATION_URL on a direct connection.

Issue 17: with prepared statements on, 475 of 480 requests answered 500 ("prepared statement
"_pg3_0" does not exist": psycopg prepares a query after 5 runs, on one server connection,
and PgBouncer runs the next transaction on another)."""

from __future__ import annotations

import random
from typing import Any

import httpx
import trio

from innera.config import load_settings
from innera.db.connection import TrioConnection
from tests.fixtures.accounts import Account, signup
from tests.fixtures.pgbouncer import POOL_SIZE, PgBouncer
from tests.fixtures.server import server_environ, start_server

ACCOUNTS = 3
REQUESTS_PER_ACCOUNT = 160  # 480 in all, as in the issue
CONCURRENCY_PER_ACCOUNT = 4


def _behind_pgbouncer(pgbouncer: PgBouncer, database_url: str, redis_url: str, data: Any,
                      **extra: str) -> dict[str, str]:
    return server_environ(
        pgbouncer.url_for(database_url), redis_url, data,
        DATABASE_MIGRATION_URL=database_url, DB_PREPARED_STATEMENTS="false", **extra)


async def _mixed_requests(client: httpx.AsyncClient, account: Account, count: int,
                          statuses: list[tuple[str, int, str]]) -> None:
    """``count`` requests of one account, reads and writes mixed, ``CONCURRENCY_PER_ACCOUNT``
    at a time; every answer's status is recorded."""
    rng = random.Random(account.id)
    ids: list[str] = []
    limiter = trio.CapacityLimiter(CONCURRENCY_PER_ACCOUNT)

    async def one(n: int) -> None:
        async with limiter:
            kind = "create" if not ids or n % 4 == 0 else rng.choice(["list", "read", "patch"])
            if kind == "create":
                r = await client.post("/v1/entries", headers=account.auth,
                                      json={"body": f"entry {n}", "tags": ["pgbouncer"]})
                if r.status_code == 201:
                    ids.append(r.json()["id"])
            elif kind == "list":
                r = await client.get("/v1/entries?limit=10", headers=account.auth)
            elif kind == "read":
                r = await client.get(f"/v1/entries/{rng.choice(ids)}", headers=account.auth)
            else:
                r = await client.patch(f"/v1/entries/{rng.choice(ids)}", headers=account.auth,
                                       json={"body": f"changed {n}"})
            statuses.append((kind, r.status_code, r.text[:200]))

    # The first request creates an entry that the later reads and patches can use.
    await one(0)
    async with trio.open_nursery() as nursery:
        for n in range(1, count):
            nursery.start_soon(one, n)


async def test_concurrent_reads_and_writes_behind_pgbouncer_transaction_mode_all_succeed(
    nursery: trio.Nursery, pgbouncer: PgBouncer, empty_database_url: str, redis_url: str,
    tmp_path: Any, http_server: str,
) -> None:
    """The issue's set-up (PgBouncer pool size 4, 480 requests from 3 accounts) with more
    innera connections (DB_POOL_MAX=10) than PgBouncer gives server connections: every
    request succeeds; the migrations ran on the direct connection at start-up."""
    env = _behind_pgbouncer(pgbouncer, empty_database_url, redis_url, tmp_path / "data",
                            DB_POOL_MIN="2", DB_POOL_MAX="10", DB_CONNECTION_TIMEOUT_MS="5000")
    srv = await start_server(nursery, load_settings(env))
    async with srv.client:
        accounts = [await signup(srv.client) for _ in range(ACCOUNTS)]
        statuses: list[tuple[str, int, str]] = []
        with trio.fail_after(90):
            async with trio.open_nursery() as load:
                for account in accounts:
                    load.start_soon(_mixed_requests, srv.client, account,
                                    REQUESTS_PER_ACCOUNT, statuses)
    await srv.stop()

    assert len(statuses) == ACCOUNTS * REQUESTS_PER_ACCOUNT
    failed = [s for s in statuses if s[1] >= 400]
    assert failed == [], f"{len(failed)} of {len(statuses)} failed, e.g. {failed[:3]}"
    assert {kind for kind, _, _ in statuses} == {"create", "list", "read", "patch"}
    async with await TrioConnection.connect(empty_database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM schema_migrations")
        assert (await cur.fetchone())[0] > 0  # type: ignore[index]  # migrated at start-up


async def test_a_timed_out_request_behind_pgbouncer_is_cancelled_and_its_connection_reused(
    nursery: trio.Nursery, pgbouncer: PgBouncer, database_url: str, redis_url: str,
    tmp_path: Any, http_server: str,
) -> None:
    """A request past REQUEST_TIMEOUT_S (3 s: sign-up hashes a password within it) whose
    query waits on a lock: 503 request_timeout, its query cancelled on the server (the
    cancel request goes through PgBouncer, with the key PgBouncer gave), and innera's one
    pooled connection to PgBouncer is kept and serves the next request."""
    env = _behind_pgbouncer(pgbouncer, database_url, redis_url, tmp_path / "data",
                            DB_POOL_MIN="1", DB_POOL_MAX="1", REQUEST_TIMEOUT_S="3")
    dbname = database_url.rsplit("/", 1)[1]
    srv = await start_server(nursery, load_settings(env))
    async with srv.client:
        account = await signup(srv.client)
        assert (await srv.client.get("/v1/entries", headers=account.auth)).status_code == 200
        clients_before = await trio.to_thread.run_sync(pgbouncer.clients, dbname)
        assert len(clients_before) == 1

        # A direct connection holds the table's lock in an open transaction.
        async with await TrioConnection.connect(database_url) as blocker:
            await blocker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
            r = await srv.client.get("/v1/entries", headers=account.auth)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "request_timeout"
            async with await TrioConnection.connect(database_url, autocommit=True) as probe:
                cur = await probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'", (dbname,))
                assert await cur.fetchone() == (0,), "the timed-out query still waits"
            await blocker.rollback()

        r = await srv.client.get("/v1/entries", headers=account.auth)
        assert r.status_code == 200, r.text
        # the same client connection: the pool kept it
        assert await trio.to_thread.run_sync(pgbouncer.clients, dbname) == clients_before
    await srv.stop()


def test_the_fixture_is_pgbouncer_in_transaction_mode(pgbouncer: PgBouncer) -> None:
    """What the tests above rely on, read back from PgBouncer itself."""
    with pgbouncer.console() as conn:
        cur = conn.cursor()
        cur.execute("SHOW CONFIG", prepare=False)
        config = {str(row[0]): str(row[1]) for row in cur.fetchall()}
    assert config["pool_mode"] == "transaction"
    assert config["default_pool_size"] == str(POOL_SIZE)
