"""Journal entries over HTTP against the real server: CRUD, validation, pagination, isolation
between users, encryption at rest, metrics and events."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from innera.realtime.event_log import parse_event_id
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer
from tests.test_http import assert_error


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_AUTH": "1000/min", "RATE_LIMIT_USER": "10000/min"}


# --- helpers (also used by tests/test_search.py) ---------------------------------------

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def create(server: RunningServer, account: Account, **fields: Any) -> dict[str, Any]:
    fields.setdefault("body", "something happened")
    r = await server.client.post("/v1/entries", json=fields, headers=account.auth)
    assert r.status_code == 201, r.text
    return r.json()


async def metric(server: RunningServer, name: str, labels: str = "") -> float:
    """The value of one sample on /metrics (``labels`` as written, e.g. 'operation="x"')."""
    text = (await server.client.get("/metrics")).text
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    raise AssertionError(f"{wanted} not on /metrics")


async def seed_entries(server: RunningServer, user_id: str,
                       items: Iterable[tuple[dict[str, Any], datetime]]) -> list[str]:
    """Insert entries directly (sealed with the real cipher): many in ~ms, no HTTP."""
    svc = server.services
    dek = await svc.data_keys.get(user_id)
    rows = []
    for content, occurred_at in items:
        entry_id = str(uuid.uuid4())
        full = {"title": None, "tags": [], "mood": None, **content}
        rows.append((entry_id, user_id,
                     svc.entry_cipher.seal_with(dek, user_id, entry_id, full), occurred_at))
    async with svc.db.connection() as conn:
        await conn.cursor().executemany(
            "INSERT INTO entries (id, user_id, content, occurred_at) VALUES (%s, %s, %s, %s)",
            rows)
    return [row[0] for row in rows]


async def raw_content(server: RunningServer, entry_id: str) -> bytes:
    async with server.services.db.connection() as conn:
        cur = await conn.execute("SELECT content FROM entries WHERE id = %s", (entry_id,))
        row = await cur.fetchone()
    assert row is not None
    return bytes(row[0])


async def count_rows(server: RunningServer, user_id: str) -> int:
    async with server.services.db.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM entries WHERE user_id = %s", (user_id,))
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


# --- create / read / update / delete ----------------------------------------------------


async def test_create_read_list_update_delete(server: RunningServer) -> None:
    account = await signup(server.client)
    created = await create(server, account, title="Monday", body="Went running.",
                           tags=["sport", " health ", "sport"], mood="tired",
                           occurredAt="2024-05-01T20:30:00+02:00")
    assert set(created) == {"id", "title", "body", "tags", "mood", "occurredAt", "createdAt",
                            "updatedAt"}
    uuid.UUID(created["id"])
    assert created["title"] == "Monday" and created["body"] == "Went running."
    assert created["tags"] == ["sport", "health"]  # trimmed, deduplicated, order kept
    assert created["mood"] == "tired"
    assert created["occurredAt"] == "2024-05-01T18:30:00.000Z"
    assert ISO_Z.fullmatch(created["createdAt"]) and ISO_Z.fullmatch(created["updatedAt"])
    url = f"/v1/entries/{created['id']}"

    r = await server.client.get(url, headers=account.auth)
    assert r.status_code == 200 and r.json() == created
    r = await server.client.get("/v1/entries", headers=account.auth)
    assert r.json() == {"items": [created], "nextCursor": None}

    sealed_before = await raw_content(server, created["id"])
    r = await server.client.patch(url, json={"title": None, "mood": None, "tags": ["x"],
                                             "occurredAt": "2024-05-02T08:00:00Z"},
                                  headers=account.auth)
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched == {**created, "title": None, "mood": None, "tags": ["x"],
                       "occurredAt": "2024-05-02T08:00:00.000Z",
                       "updatedAt": patched["updatedAt"]}
    assert patched["updatedAt"] >= created["updatedAt"]
    sealed_after = await raw_content(server, created["id"])
    assert sealed_after != sealed_before
    assert sealed_after[1:13] != sealed_before[1:13]  # a fresh nonce
    r = await server.client.patch(url, json={"body": "Went swimming."}, headers=account.auth)
    assert r.json()["body"] == "Went swimming." and r.json()["tags"] == ["x"]
    r = await server.client.patch(url, json={}, headers=account.auth)  # nothing to change
    assert r.status_code == 200 and r.json()["body"] == "Went swimming."
    assert (await server.client.get(url, headers=account.auth)).json() == r.json()

    r = await server.client.delete(url, headers=account.auth)
    assert r.status_code == 204 and r.content == b""
    assert_error(await server.client.get(url, headers=account.auth), 404, "not_found")
    assert_error(await server.client.delete(url, headers=account.auth), 404, "not_found")
    assert await count_rows(server, account.id) == 0


async def test_defaults_and_authentication(server: RunningServer) -> None:
    account = await signup(server.client)
    before = datetime.now(UTC) - timedelta(seconds=5)
    entry = await create(server, account, body="only a body")
    assert entry["title"] is None and entry["tags"] == [] and entry["mood"] is None
    occurred = datetime.fromisoformat(entry["occurredAt"])
    assert before < occurred < datetime.now(UTC) + timedelta(seconds=5)
    assert entry["occurredAt"] == entry["createdAt"]
    assert_error(await server.client.get("/v1/entries"), 401, "unauthorized")
    assert_error(await server.client.post("/v1/entries", json={"body": "x"}), 401,
                 "unauthorized")


OK_EDGES = [
    {"title": "t" * 200},
    {"body": "b" * 100_000},
    {"tags": [f"{i:02d}" + "t" * 48 for i in range(20)]},
    {"mood": "m" * 32},
    {"mood": "😊"},
    {"title": ""},
    {"occurredAt": "2024-02-29T23:59:59.123456-05:00"},
]


async def test_limits_at_the_edge_are_accepted(server: RunningServer) -> None:
    account = await signup(server.client)
    for fields in OK_EDGES:
        entry = await create(server, account, **fields)
        for name, value in fields.items():
            if name != "occurredAt":
                assert entry[name] == value
        r = await server.client.patch(f"/v1/entries/{entry['id']}", json=fields,
                                      headers=account.auth)
        assert r.status_code == 200, r.text


BAD = [
    ({"title": "t" * 201}, "title"),
    ({"title": 7}, "title"),
    ({"body": "b" * 100_001}, "body"),
    ({"body": ""}, "body"),
    ({"body": " \n\t "}, "body"),
    ({"body": None}, "body"),
    ({"body": 5}, "body"),
    ({"tags": ["t"] * 21}, "tags"),
    ({"tags": ["t" * 51]}, "tags"),
    ({"tags": ["ok", "  "]}, "tags"),
    ({"tags": "solo"}, "tags"),
    ({"tags": [1]}, "tags.0"),
    ({"mood": "m" * 33}, "mood"),
    ({"mood": " "}, "mood"),
    ({"mood": ["happy"]}, "mood"),
    ({"occurredAt": "yesterday"}, "occurredAt"),
    ({"occurredAt": "2024-05-01"}, "occurredAt"),
    ({"occurredAt": "2024-05-01T10:00:00"}, "occurredAt"),  # no offset
    ({"occurredAt": "2024-02-30T10:00:00Z"}, "occurredAt"),
    ({"occurredAt": "0001-01-01T00:00:00+01:00"}, "occurredAt"),  # before year 1 in UTC
    ({"occurredAt": 1700000000}, "occurredAt"),
    ({"occurredAt": "1700000000"}, "occurredAt"),
    ({"colour": "blue"}, "colour"),
]


async def test_invalid_fields_are_422_with_details(server: RunningServer) -> None:
    account = await signup(server.client)
    entry = await create(server, account, body="unchanged")
    for fields, field in BAD:
        r = await server.client.post("/v1/entries", json={"body": "fine", **fields},
                                     headers=account.auth)
        body = assert_error(r, 422, "validation_failed")
        assert field in [d["field"] for d in body["error"]["details"]], (fields, body)
        assert all(d["message"] for d in body["error"]["details"])
        r = await server.client.patch(f"/v1/entries/{entry['id']}", json=fields,
                                      headers=account.auth)
        body = assert_error(r, 422, "validation_failed")
        assert field in [d["field"] for d in body["error"]["details"]], (fields, body)
    assert await count_rows(server, account.id) == 1
    r = await server.client.get(f"/v1/entries/{entry['id']}", headers=account.auth)
    assert r.json() == entry
    for payload in ([1, 2], "body", None):
        r = await server.client.post("/v1/entries", json=payload, headers=account.auth)
        assert_error(r, 422, "validation_failed")


async def test_patch_refuses_null_for_required_fields(server: RunningServer) -> None:
    account = await signup(server.client)
    entry = await create(server, account, title="t", tags=["a"])
    for name in ("body", "tags", "occurredAt"):
        r = await server.client.patch(f"/v1/entries/{entry['id']}", json={name: None},
                                      headers=account.auth)
        body = assert_error(r, 422, "validation_failed")
        assert [d["field"] for d in body["error"]["details"]] == [name]
    r = await server.client.patch(f"/v1/entries/{entry['id']}", content=b"{oops",
                                  headers={**account.auth, "content-type": "application/json"})
    assert_error(r, 400, "invalid_json")


# --- pagination ---------------------------------------------------------------------------


async def test_pagination_is_stable_across_pages_with_equal_times(server: RunningServer
                                                                  ) -> None:
    account = await signup(server.client)
    base = datetime(2024, 3, 1, 12, tzinfo=UTC)
    same = base + timedelta(days=1)
    times = [base + timedelta(minutes=i) for i in range(13)] + [same] * 12
    ids = await seed_entries(server, account.id, [({"body": f"entry {i}"}, t)
                                                   for i, t in enumerate(times)])
    expected = [i for _, i in sorted(zip(times, ids, strict=True), reverse=True)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        r = await server.client.get("/v1/entries", params=params, headers=account.auth)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        seen += [e["id"] for e in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 10
    assert pages == 3 and seen == expected

    # default limit 20; a full last page still gets a cursor, then an empty page
    r = await server.client.get("/v1/entries", headers=account.auth)
    assert len(r.json()["items"]) == 20 and r.json()["nextCursor"]
    r = await server.client.get("/v1/entries", params={"limit": 25}, headers=account.auth)
    assert len(r.json()["items"]) == 25 and r.json()["nextCursor"] is None


async def test_bad_cursors_and_limits(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    await seed_entries(server, alice.id, [({"body": str(i)}, datetime.now(UTC))
                                          for i in range(3)])
    r = await server.client.get("/v1/entries", params={"limit": 1}, headers=alice.auth)
    cursor = r.json()["nextCursor"]
    assert cursor and re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    ok = await server.client.get("/v1/entries", params={"limit": 1, "cursor": cursor},
                                 headers=alice.auth)
    assert ok.status_code == 200 and len(ok.json()["items"]) == 1

    flipped = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    for bad in (flipped, cursor[:-2], cursor + "AA", "garbage", "", "é" * 10, "%%%"):
        r = await server.client.get("/v1/entries", params={"cursor": bad},
                                    headers=alice.auth)
        assert_error(r, 400, "invalid_cursor")
    # a cursor only opens for its own user and purpose
    r = await server.client.get("/v1/entries", params={"cursor": cursor}, headers=bob.auth)
    assert_error(r, 400, "invalid_cursor")
    r = await server.client.get("/v1/search", params={"q": "x", "cursor": cursor},
                                headers=alice.auth)
    assert_error(r, 400, "invalid_cursor")

    for limit in ("0", "101", "ten", "-1"):
        r = await server.client.get("/v1/entries", params={"limit": limit},
                                    headers=alice.auth)
        body = assert_error(r, 422, "validation_failed")
        assert body["error"]["details"][0]["field"] == "limit"
    r = await server.client.get("/v1/entries", params={"limit": 100}, headers=alice.auth)
    assert r.status_code == 200
    r = await server.client.get("/v1/entries", params={"sort": "asc"}, headers=alice.auth)
    assert_error(r, 422, "validation_failed")


# --- encryption at rest ---------------------------------------------------------------------


async def test_the_database_holds_no_plaintext(server: RunningServer) -> None:
    account = await signup(server.client)
    entry = await create(server, account, title="Zanzibarquux trip",
                         body="We met Florizelwump at the harbour. Café crème.",
                         tags=["Quokkatag"], mood="Mirthfulness")
    raw = await raw_content(server, entry["id"])
    assert raw[0] == 1 and len(raw) > 60
    for word in ("Zanzibarquux", "Florizelwump", "Quokkatag", "Mirthfulness", "Café crème"):
        assert word.encode() not in raw
        assert word.lower().encode() not in raw.lower()
    async with server.services.db.connection() as conn:  # nothing else stores content
        cur = await conn.execute("SELECT row_to_json(e)::text FROM entries e WHERE id = %s",
                                 (entry["id"],))
        row = await cur.fetchone()
    assert row is not None and "Zanzibarquux" not in row[0] and "Florizelwump" not in row[0]


async def test_a_ciphertext_copied_to_another_row_fails_to_decrypt(server: RunningServer
                                                                   ) -> None:
    account = await signup(server.client)
    first = await create(server, account, body="the original")
    second = await create(server, account, body="the victim")
    before = await metric(server, "innera_crypto_errors_total", 'operation="decrypt"')
    async with server.services.db.connection() as conn:
        await conn.execute(
            "UPDATE entries SET content = (SELECT content FROM entries WHERE id = %s) "
            "WHERE id = %s", (first["id"], second["id"]))
    r = await server.client.get(f"/v1/entries/{second['id']}", headers=account.auth)
    body = assert_error(r, 500, "crypto_error")
    assert "original" not in r.text and body["error"]["message"]
    after = await metric(server, "innera_crypto_errors_total", 'operation="decrypt"')
    assert after == before + 1
    r = await server.client.get(f"/v1/entries/{first['id']}", headers=account.auth)
    assert r.status_code == 200 and r.json()["body"] == "the original"
    # the list and the search refuse to show garbage too
    assert_error(await server.client.get("/v1/entries", headers=account.auth), 500,
                 "crypto_error")
    r = await server.client.get("/v1/search", params={"q": "victim"}, headers=account.auth)
    assert_error(r, 500, "crypto_error")


# --- isolation between users ----------------------------------------------------------------


async def test_another_users_entry_is_not_found(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    entry = await create(server, alice, body="alice's secret sesquipedalian", tags=["mine"])
    url = f"/v1/entries/{entry['id']}"
    missing = f"/v1/entries/{uuid.uuid4()}"
    for path in (url, missing):
        get = assert_error(await server.client.get(path, headers=bob.auth), 404, "not_found")
        patch = assert_error(await server.client.patch(path, json={"body": "mine now"},
                                                       headers=bob.auth), 404, "not_found")
        delete = assert_error(await server.client.delete(path, headers=bob.auth), 404,
                              "not_found")
        for body in (get, patch, delete):
            assert body["error"]["message"] == "No such entry"
            assert "details" not in body["error"]
    r = await server.client.get("/v1/entries", headers=bob.auth)
    assert r.json() == {"items": [], "nextCursor": None}
    r = await server.client.get("/v1/search", params={"q": "sesquipedalian"}, headers=bob.auth)
    assert r.json()["items"] == [] and r.json()["scanned"] == 0
    r = await server.client.get(url, headers=alice.auth)  # untouched
    assert r.status_code == 200 and r.json() == entry


async def test_concurrent_reads_each_get_their_own_users_entry(server: RunningServer) -> None:
    """Concurrent reads share one query: each still gets exactly its own user's entry, and a
    read of another user's entry in the same batch is 404."""
    alice, bob = await signup(server.client), await signup(server.client)
    mine = {a.id: [await create(server, a, body=f"{a.email} {i}") for i in range(3)]
            for a in (alice, bob)}
    reads = server.services.entry_reads.batcher
    items_before = reads.items
    answers: list[tuple[str, str, int, Any]] = []

    async def read(account: Account, entry: dict[str, Any]) -> None:
        r = await server.client.get(f"/v1/entries/{entry['id']}", headers=account.auth)
        answers.append((account.id, entry["id"], r.status_code, r.json()))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            for account in (alice, bob):
                for owner in (alice, bob):
                    for entry in mine[owner.id]:
                        nursery.start_soon(read, account, entry)
    assert len(answers) == 48 and reads.items - items_before == 48
    owners = {e["id"]: owner for owner, entries in mine.items() for e in entries}
    for reader, entry_id, status, body in answers:
        if owners[entry_id] == reader:
            assert status == 200 and body == next(e for e in mine[reader] if e["id"] == entry_id)
        else:
            assert status == 404 and body["error"]["code"] == "not_found"


async def test_reads_stuck_on_the_database_are_503_when_the_bound_passes(
        server: RunningServer, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads whose shared query cannot run (the table is locked) each end with a 503 once
    the data-access bound passes, and reads work again once the lock is gone."""
    from innera.db.connection import TrioConnection
    from innera.journal import entries as entries_module

    account = await signup(server.client)
    entry = await create(server, account)
    url = f"/v1/entries/{entry['id']}"
    monkeypatch.setattr(entries_module, "OPERATION_TIMEOUT_S", 0.5)
    statuses: list[tuple[int, str]] = []

    async def read() -> None:
        r = await server.client.get(url, headers=account.auth)
        statuses.append((r.status_code, r.json()["error"]["code"]))

    async with await TrioConnection.connect(database_url) as locker:
        async with locker.transaction():
            await locker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    for _ in range(6):
                        nursery.start_soon(read)
    assert statuses == [(503, "database_unavailable")] * 6
    r = await server.client.get(url, headers=account.auth)
    assert r.status_code == 200 and r.json() == entry


BAD_IDS = [
    "nope", "123", "00000000-0000-0000-0000-00000000000g", "00000000000000000000000000000000",
    "00000000-0000-0000-0000-0000000000000", "%27%20OR%201%3D1", "%C3%A9", "a" * 300,
    "{00000000-0000-0000-0000-000000000000}",
]


async def test_malformed_ids_are_404(server: RunningServer) -> None:
    account = await signup(server.client)
    for bad_id in BAD_IDS:
        path = f"/v1/entries/{bad_id}"
        assert_error(await server.client.get(path, headers=account.auth), 404, "not_found")
        r = await server.client.patch(path, json={"body": "x"}, headers=account.auth)
        assert_error(r, 404, "not_found")
        assert_error(await server.client.delete(path, headers=account.auth), 404, "not_found")


async def test_upper_case_ids_find_the_entry(server: RunningServer) -> None:
    account = await signup(server.client)
    entry = await create(server, account)
    r = await server.client.get(f"/v1/entries/{entry['id'].upper()}", headers=account.auth)
    assert r.status_code == 200 and r.json()["id"] == entry["id"]


# --- metrics, idempotency, events -----------------------------------------------------------


async def test_creations_are_counted(server: RunningServer) -> None:
    account = await signup(server.client)
    before = await metric(server, "innera_entries_created_total")
    await create(server, account)
    await create(server, account)
    await server.client.post("/v1/entries", json={"body": ""}, headers=account.auth)  # 422
    assert await metric(server, "innera_entries_created_total") == before + 2


async def test_idempotency_key_creates_one_entry(server: RunningServer) -> None:
    account = await signup(server.client)
    before = await metric(server, "innera_entries_created_total")
    headers = {**account.auth, "idempotency-key": f"create-{uuid.uuid4()}"}
    payload = {"body": "only once", "tags": ["idem"]}
    first = await server.client.post("/v1/entries", json=payload, headers=headers)
    second = await server.client.post("/v1/entries", json=payload, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers.get("idempotent-replayed") == "true"
    assert await count_rows(server, account.id) == 1
    assert await metric(server, "innera_entries_created_total") == before + 1
    other = await server.client.post("/v1/entries", json={"body": "different"}, headers=headers)
    assert_error(other, 422, "idempotency_key_reused")


async def test_changes_are_published_to_the_users_channel(server: RunningServer) -> None:
    account = await signup(server.client)
    redis = server.services.redis.client
    messages: list[dict[str, Any]] = []
    async with redis.pubsub(channels=[f"ws:user:{account.id}"],
                            ignore_subscribe_messages=True) as ps:
        entry = await create(server, account, body="hello")
        r = await server.client.patch(f"/v1/entries/{entry['id']}", json={"mood": "ok"},
                                      headers=account.auth)
        updated = r.json()
        await server.client.delete(f"/v1/entries/{entry['id']}", headers=account.auth)
        with trio.fail_after(5):
            while len(messages) < 3:  # get_message returns None for skipped messages
                message = await ps.get_message(timeout=0.5)
                if message is not None:
                    messages.append(json.loads(message["data"]))
    assert [{k: m[k] for k in ("type", "data")} for m in messages] == [
        {"type": "entry.created", "data": {"id": entry["id"], "entry": entry}},
        {"type": "entry.updated", "data": {"id": entry["id"], "entry": updated}},
        {"type": "entry.deleted", "data": {"id": entry["id"]}},
    ]
    # each carries its id in the user's event log, in order (a client resumes from it)
    ids = [parse_event_id(m["id"]) for m in messages]
    assert None not in ids and ids == sorted(ids) and len(set(ids)) == 3
