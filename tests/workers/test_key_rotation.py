"""Master key rotation end to end: ``innera keys rotate|status`` and the ``key-rotation`` worker,
against real PostgreSQL and Redis and the real server (restarted with new ``INNERA_MEK``s)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from psycopg.rows import dict_row

from innera import key_rotation as rotation
from innera.config import load_settings
from innera.crypto.data_keys import DataKeys
from innera.crypto.keyring import Keyring, LocalKeyProvider, parse_keyring
from innera.db.pool import Pool
from innera.jobs import tables
from innera.key_rotation import KEY_ROTATION_JOB
from innera.observability.metrics import Metrics
from innera.redis import Redis
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import ROOT, RunningServer, start_server
from workers.registry import JOB_KINDS

pytestmark = pytest.mark.timeout(90)

K1, K2, K3 = (base64.b64encode(os.urandom(32)).decode() for _ in range(3))
V1_ONLY = K1  # the plain form: one key, version 1
BOTH = f"2:{K2},1:{K1}"
V2_ONLY = f"2:{K2}"
JOB_ID = re.compile(r"key_rotation_jobs:[0-9a-f-]{36}")


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_AUTH": "1000/min", "RATE_LIMIT_USER": "10000/min"}


# --- helpers ------------------------------------------------------------------------------


async def start(nursery: trio.Nursery, settings: dict[str, str], mek: str, **extra: str
                ) -> RunningServer:
    return await start_server(nursery, load_settings({**settings, "INNERA_MEK": mek, **extra}))


async def stop(srv: RunningServer) -> None:
    await srv.client.aclose()
    assert await srv.stop() == 0


async def cli(settings: dict[str, str], mek: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``innera`` command, with the test's DATABASE_URL / REDIS_URL."""
    env = {k: v for k, v in os.environ.items() if k != "NODE_ENV"}
    env.update({**settings, "INNERA_MEK": mek, "LOG_LEVEL": "error"})
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "innera.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60))


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 20
                   ) -> None:
    with trio.move_on_after(timeout_s):
        while not await check():
            await trio.sleep(0.05)
        return
    pytest.fail(f"timed out waiting for {what}")


async def job_row(db: Pool, queue_id: str) -> dict[str, Any]:
    _, job_id = tables.parse_queue_job_id(JOB_KINDS, queue_id)
    async with db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT * FROM key_rotation_jobs WHERE id = %s", (job_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def wait_for_job(db: Pool, queue_id: str, status: str) -> dict[str, Any]:
    async def reached() -> bool:
        return (await job_row(db, queue_id))["status"] == status

    await wait_for(f"job {queue_id} {status}", reached)
    return await job_row(db, queue_id)


async def key_rows(db: Pool) -> dict[str, tuple[int, bytes, Any]]:
    """user id → (mek_version, wrapped_dek, updated_at)."""
    async with db.connection() as conn:
        cur = await conn.execute("SELECT user_id, mek_version, wrapped_dek, updated_at "
                                 "FROM user_keys ORDER BY user_id")
        return {str(u): (v, bytes(w), t) for u, v, w, t in await cur.fetchall()}


async def gauge(srv: RunningServer) -> float:
    text = (await srv.client.get("/metrics")).text
    found = re.search(r"^innera_key_rotation_progress (\S+)$", text, re.M)
    assert found, "innera_key_rotation_progress is not exported"
    return float(found.group(1))


async def write_entries(srv: RunningServer, users: int, per_user: int
                        ) -> dict[str, tuple[Account, str]]:
    """Sign ``users`` up and write entries; entry id → (author, body)."""
    written: dict[str, tuple[Account, str]] = {}
    for u in range(users):
        account = await signup(srv.client)
        for e in range(per_user):
            body = f"user {u}, entry {e}: {os.urandom(4).hex()}"
            r = await srv.client.post("/v1/entries", json={"body": body}, headers=account.auth)
            assert r.status_code == 201, r.text
            written[r.json()["id"]] = (account, body)
    return written


async def assert_all_readable(srv: RunningServer, written: dict[str, tuple[Account, str]]
                              ) -> None:
    for entry_id, (account, body) in written.items():
        r = await srv.client.get(f"/v1/entries/{entry_id}", headers=account.auth)
        assert r.status_code == 200, r.text
        assert r.json()["body"] == body


# --- tests --------------------------------------------------------------------------------


async def test_rotation_with_the_cli_then_the_old_key_can_go(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool) -> None:
    srv = await start(nursery, server_settings, V1_ONLY)
    written = await write_entries(srv, users=3, per_user=2)
    await stop(srv)
    assert {v for v, _, _ in (await key_rows(db_pool)).values()} == {1}

    srv = await start(nursery, server_settings, BOTH)
    await assert_all_readable(srv, written)  # the DEKs are cached from here on
    late = await signup(srv.client)  # a sign-up before the rotation gets version 2 already
    assert (await key_rows(db_pool))[late.id][0] == 2

    out = await cli(server_settings, BOTH, "keys", "rotate", "--to", "2")
    assert out.returncode == 0, out.stderr
    assert "3 data key(s) to re-wrap from master key version 1 to 2" in out.stdout
    found = JOB_ID.search(out.stdout)
    assert found, out.stdout
    row = await wait_for_job(db_pool, found.group(0), "completed")
    assert row["progress"] == 1 and row["from_version"] == 1 and row["to_version"] == 2
    assert await gauge(srv) == 1.0
    assert {v for v, _, _ in (await key_rows(db_pool)).values()} == {2}
    await assert_all_readable(srv, written)  # the cached DEKs did not change

    status = await cli(server_settings, BOTH, "keys", "status")
    assert status.returncode == 0, status.stderr
    assert "master key versions configured: 2, 1 (current: 2" in status.stdout
    assert "  version 2: 4 (current)\n  version 1: 0\n" in status.stdout
    assert "no data key uses version(s) 1: they can be removed from INNERA_MEK" in status.stdout
    assert f"latest rotation: {found.group(0)} version 1 -> 2: completed, progress 100%" \
        in status.stdout
    await stop(srv)

    # the old key removed: everything still decrypts, and the late user works too
    srv = await start(nursery, server_settings, V2_ONLY)
    await assert_all_readable(srv, written)
    r = await srv.client.post("/v1/entries", json={"body": "still here"}, headers=late.auth)
    assert r.status_code == 201
    await assert_all_readable(srv, {r.json()["id"]: (late, "still here")})
    await stop(srv)


async def test_a_rotation_stopped_half_way_continues_where_it_stopped(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool) -> None:
    srv = await start(nursery, server_settings, V1_ONLY)
    written = await write_entries(srv, users=4, per_user=1)
    await stop(srv)
    users = list(await key_rows(db_pool))  # by user id: the order of the batches

    # Batches of 2: the first batch goes through; the second waits on a row lock (a stand-in
    # for anything slow) until the server is stopped under it.
    settings = {**server_settings, "SHUTDOWN_TIMEOUT_S": "7"}  # workers get 2 s to finish
    srv = await start(nursery, settings, BOTH)
    async with db_pool.connection() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM user_keys WHERE user_id = %s FOR UPDATE",
                             (users[2],))
        svc = srv.services
        job = await rotation.start_rotation(svc.db, svc.redis, svc.data_keys.provider.versions,
                                            2, batch_size=2)

        async def first_batch_done() -> bool:
            return [v for v, _, _ in (await key_rows(db_pool)).values()] == [2, 2, 1, 1]

        await wait_for("the first batch", first_batch_done)
        row = await wait_for_job(db_pool, job.job_id, "running")
        await wait_for("progress 0.5", lambda: _progress_is(db_pool, job.job_id, 0.5))
        assert await gauge(srv) == 0.5
        first = await key_rows(db_pool)
        await stop(srv)
    row = await job_row(db_pool, job.job_id)
    assert row["status"] == "running" and row["attempts"] == 1  # interrupted, not failed

    srv = await start(nursery, settings, BOTH)
    row = await wait_for_job(db_pool, job.job_id, "completed")
    assert row["attempts"] == 2
    after = await key_rows(db_pool)
    assert [v for v, _, _ in after.values()] == [2, 2, 2, 2]
    for user in users[:2]:  # the first batch was not done again
        assert after[user] == first[user]
    await stop(srv)
    srv = await start(nursery, server_settings, V2_ONLY)
    await assert_all_readable(srv, written)
    await stop(srv)


async def _progress_is(db: Pool, queue_id: str, fraction: float) -> bool:
    return abs((await job_row(db, queue_id))["progress"] - fraction) < 1e-6


async def test_rotate_refuses_versions_it_cannot_use_with_exit_2(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool) -> None:
    srv = await start(nursery, server_settings, V1_ONLY)
    await signup(srv.client)
    await stop(srv)

    cases = {
        "unknown": (BOTH, "3", "master key version 3 is not configured in INNERA_MEK or "
                               "INNERA_MEK_KMS_KEY_ID (configured: 2, 1)"),
        "older": (BOTH, "1", "master key version 1 is not the newest configured version (2)"),
        "alone": (V2_ONLY, "2", "only master key version 2 is configured: configure the new "
                                "key beside the old one(s)"),
        "missing old": (f"3:{K3},2:{K2}", "3", "1 data key(s) are wrapped by master key "
                                               "version(s) 1, which neither INNERA_MEK nor "
                                               "INNERA_MEK_KMS_KEY_ID configures"),
    }
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    async def run(name: str, mek: str, version: str) -> None:
        results[name] = await cli(server_settings, mek, "keys", "rotate", "--to", version)

    async with trio.open_nursery() as runs:
        for name, (mek, version, _) in cases.items():
            runs.start_soon(run, name, mek, version)
    for name, (_, _, message) in cases.items():
        out = results[name]
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert f"innera: cannot rotate: {message}" in out.stderr, (name, out.stderr)
    assert await rotation.latest_rotation(db_pool) is None  # nothing was recorded

    status = await cli(server_settings, f"3:{K3},2:{K2}", "keys", "status")
    assert status.returncode == 0, status.stderr
    assert "version 1: 1 (NOT CONFIGURED: these data keys cannot be unwrapped)" \
        in status.stdout
    assert "latest rotation: none" in status.stdout


async def test_a_second_rotation_is_refused_while_one_is_unfinished(
        server_settings: dict[str, str], db_pool: Pool) -> None:
    # no server: nothing works on the queue, so the first rotation stays pending
    first = await cli(server_settings, BOTH, "keys", "rotate", "--to", "2")
    assert first.returncode == 0, first.stderr
    found = JOB_ID.search(first.stdout)
    assert found, first.stdout
    job_id = found.group(0)

    second = await cli(server_settings, BOTH, "keys", "rotate", "--to", "2")
    assert second.returncode == 1
    assert f"key rotation {job_id} (version 1 -> 2) is already pending (0%)" in second.stderr

    _, row_id = tables.parse_queue_job_id(JOB_KINDS, job_id)
    await tables.mark_running(db_pool, KEY_ROTATION_JOB, row_id)
    third = await cli(server_settings, BOTH, "keys", "rotate", "--to", "2")
    assert third.returncode == 1 and f"{job_id} (version 1 -> 2) is already running" \
        in third.stderr
    async with db_pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM key_rotation_jobs")
        assert await cur.fetchone() == (1,)

    status = await cli(server_settings, BOTH, "keys", "status")
    assert f"latest rotation: {job_id} version 1 -> 2: running, progress 0%" in status.stdout


async def test_a_worker_without_the_target_key_fails_the_job_and_changes_nothing(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool) -> None:
    srv = await start(nursery, server_settings, V1_ONLY)
    await write_entries(srv, users=2, per_user=0)
    await stop(srv)
    before = await key_rows(db_pool)

    srv = await start(nursery, server_settings, BOTH)  # this worker does not know version 3
    out = await cli(server_settings, f"3:{K3},{BOTH}", "keys", "rotate", "--to", "3")
    assert out.returncode == 0, out.stderr
    found = JOB_ID.search(out.stdout)
    assert found, out.stdout
    row = await wait_for_job(db_pool, found.group(0), "failed")
    assert row["attempts"] == 1  # permanent: not retried
    assert row["error"].startswith("master key version 3 is not configured in this process' "
                                   "INNERA_MEK or INNERA_MEK_KMS_KEY_ID (configured: 1, 2); "
                                   "nothing was re-wrapped")
    assert await key_rows(db_pool) == before
    await stop(srv)


async def test_a_data_key_that_does_not_unwrap_is_left_as_is_and_fails_the_job(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool,
        redis: Redis) -> None:
    srv = await start(nursery, server_settings, V1_ONLY)
    written = await write_entries(srv, users=3, per_user=1)
    await stop(srv)
    broken = next(iter(written.values()))[0]
    async with db_pool.connection() as conn:  # one wrapped key damaged (a flipped bit)
        await conn.execute("UPDATE user_keys SET wrapped_dek = set_byte(wrapped_dek, 20, "
                           "get_byte(wrapped_dek, 20) # 1) WHERE user_id = %s", (broken.id,))
    before = await key_rows(db_pool)

    srv = await start(nursery, server_settings, BOTH)
    job = await rotation.start_rotation(db_pool, redis, frozenset({1, 2}), 2)
    row = await wait_for_job(db_pool, job.job_id, "failed")
    assert row["attempts"] == 1
    assert row["error"] == (f"1 data key(s) did not unwrap and were left on their old master "
                            f"key version (users {broken.id}); 2 re-wrapped")
    after = await key_rows(db_pool)
    assert after[broken.id] == before[broken.id]  # untouched
    assert {v for user, (v, _, _) in after.items() if user != broken.id} == {2}
    assert await gauge(srv) == pytest.approx(2 / 3)
    healthy = {e: (a, b) for e, (a, b) in written.items() if a.id != broken.id}
    await assert_all_readable(srv, healthy)
    r = await srv.client.get(f"/v1/entries/{next(iter(written))}", headers=broken.auth)
    assert r.status_code == 500  # as before the rotation: that key was already broken
    assert r.json()["error"]["code"] == "crypto_error"
    await stop(srv)


async def test_a_data_key_written_behind_the_cursor_gets_a_second_pass(db_pool: Pool) -> None:
    stale = DataKeys(db_pool, LocalKeyProvider(Keyring(parse_keyring(V1_ONLY))), Metrics())
    both = LocalKeyProvider(Keyring(parse_keyring(BOTH)))

    async def new_user(user_id: str) -> None:
        async with db_pool.connection() as conn, conn.transaction():
            await conn.execute("INSERT INTO users (id, email, password_hash) "
                               "VALUES (%s, %s, 'x')", (user_id, f"{user_id}@example.com"))
            await stale.create(conn, user_id)

    for _ in range(4):
        await new_user(str(uuid.uuid4()))
    reports: list[float] = []
    behind = str(uuid.UUID(int=1))  # sorts before every user the first pass has passed

    async def progress(fraction: float) -> None:
        reports.append(fraction)
        if len(reports) == 2:  # after the first batch: an instance still on version 1 signs up
            await new_user(behind)

    state = await rotation.rewrap_all(db_pool, both, 2, batch_size=2, progress=progress)
    assert state.rewrapped == 5 and state.left_behind == 0 and not state.failed
    assert reports[0] == 0 and reports[-1] == 1.0
    assert reports == sorted(reports)
    rows = await key_rows(db_pool)
    assert {v for v, _, _ in rows.values()} == {2} and behind in rows
    v2_only = DataKeys(db_pool, LocalKeyProvider(Keyring(parse_keyring(V2_ONLY))), Metrics())
    for user in rows:
        # the DEK made at sign-up (still cached by the stale instance) opens with version 2
        assert await v2_only.get(user) == await stale.get(user)
