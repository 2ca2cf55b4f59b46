"""Devices over HTTP: registering push tokens (upsert), listing, deleting, validation, and
isolation between users (a token moving to another account included)."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

import trio

from tests.fixtures.accounts import signup
from tests.fixtures.server import RunningServer
from tests.test_http import assert_error

FIELDS = {"id", "platform", "pushToken", "createdAt", "updatedAt", "lastSeenAt"}


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
