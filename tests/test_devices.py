"""Devices over HTTP: registering push tokens (upsert), listing (paginated), deleting,
validation, the per-account cap (MAX_DEVICES_PER_USER), and isolation between users (a token
moving to another account included)."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime

import httpx
import trio

from innera.config import load_settings
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer, start_server
from tests.test_http import assert_error

FIELDS = {"id", "platform", "pushToken", "createdAt", "updatedAt", "lastSeenAt"}
#: ISO 8601 UTC, milliseconds, Z (innera.timestamps.iso_utc)
MOMENT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_register_is_an_upsert_by_token(server: RunningServer) -> None:
    account = await signup(server.client)
    token = secrets.token_hex(32)
    r = await server.client.post("/v1/devices", json={"platform": "ios", "pushToken": token},
                                 headers=account.auth)
    assert r.status_code == 201, r.text
    device = r.json()
    assert set(device) == FIELDS
    assert device["platform"] == "ios" and device["pushToken"] == token
    uuid.UUID(device["id"])
    assert all(MOMENT.fullmatch(device[f]) for f in ("createdAt", "updatedAt", "lastSeenAt"))

    again = await server.client.post("/v1/devices", json={"platform": "ios", "pushToken": token},
                                     headers=account.auth)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == device["id"]
    assert again.json()["createdAt"] == device["createdAt"]
    seen = datetime.fromisoformat
    assert seen(again.json()["lastSeenAt"]) >= seen(device["lastSeenAt"])

    moved = await server.client.post("/v1/devices", json={"platform": "web", "pushToken": token},
                                     headers=account.auth)
    assert moved.status_code == 200 and moved.json()["id"] == device["id"]
    assert moved.json()["platform"] == "web"

    other = await server.client.post("/v1/devices",
                                     json={"platform": "android", "pushToken": "fcm:" + token},
                                     headers=account.auth)
    assert other.status_code == 201
    r = await server.client.get("/v1/devices", headers=account.auth)
    assert r.status_code == 200
    listed = r.json()
    assert listed["nextCursor"] is None
    assert [d["id"] for d in listed["items"]] == [other.json()["id"], device["id"]]
    assert all(set(d) == FIELDS for d in listed["items"])

    r = await server.client.delete(f"/v1/devices/{device['id']}", headers=account.auth)
    assert r.status_code == 204 and r.content == b""
    assert_error(await server.client.delete(f"/v1/devices/{device['id']}",
                                            headers=account.auth), 404, "not_found")
    r = await server.client.get("/v1/devices", headers=account.auth)
    assert [d["id"] for d in r.json()["items"]] == [other.json()["id"]]


async def test_concurrent_registrations_of_a_token_make_one_device(
        server: RunningServer) -> None:
    account = await signup(server.client)
    body = {"platform": "android", "pushToken": secrets.token_urlsafe(100)}
    statuses: list[int] = []
    ids: set[str] = set()

    async def register() -> None:
        r = await server.client.post("/v1/devices", json=body, headers=account.auth)
        statuses.append(r.status_code)
        ids.add(r.json()["id"])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(register)
    assert sorted(statuses) == [200] * 5 + [201]
    assert len(ids) == 1
    assert len((await server.client.get("/v1/devices", headers=account.auth)).json()["items"]) == 1


async def test_validation(server: RunningServer) -> None:
    account = await signup(server.client)
    for body in ({"platform": "blackberry", "pushToken": "t"}, {"platform": "ios"},
                 {"pushToken": "t"}, {"platform": "ios", "pushToken": ""},
                 {"platform": "ios", "pushToken": "x" * 4097},
                 {"platform": "ios", "pushToken": "a\x00b"},
                 {"platform": "ios", "pushToken": "a\nb"},
                 {"platform": "ios", "pushToken": 42},
                 {"platform": "ios", "pushToken": "t", "name": "my phone"}, [], "x"):
        r = await server.client.post("/v1/devices", json=body, headers=account.auth)
        body_out = assert_error(r, 422, "validation_failed")
        assert body_out["error"]["details"]
    r = await server.client.post("/v1/devices", content=b"{", headers=account.auth)
    assert_error(r, 400, "invalid_json")
    r = await server.client.post("/v1/devices", headers=account.auth)
    assert_error(r, 422, "validation_failed")
    # the longest token (random, incompressible: beyond a plain btree entry) is accepted
    longest = secrets.token_urlsafe(4096)[:4096]
    r = await server.client.post("/v1/devices", json={"platform": "web", "pushToken": longest},
                                 headers=account.auth)
    assert r.status_code == 201, r.text
    assert r.json()["pushToken"] == longest
    r = await server.client.post("/v1/devices", json={"platform": "web", "pushToken": longest},
                                 headers=account.auth)
    assert r.status_code == 200
    for method in ("GET", "POST"):
        r = await server.client.request(method, "/v1/devices",
                                        json={"platform": "ios", "pushToken": "t"})
        assert_error(r, 401, "unauthorized")


async def test_other_users_devices_are_invisible(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    r = await server.client.post("/v1/devices", json={"platform": "ios", "pushToken": "a-1"},
                                 headers=alice.auth)
    device = r.json()
    assert (await server.client.get("/v1/devices", headers=bob.auth)).json() == {
        "items": [], "nextCursor": None}
    foreign = await server.client.delete(f"/v1/devices/{device['id']}", headers=bob.auth)
    unknown = await server.client.delete(f"/v1/devices/{uuid.uuid4()}", headers=bob.auth)
    assert_error(foreign, 404, "not_found")
    assert_error(unknown, 404, "not_found")
    assert foreign.json()["error"] == unknown.json()["error"]
    for bad in ("nope", "1", device["id"].replace("-", ""), device["id"].upper() + "0"):
        assert_error(await server.client.delete(f"/v1/devices/{bad}", headers=alice.auth),
                     404, "not_found")
    assert len((await server.client.get("/v1/devices", headers=alice.auth)).json()["items"]) == 1


async def test_a_token_registered_by_another_user_moves_with_a_new_id(
        server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    token = secrets.token_hex(32)
    first = (await server.client.post("/v1/devices", json={"platform": "ios", "pushToken": token},
                                      headers=alice.auth)).json()
    r = await server.client.post("/v1/devices", json={"platform": "ios", "pushToken": token},
                                 headers=bob.auth)
    assert r.status_code == 201, r.text
    bobs = r.json()
    assert bobs["id"] != first["id"]  # nothing of alice's device is shown to bob
    assert (await server.client.get("/v1/devices", headers=alice.auth)).json()["items"] == []
    assert [d["id"] for d in (await server.client.get(
        "/v1/devices", headers=bob.auth)).json()["items"]] == [bobs["id"]]
    assert_error(await server.client.delete(f"/v1/devices/{first['id']}", headers=alice.auth),
                 404, "not_found")
    assert_error(await server.client.delete(f"/v1/devices/{first['id']}", headers=bob.auth),
                 404, "not_found")
    async with server.services.db.connection() as conn:
        cur = await conn.execute("SELECT user_id::text FROM devices WHERE push_token = %s",
                                 (token,))
        assert await cur.fetchall() == [(bob.id,)]


async def _register(server: RunningServer, account: Account, token: str,
                    platform: str = "ios") -> httpx.Response:
    return await server.client.post("/v1/devices", json={"platform": platform,
                                                         "pushToken": token},
                                    headers=account.auth)


async def _device_ids(server: RunningServer, account: Account) -> list[str]:
    r = await server.client.get("/v1/devices", params={"limit": 100}, headers=account.auth)
    assert r.status_code == 200, r.text
    assert r.json()["nextCursor"] is None
    return [d["id"] for d in r.json()["items"]]


async def test_past_the_cap_the_least_recently_seen_device_is_replaced(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "MAX_DEVICES_PER_USER": "3"}))
    async with srv.client:
        alice, bob = await signup(srv.client), await signup(srv.client)
        ids = {}
        for name in ("t1", "t2", "t3"):
            r = await _register(srv, alice, name)
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
        bobs = (await _register(srv, bob, "bob-1")).json()["id"]
        # t1 registers again (the app started): t2 is now the least recently seen
        again = await _register(srv, alice, "t1")
        assert again.status_code == 200 and again.json()["id"] == ids["t1"]

        r = await _register(srv, alice, "t4")
        assert r.status_code == 201, r.text
        ids["t4"] = r.json()["id"]
        assert await _device_ids(srv, alice) == [ids["t4"], ids["t3"], ids["t1"]]
        assert_error(await srv.client.delete(f"/v1/devices/{ids['t2']}", headers=alice.auth),
                     404, "not_found")

        # re-registering a token the account has, at the cap, replaces nothing
        for name in ("t3", "t4", "t1"):
            r = await _register(srv, alice, name, "android")
            assert r.status_code == 200 and r.json()["id"] == ids[name]
        assert sorted(await _device_ids(srv, alice)) == sorted(
            [ids["t4"], ids["t3"], ids["t1"]])

        # a token moving here from another account counts like a new device
        r = await _register(srv, alice, "bob-1")
        assert r.status_code == 201
        moved = r.json()["id"]
        assert await _device_ids(srv, alice) == [moved, ids["t4"], ids["t1"]]  # t3 replaced
        assert await _device_ids(srv, bob) == []
        assert bobs not in await _device_ids(srv, alice)

        # concurrent registrations of new tokens cannot overshoot the cap
        async with trio.open_nursery() as inner:
            for n in range(8):
                inner.start_soon(_register, srv, alice, f"burst-{n}")
        async with srv.services.db.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM devices WHERE user_id = %s",
                                     (alice.id,))
            assert await cur.fetchone() == (3,)
        assert len(await _device_ids(srv, alice)) == 3
        # the other account is untouched by alice's cap
        for n in range(3):
            assert (await _register(srv, bob, f"bob-{n + 2}")).status_code == 201
        assert len(await _device_ids(srv, bob)) == 3
    await srv.stop()


async def test_the_list_is_paginated_and_walks_every_device_once(
        server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    registered = []
    for n in range(7):
        r = await _register(server, alice, f"page-{n}-{secrets.token_hex(8)}")
        assert r.status_code == 201
        registered.append(r.json()["id"])
    await _register(server, bob, secrets.token_hex(8))

    r = await server.client.get("/v1/devices", headers=alice.auth)
    assert len(r.json()["items"]) == 7 and r.json()["nextCursor"] is None  # default limit 20

    seen: list[str] = []
    pages: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        r = await server.client.get("/v1/devices", params=params, headers=alice.auth)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "nextCursor"}
        assert all(set(d) == FIELDS for d in page["items"])
        seen += [d["id"] for d in page["items"]]
        pages.append(len(page["items"]))
        cursor = page["nextCursor"]
        if cursor is None:
            break
        # a cursor opens for its own user only
        assert_error(await server.client.get("/v1/devices", params={"cursor": cursor},
                                             headers=bob.auth), 400, "invalid_cursor")
    assert pages == [3, 3, 1]
    assert seen == list(reversed(registered))  # newest first, each exactly once

    for params in ({"cursor": "nope"}, {"cursor": cursor or "x" * 40}):
        assert_error(await server.client.get("/v1/devices", params=params,
                                             headers=alice.auth), 400, "invalid_cursor")
    for limit in ("0", "101", "x"):
        assert_error(await server.client.get("/v1/devices", params={"limit": limit},
                                             headers=alice.auth), 422, "validation_failed")
