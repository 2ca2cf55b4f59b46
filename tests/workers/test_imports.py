"""Imports end to end over HTTP: upload a file → 202 → the job completes (or fails with a
message naming the problem) → the entries the user sees. Files are built here following
docs/export-format.md and Day One's JSON export."""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from innera.config import load_settings
from innera.storage import LocalStorage
from innera.storage.keys import job_file_key
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer, server_environ, start_server
from tests.test_http import assert_error
from workers.import_format import EXPAND_FACTOR, BadImportFile, Limits
from workers.import_parse import parse_upload

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_USER": "100000/min"}


# --- files ----------------------------------------------------------------------------------


def innera_entry(entry_id: str | None = None, **fields: Any) -> dict[str, Any]:
    entry = {"id": entry_id or str(uuid.uuid4()), "title": None, "body": "Text",
             "tags": [], "mood": None, "occurredAt": "2026-11-27T09:30:00Z",
             "createdAt": "2026-11-27T09:31:02Z", "updatedAt": "2026-11-27T09:31:02Z",
             "attachments": []}
    entry.update(fields)
    return entry


def innera_zip(entries: list[dict[str, Any]], files: dict[str, bytes] | None = None) -> bytes:
    doc = {"format": "innera-export", "version": 1, "exportedAt": "2026-11-28T18:00:00Z",
           "entries": entries}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("innera-export.json", json.dumps(doc, ensure_ascii=False))
        for name, data in (files or {}).items():
            archive.writestr(name, data)
    return buf.getvalue()


def dayone_doc(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"version": "1.0"}, "entries": entries}


def dayone_entry(text: str, **fields: Any) -> dict[str, Any]:
    entry = {"uuid": uuid.uuid4().hex.upper(), "text": text, "richText": "{}",
             "creationDate": "2024-01-02T03:04:05Z", "modifiedDate": "2024-01-03T00:00:00Z",
             "starred": False, "timeZone": "Europe/Paris", "tags": [],
             "photos": [{"md5": "0" * 32, "type": "jpeg", "identifier": "X"}]}
    entry.update(fields)
    return entry


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def zip_bomb(expanded: int) -> bytes:
    """An innera-export.json of ``expanded`` zero bytes: under a megabyte compressed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("innera-export.json", "w", force_zip64=True) as member:
        chunk = bytes(1 << 20)
        for _ in range(expanded // len(chunk) + 1):
            member.write(chunk)
    return buf.getvalue()


# --- API helpers ----------------------------------------------------------------------------


async def post_import(server: RunningServer, account: Account, data: bytes,
                      content_type: str = "application/zip") -> str:
    r = await server.client.post("/v1/imports", content=data,
                                 headers={**account.auth, "content-type": content_type})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("pending", "running", "completed")
    assert r.headers["location"] == f"/v1/imports/{job['id']}"
    return r.headers["location"]


async def wait_job(server: RunningServer, account: Account, location: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            r = await server.client.get(location, headers=account.auth)
            assert r.status_code == 200, r.text
            job = r.json()
            if job["status"] in ("completed", "failed"):
                return job
            await trio.sleep(0.05)


async def run_import(server: RunningServer, account: Account, data: bytes,
                     content_type: str = "application/zip") -> dict[str, Any]:
    job = await wait_job(server, account, await post_import(server, account, data,
                                                            content_type))
    # the stored upload is gone once the job has finished, either way
    key = job_file_key(account.id, "imports", job["id"])
    assert await server.services.storage.head(key) is None
    return job


async def entries_of(server: RunningServer, account: Account) -> list[dict[str, Any]]:
    r = await server.client.get("/v1/entries?limit=100", headers=account.auth)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def by_body(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["body"]: e for e in entries}


async def object_keys(server: RunningServer, user_id: str) -> list[str]:
    storage = server.services.storage
    if isinstance(storage, LocalStorage):
        root = Path(storage.root)
        return sorted(str(p.relative_to(root)) for p in (root / user_id).rglob("*")
                      if p.is_file() and not p.name.startswith("."))
    found = await storage.call("list_objects_v2", Bucket=storage.bucket, Prefix=f"{user_id}/")
    return sorted(obj["Key"] for obj in found.get("Contents", []))


# --- innera's own format --------------------------------------------------------------------


@pytest.mark.parametrize("store", ["local", "s3"])
async def test_an_innera_export_imports_once_with_its_attachments(
        nursery: trio.Nursery, server_settings: dict[str, str], store: str,
        request: pytest.FixtureRequest) -> None:
    settings = dict(server_settings)
    if store == "s3":
        settings.update(request.getfixturevalue("s3_bucket").env)
    server = await start_server(nursery, load_settings(settings))
    async with server.client:
        alice, bob = await signup(server.client), await signup(server.client)
        photo_id = str(uuid.uuid4())
        entries = [
            innera_entry(title="A walk", body="By the river 🌊", tags=["outside", "calm"],
                         mood="calm", occurredAt="2026-11-27T09:30:00Z",
                         attachments=[{"id": photo_id, "filename": "photo.png",
                                       "contentType": "image/png", "size": len(PNG),
                                       "path": f"attachments/{photo_id}/photo.png"}]),
            innera_entry(body="Second", occurredAt="2026-11-28T10:00:00.250Z"),
            innera_entry(body="Third", tags=["x"], occurredAt="2026-11-29T08:00:00+02:00"),
        ]
        data = innera_zip(entries, {f"attachments/{photo_id}/photo.png": PNG})

        job = await run_import(server, alice, data)
        assert job["status"] == "completed", job
        assert job["progress"] == 1 and job["error"] is None and job["finishedAt"]
        assert job["result"] == {"imported": 3, "skipped": 0, "format": "innera",
                                 "attachments": 1}
        got = by_body(await entries_of(server, alice))
        assert set(got) == {"By the river 🌊", "Second", "Third"}
        walk = got["By the river 🌊"]
        assert (walk["title"], walk["tags"], walk["mood"], walk["occurredAt"]) == (
            "A walk", ["outside", "calm"], "calm", "2026-11-27T09:30:00.000Z")
        assert got["Second"]["occurredAt"] == "2026-11-28T10:00:00.250Z"
        assert got["Third"]["occurredAt"] == "2026-11-29T06:00:00.000Z"
        assert got["Third"]["title"] is None and got["Third"]["mood"] is None

        # the attachment came along: ready, with the same bytes
        r = await server.client.get(f"/v1/entries/{walk['id']}/attachments",
                                    headers=alice.auth)
        [attachment] = r.json()["items"]
        assert (attachment["filename"], attachment["contentType"], attachment["size"],
                attachment["status"]) == ("photo.png", "image/png", len(PNG), "ready")
        r = await server.client.get(f"/v1/attachments/{attachment['id']}", headers=alice.auth)
        download = await server.client.get(r.json()["downloadUrl"])
        assert download.status_code == 200 and download.content == PNG

        # the same file again adds nothing
        again = await run_import(server, alice, data)
        assert again["status"] == "completed"
        assert again["result"] == {"imported": 0, "skipped": 3, "format": "innera",
                                   "attachments": 0}
        assert len(await entries_of(server, alice)) == 3
        assert len(await object_keys(server, alice.id)) == 1

        # another user: the job is not theirs, nor are the entries; their own import of the
        # same file is theirs alone
        r = await server.client.get(f"/v1/imports/{job['id']}", headers=bob.auth)
        assert_error(r, 404, "not_found")
        assert await entries_of(server, bob) == []
        bobs = await run_import(server, bob, data)
        assert bobs["result"]["imported"] == 3
        assert len(await entries_of(server, alice)) == 3
    await server.stop()


async def test_an_export_imported_back_into_its_own_account_adds_nothing(
        server: RunningServer) -> None:
    alice = await signup(server.client)
    r = await server.client.post("/v1/entries", headers=alice.auth,
                                 json={"body": "Mine", "tags": ["a"]})
    assert r.status_code == 201
    mine = r.json()
    export = innera_zip([innera_entry(mine["id"], body="Mine", tags=["a"],
                                      occurredAt=mine["occurredAt"]),
                         innera_entry(body="Deleted since the export")])
    job = await run_import(server, alice, export)
    assert job["result"]["imported"] == 1 and job["result"]["skipped"] == 1
    assert sorted(e["body"] for e in await entries_of(server, alice)) == [
        "Deleted since the export", "Mine"]


# --- Day One --------------------------------------------------------------------------------


async def test_day_one_json_then_its_zip(server: RunningServer) -> None:
    alice = await signup(server.client)
    first = dayone_entry("# Lunch in Lyon\\.\n\nGreat *food*.\n\n![](dayone-moment://"
                         "0123456789abcdef0123456789abcdef)", tags=["travel", " food "],
                         creationDate="2023-06-01T12:30:00Z")
    second = dayone_entry("Just a line, no heading", creationDate="2023-06-02T08:00:00Z")
    # (an entry repeated in the file counts once)
    job = await run_import(server, alice, json.dumps(dayone_doc([first, second, first])
                                                     ).encode(), "application/json")
    assert job["status"] == "completed", job
    assert job["result"] == {"imported": 2, "skipped": 1, "format": "dayone",
                             "attachments": 0}
    got = {e["occurredAt"]: e for e in await entries_of(server, alice)}
    lunch = got["2023-06-01T12:30:00.000Z"]
    assert lunch["title"] == "Lunch in Lyon."
    assert lunch["body"] == ("Great *food*.\n\n![](dayone-moment://"
                             "0123456789abcdef0123456789abcdef)")
    assert lunch["tags"] == ["travel", "food"] and lunch["mood"] is None
    line = got["2023-06-02T08:00:00.000Z"]
    assert (line["title"], line["body"]) == (None, "Just a line, no heading")

    # the export's zip: Journal.json (the same two and a new one) and its photos
    third = dayone_entry("Third", creationDate="2023-06-03T08:00:00Z")
    data = zip_of({"Journal.json": json.dumps(dayone_doc([first, second, third])).encode(),
                   "photos/0123456789abcdef0123456789abcdef.jpeg": b"\xff\xd8jpeg"})
    # (as a Windows browser labels a zip)
    job = await run_import(server, alice, data, "application/x-zip-compressed")
    assert job["result"] == {"imported": 1, "skipped": 2, "format": "dayone",
                             "attachments": 0}
    assert len(await entries_of(server, alice)) == 3


# --- bad files ------------------------------------------------------------------------------


async def test_bad_files_fail_the_job_naming_the_problem_and_change_nothing(
        server: RunningServer) -> None:
    alice = await signup(server.client)
    r = await server.client.post("/v1/entries", headers=alice.auth, json={"body": "Before"})
    assert r.status_code == 201
    before = await entries_of(server, alice)
    photo = {"id": "p1", "filename": "p.png", "contentType": "image/png", "size": len(PNG),
             "path": "attachments/p1/p.png"}
    good = innera_entry(body="Fine", attachments=[photo])
    files = {"attachments/p1/p.png": PNG}
    bad_json = b'{"entries": [\n  {"uuid": "A",\n    "text" "x"}]}'
    # (the file, its content type, the start of the job's error; its code is
    # invalid_import_file but for the limits)
    cases: list[tuple[bytes, str, str]] = [
        (zip_of({"Journal.json": bad_json}), "application/zip",
         "Journal.json: not valid JSON (line 3, column 12)"),
        (bad_json, "application/json", "not valid JSON (line 3, column 12)"),
        (innera_zip([good, innera_entry(), innera_entry(body="   ")], files),
         "application/zip", "innera-export.json: entries[2].body: "),
        (innera_zip([good, innera_entry(body="")], files), "application/zip",
         "innera-export.json: entries[1].body: must not be empty"),
        (innera_zip([good, innera_entry(tags="outside")], files), "application/zip",
         "innera-export.json: entries[1].tags: must be a list of strings"),
        (innera_zip([good, innera_entry(occurredAt="yesterday")], files), "application/zip",
         "innera-export.json: entries[1].occurredAt: must be an ISO 8601 date-time"),
        (innera_zip([innera_entry(title="t" * 201)]), "application/zip",
         "innera-export.json: entries[0].title: must be at most 200 characters"),
        (innera_zip([good], {}), "application/zip",
         "innera-export.json: entries[0].attachments[0].path: 'attachments/p1/p.png' is not "
         "in the archive"),
        (json.dumps(dayone_doc([dayone_entry("ok"), dayone_entry(""), dayone_entry("x", tags=5)])
                    ).encode(), "application/json",
         "entries[1].text: must not be empty; entries[2].tags: must be a list of strings"),
        # binary that neither starts like JSON nor holds a zip signature (random bytes
        # start with "{" or "[" one time in 128)
        (bytes(range(256)) * 8, "application/zip", "not a zip or JSON file"),
        (b"PK\x03\x04" + os.urandom(500), "application/zip", "not a valid zip archive"),
        (zip_of({"notes.txt": b"hello"}), "application/zip",
         "archive: holds neither innera-export.json nor a Day One journal"),
        (zip_bomb(EXPAND_FACTOR * 52_428_800 + 1), "application/zip",
         "archive: expands to "),
    ]
    for data, content_type, expected in cases:
        job = await run_import(server, alice, data, content_type)
        assert job["status"] == "failed", (expected, job)
        assert expected in job["error"], (expected, job["error"])
        assert job["errorCode"] == ("import_too_large" if "expands to" in expected else
                                    "invalid_import_file"), job
        assert job["result"] is None
        assert await entries_of(server, alice) == before, expected
        assert await object_keys(server, alice.id) == [], expected
    async with server.services.db.connection() as conn:
        cur = await conn.execute("SELECT attempts FROM import_jobs WHERE user_id = %s",
                                 (alice.id,))
        assert {row[0] for row in await cur.fetchall()} == {1}  # a bad file is not retried


def test_archives_are_bounded_before_they_are_read() -> None:
    limits = Limits(max_bytes=10_000, attachment_max_bytes=1000)
    with pytest.raises(BadImportFile, match=r"archive: 20001 members, more than the limit"):
        parse_upload(io.BytesIO(zip_of({f"{i}.txt": b"" for i in range(20_001)})), limits)
    # a member lying about its size is never read past it, and fails its check
    honest = zip_of({"Journal.json": json.dumps(dayone_doc([dayone_entry("x" * 5000)]))
                     .encode()})
    info = zipfile.ZipFile(io.BytesIO(honest)).getinfo("Journal.json")
    lying = honest.replace(info.file_size.to_bytes(4, "little"), (100).to_bytes(4, "little"))
    with pytest.raises(BadImportFile, match=r"Journal.json: damaged archive member"):
        parse_upload(io.BytesIO(lying), limits)


# --- the upload -----------------------------------------------------------------------------


async def test_upload_rules(nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    server = await start_server(nursery, load_settings({
        **server_settings, "IMPORT_MAX_BYTES": "65536"}))
    async with server.client:
        alice = await signup(server.client)
        auth = alice.auth

        async def jobs() -> int:
            async with server.services.db.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM import_jobs")
                row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        # past IMPORT_MAX_BYTES: 413, nothing stored, no job — by Content-Length, or while
        # streaming a chunked body
        big = os.urandom(65537)
        r = await server.client.post("/v1/imports", content=big,
                                     headers={**auth, "content-type": "application/zip"})
        assert_error(r, 413, "payload_too_large")

        async def chunked() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        r = await server.client.post("/v1/imports", content=chunked(),
                                     headers={**auth, "content-type": "application/zip"})
        assert_error(r, 413, "payload_too_large")
        assert await object_keys(server, alice.id) == [] and await jobs() == 0

        # up to the limit: more than MAX_BODY_BYTES would allow elsewhere is fine
        small = json.dumps(dayone_doc([dayone_entry("x" * 60_000)])).encode()
        job = await run_import(server, alice, small + b" " * (65536 - len(small)),
                               "application/json")
        assert job["status"] == "completed" and job["result"]["imported"] == 1

        # with an Idempotency-Key, a repeat gets the same job back (and nothing is stored
        # twice); the limit holds there too
        keyed = {**auth, "content-type": "application/zip", "idempotency-key": "import-1"}
        keyed_file = zip_of({
            "Journal.json": json.dumps(dayone_doc([dayone_entry("keyed")])).encode()})
        first = await server.client.post("/v1/imports", content=keyed_file, headers=keyed)
        assert first.status_code == 202, first.text
        second = await server.client.post("/v1/imports", content=keyed_file, headers=keyed)
        assert (second.status_code, second.json()["id"]) == (202, first.json()["id"])
        assert second.headers["idempotent-replayed"] == "true"
        assert second.headers["location"] == first.headers["location"]  # names the same job
        assert (await wait_job(server, alice, first.headers["location"]))["result"] == {
            "imported": 1, "skipped": 0, "format": "dayone", "attachments": 0}
        r = await server.client.post("/v1/imports", content=chunked(),
                                     headers={**keyed, "idempotency-key": "import-2"})
        assert_error(r, 413, "payload_too_large")
        for content in (big, chunked()):  # replaying a key: the limit holds while hashing
            r = await server.client.post("/v1/imports", content=content, headers=keyed)
            assert_error(r, 413, "payload_too_large")
        assert await jobs() == 2

        # other types: 415; no body: 400
        for content_type in ("text/plain", "multipart/form-data; boundary=x", ""):
            r = await server.client.post("/v1/imports", content=small,
                                         headers={**auth, "content-type": content_type})
            body = assert_error(r, 415, "unsupported_media_type")
            assert "application/zip" in body["error"]["message"]
        r = await server.client.post("/v1/imports", content=b"",
                                     headers={**auth, "content-type": "application/json"})
        assert_error(r, 400, "empty_upload")
        assert await jobs() == 2

        # unknown, malformed and unauthenticated
        for job_id in (str(uuid.uuid4()), "nope", job["id"].replace("-", "")):
            r = await server.client.get(f"/v1/imports/{job_id}", headers=auth)
            assert_error(r, 404, "not_found")
        r = await server.client.post("/v1/imports", content=small,
                                     headers={"content-type": "application/zip"})
        assert_error(r, 401, "unauthorized")
    await server.stop()


async def test_the_import_routes_are_in_the_openapi_document(server: RunningServer) -> None:
    r = await server.client.get("/openapi.json")
    paths = r.json()["paths"]
    assert "202" in paths["/v1/imports"]["post"]["responses"]
    assert "413" in paths["/v1/imports"]["post"]["responses"]
    assert "404" in paths["/v1/imports/{import_id}"]["get"]["responses"]


async def test_an_upload_slower_than_request_timeout_still_lands(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "REQUEST_TIMEOUT_S": "0.5"}))
    async with srv.client:
        alice = await signup(srv.client)
        data = json.dumps(dayone_doc([dayone_entry("Slow but fine",
                                                   creationDate="2023-06-01T12:30:00Z")])
                          ).encode()

        async def slowly() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 64):
                yield data[i:i + 64]
                await trio.sleep(0.3)  # the whole upload takes longer than 0.5 s

        r = await srv.client.post("/v1/imports", content=slowly(), headers={
            **alice.auth, "content-type": "application/json"})
        assert r.status_code == 202, r.text
        job = await wait_job(srv, alice, r.headers["location"])
        assert job["status"] == "completed", job
    await srv.stop()


# --- Idempotency-Key on the streamed upload -------------------------------------------------


async def test_a_keyed_import_is_hashed_while_it_streams(server: RunningServer) -> None:
    alice = await signup(server.client)
    data = zip_of({"Journal.json": json.dumps(dayone_doc([dayone_entry("keyed")])).encode()})
    other = zip_of({"Journal.json": json.dumps(dayone_doc([dayone_entry("other")])).encode()})
    keyed = {**alice.auth, "content-type": "application/zip", "idempotency-key": "stream-1"}

    async def streamed(body: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100):
            yield body[i:i + 100]

    first = await server.client.post("/v1/imports", content=streamed(data), headers=keyed)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    # the same bytes (chunked otherwise, or not at all): the first answer again
    for content in (streamed(data), data):
        again = await server.client.post("/v1/imports", content=content, headers=keyed)
        assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"]
    # other bytes under the same key: 422
    r = await server.client.post("/v1/imports", content=streamed(other), headers=keyed)
    assert_error(r, 422, "idempotency_key_reused")
    r = await server.client.post("/v1/imports", content=data[:-1], headers=keyed)
    assert_error(r, 422, "idempotency_key_reused")

    async with server.services.db.connection() as conn:
        cur = await conn.execute("SELECT id FROM import_jobs WHERE user_id = %s", (alice.id,))
        assert [str(row[0]) for row in await cur.fetchall()] == [first.json()["id"]]
    assert len(await object_keys(server, alice.id)) == 1
    job = await wait_job(server, alice, first.headers["location"])
    assert job["result"] == {"imported": 1, "skipped": 0, "format": "dayone", "attachments": 0}


def _peak_rss(pid: int, *, reset: bool = False) -> int:
    """The process's resident-set high-water mark (VmHWM), in bytes. ``reset``: first bring
    it down to the current RSS (start-up peaks higher than a request, and would hide it)."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


UPLOAD_MIB = 33
#: between the upload's 1 MiB chunks. Quart buffers a request body with no back-pressure, so
#: at loopback speed a backlog builds whenever the route's consumer falls behind, header or
#: not (on the fast server it ranged from 5 to 99 MiB for a 33 MiB upload): pacing keeps
#: that out of what this test measures
PACE_S = 0.02
#: how much the server's peak RSS may grow over a keyed upload (and its replay): less than the
#: upload itself, so no whole copy of it was held (buffering it for the fingerprint grew the
#: peak by ~100 MiB; streamed, by 2-5 MiB)
RSS_GROWTH_LIMIT = UPLOAD_MIB * 1024 * 1024


async def test_a_keyed_import_is_not_buffered_in_memory(
        spawn_server: Any, database_url: str, redis_url: str, tmp_path: Path) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path / "data",
                                     INNERA_WORKERS="0"))
    chunk = os.urandom(1 << 20)

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(UPLOAD_MIB):
            yield chunk
            await trio.sleep(PACE_S)

    async with httpx.AsyncClient(base_url=sp.url, timeout=30) as client:
        alice = await signup(client)
        headers = {**alice.auth, "content-type": "application/zip"}
        # warm up the import route (and its keyed path) with a small file
        r = await client.post("/v1/imports", content=chunk,
                              headers={**headers, "idempotency-key": "warm-up"})
        assert r.status_code == 202, r.text
        before = _peak_rss(sp.proc.pid, reset=True)
        keyed = {**headers, "idempotency-key": "big"}
        first = await client.post("/v1/imports", content=upload(), headers=keyed)
        assert first.status_code == 202, first.text
        again = await client.post("/v1/imports", content=upload(), headers=keyed)
        assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
        assert again.headers["idempotent-replayed"] == "true"
        growth = _peak_rss(sp.proc.pid) - before
    print(f"peak RSS growth over a keyed {UPLOAD_MIB} MiB upload and its replay: "
          f"{growth / 2**20:.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"{growth / 2**20:.1f} MiB"
