"""Notifications over HTTP, with the real server, PostgreSQL and Redis: listing, the keyset
cursor, marking read, the cached unread count (consistency, races, Redis outage) and the
``notification.created`` event. Notifications are created with ``create_notification``
(there is no public route creating them)."""

from __future__ import annotations

import json
import random
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

import innera.notifications.unread as unread
from innera.config import load_settings
from innera.db.pool import Pool
from innera.notifications import create_notification, unread_key
from innera.redis import UNAVAILABLE_ERRORS
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer, server_environ, start_server
from tests.test_http import assert_error

#: ISO 8601 UTC, milliseconds, Z (innera.timestamps.iso_utc)
MOMENT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def notify(srv: RunningServer, account: Account, n: int = 1, **extra: Any
                 ) -> list[dict[str, Any]]:
    svc = srv.services
    return [await create_notification(svc.db, svc.redis, account.id, events=svc.events,
                                      push_provider=svc.settings.push.provider,
                                      kind="test.ping", title=f"Title {i}", body=f"Body {i}",
                                      **extra)
            for i in range(n)]


async def db_unread(srv: RunningServer, user_id: str) -> int:
    async with srv.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM notifications WHERE user_id = %s AND read_at IS NULL",
            (user_id,))
        row = await cur.fetchone()
    return int(row[0])


async def get_count(srv: RunningServer, account: Account) -> int:
    r = await srv.client.get("/v1/notifications/unread-count", headers=account.auth)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"count"}
    return int(r.json()["count"])


async def cached(srv: RunningServer, user_id: str) -> str | None:
    return await srv.services.redis.client.hget(unread_key(user_id), "count")


# --- listing ----------------------------------------------------------------------------


async def test_list_is_newest_first_with_keyset_pages(server: RunningServer) -> None:
    account = await signup(server.client)
    created = await notify(server, account, 5, data={"entryId": "e-1", "n": [1, 2]})
    seen: list[dict[str, Any]] = []
    cursor = None
    for expected_size in (2, 2, 1):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        r = await server.client.get("/v1/notifications", params=params, headers=account.auth)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "nextCursor"}
        assert len(page["items"]) == expected_size
        seen += page["items"]
        cursor = page["nextCursor"]
    assert cursor is None
    assert seen == list(reversed(created))
    first = seen[-1]
    assert set(first) == {"id", "kind", "title", "body", "data", "readAt", "createdAt"}
    assert first["data"] == {"entryId": "e-1", "n": [1, 2]} and first["readAt"] is None
    assert MOMENT.fullmatch(first["createdAt"]) and first["kind"] == "test.ping"

    r = await server.client.get("/v1/notifications", headers=account.auth)
    assert [n["id"] for n in r.json()["items"]] == [n["id"] for n in reversed(created)]
    assert r.json()["nextCursor"] is None


async def test_unread_filter_and_idempotent_read(server: RunningServer) -> None:
    account = await signup(server.client)
    created = await notify(server, account, 4)
    r = await server.client.post(f"/v1/notifications/{created[1]['id']}/read",
                                 headers=account.auth)
    assert r.status_code == 200, r.text
    read = r.json()
    assert read["id"] == created[1]["id"] and MOMENT.fullmatch(read["readAt"])
    again = await server.client.post(f"/v1/notifications/{created[1]['id']}/read",
                                     headers=account.auth)
    assert again.status_code == 200 and again.json() == read  # the first readAt is kept
    await server.client.post(f"/v1/notifications/{created[3]['id']}/read", headers=account.auth)

    ids: list[str] = []
    cursor = None
    while True:
        params = {"unread": "true", "limit": "1", **({"cursor": cursor} if cursor else {})}
        page = (await server.client.get("/v1/notifications", params=params,
                                        headers=account.auth)).json()
        ids += [n["id"] for n in page["items"]]
        assert all(n["readAt"] is None for n in page["items"])
        if (cursor := page["nextCursor"]) is None:
            break
    assert ids == [created[2]["id"], created[0]["id"]]
    r = await server.client.get("/v1/notifications", params={"unread": "false"},
                                headers=account.auth)
    assert len(r.json()["items"]) == 4


async def test_bad_cursors_and_parameters(server: RunningServer) -> None:
    account, other = await signup(server.client), await signup(server.client)
    await notify(server, account, 3)
    await notify(server, other, 3)
    page = (await server.client.get("/v1/notifications", params={"limit": "1"},
                                    headers=account.auth)).json()
    cursor = page["nextCursor"]
    flipped = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    for bad in ("garbage", "a.b", "....", cursor + "x", flipped, "é.é", "x" * 200,
                cursor[::-1]):
        r = await server.client.get("/v1/notifications", params={"cursor": bad},
                                    headers=account.auth)
        assert_error(r, 400, "invalid_cursor")
    # a cursor is bound to the user it was issued to
    r = await server.client.get("/v1/notifications", params={"cursor": cursor},
                                headers=other.auth)
    assert_error(r, 400, "invalid_cursor")
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"unread": "maybe"},
                   {"unread": "1"}, {"limit": "1.0"}, {"sort": "asc"},
                   {"cursor": "x" * 201}):  # every list's cursor: at most 200 characters
        r = await server.client.get("/v1/notifications", params=params, headers=account.auth)
        assert_error(r, 422, "validation_failed")
    assert_error(await server.client.get("/v1/notifications"), 401, "unauthorized")


async def test_other_users_notifications_are_invisible(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    [mine] = await notify(server, alice)
    assert (await server.client.get("/v1/notifications", headers=bob.auth)).json() == {
        "items": [], "nextCursor": None}
    unknown = await server.client.post(f"/v1/notifications/{uuid.uuid4()}/read",
                                       headers=bob.auth)
    assert_error(unknown, 404, "not_found")
    foreign = await server.client.post(f"/v1/notifications/{mine['id']}/read",
                                       headers=bob.auth)
    assert_error(foreign, 404, "not_found")
    assert foreign.json()["error"] == unknown.json()["error"]
    for bad in ("nope", "123", mine["id"].replace("-", ""), "{" + mine["id"] + "}",
                mine["id"] + "0"):
        r = await server.client.post(f"/v1/notifications/{bad}/read", headers=alice.auth)
        assert_error(r, 404, "not_found")
    r = await server.client.post("/v1/notifications/read-all", headers=bob.auth)
    assert r.json() == {"updated": 0}
    assert await get_count(server, bob) == 0
    assert await get_count(server, alice) == 1
    assert await db_unread(server, alice.id) == 1


async def test_create_validates_its_arguments(server: RunningServer) -> None:
    account = await signup(server.client)
    svc = server.services
    for kwargs in ({"title": "t" * 201}, {"body": "b" * 2001}, {"kind": ""},
                   {"kind": "Bad Kind"}, {"data": ["not", "an", "object"]},
                   {"data": {"x": object()}}, {"title": "nul\x00"},
                   {"data": {"k": "nul\x00"}}):
        args = {"kind": "k", "title": "t", "body": "b", **kwargs}
        with pytest.raises(ValueError):
            await create_notification(svc.db, svc.redis, account.id, events=svc.events,
                                      push_provider=svc.settings.push.provider, **args)
    ok = await create_notification(svc.db, svc.redis, account.id, events=svc.events,
                                   push_provider=svc.settings.push.provider, kind="k",
                                   title="t" * 200, body="b" * 2000)
    assert ok["data"] == {} and len(ok["title"]) == 200
    assert await db_unread(server, account.id) == 1


# --- the event --------------------------------------------------------------------------


async def test_create_publishes_on_the_users_channel(server: RunningServer) -> None:
    account = await signup(server.client)
    redis = server.services.redis.client
    async with redis.pubsub(channels=[f"ws:user:{account.id}"],
                            ignore_subscribe_messages=True) as ps:
        [created] = await notify(server, account, data={"a": 1})
        message = None
        with trio.fail_after(5):
            while message is None:  # get_message returns None for skipped messages
                message = await ps.get_message(timeout=0.5)
    published = json.loads(message["data"])
    # the message carries its id in the user's event log, which holds the event too
    with redis.decoding(False):
        [logged] = await redis.xrange(f"ws:events:{account.id}", "-", "+")
    assert published == {"id": logged.identifier.decode(), "type": "notification.created",
                         "data": created}


# --- the unread count -------------------------------------------------------------------


async def test_unread_count_is_cached_and_exact_after_every_change(
        server: RunningServer) -> None:
    account = await signup(server.client)
    redis = server.services.redis.client
    key = unread_key(account.id)
    assert await get_count(server, account) == 0
    created = await notify(server, account, 2)
    assert not await redis.exists([key])  # the change deleted the cached 0

    assert await get_count(server, account) == 2
    assert await cached(server, account.id) == "2"
    assert 290 <= await redis.ttl(key) <= 300
    assert await get_count(server, account) == 2  # a hit

    await notify(server, account)
    assert await get_count(server, account) == 3

    r = await server.client.post(f"/v1/notifications/{created[0]['id']}/read",
                                 headers=account.auth)
    assert r.status_code == 200
    assert await get_count(server, account) == 2
    # reading it again changes nothing
    await server.client.post(f"/v1/notifications/{created[0]['id']}/read", headers=account.auth)
    assert await get_count(server, account) == 2

    r = await server.client.post("/v1/notifications/read-all", headers=account.auth)
    assert r.status_code == 200 and r.json() == {"updated": 2}
    assert await get_count(server, account) == 0
    r = await server.client.post("/v1/notifications/read-all", headers=account.auth)
    assert r.json() == {"updated": 0}
    assert await get_count(server, account) == 0 == await db_unread(server, account.id)


async def test_concurrent_changes_and_counts_end_at_the_database_truth(
        server: RunningServer) -> None:
    account = await signup(server.client)
    rng = random.Random(7)
    counts: list[int] = []

    async def read(nid: str) -> None:
        r = await server.client.post(f"/v1/notifications/{nid}/read", headers=account.auth)
        assert r.status_code == 200, r.text

    async def read_all() -> None:
        await trio.sleep(rng.random() * 0.05)
        r = await server.client.post("/v1/notifications/read-all", headers=account.auth)
        assert r.status_code == 200, r.text

    async def count() -> None:
        await trio.sleep(rng.random() * 0.05)
        counts.append(await get_count(server, account))

    async def create() -> None:
        await trio.sleep(rng.random() * 0.05)
        await notify(server, account)

    for _ in range(3):
        seed = await notify(server, account, 6)
        counts.clear()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                for n in seed[:4]:
                    nursery.start_soon(read, n["id"])
                for _ in range(12):
                    nursery.start_soon(create)
                    nursery.start_soon(count)
                nursery.start_soon(read_all)
        truth = await db_unread(server, account.id)
        assert await get_count(server, account) == truth
        assert await cached(server, account.id) == str(truth)
        assert len(counts) == 12


@pytest.mark.parametrize("change", ["create", "read", "read_all"])
async def test_a_recompute_racing_a_change_cannot_leave_a_stale_count(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """The recompute reads the database, then the change commits and DELs the key, then
    the recompute tries to store its (old) count: the store must be refused."""
    account = await signup(server.client)
    [first] = await notify(server, account)
    original = unread.count_unread_from_db
    computed, release = trio.Event(), trio.Event()

    async def slow_count(db: Pool, user_id: str) -> int:
        value = await original(db, user_id)
        computed.set()
        with trio.fail_after(5):
            await release.wait()
        return value

    monkeypatch.setattr(unread, "count_unread_from_db", slow_count)
    answers: list[int] = []

    async def recompute() -> None:
        answers.append(await get_count(server, account))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(recompute)
            await computed.wait()  # the recompute holds count=1, not yet stored
            monkeypatch.setattr(unread, "count_unread_from_db", original)
            if change == "create":
                await notify(server, account)
                expected = 2
            elif change == "read":
                r = await server.client.post(f"/v1/notifications/{first['id']}/read",
                                             headers=account.auth)
                assert r.status_code == 200
                expected = 0
            else:
                r = await server.client.post("/v1/notifications/read-all", headers=account.auth)
                assert r.json() == {"updated": 1}
                expected = 0
            release.set()
    assert answers == [1]  # its own answer was true when it read the database
    assert await cached(server, account.id) is None  # but it was not cached
    assert await get_count(server, account) == expected == await db_unread(server, account.id)
    assert await cached(server, account.id) == str(expected)


async def test_redis_down_counts_from_the_database(
    nursery: trio.Nursery, database_url: str, private_redis_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    redis = private_redis_server()
    srv = await start_server(nursery, load_settings(
        server_environ(database_url, redis.url, tmp_path)))
    async with srv.client:
        account = await signup(srv.client)
        created = await notify(srv, account, 2)
        assert await get_count(srv, account) == 2
        errors_before = srv.services.metrics.redis_errors._value.get()
        redis.stop()

        await notify(srv, account)  # committed; the DEL and the event fail, counted
        assert await get_count(srv, account) == 3
        r = await srv.client.post(f"/v1/notifications/{created[0]['id']}/read",
                                  headers=account.auth)
        assert r.status_code == 200, r.text
        assert await get_count(srv, account) == 2
        r = await srv.client.post("/v1/notifications/read-all", headers=account.auth)
        assert r.json() == {"updated": 2}
        assert await get_count(srv, account) == 0 == await db_unread(srv, account.id)
        assert srv.services.metrics.redis_errors._value.get() > errors_before

        redis.start()  # back (empty): the cache fills again
        with trio.fail_after(10):
            while True:
                assert await get_count(srv, account) == 0
                try:
                    if await cached(srv, account.id) == "0":
                        break
                except UNAVAILABLE_ERRORS:
                    pass  # the client reconnects
                await trio.sleep(0.1)
    await srv.stop()
