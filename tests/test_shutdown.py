"""Graceful shutdown and start-up of the real process (``innera serve`` as a subprocess):
the spec's order, the hard deadline, exit codes."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

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
