"""Realtime resume: every event on ``/v1/ws`` has an id (its entry in the user's event log,
the same on every instance), and ``/v1/ws?since=<id>`` replays what a client missed, then goes
live, with no gap and no duplicate at the seam; an id the log cannot serve gets
``resync_required`` first. Real sockets, two in-process servers sharing PostgreSQL and Redis,
a server restart; the log read back with XRANGE."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import trio
from coredis.tokens import PureToken

from innera.config import load_settings
from innera.realtime.event_log import MAX_EVENTS, MAX_LOGGED_BYTES, log_key, parse_event_id
from innera.realtime.events import publish_to_user
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer, start_server
from tests.fixtures.ws import Closed, WsClient
from tests.test_realtime import gauge, receive_close, wait_for

pytestmark = pytest.mark.timeout(90)

RESYNC = {"type": "resync_required"}


async def connect(srv: RunningServer, account: Account, since: str | None = None
                  ) -> WsClient:
    u = urlsplit(srv.url)
    assert u.hostname and u.port
    path = "/v1/ws" if since is None else f"/v1/ws?since={quote(since)}"
    return await WsClient.connect(u.hostname, u.port, path,
                                  [("authorization", f"Bearer {account.access}")])


async def receive(client: WsClient, timeout_s: float = 10.0) -> dict[str, Any]:
    """The next message that is not the server's ping."""
    with trio.fail_after(timeout_s):
        while True:
            message = await client.receive()
            assert isinstance(message, str), message
            decoded = json.loads(message)
            if decoded != {"type": "ping"}:
                return decoded  # type: ignore[no-any-return]


async def receive_until(client: WsClient, last_id: str, timeout_s: float = 30.0
                        ) -> list[dict[str, Any]]:
    """Every message up to and including the event ``last_id``."""
    got: list[dict[str, Any]] = []
    with trio.fail_after(timeout_s):
        while not got or got[-1].get("id") != last_id:
            got.append(await receive(client))
    return got


async def log_ids(srv: RunningServer, user_id: str) -> list[str]:
    """The ids in the user's event log, oldest first (XRANGE)."""
    client = srv.services.redis.client
    with client.decoding(False):
        entries = await client.xrange(log_key(user_id), "-", "+")
    return [e.identifier.decode() for e in entries]


async def publish(srv: RunningServer, account: Account, n: int, **extra: Any) -> None:
    assert await publish_to_user(srv.services.events, account.id, "job.progress",
                                 {"n": n, **extra})


def ids_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


def strictly_increasing(ids: list[str]) -> bool:
    parsed = [parse_event_id(i) for i in ids]
    assert None not in parsed, ids
    return all(a < b for a, b in pairwise(parsed))  # type: ignore[operator]


async def second_server(nursery: trio.Nursery, server_settings: dict[str, str]
                        ) -> RunningServer:
    """Another instance on the same PostgreSQL, Redis and data dir (the same JWT secret)."""
    return await start_server(nursery, load_settings(server_settings))


# --- ids ------------------------------------------------------------------------------------


async def test_events_carry_the_same_increasing_ids_on_every_instance(
        server: RunningServer, nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    other = await second_server(nursery, server_settings)
    async with other.client:
        alice = await signup(server.client)
        on_a, on_b = await connect(server, alice), await connect(other, alice)
        r = await other.client.post("/v1/entries", json={"body": "from b"}, headers=alice.auth)
        assert r.status_code == 201, r.text
        for n in range(5):
            await publish(server if n % 2 else other, alice, n)
        stored = await log_ids(server, alice.id)
        assert len(stored) == 6 and strictly_increasing(stored)
        got_a = [await receive(on_a) for _ in range(6)]
        got_b = [await receive(on_b) for _ in range(6)]
        assert got_a == got_b  # the same messages, ids included, on both instances
        assert ids_of(got_a) == stored
        assert got_a[0]["type"] == "entry.created" and got_a[0]["data"]["id"] == r.json()["id"]
        assert [m["data"]["n"] for m in got_a[1:]] == list(range(5))
        # the log keeps journal content sealed: the entry's text is not in Redis
        client = server.services.redis.client
        with client.decoding(False):
            raw = await client.xrange(log_key(alice.id), "-", "+")
        assert all(b"from b" not in value for e in raw for value in e.field_values.values())
        for ws in (on_a, on_b):
            await ws.aclose()
    await other.stop()


# --- replay ---------------------------------------------------------------------------------


async def test_reconnecting_with_the_last_id_replays_the_missed_events_then_live(
        server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    ws = await connect(server, alice)
    for n in range(3):
        await publish(server, alice, n)
    seen = [await receive(ws) for _ in range(3)]
    await ws.aclose()
    await wait_for(lambda: gauge(server) == 0)

    for n in range(3, 10):  # missed while away
        await publish(server, alice, n)
    await publish(server, bob, 99)  # someone else's
    ws = await connect(server, alice, since=seen[-1]["id"])
    replayed = [await receive(ws) for _ in range(7)]
    assert [m["data"]["n"] for m in replayed] == list(range(3, 10))
    assert ids_of(replayed) == (await log_ids(server, alice.id))[3:]
    assert strictly_increasing(ids_of(seen) + ids_of(replayed))
    await publish(server, alice, 10)  # then live
    live = await receive(ws)
    assert live["data"] == {"n": 10} and strictly_increasing([replayed[-1]["id"], live["id"]])
    await ws.aclose()

    # up to date: nothing is replayed, the next message is the next live event
    ws = await connect(server, alice, since=live["id"])
    await ws.send_text('{"type":"ping"}')
    assert await receive(ws) == {"type": "pong"}
    await publish(server, alice, 11)
    assert (await receive(ws))["data"] == {"n": 11}
    await ws.aclose()


async def test_the_seam_has_no_gap_and_no_duplicate(server: RunningServer) -> None:
    """Events are published before, during and after the reconnect (its handshake, the
    subscription, the replay): the client gets exactly the log's events after ``since``,
    each once, in order."""
    alice = await signup(server.client)
    await publish(server, alice, 0)
    since = (await log_ids(server, alice.id))[0]
    for n in range(1, 200):  # the backlog the replay reads (two pages and more)
        await publish(server, alice, n)
    connecting, connected = trio.Event(), trio.Event()
    during = after = 0  # events published while the client connected, and after it was
    total = 200

    async def publisher() -> None:
        nonlocal total, during, after
        while after < 100:  # from before the handshake until well after it
            await publish(server, alice, total)
            total += 1
            if connected.is_set():
                after += 1
            elif connecting.is_set():
                during += 1
            await trio.lowlevel.checkpoint()

    got: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        connecting.set()
        ws = await connect(server, alice, since=since)
        connected.set()
        nursery.start_soon(_collect, ws, got, lambda: after >= 100 and len(got) >= total - 1)
    stored = await log_ids(server, alice.id)
    assert len(stored) == total <= MAX_EVENTS
    assert during > 0, "no event was published while the client connected"
    assert RESYNC not in got
    assert ids_of(got) == stored[1:]  # every event after since, once each, in order
    assert [m["data"]["n"] for m in got] == list(range(1, total))
    assert strictly_increasing(ids_of(got))
    await ws.aclose()


async def _collect(ws: WsClient, got: list[dict[str, Any]], done: Any) -> None:
    with trio.fail_after(30):
        while not done():
            got.append(await receive(ws))


# --- resync_required ---------------------------------------------------------------------


async def test_an_id_the_log_cannot_serve_gets_resync_required_first(
        server: RunningServer) -> None:
    alice = await signup(server.client)
    for n in range(5):
        await publish(server, alice, n)
    ids = await log_ids(server, alice.id)
    newest = parse_event_id(ids[-1])
    assert newest is not None
    client = server.services.redis.client
    assert await client.xdel(log_key(alice.id), [ids[2]]) == 1  # a hole in the log
    cases = [
        ("malformed", "not-an-id"),
        ("unknown (not an entry of the log)", ids[2]),
        ("from the future", f"{newest[0] + 60_000}-0"),
        ("older than the log", "1-0"),
    ]
    n = 100
    for what, since in cases:
        ws = await connect(server, alice, since=since)
        assert await receive(ws) == RESYNC, what
        await publish(server, alice, n)  # then the live events
        live = await receive(ws)
        assert live["data"] == {"n": n} and live["id"] == (await log_ids(server, alice.id))[-1]
        n += 1
        await ws.aclose()

    # trimmed away: the client's id is no longer kept
    since = (await log_ids(server, alice.id))[1]
    assert await client.xtrim(log_key(alice.id), PureToken.MAXLEN, 2) > 0
    ws = await connect(server, alice, since=since)
    assert await receive(ws) == RESYNC
    await ws.aclose()
    # an event too large to keep (a long entry) is published whole but logged as a
    # placeholder: a replay sends what precedes it, then resync_required
    since = (await log_ids(server, alice.id))[-1]
    await publish(server, alice, n)
    await publish(server, alice, n + 1, pad="x" * MAX_LOGGED_BYTES)
    await publish(server, alice, n + 2)
    ws = await connect(server, alice, since=since)
    assert (await receive(ws))["data"] == {"n": n}
    assert await receive(ws) == RESYNC
    await publish(server, alice, n + 3)  # then live
    assert (await receive(ws))["data"] == {"n": n + 3}
    await ws.aclose()
    ws = await connect(server, alice)  # live, the large event is whole
    await publish(server, alice, n + 4, pad="y" * MAX_LOGGED_BYTES)
    assert (await receive(ws))["data"] == {"n": n + 4, "pad": "y" * MAX_LOGGED_BYTES}
    await ws.aclose()
    n += 5
    # the log expired (gone): the same
    since = (await log_ids(server, alice.id))[-1]
    await client.delete([log_key(alice.id)])
    ws = await connect(server, alice, since=since)
    assert await receive(ws) == RESYNC
    await publish(server, alice, n)
    assert (await receive(ws))["data"] == {"n": n}
    await ws.aclose()


async def test_the_log_keeps_1000_events_none_older_than_a_day_and_expires(
        server: RunningServer) -> None:
    alice = await signup(server.client)
    client = server.services.redis.client
    key = log_key(alice.id)
    # an entry older than 24 h (written with an explicit id from 1970): the next write drops it
    assert await client.xadd(key, {"e": "old"}, identifier="1000-0") == "1000-0"
    await publish(server, alice, 0)
    ids = await log_ids(server, alice.id)
    assert len(ids) == 1 and ids[0] != "1000-0"
    ttl_ms = await client.pttl(key)
    assert 23 * 3600 * 1000 < ttl_ms <= 24 * 3600 * 1000
    for n in range(1, 3):
        await publish(server, alice, n)
    event_2 = (await log_ids(server, alice.id))[-1]
    for n in range(3, MAX_EVENTS + 5):
        await publish(server, alice, n)
    ids = await log_ids(server, alice.id)
    assert len(ids) == MAX_EVENTS and strictly_increasing(ids)
    assert parse_event_id(ids[0]) > parse_event_id(event_2)  # type: ignore[operator]
    # the oldest five are gone: a client that saw only up to event 2 must re-fetch
    ws = await connect(server, alice, since=event_2)
    assert await receive(ws) == RESYNC
    await ws.aclose()
    # one that saw the oldest kept event gets the 999 after it, in pages, in order
    ws = await connect(server, alice, since=ids[0])
    replayed = [await receive(ws) for _ in range(MAX_EVENTS - 1)]
    assert ids_of(replayed) == ids[1:]
    assert [m["data"]["n"] for m in replayed] == list(range(6, MAX_EVENTS + 5))
    await ws.aclose()


# --- instances and restarts ---------------------------------------------------------------


async def test_a_client_reconnecting_after_a_restart_loses_nothing(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    """Two instances; the client's (A) restarts. Events made on B while the client is away
    (a rolling restart closed its socket with 4000) are replayed by the restarted A."""
    a = await start_server(nursery, load_settings(server_settings))
    b = await second_server(nursery, server_settings)
    async with a.client, b.client:
        alice = await signup(b.client)
        ws = await connect(a, alice)
        r = await b.client.post("/v1/entries", json={"body": "one"}, headers=alice.auth)
        first = await receive(ws)
        assert first["data"]["id"] == r.json()["id"]
        async with trio.open_nursery() as stopping:
            stopping.start_soon(a.stop)
            assert await receive_close(ws) == Closed(4000, "Server restarting")
        await ws.aclose()

        missed = []
        for body in ("two", "three", "four"):
            r = await b.client.post("/v1/entries", json={"body": body}, headers=alice.auth)
            assert r.status_code == 201, r.text
            missed.append(r.json()["id"])
        restarted = await start_server(nursery, load_settings(server_settings))
        async with restarted.client:
            ws = await connect(restarted, alice, since=first["id"])
            replayed = [await receive(ws) for _ in range(3)]
            assert [m["data"]["id"] for m in replayed] == missed
            assert ids_of(replayed) == (await log_ids(b, alice.id))[1:]
            r = await b.client.post("/v1/entries", json={"body": "five"}, headers=alice.auth)
            live = await receive(ws)
            assert live["data"]["id"] == r.json()["id"]
            assert strictly_increasing([first["id"], *ids_of(replayed), live["id"]])
            await ws.aclose()
        await restarted.stop()
    await b.stop()


# --- back-pressure ----------------------------------------------------------------------------


async def test_a_client_too_slow_for_its_replay_is_closed_with_1013(
        server: RunningServer) -> None:
    """A replay bigger than the socket buffers to a client that does not read: the live
    events arriving meanwhile fill the socket's queue, and the hub closes it like any slow
    client. What the client does read is the replay's prefix, in order."""
    alice = await signup(server.client)
    await publish(server, alice, 0)
    since = (await log_ids(server, alice.id))[0]
    pad = "x" * (MAX_LOGGED_BYTES - 200)  # the largest events the log keeps whole
    # ~5.6 MB: more than the kernel buffers on both sides; and room in the log for the live
    # events that overflow the queue, so `since` is not trimmed before the replay reads it
    for n in range(1, MAX_EVENTS - 300):
        await publish(server, alice, n, pad=pad)
    slow = await connect(server, alice, since=since)  # never reads until closed
    try:
        n = 1000
        with trio.fail_after(30):
            while server.services.hub.slow_closed == 0:
                await publish(server, alice, n)
                n += 1
                await trio.lowlevel.checkpoint()
        assert 256 < n - 1000 < 300  # the queue (256) overflowed
        got: list[dict[str, Any]] = []
        with trio.fail_after(30):
            while True:
                message = await slow.receive()
                if isinstance(message, Closed):
                    assert message.code == 1013
                    break
                assert isinstance(message, str)
                got.append(json.loads(message))
        assert RESYNC not in got
        assert got and [m["data"]["n"] for m in got] == list(range(1, len(got) + 1))
        assert len(got) < MAX_EVENTS - 301  # the replay was cut short
        await wait_for(lambda: gauge(server) == 0)
    finally:
        await slow.aclose()
        await server.services.redis.client.delete([log_key(alice.id)])


def test_event_ids_parse_as_stream_ids() -> None:
    assert parse_event_id("1712345678901-0") == (1712345678901, 0)
    assert parse_event_id("1-12") > parse_event_id("1-2")  # type: ignore[operator]
    for bad in ("", "1", "1-", "-1", "a-1", "1-0-0", " 1-0", "1-0 ", str(2**64) + "-0",
                "1" * 21 + "-0"):
        assert parse_event_id(bad) is None, bad
