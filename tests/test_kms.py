"""The master key in AWS KMS (``INNERA_MEK_KMS_KEY_ID``), through a live innera server against
moto's KMS: entries written and read back across restarts, rotation from a local key to KMS
and back, a KMS that cannot be used (503 ``key_service_unavailable`` and one log line), and
wrapped keys bound to their user. What moto does not enforce (a disabled key) is listed in
``tests/fixtures/kms.py``."""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from psycopg.rows import dict_row

from innera import key_rotation as rotation
from innera.config import load_settings
from innera.crypto.data_keys import DataKeys
from innera.crypto.errors import KeyServiceUnavailable
from innera.crypto.keyring import KeyProviders, Keyring, LocalKeyProvider, parse_keyring
from innera.crypto.kms import open_kms_provider
from innera.db.pool import Pool
from innera.jobs import tables
from innera.observability.metrics import Metrics
from tests.fixtures.accounts import new_email, signup
from tests.fixtures.kms import Kms
from tests.fixtures.proxy import Proxy
from tests.fixtures.server import ROOT, RunningServer, server_environ, start_server
from tests.workers.test_key_rotation import assert_all_readable, write_entries
from workers.registry import JOB_KINDS

pytestmark = pytest.mark.timeout(120)

K1, K3 = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
JOB_ID = re.compile(r"key_rotation_jobs:[0-9a-f-]{36}")


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_AUTH": "1000/min", "RATE_LIMIT_USER": "10000/min"}


# --- helpers ------------------------------------------------------------------------------


def keys(mek: str = "", kms: str = "") -> dict[str, str]:
    """The master key variables (both always given: an empty one is unset)."""
    return {"INNERA_MEK": mek, "INNERA_MEK_KMS_KEY_ID": kms}


async def start(nursery: trio.Nursery, settings: dict[str, str], **extra: str
                ) -> RunningServer:
    return await start_server(nursery, load_settings({**settings, **extra}))


async def stop(srv: RunningServer) -> None:
    await srv.client.aclose()
    assert await srv.stop() == 0


async def cli(settings: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``innera`` command with the test's environment (AWS variables included)."""
    env = {k: v for k, v in os.environ.items() if k != "NODE_ENV"}
    env.update({**settings, "LOG_LEVEL": "error"})
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "innera.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60))


async def key_rows(db: Pool) -> dict[str, tuple[int, str, bytes]]:
    """user id → (mek_version, mek_provider, wrapped_dek)."""
    async with db.connection() as conn:
        cur = await conn.execute("SELECT user_id, mek_version, mek_provider, wrapped_dek "
                                 "FROM user_keys ORDER BY user_id")
        return {str(u): (v, p, bytes(w)) for u, v, p, w in await cur.fetchall()}


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 30
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


async def rotate(settings: dict[str, str], db: Pool, to_version: int) -> dict[str, Any]:
    """``innera keys rotate --to VERSION``, then wait for the job (run by the server) to end."""
    out = await cli(settings, "keys", "rotate", "--to", str(to_version))
    assert out.returncode == 0, out.stderr
    found = JOB_ID.search(out.stdout)
    assert found, out.stdout

    async def finished() -> bool:
        return (await job_row(db, found.group(0)))["status"] in ("completed", "failed")

    await wait_for(f"rotation to {to_version}", finished)
    return await job_row(db, found.group(0))


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of GET /metrics (0 when the series does not exist yet)."""
    shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}{{{shown}}} (\S+)$" if labels else rf"^{name} (\S+)$", text,
                      re.M)
    return float(found.group(1)) if found else 0.0


def kms_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "innera.crypto.kms"]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- tests --------------------------------------------------------------------------------


async def test_entries_written_with_kms_are_read_back_after_a_restart(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool,
        kms: Kms) -> None:
    settings = {**server_settings, **keys(kms=kms.key.arn)}
    srv = await start(nursery, settings)
    written = await write_entries(srv, users=2, per_user=2)
    await assert_all_readable(srv, written)
    await stop(srv)

    rows = await key_rows(db_pool)
    assert len(rows) == 2 and {(v, p) for v, p, _ in rows.values()} == {(1, "kms")}
    # no local master key was generated for the embedded default's sake
    data_dir = Path(settings["INNERA_DATA_DIR"])
    assert not (data_dir / "secrets" / "mek").exists()

    srv = await start(nursery, settings)  # a new process: no data key is cached
    await assert_all_readable(srv, written)
    await stop(srv)


async def test_another_users_encryption_context_does_not_unwrap(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool,
        kms: Kms) -> None:
    settings = {**server_settings, **keys(kms=kms.key.arn)}
    srv = await start(nursery, settings)
    alice_entries = await write_entries(srv, users=1, per_user=1)
    bob_entries = await write_entries(srv, users=1, per_user=1)
    await stop(srv)
    alice, bob = (next(iter(w.values()))[0] for w in (alice_entries, bob_entries))
    rows = await key_rows(db_pool)

    # KMS itself opens alice's wrapped key under her context only
    def decrypt(user_id: str) -> Any:
        return kms.client.decrypt(CiphertextBlob=rows[alice.id][2], KeyId=kms.key.arn,
                                  EncryptionContext={"innera": f"dek:{user_id}"})

    assert len((await trio.to_thread.run_sync(decrypt, alice.id))["Plaintext"]) == 32
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        await trio.to_thread.run_sync(decrypt, bob.id)
    assert info.value.response["Error"]["Code"] == "InvalidCiphertextException"

    # alice's wrapped key copied into bob's row: bob's entries fail as data that does not
    # open (500 crypto_error, counted), not as an unavailable key service
    async with db_pool.connection() as conn:
        await conn.execute("UPDATE user_keys SET wrapped_dek = %s WHERE user_id = %s",
                           (rows[alice.id][2], bob.id))
    srv = await start(nursery, settings)
    r = await srv.client.get(f"/v1/entries/{next(iter(bob_entries))}", headers=bob.auth)
    assert r.status_code == 500 and r.json()["error"]["code"] == "crypto_error"
    await assert_all_readable(srv, alice_entries)
    text = (await srv.client.get("/metrics")).text
    assert metric(text, "innera_crypto_errors_total", operation="decrypt") == 1
    assert "innera_key_service_errors_total{" not in text
    await stop(srv)


async def test_rotation_from_a_local_key_to_kms_and_back(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool,
        kms: Kms) -> None:
    local_v1, kms_v2, local_v3 = f"1:{K1}", f"2:{kms.key.arn}", f"3:{K3}"
    srv = await start(nursery, server_settings, **keys(mek=local_v1))
    written = await write_entries(srv, users=3, per_user=2)
    await stop(srv)
    assert {(v, p) for v, p, _ in (await key_rows(db_pool)).values()} == {(1, "local")}

    # local → KMS: the KMS key configured beside the local one, as the newer version
    both = {**server_settings, **keys(mek=local_v1, kms=kms_v2)}
    srv = await start(nursery, both)
    late = await signup(srv.client)  # new data keys are wrapped by KMS at once
    assert (await key_rows(db_pool))[late.id][:2] == (2, "kms")
    row = await rotate(both, db_pool, 2)
    assert row["status"] == "completed" and (row["from_version"], row["to_version"]) == (1, 2)
    assert {(v, p) for v, p, _ in (await key_rows(db_pool)).values()} == {(2, "kms")}
    status = await cli(both, "keys", "status")
    assert status.returncode == 0, status.stderr
    assert f"  version 2: 4 (current, AWS KMS key {kms.key.arn})\n  version 1: 0\n" \
        in status.stdout
    assert "no data key uses version(s) 1: they can be removed from INNERA_MEK\n" \
        in status.stdout
    await stop(srv)

    # the local key removed: KMS alone opens everything (nothing cached after the restart)
    kms_only = {**server_settings, **keys(kms=kms_v2)}
    srv = await start(nursery, kms_only)
    await assert_all_readable(srv, written)
    await stop(srv)

    # KMS → local: a new local key beside the KMS key, as the newer version
    back = {**server_settings, **keys(mek=local_v3, kms=kms_v2)}
    srv = await start(nursery, back)
    row = await rotate(back, db_pool, 3)
    assert row["status"] == "completed" and (row["from_version"], row["to_version"]) == (2, 3)
    assert {(v, p) for v, p, _ in (await key_rows(db_pool)).values()} == {(3, "local")}
    status = await cli(back, "keys", "status")
    assert "no data key uses version(s) 2: they can be removed from INNERA_MEK_KMS_KEY_ID" \
        in status.stdout
    await stop(srv)

    srv = await start(nursery, server_settings, **keys(mek=local_v3))
    await assert_all_readable(srv, written)
    r = await srv.client.get("/v1/me", headers=late.auth)
    assert r.status_code == 200
    await stop(srv)


@pytest.mark.parametrize(("mode", "codes"), [
    ("refuse", "ConnectionClosedError|EndpointConnectionError"),  # KMS unreachable
    ("hang", "ReadTimeoutError|Timeout"),  # KMS accepts and never answers
])
async def test_a_kms_that_cannot_be_reached_answers_503_until_it_is_back(
        nursery: trio.Nursery, server_settings: dict[str, str], kms: Kms,
        tcp_proxy: type[Proxy], caplog: pytest.LogCaptureFixture, mode: str,
        codes: str) -> None:
    moto = urlsplit(kms.endpoint)
    proxy = await tcp_proxy.start(moto.hostname or "127.0.0.1", moto.port or 80)
    kms.point_at(f"http://127.0.0.1:{proxy.port}")
    # no cache: every read asks KMS (as after a restart, or once the cached key expired)
    settings = {**server_settings, **keys(kms=kms.key.arn), "INNERA_DEK_CACHE_SIZE": "0",
                "DB_POOL_MAX": "1", "DB_POOL_MIN": "1"}
    srv = await start(nursery, settings)
    written = await write_entries(srv, users=1, per_user=1)
    entry_id, (account, body) = next(iter(written.items()))

    await proxy.cut(mode)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        r = await srv.client.get(f"/v1/entries/{entry_id}", headers=account.auth)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "key_service_unavailable"
    [line] = kms_lines(caplog)  # one line, and nothing else at error level
    assert errors_logged(caplog) == [line] and line.exc_info is None
    message = line.getMessage()
    assert "\n" not in message
    assert re.match(rf"AWS KMS Decrypt with key {re.escape(kms.key.arn)} failed: "
                    rf"({codes})\b", message), message
    code = re.search(rf"failed: ({codes})\b", message).group(1)  # type: ignore[union-attr]

    if mode == "refuse":  # (a hanging Encrypt takes the same deadline)
        caplog.clear()
        r = await srv.client.post("/v1/auth/signup", json={
            "email": new_email(), "password": "correct horse battery"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "key_service_unavailable"
        [line] = kms_lines(caplog)
        assert line.getMessage().startswith(f"AWS KMS Encrypt with key {kms.key.arn} failed: ")
    r = await srv.client.get("/v1/me", headers=account.auth)  # what needs no key still works
    assert r.status_code == 200

    if mode == "hang":
        # a sign-up waiting for a hanging KMS holds no pooled connection (the pool has one
        # here): the key is wrapped before the transaction, so other requests go on
        signup_done = trio.Event()

        async def sign_up() -> None:
            r = await srv.client.post("/v1/auth/signup", json={
                "email": new_email(), "password": "correct horse battery"})
            assert r.json()["error"]["code"] == "key_service_unavailable"
            signup_done.set()

        nursery.start_soon(sign_up)
        await trio.sleep(0.5)  # the sign-up is waiting for KMS (5 s deadline)
        r = await srv.client.get("/v1/me", headers=account.auth)
        assert r.status_code == 200 and not signup_done.is_set()
        with trio.fail_after(15):
            await signup_done.wait()
    text = (await srv.client.get("/metrics")).text
    assert metric(text, "innera_key_service_errors_total", operation="Decrypt", code=code) == 1
    assert metric(text, "innera_crypto_errors_total", operation="decrypt") == 0

    proxy.set_mode("pass")  # KMS is back: so are the entries
    r = await srv.client.get(f"/v1/entries/{entry_id}", headers=account.auth)
    assert r.status_code == 200 and r.json()["body"] == body
    await stop(srv)


async def test_a_kms_key_that_refuses_answers_503_naming_the_key_and_the_code(
        nursery: trio.Nursery, server_settings: dict[str, str], kms: Kms,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = await start(nursery, server_settings, **keys(kms=kms.key.arn))
    written = await write_entries(srv, users=1, per_user=1)
    await stop(srv)
    entry_id, (account, _) = next(iter(written.items()))

    # INNERA_MEK_KMS_KEY_ID changed to another key without a rotation: KMS refuses to
    # decrypt with it (moto answers AccessDeniedException, AWS IncorrectKeyException)
    other = kms.new_key()
    srv = await start(nursery, server_settings, **keys(kms=other.arn))
    caplog.clear()
    r = await srv.client.get(f"/v1/entries/{entry_id}", headers=account.auth)
    assert r.status_code == 503 and r.json()["error"]["code"] == "key_service_unavailable"
    [line] = kms_lines(caplog)
    assert line.getMessage().startswith(
        f"AWS KMS Decrypt with key {other.arn} failed: AccessDeniedException")
    await stop(srv)

    # a key that does not exist (deleted, or another account's): sign-ups cannot wrap
    missing = other.arn.replace(other.id, "0badc0de-0000-4000-8000-000000000000")
    srv = await start(nursery, server_settings, **keys(kms=missing))
    caplog.clear()
    r = await srv.client.post("/v1/auth/signup",
                              json={"email": new_email(), "password": "correct horse battery"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "key_service_unavailable"
    [line] = kms_lines(caplog)
    assert line.getMessage().startswith(
        f"AWS KMS Encrypt with key {missing} failed: NotFoundException")
    await stop(srv)


async def test_unusable_kms_settings_stop_the_start_with_a_message(
        database_url: str, redis_url: str, tmp_path: Path, kms: Kms,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = server_environ(database_url, redis_url, tmp_path / "data")
    # a bare key id and no region (boto3 reads AWS_DEFAULT_REGION, not AWS_REGION): no KMS
    # client can be made
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    out = await cli({**env, **keys(kms=kms.key.id)}, "serve")
    output = out.stdout + out.stderr
    assert out.returncode == 1, output
    assert f"no AWS KMS client for INNERA_MEK_KMS_KEY_ID key {kms.key.id}" in output
    assert "set AWS_DEFAULT_REGION" in output and "Traceback" not in output

    # version 1 both in the key the embedded default generated earlier and in KMS
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    secrets = tmp_path / "data" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "mek").write_text(f"1:{K1}\n")
    out = await cli({**env, **keys(kms=kms.key.arn)}, "keys", "status")
    assert out.returncode == 2
    assert (f"master key version 1 is configured twice (a local key (generated in "
            f"{secrets / 'mek'}) and AWS KMS key {kms.key.arn})") in out.stderr


async def test_signing_up_is_refused_cleanly_while_kms_is_unreachable_in_a_subprocess(
        spawn_server: Any, database_url: str, redis_url: str, tmp_path: Path, kms: Kms
) -> None:
    """The real ``innera serve``: the failure is one log line on its output (no traceback)."""
    with trio.socket.socket() as reserved:  # bound, never listening: connections are refused
        await reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        kms.point_at(f"http://127.0.0.1:{port}")
        env = server_environ(database_url, redis_url, tmp_path / "data",
                             INNERA_MEK_KMS_KEY_ID=kms.key.arn)
        srv = await trio.to_thread.run_sync(spawn_server, env)
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            r = await client.post("/v1/auth/signup", json={
                "email": new_email(), "password": "correct horse battery"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "key_service_unavailable"
        srv.proc.terminate()
        rest = await trio.to_thread.run_sync(srv.read_rest)
    assert srv.proc.wait(10) == 0
    lines = [line for line in rest.splitlines() if "AWS KMS" in line]
    assert len(lines) == 1, rest
    assert f"AWS KMS Encrypt with key {kms.key.arn} failed: EndpointConnectionError" in lines[0]
    assert "Traceback" not in rest


async def test_a_rotation_to_kms_while_kms_is_unreachable_changes_nothing(
        db_pool: Pool, kms: Kms, tcp_proxy: type[Proxy]) -> None:
    """The rotation's work itself (as the worker runs it), on real providers: a KMS that
    fails stops the batch in hand, and nothing of it is written."""
    local = LocalKeyProvider(Keyring(parse_keyring(f"1:{K1}")))
    keys = DataKeys(db_pool, local, Metrics())
    async with db_pool.connection() as conn, conn.transaction():
        for n in range(5):
            user_id = str(uuid.uuid4())
            await conn.execute("INSERT INTO users (id, email, password_hash) VALUES "
                               "(%s, %s, 'x')", (user_id, f"rot{n}-{user_id}@example.com"))
            await keys.create(conn, user_id)
    before = await key_rows(db_pool)

    moto = urlsplit(kms.endpoint)
    proxy = await tcp_proxy.start(moto.hostname or "127.0.0.1", moto.port or 80)
    kms.point_at(f"http://127.0.0.1:{proxy.port}")
    metrics = Metrics()
    both = KeyProviders([local, await open_kms_provider({2: kms.key.arn}, metrics)])
    proxy.set_mode("refuse")
    with pytest.raises(KeyServiceUnavailable):
        await rotation.rewrap_all(db_pool, both, 2, batch_size=2)
    assert await key_rows(db_pool) == before

    proxy.set_mode("pass")  # the retried attempt: everything moves to KMS
    state = await rotation.rewrap_all(db_pool, both, 2, batch_size=2)
    assert state.rewrapped == 5 and not state.failed and state.left_behind == 0
    after = await key_rows(db_pool)
    assert {(v, p) for v, p, _ in after.values()} == {(2, "kms")}
    kms_only = DataKeys(db_pool, KeyProviders([await open_kms_provider({2: kms.key.arn},
                                                                      metrics)]), metrics)
    for user_id in after:
        assert await kms_only.get(user_id) == await keys.get(user_id)
