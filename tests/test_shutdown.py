"""Graceful shutdown and start-up of the real process (``innera serve`` as a subprocess):
the spec's order, the hard deadline, exit codes."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.fixtures.keepalive_load import Tally
from tests.fixtures.server import ServerProcess, server_environ

pytestmark = pytest.mark.timeout(60)


def _hostport(sp: ServerProcess) -> tuple[str, int]:
    u = urlsplit(sp.url)
    assert u.hostname and u.port
    return u.hostname, u.port


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str], bytes]:
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # handed to the test
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def test_sigterm_drains_in_flight_requests_and_exits_0(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path, SHUTDOWN_TIMEOUT_S="15"))
    host, port = _hostport(sp)
    keepalive = http.client.HTTPConnection(host, port, timeout=10)
    assert _get(keepalive, "/health/ready")[0] == 200

    slow = http.client.HTTPConnection(host, port, timeout=10)
    thread, result = _in_thread(_get, slow, "/_test/sleep?seconds=2")
    time.sleep(0.5)  # the slow request is in flight
    sent = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)

    # An already-open keep-alive connection is still answered, told to close, and readiness
    # has turned 503.
    status, headers, _ = _get(keepalive, "/health/ready")
    assert status == 503
    assert headers.get("connection") == "close"

    # New connections are refused.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()

    thread.join(10)
    assert "error" not in result, result.get("error")
    status, headers, body = result["value"]  # type: ignore[misc]
    assert status == 200 and b'"slept":2.0' in body

    assert sp.proc.wait(15) == 0, sp.lines()
    # drained within the slow request's remaining time plus keep-alive close, not the deadline
    assert time.monotonic() - sent < 10


def test_a_request_outliving_the_deadline_ends_with_exit_1_at_the_deadline(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path, SHUTDOWN_TIMEOUT_S="2"))
    host, port = _hostport(sp)
    slow = http.client.HTTPConnection(host, port, timeout=30)
    _in_thread(_get, slow, "/_test/sleep?seconds=20")
    time.sleep(0.5)
    sent = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    code = sp.proc.wait(10)
    took = time.monotonic() - sent
    assert code == 1
    assert 1.0 <= took <= 3.0, f"exited after {took:.2f}s, deadline 2s"
    sp.read_rest()


def test_a_second_signal_forces_exit_1(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path, SHUTDOWN_TIMEOUT_S="30"))
    host, port = _hostport(sp)
    _in_thread(_get, http.client.HTTPConnection(host, port, timeout=30), "/_test/sleep?seconds=20")
    time.sleep(0.5)
    sp.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    sent = time.monotonic()
    sp.proc.send_signal(signal.SIGINT)
    assert sp.proc.wait(10) == 1
    assert time.monotonic() - sent < 2


def test_idle_server_stops_promptly_with_exit_0(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path))
    sent = time.monotonic()
    sp.proc.send_signal(signal.SIGINT)
    assert sp.proc.wait(10) == 0
    assert time.monotonic() - sent < 3
    out = sp.read_rest()
    assert "shutdown complete" in out


def test_a_failed_start_is_fatal_with_the_reason(
    spawn_server, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    env = server_environ(f"postgresql://postgres@127.0.0.1:{closed_port}/innera", redis_url,
                         tmp_path, DB_CONNECTION_TIMEOUT_MS="1000")
    with pytest.raises(RuntimeError) as info:
        spawn_server(env, timeout_s=20)
    text = str(info.value)
    assert "innera serve failed" in text and "DatabaseUnavailable" in text


def test_two_instances_starting_together_on_a_fresh_database_both_come_up(
    spawn_server, pg_admin_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    name = f"innera_race_{int(time.time() * 1000) % 10**9}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
        starts = [_in_thread(spawn_server, server_environ(url, redis_url, tmp_path / f"d{i}"))
                  for i in range(2)]
        procs = []
        for thread, result in starts:
            thread.join(40)
            assert "error" not in result, result.get("error")
            procs.append(result["value"])
        for sp in procs:
            conn = http.client.HTTPConnection(*_hostport(sp), timeout=5)
            assert _get(conn, "/health/ready")[0] == 200
        with psycopg.connect(url) as c:
            versions = [r[0] for r in c.execute("SELECT version FROM schema_migrations")]
        assert versions == sorted(set(versions)) and versions  # each applied exactly once
        for sp in procs:
            sp.proc.send_signal(signal.SIGTERM)
        assert [sp.proc.wait(15) for sp in procs] == [0, 0]
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_sigterm_closes_every_websocket_with_4000_then_exits_0(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    import trio

    from tests.fixtures.ws import Closed, WsClient

    sp = spawn_server(server_environ(database_url, redis_url, tmp_path))
    host, port = _hostport(sp)
    clients = [await WsClient.connect(host, port, "/_test/ws") for _ in range(3)]
    await clients[0].send_text("hello")
    assert await clients[0].receive() == "hello"
    sp.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(5):
        for client in clients:
            assert await client.receive() == Closed(4000, "Server restarting")
    assert await trio.to_thread.run_sync(sp.proc.wait, 10) == 0
    for client in clients:
        await client.aclose()


# --- under load, and the drain delay -------------------------------------------------------

#: server runs of the load test, and its clients per run: issue 17's race was a 1-in-6,000
#: reset with six clients; here each run ends with 24 clients crossing the drain. Before the
#: fix about 1 in 10 such clients was cut (bench/results/2026-12-05-shutdown-under-load.md),
#: and this test failed in its first run on both servers.
LOAD_RUNS = 6
KEEP_ALIVE_CLIENTS = 16
NEW_CONNECTION_CLIENTS = 8
UNLIMITED = "100000000/min"


async def _entry_requests(sp: ServerProcess) -> tuple[bytes, bytes]:
    """A signed-up user's ``GET /v1/entries/{id}``: as a keep-alive request, and as one that
    asks for its connection to close (a client opening a connection per request)."""
    import httpx

    from tests.fixtures.accounts import signup
    from tests.fixtures.keepalive_load import render_get

    async with httpx.AsyncClient(base_url=sp.url, timeout=10) as client:
        account = await signup(client)
        r = await client.post("/v1/entries", json={"body": "Went swimming."},
                              headers=account.auth)
        assert r.status_code == 201, r.text
    host, port = _hostport(sp)
    auth = {"Authorization": f"Bearer {account.access}"}
    path = f"/v1/entries/{r.json()['id']}"
    return (render_get(path, f"{host}:{port}", auth),
            render_get(path, f"{host}:{port}", {**auth, "Connection": "close"}))


async def _under_load(sp: ServerProcess, requests: tuple[bytes, bytes],
                      while_signalled: Callable[[], Awaitable[None]] | None = None) -> Tally:
    """The load test's clients on ``sp``; SIGTERM once they are under way; then
    ``while_signalled`` (if any) alongside them; returns when every client has been refused a
    new connection and the server's output is read to its end (it exited)."""
    import trio

    from tests.fixtures.keepalive_load import Tally, keep_alive_client

    host, port = _hostport(sp)
    keep, fresh = requests
    clients = KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS
    tally = Tally(loaded_after=clients * 5)
    with trio.fail_after(50):
        async with trio.open_nursery() as nursery:
            # the access log goes to a pipe: read it all along, or the server blocks on it
            nursery.start_soon(trio.to_thread.run_sync, sp.read_rest)
            for n in range(clients):
                nursery.start_soon(keep_alive_client, host, port,
                                   keep if n < KEEP_ALIVE_CLIENTS else fresh, tally)
            await tally.loaded.wait()
            sp.proc.send_signal(signal.SIGTERM)
            tally.signalled = True
            if while_signalled is not None:
                await while_signalled()
    return tally


async def test_sigterm_under_keep_alive_load_cuts_no_request(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Every request of every client gets its whole response, or the client's *new*
    connection is refused: never a reset or a close on a connection the server accepted."""
    import trio

    env = server_environ(database_url, redis_url, tmp_path, RATE_LIMIT_USER=UNLIMITED,
                         RATE_LIMIT_AUTH=UNLIMITED)
    requests: tuple[bytes, bytes] | None = None
    for run in range(LOAD_RUNS):
        sp = spawn_server(env)
        if requests is None:
            requests = await _entry_requests(sp)
        tally = await _under_load(sp, requests)
        assert tally.cut == [], f"run {run + 1}: {tally}"
        assert tally.refused == KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS
        assert tally.statuses.keys() == {200}, tally.statuses
        assert await trio.to_thread.run_sync(sp.proc.wait, 10) == 0


async def test_during_the_drain_delay_readiness_is_503_and_new_connections_are_served(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """SHUTDOWN_DRAIN_DELAY_S: readiness turns 503 at the signal, yet new connections are
    still accepted and served (a Kubernetes Service keeps sending them for a moment); after
    the delay the drain runs as without one, and cuts no request either."""
    import trio

    from tests.fixtures.keepalive_load import render_get, request_once

    env = server_environ(database_url, redis_url, tmp_path, RATE_LIMIT_USER=UNLIMITED,
                         RATE_LIMIT_AUTH=UNLIMITED, SHUTDOWN_DRAIN_DELAY_S="8",
                         SHUTDOWN_TIMEOUT_S="30")
    sp = spawn_server(env)
    host, port = _hostport(sp)
    requests = await _entry_requests(sp)
    ready = render_get("/health/ready", f"{host}:{port}")
    seen: dict[str, object] = {}

    async def during_the_delay() -> None:
        with trio.fail_after(5):  # readiness turns 503 as soon as the signal is handled
            while (answer := await request_once(host, port, ready)) == (200, False):
                pass
        assert answer == (503, False)  # a new connection, answered, and kept alive
        # after readiness said 503, new connections are still served, as before the signal
        seen["after_503"] = [await request_once(host, port, requests[0]) for _ in range(20)]

    tally = await _under_load(sp, requests, during_the_delay)
    assert seen["after_503"] == [(200, False)] * 20
    assert tally.on_new_connections_after_signal > 0
    assert tally.cut == [], tally
    assert tally.refused == KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS  # then the drain
    assert await trio.to_thread.run_sync(sp.proc.wait, 10) == 0


def test_a_second_signal_during_the_drain_delay_forces_exit_1(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path,
                                     SHUTDOWN_DRAIN_DELAY_S="20", SHUTDOWN_TIMEOUT_S="30"))
    host, port = _hostport(sp)
    sp.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _get(http.client.HTTPConnection(host, port, timeout=5), "/health/ready")[0] == 200:
        assert time.monotonic() < deadline, "readiness did not turn 503"
    sent = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.proc.wait(10) == 1  # not after the 20 s delay
    assert time.monotonic() - sent < 2
    assert "forced exit: second SIGTERM during shutdown" in sp.read_rest()


def test_the_drain_delay_counts_inside_the_shutdown_deadline(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path,
                                     SHUTDOWN_DRAIN_DELAY_S="1", SHUTDOWN_TIMEOUT_S="2"))
    host, port = _hostport(sp)
    _in_thread(_get, http.client.HTTPConnection(host, port, timeout=30), "/_test/sleep?seconds=20")
    time.sleep(0.5)
    sent = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.proc.wait(10) == 1
    took = time.monotonic() - sent
    assert 1.0 <= took <= 3.0, f"exited after {took:.2f}s, deadline 2s from the signal"
    assert "exceeded SHUTDOWN_TIMEOUT_S=2" in sp.read_rest()


def test_a_drain_delay_not_below_the_deadline_stops_the_start(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(RuntimeError) as info:
        spawn_server(server_environ(database_url, redis_url, tmp_path,
                                    SHUTDOWN_DRAIN_DELAY_S="30", SHUTDOWN_TIMEOUT_S="30"))
    assert "SHUTDOWN_DRAIN_DELAY_S=30 must be below SHUTDOWN_TIMEOUT_S=30" in str(info.value)
