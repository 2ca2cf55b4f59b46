"""Exports end to end over HTTP (``/v1/exports`` and the ``export-jobs`` worker), on the local
store and on S3 (moto): the archive follows docs/export-format.md, holds the entries'
plaintext and the attachments' bytes, is announced over the WebSocket and by an
``export.ready`` notification that names it without a link (also when pushed), is deleted
after EXPORT_RETENTION_DAYS (the export then shows ``expired``), and a failure inside the
work shows the user a fixed message; plus the streaming ZIP writer (``workers/archive.py``)."""

from __future__ import annotations

import io
import json
import logging
import os
import tracemalloc
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from innera.config import load_settings
from innera.exports import EXPORT_JOB
from innera.exports.sweeper import sweep_once
from innera.jobs import tables
from innera.queue.jobs import JobQueue
from innera.queue.worker import JobContext
from innera.storage import LocalStorage
from innera.storage.keys import job_file_key, object_key
from tests.fixtures.accounts import Account, signup
from tests.fixtures.push_provider import PushProviderDouble
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.server import RunningServer, start_server
from tests.fixtures.ws import WsClient
from tests.test_http import assert_error
from workers.archive import DEFLATED, ZIP32_COUNT_LIMIT, ZipWriter
from workers.exports import make_handler

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024
RELAXED_LIMITS = {"RATE_LIMIT_AUTH": "1000/min", "RATE_LIMIT_USER": "10000/min",
                  "RATE_LIMIT_ANON": "10000/min"}


@pytest.fixture(params=["local"])
def store(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["1"])
def workers(request: pytest.FixtureRequest) -> str:
    """INNERA_WORKERS of the server ("0": jobs stay pending)."""
    return request.param


@pytest.fixture
def server_settings(server_settings: dict[str, str], store: str, workers: str,
                    request: pytest.FixtureRequest) -> dict[str, str]:
    settings = {**server_settings, **RELAXED_LIMITS, "INNERA_WORKERS": workers}
    if store == "s3":
        settings.update(request.getfixturevalue("s3_bucket").env)
    return settings


no_workers = pytest.mark.parametrize("workers", ["0"], indirect=True)


# --- helpers ----------------------------------------------------------------------------------


async def create_entry(server: RunningServer, account: Account, **fields: Any
                       ) -> dict[str, Any]:
    r = await server.client.post("/v1/entries", json=fields, headers=account.auth)
    assert r.status_code == 201, r.text
    return r.json()


async def add_attachment(server: RunningServer, account: Account, entry_id: str, data: bytes,
                         *, filename: str, content_type: str, complete: bool = True
                         ) -> dict[str, Any]:
    """Declare, upload and complete an attachment through the attachments API."""
    r = await server.client.post(
        f"/v1/entries/{entry_id}/attachments", headers=account.auth,
        json={"filename": filename, "contentType": content_type, "size": len(data)})
    assert r.status_code == 201, r.text
    created = r.json()
    if not complete:
        return created["attachment"]
    put = await server.client.put(created["uploadUrl"], content=data,
                                  headers=created["uploadHeaders"])
    assert put.status_code in (200, 204), put.text
    done = await server.client.post(f"/v1/attachments/{created['attachment']['id']}/complete",
                                    headers=account.auth)
    assert done.status_code == 200, done.text
    return done.json()["attachment"]


async def start_export(server: RunningServer, account: Account, **kwargs: Any
                       ) -> dict[str, Any]:
    r = await server.client.post("/v1/exports", headers=account.auth, **kwargs)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/exports/{job['id']}"
    assert job["status"] in ("pending", "running", "completed")
    return job


async def wait_completed(server: RunningServer, account: Account, job_id: str,
                         timeout_s: float = 30) -> dict[str, Any]:
    with trio.fail_after(timeout_s):
        while True:
            r = await server.client.get(f"/v1/exports/{job_id}", headers=account.auth)
            assert r.status_code == 200, r.text
            job = r.json()
            assert job["status"] != "failed", job
            if job["status"] == "completed":
                return job
            await trio.sleep(0.05)


async def download(server: RunningServer, url: str) -> zipfile.ZipFile:
    """GET the link without credentials (absolute with S3, relative with the local store)."""
    r = await server.client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert archive.testzip() is None
    return archive


async def notifications(server: RunningServer, account: Account) -> list[dict[str, Any]]:
    r = await server.client.get("/v1/notifications", headers=account.auth)
    assert r.status_code == 200, r.text
    return [n for n in r.json()["items"] if n["kind"] == "export.ready"]


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


# --- the whole flow -----------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
async def test_export_round_trip_with_progress_notification_and_download(
        server: RunningServer, store: str, request: pytest.FixtureRequest) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    # created out of order: the archive orders by occurredAt, then id
    later = await create_entry(server, alice, title="Second", body="Zweiter Tag 🌧️\nline 2",
                               tags=["rain", "home"], mood="calm",
                               occurredAt="2024-05-02T08:00:00+02:00")
    first = await create_entry(server, alice, body="No title, no mood",
                               occurredAt="2024-05-01T18:30:00.250Z")
    same_time = [await create_entry(server, alice, body=f"tie {i}",
                                    occurredAt="2024-05-03T00:00:00Z") for i in range(2)]
    photo, pdf = os.urandom(300_000), os.urandom(1234)
    photo_att = await add_attachment(server, alice, later["id"], photo,
                                     filename="Beach day.png", content_type="image/png")
    pdf_att = await add_attachment(server, alice, later["id"], pdf, filename="Über.pdf",
                                   content_type="application/pdf")
    await add_attachment(server, alice, first["id"], b"never uploaded", filename="x.png",
                         content_type="image/png", complete=False)  # pending: not exported
    await create_entry(server, bob, body="bob's secret")

    host, port = server.url.removeprefix("http://").split(":")
    ws = await WsClient.connect(host, int(port), "/v1/ws", list(alice.auth.items()))
    started = await start_export(server, alice)
    job_id = started["id"]
    assert started["downloadUrl"] is None and started["progress"] < 1

    events: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while not events or events[-1]["status"] not in ("completed", "failed"):
            message = json.loads(await ws.receive())  # type: ignore[arg-type]
            if message["type"] == "job.progress" and message["data"]["id"] == job_id:
                events.append(message["data"])
    await ws.aclose()
    assert events[-1] == {"id": job_id, "kind": "export", "status": "completed",
                          "progress": 1.0, "error": None}
    assert [e["status"] for e in events[:-1]] == ["running"] * (len(events) - 1)
    assert len(events) >= 2
    fractions = [e["progress"] for e in events]
    assert fractions == sorted(fractions)

    job = await wait_completed(server, alice, job_id)
    assert job["progress"] == 1 and job["error"] is None and job["finishedAt"]
    assert job["expiresIn"] == 86400
    url = job["downloadUrl"]
    if store == "local":
        assert url.startswith(f"/v1/attachments/local/{alice.id}/exports/{job_id}?")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        assert url.startswith(f"{bucket.endpoint}/{bucket.name}/{alice.id}/exports/{job_id}?")
        assert bucket.keys(f"{alice.id}/exports/") == [f"{alice.id}/exports/{job_id}"]
    r = await server.client.get(url)
    requested = job["createdAt"][:10]  # the UTC date the export was asked for
    assert f'filename="innera-export-{requested}.zip"' in r.headers["content-disposition"]
    archive = await download(server, url)

    photo_path = f"attachments/{photo_att['id']}/Beach day.png"
    pdf_path = f"attachments/{pdf_att['id']}/Über.pdf"
    assert sorted(archive.namelist()) == sorted([photo_path, pdf_path, "innera-export.json"])
    assert archive.read(photo_path) == photo
    assert archive.read(pdf_path) == pdf
    document = json.loads(archive.read("innera-export.json").decode("utf-8"))
    assert set(document) == {"format", "version", "exportedAt", "entries"}
    assert (document["format"], document["version"]) == ("innera-export", 1)
    assert abs(parse_time(document["exportedAt"]) - datetime.now(UTC)) < timedelta(minutes=1)

    def expected(entry: dict[str, Any], attachments: list[dict[str, Any]]) -> dict[str, Any]:
        return {**entry, "attachments": attachments}

    ties = sorted(same_time, key=lambda e: e["id"])
    assert document["entries"] == [
        expected(first, []),
        expected(later, [
            {"id": photo_att["id"], "filename": "Beach day.png", "contentType": "image/png",
             "size": len(photo), "path": photo_path},
            {"id": pdf_att["id"], "filename": "Über.pdf", "contentType": "application/pdf",
             "size": len(pdf), "path": pdf_path}]),
        *[expected(e, []) for e in ties],
    ]
    assert "bob's secret" not in archive.read("innera-export.json").decode()

    # the notification, once, naming the export only: the app reads it for a fresh link
    ready = await notifications(server, alice)
    assert len(ready) == 1
    assert ready[0]["title"] and ready[0]["body"]
    assert ready[0]["data"] == {"exportId": job_id}
    r = await server.client.get(f"/v1/exports/{ready[0]['data']['exportId']}",
                                headers=alice.auth)
    again = await download(server, r.json()["downloadUrl"])
    assert again.read(photo_path) == photo

    # another user, unknown and malformed ids: 404 alike
    for path, account in ((job_id, bob), (str(uuid.uuid4()), alice), ("not-an-id", alice),
                          (job_id + "0", alice)):
        assert_error(await server.client.get(f"/v1/exports/{path}", headers=account.auth),
                     404, "not_found")
    assert (await server.client.get("/v1/exports", headers=bob.auth)).json() == {
        "items": [], "nextCursor": None}
    assert await notifications(server, bob) == []


async def test_an_empty_account_exports_an_empty_list(server: RunningServer) -> None:
    alice = await signup(server.client)
    job = await wait_completed(server, alice, (await start_export(server, alice, json={}))["id"])
    archive = await download(server, job["downloadUrl"])
    assert archive.namelist() == ["innera-export.json"]
    document = json.loads(archive.read("innera-export.json"))
    assert document["entries"] == [] and document["format"] == "innera-export"
    listed = (await server.client.get("/v1/exports", headers=alice.auth)).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert listed["items"][0]["status"] == "completed"


async def test_an_attachment_whose_object_is_gone_is_left_out(server: RunningServer) -> None:
    alice = await signup(server.client)
    entry = await create_entry(server, alice, body="two photos")
    kept, lost = os.urandom(1000), os.urandom(1000)
    kept_att = await add_attachment(server, alice, entry["id"], kept, filename="a.png",
                                    content_type="image/png")
    lost_att = await add_attachment(server, alice, entry["id"], lost, filename="b.png",
                                    content_type="image/png")
    await server.services.storage.delete(object_key(alice.id, entry["id"], lost_att["id"]))
    job = await wait_completed(server, alice, (await start_export(server, alice))["id"])
    archive = await download(server, job["downloadUrl"])
    assert sorted(archive.namelist()) == [f"attachments/{kept_att['id']}/a.png",
                                          "innera-export.json"]
    [exported] = json.loads(archive.read("innera-export.json"))["entries"]
    assert [a["id"] for a in exported["attachments"]] == [kept_att["id"]]


# --- submitting ---------------------------------------------------------------------------------


async def export_rows(server: RunningServer, user_id: str) -> int:
    async with server.services.db.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM export_jobs WHERE user_id = %s",
                                 (user_id,))
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@no_workers
async def test_an_unfinished_export_is_answered_instead_of_a_second_one(
        server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    results: list[str] = []

    async def post() -> None:
        results.append((await start_export(server, alice))["id"])

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(post)
    assert len(set(results)) == 1 and len(results) == 5
    assert await export_rows(server, alice.id) == 1
    job = (await server.client.get(f"/v1/exports/{results[0]}", headers=alice.auth)).json()
    assert job["status"] == "pending" and job["downloadUrl"] is None
    assert (await start_export(server, bob))["id"] != results[0]  # per user

    # once it is finished, a new export starts
    await tables.mark_completed(server.services.db, EXPORT_JOB, results[0])
    assert (await start_export(server, alice))["id"] != results[0]
    assert await export_rows(server, alice.id) == 2
    listed = (await server.client.get("/v1/exports?limit=1", headers=alice.auth)).json()
    assert listed["items"][0]["status"] == "pending" and listed["nextCursor"]
    rest = (await server.client.get(f"/v1/exports?limit=1&cursor={listed['nextCursor']}",
                                    headers=alice.auth)).json()
    assert [j["id"] for j in rest["items"]] == [results[0]] and rest["nextCursor"] is None
    assert_error(await server.client.get(f"/v1/exports?cursor={listed['nextCursor']}",
                                         headers=bob.auth), 400, "invalid_cursor")


@no_workers
async def test_bad_requests_start_nothing(server: RunningServer) -> None:
    alice = await signup(server.client)
    assert_error(await server.client.post("/v1/exports"), 401, "unauthorized")
    assert_error(await server.client.post("/v1/exports", headers=alice.auth, content=b"{nope"),
                 400, "invalid_json")
    body = assert_error(await server.client.post("/v1/exports", headers=alice.auth,
                                                 json={"format": "csv"}),
                        422, "validation_failed")
    assert body["error"]["details"][0]["field"] == "format"
    assert_error(await server.client.post("/v1/exports", headers=alice.auth, json=[]),
                 422, "validation_failed")
    assert await export_rows(server, alice.id) == 0


# --- at-least-once ------------------------------------------------------------------------------


async def claim(queue: JobQueue) -> Any:
    with trio.fail_after(10):
        while not (claimed := await queue.claim(1)):
            await trio.sleep(0.02)
    return claimed[0]


@no_workers
async def test_a_failed_attempt_stores_nothing_and_a_retry_notifies_once(
        server: RunningServer) -> None:
    svc = server.services
    alice = await signup(server.client)
    entry = await create_entry(server, alice, body="kept",
                               occurredAt="2024-01-01T00:00:00Z")
    photo = os.urandom(200_000)
    await add_attachment(server, alice, entry["id"], photo, filename="p.png",
                         content_type="image/png")
    broken = str(uuid.uuid4())  # content that does not decrypt, after the attachment
    async with svc.db.connection() as conn:
        await conn.execute(
            "INSERT INTO entries (id, user_id, content, occurred_at) VALUES (%s, %s, %s, %s)",
            (broken, alice.id, b"\x01" + os.urandom(40), datetime(2024, 1, 2, tzinfo=UTC)))
    job_id = (await start_export(server, alice))["id"]
    key = job_file_key(alice.id, "exports", job_id)

    # the handler on a queue of its own (the server runs no workers), delivered by hand
    queue = JobQueue(svc.redis, "test-exports", attempts=3, backoff_base_s=0.01)
    await queue.enqueue({}, job_id=tables.queue_job_id(EXPORT_JOB, job_id))
    handler = make_handler(svc)
    job = await claim(queue)
    with pytest.raises(Exception, match="decrypt"):
        await handler(job, JobContext(job, queue))
    assert await svc.storage.head(key) is None  # the stream failed: nothing stored
    row = await tables.get_job(svc.db, EXPORT_JOB, alice.id, job_id)
    assert row is not None and row["status"] == "running"  # attempts are left
    assert await queue.fail(job, "decrypt failed") == "retried"

    async with svc.db.connection() as conn:
        await conn.execute("DELETE FROM entries WHERE id = %s", (broken,))
    job = await claim(queue)
    await handler(job, JobContext(job, queue))
    assert await queue.complete(job)
    done = await wait_completed(server, alice, job_id)
    archive = await download(server, done["downloadUrl"])
    assert [e["body"] for e in json.loads(archive.read("innera-export.json"))["entries"]] == [
        "kept"]
    # a duplicate delivery of the finished job does nothing: still one notification
    await handler(job, JobContext(job, queue))
    ready = await notifications(server, alice)
    assert [n["data"]["exportId"] for n in ready] == [job_id]


# --- failures the user sees ---------------------------------------------------------------------


@no_workers
async def test_a_job_failing_inside_shows_a_fixed_message_and_logs_the_exception(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """A real failure inside the work (the store cannot create the archive's folder: a file is
    in the way) fails the job with ``job_failed`` and its fixed message, on the API and on the
    WebSocket; the exception's text, which names a path of the server, goes to the log."""
    svc = server.services
    alice = await signup(server.client)
    await create_entry(server, alice, body="x")
    storage = svc.storage
    assert isinstance(storage, LocalStorage)
    blocker = storage.root / alice.id / "exports"  # where the archive's folder would go
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")
    job_id = (await start_export(server, alice))["id"]

    host, port = server.url.removeprefix("http://").split(":")
    ws = await WsClient.connect(host, int(port), "/v1/ws", list(alice.auth.items()))
    queue = JobQueue(svc.redis, "test-exports", attempts=1)  # its one attempt is the last
    await queue.enqueue({}, job_id=tables.queue_job_id(EXPORT_JOB, job_id))
    job = await claim(queue)
    with caplog.at_level(logging.ERROR, logger="innera.jobs"), \
            pytest.raises(OSError) as raised:
        await make_handler(svc)(job, JobContext(job, queue))
    detail = str(raised.value)
    assert str(blocker) in detail  # what no user may read: a path of the server

    r = await server.client.get(f"/v1/exports/{job_id}", headers=alice.auth)
    failed = r.json()
    assert failed["status"] == "failed" and failed["errorCode"] == "job_failed"
    assert failed["error"] == "The job failed; try again later or contact support."
    assert failed["downloadUrl"] is None
    for secret in (detail, str(storage.root), "Errno", type(raised.value).__name__):
        assert secret not in r.text
    listed = (await server.client.get("/v1/exports", headers=alice.auth)).json()["items"]
    assert [(j["errorCode"], j["error"]) for j in listed] == [("job_failed", failed["error"])]
    with trio.fail_after(10):
        while True:
            message = json.loads(await ws.receive())  # type: ignore[arg-type]
            if message["type"] == "job.progress" and message["data"]["status"] == "failed":
                break
    await ws.aclose()
    assert message["data"]["error"] == failed["error"]
    assert message["data"]["errorCode"] == "job_failed"
    assert any(detail in rec.getMessage() and rec.exc_info and rec.exc_info[1] is raised.value
               for rec in caplog.records if rec.name == "innera.jobs")


# --- what leaves innera, and for how long ---------------------------------------------------------


async def test_the_push_for_a_ready_export_carries_its_id_and_no_link(
        nursery: trio.Nursery, server_settings: dict[str, str],
        push_provider: PushProviderDouble) -> None:
    """The ``export.ready`` push goes through a third party (Expo, FCM, a webhook): it names
    the export and carries no download link, signature or expiry; the app reads the export
    for a fresh link."""
    srv = await start_server(nursery, load_settings({
        **server_settings, "PUSH_PROVIDER": "webhook", "PUSH_URL": f"{push_provider.url}/push",
        "PUSH_ACCESS_TOKEN": "push-secret"}))
    async with srv.client:
        alice = await signup(srv.client)
        await create_entry(srv, alice, body="for the archive only")
        r = await srv.client.post("/v1/devices", headers=alice.auth,
                                  json={"platform": "ios", "pushToken": "tok-alice"})
        assert r.status_code in (200, 201), r.text
        job = await wait_completed(srv, alice, (await start_export(srv, alice))["id"])
        await push_provider.wait_for(lambda _: bool(push_provider.to_token("tok-alice")))
        r = await srv.client.get(f"/v1/exports/{job['id']}", headers=alice.auth)
        assert (await download(srv, r.json()["downloadUrl"])).namelist() == [
            "innera-export.json"]
    await srv.stop()
    [pushed] = push_provider.to_token("tok-alice")
    data = pushed.json()["data"]
    assert data["exportId"] == job["id"] and data["kind"] == "export.ready"
    assert set(data) == {"exportId", "kind", "notificationId"}
    text = pushed.body.decode()
    query = job["downloadUrl"].partition("?")[2]
    for leak in (query, "downloadUrl", "expiresAt", "/exports/", "http", "sig"):
        assert leak not in text, leak


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
async def test_an_archive_past_its_retention_is_deleted_and_the_export_shows_expired(
        server: RunningServer, store: str, request: pytest.FixtureRequest) -> None:
    svc = server.services
    bucket: S3Bucket | None = None
    if store == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        bucket.enable_versioning()
    alice, bob = await signup(server.client), await signup(server.client)
    await create_entry(server, alice, body="old news")
    await create_entry(server, bob, body="fresh")
    old = await wait_completed(server, alice, (await start_export(server, alice))["id"])
    recent = await wait_completed(server, bob, (await start_export(server, bob))["id"])
    old_key = job_file_key(alice.id, "exports", old["id"])
    recent_key = job_file_key(bob.id, "exports", recent["id"])
    # a redelivered export writes its archive again: on a versioned bucket, two versions
    await svc.storage.put_stream(old_key, one_chunk(b"zip"), content_type="application/zip")
    if bucket is not None:
        assert len(bucket.versions(old_key)) == 2

    days = svc.settings.jobs.export_retention_days
    assert days == 7  # EXPORT_RETENTION_DAYS' default
    async with svc.db.connection() as conn:  # made just over, and just under, the retention
        for job_id, age in ((old["id"], "1 minute"), (recent["id"], "-1 hour")):
            await conn.execute(
                "UPDATE export_jobs SET created_at = now() - make_interval(days => %s) "
                "- %s::interval - interval '1 minute', "
                "finished_at = now() - make_interval(days => %s) - %s::interval "
                "WHERE id = %s", (days, age, days, age, job_id))

    assert await sweep_once(svc.db, svc.storage, retention_days=days) == 1
    assert await svc.storage.head(old_key) is None
    if bucket is not None:
        assert bucket.versions(old_key) == []  # no version, no delete marker
    r = await server.client.get(f"/v1/exports/{old['id']}", headers=alice.auth)
    assert r.status_code == 200, r.text
    expired = r.json()
    assert expired["status"] == "expired" and expired["id"] == old["id"]
    assert expired["downloadUrl"] is None and expired["expiresIn"] is None
    assert expired["error"] is None and expired["errorCode"] is None
    listed = (await server.client.get("/v1/exports", headers=alice.auth)).json()
    assert [j["status"] for j in listed["items"]] == ["expired"]
    assert (await server.client.get(old["downloadUrl"])).status_code in (403, 404)

    # every instance sweeps: a second pass finds nothing to do
    assert await sweep_once(svc.db, svc.storage, retention_days=days) == 0
    # an export within its retention keeps its archive
    assert await svc.storage.head(recent_key) is not None
    r = await server.client.get(f"/v1/exports/{recent['id']}", headers=bob.auth)
    assert r.json()["status"] == "completed"
    assert (await download(server, r.json()["downloadUrl"])).namelist() == [
        "innera-export.json"]
    # and the user can export again
    again = await wait_completed(server, alice, (await start_export(server, alice))["id"])
    assert again["id"] != old["id"] and again["downloadUrl"]


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --- bounded memory -----------------------------------------------------------------------------


async def test_memory_stays_bounded_by_chunks_not_by_the_archive(server: RunningServer) -> None:
    """30 MiB of attachments: the export's peak of Python allocations (tracemalloc, which
    sees every bytes object, in any thread) grows by a few chunks, not by the archive. The
    event loop stays responsive meanwhile (a 10 ms ticker measures its worst lag)."""
    alice = await signup(server.client)
    blobs = [os.urandom(10 * MiB) for _ in range(3)]
    for i, blob in enumerate(blobs):
        entry = await create_entry(server, alice, body=f"entry {i}")
        await add_attachment(server, alice, entry["id"], blob, filename=f"v{i}.mp3",
                             content_type="audio/mpeg")
    for i in range(120):  # a few pages of entries too
        await create_entry(server, alice, body=f"more {i} " + "words " * 200)

    lag = 0.0

    async def ticker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal lag
        task_status.started()
        while True:
            before = trio.current_time()
            await trio.sleep(0.01)
            lag = max(lag, trio.current_time() - before - 0.01)

    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ticker)
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            job = await wait_completed(server, alice, (await start_export(server, alice))["id"])
            _, peak = tracemalloc.get_traced_memory()
            nursery.cancel_scope.cancel()
    finally:
        tracemalloc.stop()
    growth = peak - base
    print(f"export of 30 MiB: peak Python allocation growth {growth / MiB:.2f} MiB, "
          f"worst event-loop lag {lag * 1000:.0f} ms")
    assert growth < 4 * MiB
    archive = await download(server, job["downloadUrl"])
    assert sorted(archive.read(n) for n in archive.namelist() if n.endswith(".mp3")) == sorted(
        blobs)
    assert len(json.loads(archive.read("innera-export.json"))["entries"]) == 123


# --- the ZIP writer -----------------------------------------------------------------------------


def build(writer: ZipWriter, members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray()
    central = bytearray()
    moment = datetime(2024, 5, 1, 12, 30, 10, tzinfo=UTC)
    for name, data in members:
        out += writer.begin_streamed(name, moment, expected_size=len(data))
        out += writer.data(data)
        tail, record = writer.end()
        out += tail
        central += record
    assert writer.offset == len(out)
    offset = len(out)
    return bytes(out + central + writer.end_of_archive(offset, len(central)))


@pytest.mark.parametrize("force_zip64", [False, True])
def test_the_writer_makes_archives_zipfile_and_unzip_read(force_zip64: bool, tmp_path: Any
                                                          ) -> None:
    import zlib

    writer = ZipWriter(force_zip64=force_zip64)
    data = os.urandom(100_000)
    raw = b"text " * 10_000
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = compressor.compress(raw) + compressor.flush()
    moment = datetime(2024, 5, 1, 12, 30, 10, tzinfo=UTC)
    out = bytearray(writer.begin_streamed("attachments/ä/b.png", moment,
                                          expected_size=len(data)))
    out += writer.data(data[:5000]) + writer.data(data[5000:])
    tail, first = writer.end()
    out += tail
    out += writer.begin_known("innera-export.json", moment, method=DEFLATED,
                              crc=zlib.crc32(raw), compressed_size=len(deflated), size=len(raw))
    out += writer.data(deflated)
    tail, second = writer.end()
    assert tail == b""
    offset = len(out)
    out += first + second + writer.end_of_archive(offset, len(first + second))
    archive = zipfile.ZipFile(io.BytesIO(bytes(out)))
    assert archive.testzip() is None
    assert archive.read("attachments/ä/b.png") == data
    assert archive.read("innera-export.json") == raw
    info = archive.getinfo("innera-export.json")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    assert info.date_time == (2024, 5, 1, 12, 30, 10)
    assert (b"PK\x06\x06" in out) is force_zip64  # the ZIP64 end record
    path = tmp_path / "a.zip"
    path.write_bytes(bytes(out))
    if os.path.exists("/usr/bin/unzip"):
        import subprocess

        result = subprocess.run(["/usr/bin/unzip", "-t", str(path)], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_writer_switches_to_zip64_end_records_at_65535_members() -> None:
    count = ZIP32_COUNT_LIMIT + 10
    out = build(ZipWriter(), [(f"m{i}", b"x") for i in range(count)])
    assert b"PK\x06\x06" in out
    archive = zipfile.ZipFile(io.BytesIO(out))
    assert len(archive.infolist()) == count
    assert archive.read(f"m{count - 1}") == b"x"
