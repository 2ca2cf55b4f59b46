"""The realtime socket ``/v1/ws`` on real sockets, with real PostgreSQL and Redis: auth,
the message protocol, delivery through Redis pub/sub (one process and across processes),
slow clients, token expiry, liveness, a Redis restart, the per-user socket cap and the
handshake rate limits."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
import trio
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

from innera.api import ws as ws_module
from innera.realtime.events import publish_to_user
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer, server_environ
from tests.fixtures.ws import Closed, WsClient

pytestmark = pytest.mark.timeout(60)


def _hostport(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    assert u.hostname and u.port
    return u.hostname, u.port


async def connect(url: str, token: str | None, *, query: bool = False) -> WsClient:
    host, port = _hostport(url)
    if token is None:
        return await WsClient.connect(host, port, "/v1/ws")
    if query:
        return await WsClient.connect(host, port, f"/v1/ws?access_token={token}")
    return await WsClient.connect(host, port, "/v1/ws", [("authorization", f"Bearer {token}")])


async def receive_json(client: WsClient, timeout_s: float = 5.0) -> Any:
    with trio.fail_after(timeout_s):
        message = await client.receive()
    assert isinstance(message, str), message
    return json.loads(message)


def without_id(message: dict[str, Any]) -> dict[str, Any]:
    """An event without its id, which must be a stream id (``<ms>-<seq>``)."""
    rest = dict(message)
    assert re.fullmatch(r"[0-9]+-[0-9]+", rest.pop("id")), message
    return rest


async def receive_close(client: WsClient, timeout_s: float = 5.0) -> Closed:
    with trio.fail_after(timeout_s):
        while True:
            message = await client.receive()
            if isinstance(message, Closed):
                return message


def gauge(server: RunningServer) -> float:
    return server.services.metrics.ws_connections._value.get()  # type: ignore[no-any-return]


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)


def short_token(server: RunningServer, user_id: str, ttl_s: int) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + ttl_s, "jti": uuid.uuid4().hex,
              "typ": "access"}
    return jwt.encode(claims, server.services.access_tokens._secret, algorithm="HS256")


# --- one process ----------------------------------------------------------------------


async def test_ping_pong_with_header_and_query_tokens_and_the_gauge(
        server: RunningServer) -> None:
    account = await signup(server.client)
    assert gauge(server) == 0
    by_header = await connect(server.url, account.access)
    by_query = await connect(server.url, account.access, query=True)
    assert gauge(server) == 2
    for client in (by_header, by_query):
        await client.send_text('{"type":"ping"}')
        assert await receive_json(client) == {"type": "pong"}
    await by_header.aclose()
    await wait_for(lambda: gauge(server) == 1)
    await by_query.aclose()
    await wait_for(lambda: gauge(server) == 0)
    await wait_for(lambda: not server.services.hub.user_ids())


@pytest.mark.parametrize("token", [None, "not-a-jwt", jwt.encode(
    {"sub": "x", "iat": 0, "exp": 2**31, "jti": "j", "typ": "access"}, "wrong" * 10)])
async def test_a_bad_or_missing_token_is_refused_with_401(
        server: RunningServer, token: str | None) -> None:
    with pytest.raises(ConnectionRefusedError, match="401"):
        await connect(server.url, token)
    with pytest.raises(ConnectionRefusedError, match="401"):
        await connect(server.url, token or "x", query=True)
    assert gauge(server) == 0


async def test_an_expired_token_or_a_deleted_user_is_refused(server: RunningServer) -> None:
    account = await signup(server.client)
    with pytest.raises(ConnectionRefusedError, match="401"):
        await connect(server.url, short_token(server, account.id, -1))
    with pytest.raises(ConnectionRefusedError, match="401"):
        await connect(server.url, short_token(server, str(uuid.uuid4()), 60))


async def test_unknown_types_and_invalid_json_get_an_error_and_the_socket_stays(
        server: RunningServer) -> None:
    account = await signup(server.client)
    client = await connect(server.url, account.access)
    await client.send_text("{nope")
    message = await receive_json(client)
    assert message["type"] == "error" and message["data"]["code"] == "invalid_json"
    for text in ('{"type":"dance"}', "[1,2]", '"ping"'):
        await client.send_text(text)
        message = await receive_json(client)
        assert message["type"] == "error" and message["data"]["code"] == "unknown_type", text
    await client.send_text('{"type":"pong"}')  # the answer to a server ping: no reply
    await client.send_text('{"type":"ping"}')
    assert await receive_json(client) == {"type": "pong"}
    await client.aclose()


async def test_a_message_over_64_kib_closes_with_1009(server: RunningServer) -> None:
    account = await signup(server.client)
    client = await connect(server.url, account.access)
    await client.send_text("x" * (64 * 1024))  # exactly the limit is fine
    assert (await receive_json(client))["data"]["code"] == "invalid_json"
    await client.send_text("x" * (64 * 1024 + 1))
    assert (await receive_close(client)).code == 1009
    await client.aclose()
    await wait_for(lambda: gauge(server) == 0)


async def test_events_reach_the_users_sockets_only(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    alice_1 = await connect(server.url, alice.access)
    alice_2 = await connect(server.url, alice.access, query=True)
    bob_ws = await connect(server.url, bob.access)
    await publish_to_user(server.services.events, alice.id, "job.progress", {"pct": 50})
    for client in (alice_1, alice_2):
        assert without_id(await receive_json(client)) == {"type": "job.progress",
                                                          "data": {"pct": 50}}
    # an entry created through the API reaches her sockets too
    r = await server.client.post("/v1/entries", json={"body": "hello"}, headers=alice.auth)
    assert r.status_code == 201, r.text
    for client in (alice_1, alice_2):
        event = await receive_json(client)
        assert event["type"] == "entry.created" and event["data"]["id"] == r.json()["id"]
    # bob got nothing: his next message is the answer to his own ping
    await bob_ws.send_text('{"type":"ping"}')
    assert await receive_json(bob_ws) == {"type": "pong"}
    for client in (alice_1, alice_2, bob_ws):
        await client.aclose()


async def test_the_token_expiry_closes_with_4001(server: RunningServer) -> None:
    account = await signup(server.client)
    client = await connect(server.url, short_token(server, account.id, 2))
    started = trio.current_time()
    assert await receive_close(client, 5) == Closed(4001, "Token expired")
    assert 0.5 < trio.current_time() - started < 3.5
    await client.aclose()


async def test_close_user_closes_only_that_users_sockets(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    alice_ws = await connect(server.url, alice.access)
    bob_ws = await connect(server.url, bob.access)
    assert server.services.hub.close_user(alice.id, 4003, "Account deleted") == 1
    assert await receive_close(alice_ws) == Closed(4003, "Account deleted")
    await bob_ws.send_text('{"type":"ping"}')
    assert await receive_json(bob_ws) == {"type": "pong"}
    await alice_ws.aclose()
    await bob_ws.aclose()


async def test_a_silent_peer_is_dropped_and_an_answering_one_kept(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "PING_INTERVAL_S", 0.3)
    monkeypatch.setattr(ws_module, "PONG_TIMEOUT_S", 0.5)
    account = await signup(server.client)
    silent = await connect(server.url, account.access)
    answering = await connect(server.url, account.access)

    async def answer_pings() -> None:
        while True:
            message = await receive_json(answering)
            assert message == {"type": "ping"}
            await answering.send_text('{"type":"pong"}')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_pings)
        assert await receive_json(silent) == {"type": "ping"}
        assert await receive_close(silent, 3) == Closed(4002, "Ping timeout")
        await trio.sleep(1.0)  # several more ping rounds
        assert gauge(server) == 1
        nursery.cancel_scope.cancel()
    await silent.aclose()
    await answering.aclose()


async def test_a_slow_client_is_closed_with_1013_and_a_fast_one_gets_everything(
        server: RunningServer) -> None:
    account = await signup(server.client)
    slow = await connect(server.url, account.access)  # never reads
    fast = await connect(server.url, account.access)
    hub = server.services.hub
    count, batch, payload = 600, 50, "x" * 32 * 1024
    received: list[int] = []

    async def read_fast() -> None:
        while len(received) < count:
            message = await receive_json(fast, 20)
            received.append(message["data"]["n"])

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            for n in range(count):
                await publish_to_user(server.services.events, account.id, "job.progress",
                                      {"n": n, "pad": payload})
                if n % batch == batch - 1:  # the fast client keeps up, the slow one does not
                    await wait_for(lambda n=n: len(received) > n, 10)
        assert received == list(range(count))
        assert hub.slow_closed == 1
        metrics = (await server.client.get("/metrics")).text
        assert "innera_ws_slow_clients_closed_total 1.0" in metrics
        # the slow client reads its backlog (what the kernel buffered), then the 1013 close
        assert (await receive_close(slow, 20)).code == 1013
        await wait_for(lambda: gauge(server) == 1)
    finally:
        await slow.aclose()  # a peer that never reads holds its connection until it goes
        await fast.aclose()


async def test_a_broadcast_reaches_each_socket_of_the_user_once_and_in_order(
        server: RunningServer, http_server: str) -> None:
    """Every event of a user reaches each of the user's sockets exactly once, in the order
    published, and no other user's socket. On the fast server the hub writes each event to
    the sockets itself (no task switch per socket); on Hypercorn each socket's writer does."""
    alice, bob = await signup(server.client), await signup(server.client)
    sockets = [await connect(server.url, alice.access) for _ in range(8)]
    bob_ws = await connect(server.url, bob.access)
    hub = server.services.hub
    if http_server == "fast":  # what this test is about there: the write without a queue
        await wait_for(lambda: len(hub.sockets_of(alice.id)) == 8
                       and all(s.direct is not None for s in hub.sockets_of(alice.id)))
    count = 50
    for n in range(count):
        await publish_to_user(server.services.events, alice.id, "job.progress", {"n": n})
    for client in sockets:
        events = [await receive_json(client) for _ in range(count)]
        assert [e["data"]["n"] for e in events] == list(range(count))
        ids = [tuple(map(int, e["id"].split("-"))) for e in events]
        assert ids == sorted(set(ids))
    for client in (*sockets, bob_ws):  # nothing else came: the next message answers a ping
        await client.send_text('{"type":"ping"}')
        assert await receive_json(client) == {"type": "pong"}
    assert all(s.queued == 0 for s in hub.sockets_of(alice.id))
    for client in (*sockets, bob_ws):
        await client.aclose()


async def test_a_socket_with_a_full_buffer_gets_its_events_later_in_order(
        server: RunningServer) -> None:
    """A client that stops reading until its buffers are full: its events wait in the hub's
    queue for its socket (where the fast server's direct write falls back to), the user's
    other socket keeps getting each event at once, and once the client reads again it gets
    every event exactly once and in order, including those published while its queue was
    being sent (a new event never overtakes a queued one); then events are written at once
    again."""
    account = await signup(server.client)
    host, port = _hostport(server.url)
    stalled = await WsClient.connect(host, port, f"/v1/ws?access_token={account.access}",
                                     receive_buffer=4096)
    live = await connect(server.url, account.access)
    hub = server.services.hub
    pad = "x" * 16 * 1024
    sent = 0

    async def publish_one() -> None:
        nonlocal sent
        await publish_to_user(server.services.events, account.id, "job.progress",
                              {"n": sent, "pad": pad})
        sent += 1
        # the other socket is not held up by the stalled one
        assert (await receive_json(live))["data"]["n"] == sent - 1

    def waiting() -> int:
        return max(s.queued for s in hub.sockets_of(account.id))

    try:
        while waiting() < 3:  # the stalled socket's buffers are full: events queue
            assert sent < 200, "the stalled client's buffers never filled"
            await publish_one()
        for _ in range(5):
            await publish_one()
        assert waiting() >= 8 and hub.slow_closed == 0
        got: list[int] = []
        total = sent + 20

        async def read_stalled() -> None:
            while len(got) < total:
                got.append((await receive_json(stalled, 20))["data"]["n"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stalled)
            for _ in range(20):  # while its queue is being sent
                await publish_one()
        assert got == list(range(total))
        await wait_for(lambda: waiting() == 0)
        await publish_one()  # its queue is empty again: the next event comes at once
        assert (await receive_json(stalled))["data"]["n"] == sent - 1
        assert hub.slow_closed == 0
    finally:
        await stalled.aclose()
        await live.aclose()


async def test_shutdown_closes_v1_ws_with_4000(server: RunningServer) -> None:
    account = await signup(server.client)
    client = await connect(server.url, account.access)
    await trio.sleep(6)  # longer than Hypercorn's keep-alive timeout: an idle socket stays
    await client.send_text('{"type":"ping"}')
    assert await receive_json(client) == {"type": "pong"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.stop)
        assert await receive_close(client) == Closed(4000, "Server restarting")
    await client.aclose()


async def test_a_socket_opened_after_the_close_of_all_is_closed_with_4000_too(
    server: RunningServer,
) -> None:
    """During the drain a handshake can still be served (the listen backlog is accepted
    before the listeners close): once the hub has closed every socket, a socket that opens
    later is closed with 4000 as well, or it would hold the drain until the deadline."""
    account = await signup(server.client)
    with trio.fail_after(5):
        await server.services.hub.close_all(4000, "Server restarting", timeout_s=1)
    client = await connect(server.url, account.access)
    assert await receive_close(client) == Closed(4000, "Server restarting")
    await client.aclose()


# --- Redis restart, several processes ---------------------------------------------------


async def test_delivery_resumes_after_a_redis_restart_without_reconnecting(
        nursery: trio.Nursery, database_url: str, private_redis_server: Any,
        tmp_path: Path) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    redis_server = private_redis_server()
    srv = await start_server(nursery, load_settings(
        server_environ(database_url, redis_server.url, tmp_path / "data")))
    async with srv.client:
        account = await signup(srv.client)
        client = await connect(srv.url, account.access)
        await publish_to_user(srv.services.events, account.id, "job.progress", {"n": 0})
        assert without_id(await receive_json(client)) == {"type": "job.progress",
                                                          "data": {"n": 0}}
        errors_before = srv.services.metrics.redis_errors._value.get()

        await trio.to_thread.run_sync(redis_server.restart)
        # keep publishing until one arrives: the listener resubscribes on its own. The socket
        # is also told to resync: what was published while the channel was down went to the
        # user's log, not to the socket
        types: list[str] = []
        with trio.fail_after(10):
            n = 0
            while "job.progress" not in types or "resync_required" not in types:
                n += 1
                await publish_to_user(srv.services.events, account.id, "job.progress", {"n": n})
                with trio.move_on_after(0.3):
                    types.append((await receive_json(client))["type"])
        assert types.count("resync_required") == 1
        assert srv.services.metrics.redis_errors._value.get() > errors_before
        assert gauge(srv) == 1  # the same socket all along
        await client.send_text('{"type":"ping"}')
        assert await receive_json(client) == {"type": "pong"}
        await client.aclose()
    await srv.stop()


async def test_an_event_from_instance_b_reaches_a_socket_on_instance_a(
        spawn_server: Any, database_url: str, redis_url: str, tmp_path: Path) -> None:
    def start() -> Any:  # one data dir: the same local JWT secret and key ring
        return spawn_server(server_environ(database_url, redis_url, tmp_path / "data"))

    a, b = await trio.to_thread.run_sync(start), await trio.to_thread.run_sync(start)
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as client_a, \
            httpx.AsyncClient(base_url=b.url, timeout=10) as client_b:
        account: Account = await signup(client_a)
        socket_a = await connect(a.url, account.access)
        r = await client_b.post("/v1/entries", json={"body": "from b"}, headers=account.auth)
        assert r.status_code == 201, r.text
        got = await receive_json(socket_a)
        assert without_id(got) == {"type": "entry.created",
                                   "data": {"id": r.json()["id"], "entry": r.json()}}
        await socket_a.aclose()


async def test_deleting_the_account_closes_its_sockets(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    mine, theirs = await connect(server.url, alice.access), await connect(server.url, bob.access)
    r = await server.client.post("/v1/auth/reauth", json={"password": alice.password},
                                 headers=alice.auth)
    token = r.json()["reauthToken"]
    r = await server.client.delete("/v1/me", headers={**alice.auth, "x-reauth-token": token})
    assert r.status_code == 202
    assert await receive_close(mine) == Closed(4003, "Account deleted")
    await theirs.send_text('{"type":"ping"}')
    assert (await receive_json(theirs))["type"] == "pong"
    await mine.aclose()
    await theirs.aclose()


# --- per-user caps: sockets per instance, handshakes per user and per IP -------------------


async def handshake(url: str, token: str, forwarded_for: str | None = None
                    ) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body answering a ``/v1/ws`` handshake (101: accepted; the
    connection is then dropped at once)."""
    host, port = _hostport(url)
    client = WsClient(await trio.open_tcp_stream(host, port))
    headers = [("authorization", f"Bearer {token}")]
    if forwarded_for is not None:
        headers.append(("x-forwarded-for", forwarded_for))
    try:
        await client._send(Request(host=f"{host}:{port}", target="/v1/ws",
                                   extra_headers=headers))
        with trio.fail_after(5):
            event = await client.next_event()
            if isinstance(event, AcceptConnection):
                return 101, {name.decode().lower(): value.decode()
                             for name, value in event.extra_headers}, b""
            assert isinstance(event, RejectConnection), event
            body = b""
            while event.has_body:
                data = await client.next_event()
                assert isinstance(data, RejectData), data
                body += data.data
                if data.body_finished:
                    break
        return (event.status_code,
                {name.decode().lower(): value.decode() for name, value in event.headers}, body)
    finally:
        await client.aclose()


async def test_a_handshake_follows_the_request_pipeline(server: RunningServer) -> None:
    """Accepted or refused, a handshake is answered with its request id and the security
    headers, a refusal's body carries that id, and each handshake is one request in the
    metrics (its duration the handshake's, not the socket's)."""
    account = await signup(server.client)
    status, headers, _ = await handshake(server.url, account.access)
    assert status == 101
    assert uuid.UUID(headers["x-request-id"]).version == 4
    assert headers["x-content-type-options"] == "nosniff"

    status, headers, body = await handshake(server.url, "not-a-jwt")
    assert status == 401 and headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["requestId"] == headers["x-request-id"]

    metrics = (await server.client.get("/metrics")).text
    for code in (101, 401):
        assert (f'http_requests_total{{method="GET",route="/v1/ws",status_code="{code}"}} 1.0'
                in metrics), metrics


async def test_past_the_socket_cap_the_oldest_socket_is_closed_with_4008(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "WS_MAX_CONNECTIONS_PER_USER": "3"}))
    async with srv.client:
        alice, bob = await signup(srv.client), await signup(srv.client)
        bobs = [await connect(srv.url, bob.access) for _ in range(3)]
        sockets = [await connect(srv.url, alice.access) for _ in range(3)]
        assert gauge(srv) == 6
        for client in (*sockets, *bobs):  # at the cap: all open
            await client.send_text('{"type":"ping"}')
            assert await receive_json(client) == {"type": "pong"}

        sockets.append(await connect(srv.url, alice.access))  # one past the cap
        assert await receive_close(sockets[0]) == Closed(4008, "Too many connections")
        sockets.append(await connect(srv.url, alice.access, query=True))
        assert await receive_close(sockets[1]) == Closed(4008, "Too many connections")
        await wait_for(lambda: len(srv.services.hub.sockets_of(alice.id)) == 3)
        await wait_for(lambda: gauge(srv) == 6)
        # the newest three of alice and all of bob's stay, and still get their events
        await publish_to_user(srv.services.events, alice.id, "job.progress", {"pct": 1})
        await publish_to_user(srv.services.events, bob.id, "job.progress", {"pct": 2})
        for client in sockets[2:]:
            assert without_id(await receive_json(client)) == {"type": "job.progress",
                                                              "data": {"pct": 1}}
        for client in bobs:
            assert without_id(await receive_json(client)) == {"type": "job.progress",
                                                              "data": {"pct": 2}}
        for client in (*sockets, *bobs):
            await client.aclose()
        await wait_for(lambda: gauge(srv) == 0)
    await srv.stop()


async def test_handshakes_are_rate_limited_per_user_and_per_ip(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    srv = await start_server(nursery, load_settings({
        **server_settings, "RATE_LIMIT_WS": "3/min", "TRUST_PROXY": "1"}))
    async with srv.client:
        alice, bob, carol = (await signup(srv.client), await signup(srv.client),
                             await signup(srv.client))
        ip_a, ip_b, ip_c = "203.0.113.1", "203.0.113.2", "203.0.113.3"
        for _ in range(3):
            assert (await handshake(srv.url, alice.access, ip_a))[0] == 101
        # the 4th of alice (from another IP too): 429 with the rate limit headers
        for ip in (ip_a, ip_b):
            status, headers, body = await handshake(srv.url, alice.access, ip)
            assert status == 429, body
            error = json.loads(body)["error"]
            assert error["code"] == "rate_limited" and error["message"]
            assert headers["ratelimit-limit"] == "3" and headers["ratelimit-remaining"] == "0"
            assert 1 <= int(headers["retry-after"]) <= 60
            assert headers["retry-after"] == headers["ratelimit-reset"]
            assert headers["content-type"] == "application/json"
        # another user is not limited by alice's handshakes ...
        assert (await handshake(srv.url, bob.access, ip_c))[0] == 101
        # ... but ip_a is spent (4 handshakes), whoever connects from it
        status, headers, _ = await handshake(srv.url, carol.access, ip_a)
        assert status == 429 and "retry-after" in headers
        assert (await handshake(srv.url, carol.access, ip_c))[0] == 101
        keys = {k async for k in srv.services.redis.client.scan_iter(match="rl:/v1/ws:*")}
        assert keys == {f"rl:/v1/ws:user:{alice.id}", f"rl:/v1/ws:user:{bob.id}",
                        f"rl:/v1/ws:user:{carol.id}", f"rl:/v1/ws:ip:{ip_a}",
                        f"rl:/v1/ws:ip:{ip_b}", f"rl:/v1/ws:ip:{ip_c}"}
        # a bad token is refused before it is counted
        with pytest.raises(ConnectionRefusedError, match="401"):
            await connect(srv.url, "not-a-jwt")
        await wait_for(lambda: gauge(srv) == 0)
    await srv.stop()
