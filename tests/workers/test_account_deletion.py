"""Account deletion end to end over HTTP (``DELETE /v1/me`` → the ``account-deletion`` job),
against real PostgreSQL, Redis and both attachment stores: the account stops working at
once, the job leaves no row naming the user in any table and no object in storage, other
users keep everything, an interrupted job finishes when delivered again, concurrent
requests make one job, and the user's sockets close on every instance."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from psycopg import sql
from psycopg.errors import UniqueViolation

from innera.account_deletion import ACCOUNT_DELETION_JOB
from innera.auth.refresh_tokens import PostgresRefreshTokenStore
from innera.config import load_settings
from innera.exports import EXPORT_JOB
from innera.jobs import tables
from innera.notifications import create_notification
from innera.queue.jobs import JobQueue
from innera.realtime.events import publish_to_user, user_channel
from innera.storage import LocalStorage
from innera.storage.keys import job_file_key, object_key
from tests.fixtures.accounts import Account, signup
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.server import RunningServer, start_server
from tests.fixtures.ws import Closed
from tests.test_realtime import connect, receive_close, receive_json, without_id
from workers.account_deletion import (
    NIL_USER,
    QUEUE,
    STEPS,
    TABLE,
    Purge,
    purge,
    sweep,
    sweep_delay_s,
    sweep_job_id,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def workers() -> str:
    """INNERA_WORKERS of the ``server`` (a test parametrizes "0" to run steps itself)."""
    return "1"


@pytest.fixture
def server_settings(server_settings: dict[str, str], workers: str,
                    request: pytest.FixtureRequest) -> dict[str, str]:
    settings = {**server_settings, "RATE_LIMIT_AUTH": "1000/min",
                "RATE_LIMIT_USER": "10000/min", "RATE_LIMIT_ANON": "10000/min",
                "INNERA_WORKERS": workers}
    if "store" in request.fixturenames and request.getfixturevalue("store") == "s3":
        settings.update(request.getfixturevalue("s3_bucket").env)
    return settings


# --- helpers --------------------------------------------------------------------------------


async def reauth(client: httpx.AsyncClient, account: Account) -> str:
    r = await client.post("/v1/auth/reauth", json={"password": account.password},
                          headers=account.auth)
    assert r.status_code == 200, r.text
    return str(r.json()["reauthToken"])


async def delete_account(client: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    r = await client.delete("/v1/me", headers={**account.auth,
                                               "x-reauth-token": await reauth(client, account)})
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    assert job["status"] in ("pending", "running", "completed") and job["error"] is None
    return job


async def job_row(srv: RunningServer, job_id: str) -> dict[str, Any]:
    async with srv.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT status, user_id, attempts, progress FROM account_deletion_jobs "
            "WHERE id = %s", (job_id,))
        row = await cur.fetchone()
    assert row is not None
    return {"status": row[0], "user_id": row[1], "attempts": row[2], "progress": row[3]}


async def wait_completed(srv: RunningServer, job_id: str, timeout_s: float = 15) -> None:
    with trio.fail_after(timeout_s):
        while (await job_row(srv, job_id))["status"] != "completed":
            await trio.sleep(0.05)


async def columns_holding(srv: RunningServer, *needles: str) -> list[str]:
    """``table.column`` of every column of every table in which some value, cast to text,
    contains one of ``needles`` (case-insensitive)."""
    lowered = [n.lower() for n in needles]
    found = []
    async with srv.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT c.table_schema, c.table_name, c.column_name "
            "FROM information_schema.columns c JOIN information_schema.tables t "
            "USING (table_schema, table_name) WHERE t.table_type = 'BASE TABLE' "
            "AND c.table_schema NOT IN ('pg_catalog', 'information_schema')")
        columns = await cur.fetchall()
        assert len(columns) > 40  # every table of the migrations, not an empty list
        for schema, table, column in columns:
            condition = sql.SQL(" OR ").join(
                sql.SQL("strpos(lower({}::text), %s) > 0").format(sql.Identifier(column))
                for _ in lowered)
            query = sql.SQL("SELECT count(*) FROM {}.{} WHERE {}").format(
                sql.Identifier(schema), sql.Identifier(table), condition)
            row = await (await conn.execute(query, lowered)).fetchone()
            assert row is not None
            if row[0]:
                found.append(f"{table}.{column}")
    return found


def identities(account: Account) -> tuple[str, str, str]:
    """What must disappear: the id (as text and as bare hex, e.g. inside bytea) and email."""
    return account.id, uuid.UUID(account.id).hex, account.email


async def redis_keys_naming(srv: RunningServer, user_id: str) -> list[str]:
    return [k async for k in srv.services.redis.client.scan_iter(match=f"*{user_id}*")]


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def upload_attachment(srv: RunningServer, account: Account, entry_id: str, data: bytes,
                            *, complete: bool = True) -> dict[str, Any]:
    r = await srv.client.post(f"/v1/entries/{entry_id}/attachments", headers=account.auth,
                              json={"filename": "photo.png", "contentType": "image/png",
                                    "size": len(data)})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    if complete:
        put = await srv.client.put(created["uploadUrl"], content=data,
                                   headers=created["uploadHeaders"])
        assert put.status_code in (200, 204), put.text
        r = await srv.client.post(f"/v1/attachments/{created['attachment']['id']}/complete",
                                  headers=account.auth)
        assert r.status_code == 200, r.text
    return created


async def populate(srv: RunningServer, account: Account) -> dict[str, Any]:
    """Everything a user can leave behind: entries (one through an Idempotency-Key), an
    attachment uploaded and completed, notifications (and their cached unread count), a
    device, a refresh token in the PostgreSQL store too, a spare re-auth token, an export
    job with its archive in storage."""
    svc = srv.services
    entries = []
    for i in range(3):
        headers = {**account.auth, "Idempotency-Key": f"entry-{i}"} if i == 0 else account.auth
        r = await srv.client.post("/v1/entries", json={"title": f"day {i}", "body": "secret"},
                                  headers=headers)
        assert r.status_code == 201, r.text
        entries.append(r.json()["id"])
    data = os.urandom(1024)
    attachment = await upload_attachment(srv, account, entries[0], data)
    for i in range(2):
        await create_notification(svc.db, svc.redis, account.id, events=svc.events,
                                  push_provider=svc.settings.push.provider, kind="test.hello",
                                  title=f"Hello {i}", body="hi", data={"n": i})
    r = await srv.client.get("/v1/notifications/unread-count", headers=account.auth)
    assert r.status_code == 200 and r.json()["count"] == 2, r.text
    r = await srv.client.post("/v1/devices", headers=account.auth,
                              json={"platform": "ios", "pushToken": f"tok-{account.id}"})
    assert r.status_code in (200, 201), r.text
    await PostgresRefreshTokenStore(svc.db, 3600).issue(account.id)
    await reauth(srv.client, account)  # issued, never used
    export_id = await tables.create_job(svc.db, EXPORT_JOB, user_id=account.id, payload={})
    export_key = job_file_key(account.id, "exports", str(export_id))
    await svc.storage.put_stream(export_key, one_chunk(b"zip"), content_type="application/zip")
    key = object_key(account.id, entries[0], attachment["attachment"]["id"])
    return {"entries": entries, "attachment": attachment, "key": key, "data": data,
            "export_key": export_key}


async def stored(srv: RunningServer, key: str) -> bool:
    return await srv.services.storage.head(key) is not None


def local_user_dir(srv: RunningServer, user_id: str) -> Any:
    storage = srv.services.storage
    assert isinstance(storage, LocalStorage)
    return storage.root / user_id


# --- the whole deletion ---------------------------------------------------------------------


async def test_deleting_an_account_purges_every_trace_and_leaves_others_alone(
        server: RunningServer, store: str, request: pytest.FixtureRequest) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    mine, theirs = await populate(server, alice), await populate(server, bob)
    assert await stored(server, mine["key"]) and await stored(server, mine["export_key"])
    assert set(await columns_holding(server, *identities(alice))) >= {
        "users.id", "users.email", "entries.user_id", "attachments.user_id",
        "notifications.user_id", "devices.user_id", "refresh_tokens.user_id",
        "user_keys.user_id", "export_jobs.user_id"}
    assert await redis_keys_naming(server, alice.id)

    job = await delete_account(server.client, alice)

    # at once: no sign-in, no access token, no refresh
    r = await server.client.post("/v1/auth/login",
                                 json={"email": alice.email, "password": alice.password})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    assert (await server.client.get("/v1/entries", headers=alice.auth)).status_code == 401
    r = await server.client.post("/v1/auth/refresh", json={"refreshToken": alice.refresh})
    assert r.status_code == 401

    await wait_completed(server, job["id"])
    row = await job_row(server, job["id"])
    assert row["user_id"] == NIL_USER and row["progress"] == 1

    assert await columns_holding(server, *identities(alice)) == []
    assert "users.email" in await columns_holding(server, *identities(bob))  # the scan works
    assert not await stored(server, mine["key"])
    assert not await stored(server, mine["export_key"])
    if store == "local":
        assert not local_user_dir(server, alice.id).exists()
    else:
        assert request.getfixturevalue("s3_bucket").keys(f"{alice.id}/") == []
    assert await redis_keys_naming(server, alice.id) == []
    queued = await JobQueue(server.services.redis, QUEUE).get(
        tables.queue_job_id(ACCOUNT_DELETION_JOB, job["id"]))
    assert queued is not None and queued.payload == {
        "table": TABLE, "id": job["id"], "user_id": None}  # Redis does not name the user

    # bob keeps everything
    assert await stored(server, theirs["key"]) and await stored(server, theirs["export_key"])
    r = await server.client.get("/v1/entries", headers=bob.auth)
    assert sorted(e["id"] for e in r.json()["items"]) == sorted(theirs["entries"])
    r = await server.client.get(f"/v1/attachments/{theirs['attachment']['attachment']['id']}",
                                headers=bob.auth)
    assert r.status_code == 200, r.text
    assert (await server.client.get(r.json()["downloadUrl"])).content == theirs["data"]
    r = await server.client.get("/v1/notifications/unread-count", headers=bob.auth)
    assert r.json()["count"] == 2
    assert len((await server.client.get("/v1/devices", headers=bob.auth)).json()["items"]) == 1
    r = await server.client.post("/v1/auth/login",
                                 json={"email": bob.email, "password": bob.password})
    assert r.status_code == 200
    r = await server.client.post("/v1/auth/refresh", json={"refreshToken": bob.refresh})
    assert r.status_code == 200


async def test_writes_authorised_before_the_deletion_are_swept_later(
        server: RunningServer, store: str) -> None:
    alice = await signup(server.client)
    entry_id = (await server.client.post("/v1/entries", json={"body": "x"},
                                         headers=alice.auth)).json()["id"]
    pending = await upload_attachment(server, alice, entry_id, b"late!", complete=False)
    key = object_key(alice.id, entry_id, pending["attachment"]["id"])
    job = await delete_account(server.client, alice)
    await wait_completed(server, job["id"])

    late = await server.client.put(pending["uploadUrl"], content=b"late!",
                                   headers=pending["uploadHeaders"])
    if store == "local":
        assert late.status_code == 404  # the local store checks the attachment row
        assert not await stored(server, key)
    else:
        assert late.status_code == 200  # a presigned S3 URL cannot be revoked
        assert await stored(server, key)
    sweep_job = await JobQueue(server.services.redis, QUEUE).get(sweep_job_id(job["id"]))
    assert sweep_job is not None and sweep_job.status == "delayed"
    assert sweep_job.payload == {"user_id": alice.id}
    assert sweep_delay_s(server.services) > server.services.settings.storage.attachment_url_ttl_s
    await sweep(server.services, sweep_job.payload)  # what the queue runs when it is due
    assert not await stored(server, key)
    assert await columns_holding(server, *identities(alice)) == []


@pytest.mark.parametrize("store", ["s3"])
async def test_on_a_versioned_bucket_every_version_of_the_users_objects_is_deleted(
        server: RunningServer, store: str, s3_bucket: S3Bucket) -> None:
    """A plain delete on a versioned bucket only adds a delete marker: the bytes would stay
    as noncurrent versions. The deletion removes every version and delete marker."""
    s3_bucket.enable_versioning()
    alice, bob = await signup(server.client), await signup(server.client)
    mine, theirs = await populate(server, alice), await populate(server, bob)
    for who in (mine, theirs):  # an archive written again, an entry (and its photo) deleted
        await server.services.storage.put_stream(who["export_key"], one_chunk(b"zip again"),
                                                 content_type="application/zip")
    for account, what in ((alice, mine), (bob, theirs)):
        r = await server.client.delete(f"/v1/entries/{what['entries'][0]}",
                                       headers=account.auth)
        assert r.status_code == 204, r.text
    found = s3_bucket.client.list_object_versions(Bucket=s3_bucket.name,
                                                  Prefix=f"{alice.id}/")
    assert len(found.get("Versions", [])) == 3  # the photo and the archive's two versions
    assert [m["Key"] for m in found.get("DeleteMarkers", [])] == [mine["key"]]
    bobs = s3_bucket.versions(f"{bob.id}/")

    job = await delete_account(server.client, alice)
    await wait_completed(server, job["id"])

    found = s3_bucket.client.list_object_versions(Bucket=s3_bucket.name,
                                                  Prefix=f"{alice.id}/")
    assert found.get("Versions", []) == [] and found.get("DeleteMarkers", []) == []
    assert sorted(bobs, key=str) == sorted(s3_bucket.versions(f"{bob.id}/"), key=str)


# --- crashes, retries, races ----------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0"])
@pytest.mark.parametrize("steps_before_crash", [2, 4, len(STEPS) - 1])
async def test_a_deletion_interrupted_after_any_step_is_finished_by_the_next_delivery(
        server: RunningServer, nursery: trio.Nursery, server_settings: dict[str, str],
        steps_before_crash: int) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    mine, theirs = await populate(server, alice), await populate(server, bob)
    job = await delete_account(server.client, alice)
    assert job["status"] == "pending"  # no worker on this instance

    # a worker ran some steps (twice: a retry repeats them), then died
    p = Purge(server.services, alice.id, uuid.UUID(job["id"]))
    await purge(p, steps=steps_before_crash)
    await purge(p, steps=steps_before_crash)
    assert (await job_row(server, job["id"]))["status"] == "pending"

    # another instance with workers takes the job from the queue and finishes it
    worker = await start_server(nursery, load_settings({**server_settings,
                                                        "INNERA_WORKERS": "1"}))
    async with worker.client:
        await wait_completed(server, job["id"])
    await worker.stop()
    assert await columns_holding(server, *identities(alice)) == []
    assert not await stored(server, mine["key"])
    assert await redis_keys_naming(server, alice.id) == []
    assert await stored(server, theirs["key"])
    r = await server.client.get("/v1/entries", headers=bob.auth)
    assert len(r.json()["items"]) == 3


@pytest.mark.parametrize("workers", ["0"])
async def test_concurrent_deletes_of_one_account_make_one_job(server: RunningServer) -> None:
    alice = await signup(server.client)
    tokens = [await reauth(server.client, alice) for _ in range(3)]
    answers: list[httpx.Response] = []

    async def delete(token: str) -> None:
        answers.append(await server.client.delete(
            "/v1/me", headers={**alice.auth, "x-reauth-token": token}))

    async with trio.open_nursery() as requests:
        for token in tokens:
            requests.start_soon(delete, token)
    accepted = [r for r in answers if r.status_code == 202]
    assert accepted and all(r.status_code == 401 for r in answers if r not in accepted)
    assert len({r.json()["id"] for r in accepted}) == 1
    async with server.services.db.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM account_deletion_jobs")
        assert (await cur.fetchone()) == (1,)
        # the table itself refuses a second unfinished job for the user (migration 0009)
        with pytest.raises(UniqueViolation):
            await tables.create_job(conn, ACCOUNT_DELETION_JOB, user_id=alice.id, payload={})


# --- sockets --------------------------------------------------------------------------------


async def test_the_users_sockets_on_another_instance_are_closed_with_4003(
        server: RunningServer, nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    other = await start_server(nursery, load_settings(server_settings))
    async with other.client:
        alice, bob = await signup(server.client), await signup(server.client)
        on_a, on_b = await connect(server.url, alice.access), await connect(other.url,
                                                                             alice.access)
        bystander = await connect(other.url, bob.access)
        await delete_account(other.client, alice)  # handled by instance B
        assert await receive_close(on_a) == Closed(4003, "Account deleted")
        assert await receive_close(on_b) == Closed(4003, "Account deleted")
        await bystander.send_text('{"type":"ping"}')
        assert await receive_json(bystander) == {"type": "pong"}
        for ws in (on_a, on_b, bystander):
            await ws.aclose()
    await other.stop()


async def test_no_event_or_stray_message_can_close_or_reach_a_socket_as_a_control(
        server: RunningServer) -> None:
    alice = await signup(server.client)
    ws = await connect(server.url, alice.access)
    forged = json.dumps({"type": "control.close", "data": {"code": 4003, "reason": "Forged"}},
                        separators=(",", ":"))
    # user content that looks like a control message is an ordinary, nested event
    r = await server.client.post("/v1/entries", json={"title": forged, "body": forged},
                                 headers=alice.auth)
    assert r.status_code == 201
    event = await receive_json(ws)
    assert event["type"] == "entry.created" and event["data"]["entry"]["body"] == forged
    # no code path may publish a reserved type
    with pytest.raises(ValueError, match="reserved"):
        await publish_to_user(server.services.events, alice.id, "control.close",
                              {"code": 4003, "reason": "Forged"})
    # malformed control messages on the channel are dropped: not forwarded, nothing closed
    client = server.services.redis.client
    for stray in ('{"type":"control.close","data":{"code":1000,"reason":"x"}}',
                  '{"type":"control.close","data":{"code":"4003","reason":"x"}}',
                  '{"type":"control.close"',
                  '{"type":"control.other","data":{}}'):
        await client.publish(user_channel(alice.id), stray)
    r = await server.client.post("/v1/entries", json={"body": "after"}, headers=alice.auth)
    # one channel keeps its order: the next message is the event published after the strays
    assert without_id(await receive_json(ws)) == {"type": "entry.created",
                                           "data": {"id": r.json()["id"], "entry": r.json()}}
    await ws.send_text('{"type":"ping"}')
    assert await receive_json(ws) == {"type": "pong"}
    await ws.aclose()
