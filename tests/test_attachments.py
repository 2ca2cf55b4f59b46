"""Attachments end to end over HTTP, against both stores (local disk and S3 via moto):
declare → upload to the URL → complete → download URL → the same bytes."""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

import innera.app
from innera.api.bodies import StreamingUploadRequest
from innera.attachments import delete_entry_objects, sweep_once
from innera.storage import LocalStorage, S3Storage, content_disposition, sanitize_filename
from innera.storage.keys import object_key
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer
from tests.test_http import assert_error

#: ISO 8601 UTC, milliseconds, Z (innera.timestamps.iso_utc)
MOMENT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server_settings(server_settings: dict[str, str], store: str,
                    request: pytest.FixtureRequest) -> dict[str, str]:
    settings = {**server_settings, "RATE_LIMIT_AUTH": "1000/min",
                "RATE_LIMIT_USER": "10000/min", "RATE_LIMIT_ANON": "10000/min"}
    if store == "s3":
        settings.update(request.getfixturevalue("s3_bucket").env)
    return settings


# --- helpers ------------------------------------------------------------------------------


async def make_entry(server: RunningServer, account: Account) -> str:
    """An entry row inserted directly (sealed like the entries route seals it)."""
    entry_id = str(uuid.uuid4())
    svc = server.services
    sealed = svc.entry_cipher.seal_with(await svc.data_keys.get(account.id), account.id, entry_id,
                                        {"title": "t", "body": "b", "tags": [], "mood": None})
    async with svc.db.connection() as conn:
        await conn.execute("INSERT INTO entries (id, user_id, content) VALUES (%s, %s, %s)",
                           (entry_id, account.id, sealed))
    return entry_id


async def declare(server: RunningServer, account: Account, entry_id: str, *,
                  filename: str = "photo.png", content_type: str = "image/png",
                  size: int = 5, status: int = 201) -> dict[str, Any]:
    r = await server.client.post(
        f"/v1/entries/{entry_id}/attachments", headers=account.auth,
        json={"filename": filename, "contentType": content_type, "size": size})
    assert r.status_code == status, r.text
    return r.json()


async def upload(server: RunningServer, created: dict[str, Any], data: bytes,
                 content_type: str | None = None) -> httpx.Response:
    """A plain PUT to the upload URL (absolute for S3, relative to the API for local)."""
    assert created["uploadMethod"] == "PUT"
    headers = dict(created["uploadHeaders"])
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await server.client.put(created["uploadUrl"], content=data, headers=headers)


async def stored_size(server: RunningServer, account: Account, entry_id: str,
                      attachment_id: str) -> int | None:
    return await server.services.storage.head(object_key(account.id, entry_id, attachment_id))


async def row_count(server: RunningServer, where: str, *args: Any) -> int:
    async with server.services.db.connection() as conn:
        cur = await conn.execute(f"SELECT count(*) FROM attachments WHERE {where}", args)
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return parts._replace(query=urlencode(query)).geturl()


# --- the flow -------------------------------------------------------------------------------


async def test_upload_complete_download_round_trip(server: RunningServer, store: str) -> None:
    storage = server.services.storage
    assert isinstance(storage, LocalStorage if store == "local" else S3Storage)
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    data = os.urandom(4096)

    created = await declare(server, alice, entry_id, filename="Beach day.png", size=len(data))
    assert set(created) == {"attachment", "uploadUrl", "uploadMethod", "uploadHeaders",
                            "expiresIn"}
    att = created["attachment"]
    assert att["entryId"] == entry_id and att["status"] == "pending"
    assert MOMENT.fullmatch(att["createdAt"]) and MOMENT.fullmatch(att["updatedAt"])
    assert att["filename"] == "Beach day.png" and att["contentType"] == "image/png"
    assert att["size"] == len(data) and created["expiresIn"] == 900
    assert created["uploadHeaders"] == {"Content-Type": "image/png"}
    if store == "s3":
        url = urlsplit(created["uploadUrl"])
        assert url.path == f"/{storage.bucket}/{alice.id}/{entry_id}/{att['id']}"
        assert "X-Amz-Signature" in url.query and "content-length" in url.query
    else:
        assert created["uploadUrl"].startswith(
            f"/v1/attachments/local/{alice.id}/{entry_id}/{att['id']}?")

    put = await upload(server, created, data)
    assert put.status_code in (200, 204), put.text
    assert await stored_size(server, alice, entry_id, att["id"]) == len(data)

    done = await server.client.post(f"/v1/attachments/{att['id']}/complete",
                                    headers=alice.auth)
    assert done.status_code == 200, done.text
    assert done.json()["attachment"]["status"] == "ready"
    again = await server.client.post(f"/v1/attachments/{att['id']}/complete",
                                     headers=alice.auth)
    assert again.status_code == 200 and again.json()["attachment"]["status"] == "ready"

    got = await server.client.get(f"/v1/attachments/{att['id']}", headers=alice.auth)
    assert got.status_code == 200, got.text
    body = got.json()
    assert set(body) == {"attachment", "downloadUrl", "expiresIn"}
    assert body["attachment"]["status"] == "ready"
    download = await server.client.get(body["downloadUrl"])
    assert download.status_code == 200, download.text
    assert download.content == data
    assert download.headers["content-type"] == "image/png"
    assert download.headers["content-disposition"] == 'attachment; filename="Beach day.png"'

    listed = await server.client.get(f"/v1/entries/{entry_id}/attachments", headers=alice.auth)
    assert listed.status_code == 200
    assert listed.json() == {"items": [body["attachment"]], "nextCursor": None}


async def test_complete_before_upload_and_size_mismatch_are_409(server: RunningServer) -> None:
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    created = await declare(server, alice, entry_id, size=10)
    att_id = created["attachment"]["id"]
    r = await server.client.post(f"/v1/attachments/{att_id}/complete", headers=alice.auth)
    assert_error(r, 409, "upload_incomplete")
    pending = await server.client.get(f"/v1/attachments/{att_id}", headers=alice.auth)
    assert_error(pending, 409, "attachment_not_ready")

    # a body of another size: the local store refuses it (S3 refuses a PUT whose signed
    # Content-Length differs; moto does not check), and complete sees no object of that size
    put = await upload(server, created, b"12345")
    if isinstance(server.services.storage, LocalStorage):
        assert_error(put, 400, "size_mismatch")
        assert await stored_size(server, alice, entry_id, att_id) is None
    r = await server.client.post(f"/v1/attachments/{att_id}/complete", headers=alice.auth)
    body = assert_error(r, 409, "upload_incomplete")
    if isinstance(server.services.storage, S3Storage):
        assert body["error"]["details"] == {"expectedSize": 10, "actualSize": 5}
    listed = await server.client.get(f"/v1/entries/{entry_id}/attachments", headers=alice.auth)
    assert [a["status"] for a in listed.json()["items"]] == ["pending"]


async def test_content_type_and_size_limits(server: RunningServer) -> None:
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    for content_type in ("text/html", "image/svg+xml", "application/octet-stream", ""):
        r = await server.client.post(
            f"/v1/entries/{entry_id}/attachments", headers=alice.auth,
            json={"filename": "x", "contentType": content_type, "size": 1})
        body = assert_error(r, 422, "validation_failed")
        assert body["error"]["details"][0]["field"] == "contentType"
    ok = await declare(server, alice, entry_id, content_type=" Audio/MPEG ", size=1)
    assert ok["attachment"]["contentType"] == "audio/mpeg"

    # declared size past ATTACHMENT_MAX_BYTES: 422 on the field (413 is for bodies)
    maximum = server.services.settings.storage.attachment_max_bytes
    assert maximum == 25 * MiB
    await declare(server, alice, entry_id, size=maximum, status=201)
    for size in (maximum + 1, 0, -1):
        r = await server.client.post(
            f"/v1/entries/{entry_id}/attachments", headers=alice.auth,
            json={"filename": "x.pdf", "contentType": "application/pdf", "size": size})
        body = assert_error(r, 422, "validation_failed")
        assert body["error"]["details"][0]["field"] == "size"
    r = await server.client.post(
        f"/v1/entries/{entry_id}/attachments", headers=alice.auth,
        json={"filename": "x.pdf", "contentType": "application/pdf", "size": "5"})
    assert_error(r, 422, "validation_failed")


async def test_filenames_are_sanitised(server: RunningServer) -> None:
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    cases = {
        "../../etc/passwd": "passwd",
        "..\\..\\windows\\win.ini": "win.ini",
        "a\x00b\x1fc\x7f\u202egnp.exe": "abcgnp.exe",
        'quo"te;<x>.png': "quo_te__x_.png",
        "  ..  ": "attachment",
        "/": "attachment",
        "Été à Paris.jpg": "Été à Paris.jpg",
    }
    for raw, expected in cases.items():
        created = await declare(server, alice, entry_id, filename=raw, size=1)
        assert created["attachment"]["filename"] == expected, raw
    long = await declare(server, alice, entry_id, filename="x" * 600 + ".png", size=1)
    assert len(long["attachment"]["filename"]) == 255
    assert long["attachment"]["filename"].endswith("x.png")


def test_sanitize_filename_and_content_disposition() -> None:
    assert sanitize_filename("../../etc/passwd") == "passwd"
    assert sanitize_filename("a\tb\nc.pdf") == "abc.pdf"  # control characters go
    assert sanitize_filename("") == "attachment"
    assert sanitize_filename(".bashrc") == "bashrc"
    assert content_disposition("report.pdf") == 'attachment; filename="report.pdf"'
    assert content_disposition("Été.pdf") == (
        "attachment; filename=\"_t_.pdf\"; filename*=UTF-8''%C3%89t%C3%A9.pdf")


async def test_delete_removes_object_and_row(server: RunningServer) -> None:
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    created = await declare(server, alice, entry_id, size=3)
    att_id = created["attachment"]["id"]
    assert (await upload(server, created, b"abc")).status_code in (200, 204)
    assert await stored_size(server, alice, entry_id, att_id) == 3

    r = await server.client.delete(f"/v1/attachments/{att_id}", headers=alice.auth)
    assert r.status_code == 204, r.text
    assert await stored_size(server, alice, entry_id, att_id) is None
    assert await row_count(server, "id = %s", att_id) == 0
    for method, path in (("GET", f"/v1/attachments/{att_id}"),
                         ("DELETE", f"/v1/attachments/{att_id}"),
                         ("POST", f"/v1/attachments/{att_id}/complete")):
        assert_error(await server.client.request(method, path, headers=alice.auth),
                     404, "not_found")
    # a still-valid upload URL of the deleted attachment stores nothing (local store)
    if isinstance(server.services.storage, LocalStorage):
        assert_error(await upload(server, created, b"abc"), 404, "not_found")
        assert await stored_size(server, alice, entry_id, att_id) is None


async def test_delete_entry_objects_and_cascade(server: RunningServer) -> None:
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    other_entry = await make_entry(server, alice)
    ids = []
    for payload, complete in ((b"one", True), (b"two!", False)):
        created = await declare(server, alice, entry_id, size=len(payload))
        assert (await upload(server, created, payload)).status_code in (200, 204)
        ids.append(created["attachment"]["id"])
        if complete:
            r = await server.client.post(f"/v1/attachments/{ids[-1]}/complete",
                                         headers=alice.auth)
            assert r.status_code == 200
    kept = await declare(server, alice, other_entry, size=1)
    assert (await upload(server, kept, b"k")).status_code in (200, 204)

    assert await delete_entry_objects(server.services.storage, alice.id, entry_id) == 2
    for att_id in ids:
        assert await stored_size(server, alice, entry_id, att_id) is None
    assert await stored_size(server, alice, other_entry, kept["attachment"]["id"]) == 1
    assert await delete_entry_objects(server.services.storage, alice.id, entry_id) == 0
    assert await delete_entry_objects(server.services.storage, alice.id, "not-a-uuid") == 0

    async with server.services.db.connection() as conn:
        await conn.execute("DELETE FROM entries WHERE id = %s", (entry_id,))
    assert await row_count(server, "entry_id = %s", entry_id) == 0
    assert await row_count(server, "entry_id = %s", other_entry) == 1


async def test_deleting_an_entry_over_http_removes_its_objects_and_rows(
    server: RunningServer,
) -> None:
    alice = await signup(server.client)
    entry = await server.client.post("/v1/entries", json={"body": "with a photo"},
                                     headers=alice.auth)
    entry_id = entry.json()["id"]
    created = await declare(server, alice, entry_id, size=3)
    assert (await upload(server, created, b"abc")).status_code in (200, 204)
    att_id = created["attachment"]["id"]
    r = await server.client.delete(f"/v1/entries/{entry_id}", headers=alice.auth)
    assert r.status_code == 204
    assert await stored_size(server, alice, entry_id, att_id) is None
    assert await row_count(server, "entry_id = %s", entry_id) == 0
    r = await server.client.get(f"/v1/attachments/{att_id}", headers=alice.auth)
    assert r.status_code == 404


async def test_other_users_and_malformed_ids_are_404(server: RunningServer) -> None:
    alice = await signup(server.client)
    mallory = await signup(server.client)
    entry_id = await make_entry(server, alice)
    created = await declare(server, alice, entry_id, size=1)
    att_id = created["attachment"]["id"]
    assert (await upload(server, created, b"x")).status_code in (200, 204)
    body = {"filename": "a.png", "contentType": "image/png", "size": 1}
    unknown = str(uuid.uuid4())
    for who in (mallory, alice):
        for ent, att in ((entry_id, att_id), (unknown, unknown), ("nope", "1234"),
                         (entry_id.upper() + "0", att_id + "0")):
            if who is alice and ent == entry_id:
                continue
            calls = [("POST", f"/v1/entries/{ent}/attachments", body),
                     ("GET", f"/v1/entries/{ent}/attachments", None),
                     ("POST", f"/v1/attachments/{att}/complete", None),
                     ("GET", f"/v1/attachments/{att}", None),
                     ("DELETE", f"/v1/attachments/{att}", None)]
            for method, path, payload in calls:
                r = await server.client.request(method, path, headers=who.auth, json=payload)
                assert_error(r, 404, "not_found")
    # nothing happened to alice's attachment
    assert await stored_size(server, alice, entry_id, att_id) == 1
    r = await server.client.post(f"/v1/attachments/{att_id}/complete", headers=alice.auth)
    assert r.status_code == 200
    assert_error(await server.client.get(f"/v1/attachments/{att_id}"), 401, "unauthorized")


# --- the local store's signed URLs ----------------------------------------------------------


local_only = pytest.mark.parametrize("store", ["local"])  # signed innera URLs: local store


@local_only
async def test_local_urls_tampered_or_expired_are_403_and_write_nothing(
        server: RunningServer) -> None:
    storage = server.services.storage
    assert isinstance(storage, LocalStorage)
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    created = await declare(server, alice, entry_id, size=4)
    att_id = created["attachment"]["id"]
    url = created["uploadUrl"]
    path = storage.path_of(object_key(alice.id, entry_id, att_id))

    tampered = [with_query(url, size="5"), with_query(url, exp=str(int(time.time()) + 99999)),
                with_query(url, ct="application/pdf"), with_query(url, sig="A" * 43),
                url.split("?")[0], url.replace(att_id, str(uuid.uuid4()))]
    for bad in tampered:
        r = await server.client.put(bad, content=b"abcd", headers={"Content-Type": "image/png"})
        assert_error(r, 403, "invalid_signature")
    # the right URL with another Content-Type than signed
    r = await upload(server, created, b"abcd", content_type="application/pdf")
    assert_error(r, 403, "invalid_signature")
    # a body longer than signed: 413 before anything is kept
    r = await upload(server, created, b"abcde")
    assert_error(r, 413, "payload_too_large")

    # an expired URL (signed an hour ago, valid 900 s)
    real_clock = storage.clock
    storage.clock = lambda: real_clock() - 3600
    try:
        old = await declare(server, alice, entry_id, size=4)
    finally:
        storage.clock = real_clock
    r = await upload(server, old, b"abcd")
    assert_error(r, 403, "url_expired")
    assert await stored_size(server, alice, entry_id, old["attachment"]["id"]) is None
    assert not path.exists()
    assert not path.parent.exists() or not list(path.parent.iterdir())  # no temp file either

    # downloads: a PUT URL is no GET URL, and download URLs are checked the same way
    r = await server.client.get(url)
    assert_error(r, 403, "invalid_signature")
    assert (await upload(server, created, b"abcd")).status_code == 204
    await server.client.post(f"/v1/attachments/{att_id}/complete", headers=alice.auth)
    got = (await server.client.get(f"/v1/attachments/{att_id}", headers=alice.auth)).json()
    for bad in (with_query(got["downloadUrl"], fn="evil.html"),
                with_query(got["downloadUrl"], ct="text/html")):
        assert_error(await server.client.get(bad), 403, "invalid_signature")
    assert (await server.client.get(got["downloadUrl"])).content == b"abcd"


@local_only
async def test_local_upload_streams_bodies_larger_than_max_body_bytes(
        server: RunningServer) -> None:
    settings = server.services.settings
    assert settings.server.max_body_bytes == 1 * MiB
    alice = await signup(server.client)
    entry_id = await make_entry(server, alice)
    data = os.urandom(3 * MiB + 123)
    created = await declare(server, alice, entry_id, content_type="audio/mpeg",
                            filename="voice.mp3", size=len(data))

    async def chunked() -> Any:  # no Content-Length: the route counts while streaming
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]

    r = await server.client.put(created["uploadUrl"], content=chunked(),
                                 headers=created["uploadHeaders"])
    assert r.status_code == 204, r.text
    att_id = created["attachment"]["id"]
    r = await server.client.post(f"/v1/attachments/{att_id}/complete", headers=alice.auth)
    assert r.status_code == 200, r.text
    url = (await server.client.get(f"/v1/attachments/{att_id}", headers=alice.auth)
           ).json()["downloadUrl"]
    got = await server.client.get(url)
    assert got.status_code == 200
    assert got.headers["content-length"] == str(len(data))
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()

    # with Content-Length too
    second = await declare(server, alice, entry_id, content_type="audio/mpeg", size=len(data))
    r = await upload(server, second, data)
    assert r.status_code == 204, r.text

    # JSON routes keep MAX_BODY_BYTES (own client: the server closes a connection whose
    # request body it did not read, which a pooled connection would then trip over)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.post(f"/v1/entries/{entry_id}/attachments", headers=alice.auth,
                              content=b'{"filename": "' + b"x" * (2 * MiB) + b'"}')
    assert_error(r, 413, "payload_too_large")

    # a streamed body past the signed size is cut off with 413, and nothing is kept
    third = await declare(server, alice, entry_id, content_type="audio/mpeg", size=2 * MiB)

    async def too_long() -> Any:
        for _ in range(30):
            yield b"z" * 100_000

    r = await server.client.put(third["uploadUrl"], content=too_long(),
                                headers=third["uploadHeaders"])
    assert_error(r, 413, "payload_too_large")
    assert await stored_size(server, alice, entry_id, third["attachment"]["id"]) is None


def test_app_request_class_streams_uploads() -> None:
    assert issubclass(innera.app.InneraRequest, StreamingUploadRequest)


async def test_readiness_checks_the_configured_store(server: RunningServer, store: str) -> None:
    r = await server.client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["storage:responseTime"][0]["status"] == "pass"
    assert type(server.services.storage).__name__ == {"local": "LocalStorage",
                                                       "s3": "S3Storage"}[store]


async def test_uploads_never_completed_are_swept_after_their_url_expired(
        server: RunningServer) -> None:
    account = await signup(server.client)
    entry_id = await make_entry(server, account)
    uploaded_not_completed = await declare(server, account, entry_id)
    assert (await upload(server, uploaded_not_completed, b"12345")).status_code in (200, 204)
    never_uploaded = await declare(server, account, entry_id)
    ready = await declare(server, account, entry_id)
    assert (await upload(server, ready, b"abcde")).status_code in (200, 204)
    r = await server.client.post(f"/v1/attachments/{ready['attachment']['id']}/complete",
                                 headers=account.auth)
    assert r.status_code == 200, r.text
    fresh = await declare(server, account, entry_id)
    old = [uploaded_not_completed, never_uploaded, ready]
    async with server.services.db.connection() as conn:
        await conn.execute(
            "UPDATE attachments SET created_at = now() - interval '2 hours' WHERE id = ANY(%s)",
            ([c["attachment"]["id"] for c in old],))

    assert await sweep_once(server.services.db, server.services.storage,
                            older_than_s=3600) == 2
    for gone in (uploaded_not_completed, never_uploaded):
        attachment_id = gone["attachment"]["id"]
        r = await server.client.get(f"/v1/attachments/{attachment_id}", headers=account.auth)
        assert r.status_code == 404
        assert await stored_size(server, account, entry_id, attachment_id) is None
    r = await server.client.get(f"/v1/attachments/{ready['attachment']['id']}",
                                headers=account.auth)
    assert r.status_code == 200  # completed uploads are never swept, whatever their age
    assert await row_count(server, "id = %s", fresh["attachment"]["id"]) == 1
