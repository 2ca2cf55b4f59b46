"""The HTTP surface of the foundation, over a real socket: the error contract, request ids,
liveness and readiness."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import pytest
import trio

from tests.fixtures.server import RunningServer


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "requestId"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["requestId"] == response.headers["x-request-id"]
    uuid.UUID(body["requestId"], version=4)
    return body


async def test_liveness(server: RunningServer) -> None:
    r = await server.client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "pass"}
    uuid.UUID(r.headers["x-request-id"], version=4)


async def test_health_and_metrics_answer_without_the_framework_with_the_same_contract(
        server: RunningServer) -> None:
    from innera.api.pipeline import SECURITY_HEADERS
    from innera.observability.metrics import CONTENT_TYPE

    def counted() -> float:
        text = server.services.metrics.render().decode()
        line = next((x for x in text.splitlines() if x.startswith(
            'http_requests_total{method="GET",route="/health",status_code="200"}')), None)
        return 0.0 if line is None else float(line.rsplit(" ", 1)[1])

    before = counted()
    r = await server.client.get("/health")
    assert (r.status_code, r.headers["content-type"]) == (200, "application/health+json")
    assert all(r.headers[name] == value for name, value in SECURITY_HEADERS.items())
    assert counted() == before + 1  # counted like any request
    head = await server.client.head("/health")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(r.content))
    m = await server.client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"] == CONTENT_TYPE
    assert "x-request-id" in m.headers and b"http_requests_total" in m.content
    post = await server.client.post("/health")  # other methods: the framework's 405
    assert_error(post, 405, "method_not_allowed")


async def test_every_response_has_a_fresh_request_id(server: RunningServer) -> None:
    ids = {(await server.client.get("/health")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def test_unknown_route_is_404_not_found(server: RunningServer) -> None:
    assert_error(await server.client.get("/v1/nope"), 404, "not_found")


async def test_wrong_method_is_405(server: RunningServer) -> None:
    r = await server.client.delete("/health")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]


async def test_malformed_json_is_400_invalid_json(server: RunningServer) -> None:
    r = await server.client.post("/_test/echo", content=b'{"a": ',
                                 headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_json")
    ok = await server.client.post("/_test/echo", json={"a": 1})
    assert ok.json() == {"json": {"a": 1}}


async def test_body_over_the_limit_is_413(server: RunningServer) -> None:
    big = json.dumps({"x": "a" * (1024 * 1024 + 10)}).encode()
    assert_error(await server.client.post("/_test/echo", content=big,
                                          headers={"content-type": "application/json"}),
                 413, "payload_too_large")


async def test_unexpected_exception_is_500_without_internals(server: RunningServer) -> None:
    r = await server.client.get("/_test/boom")
    body = assert_error(r, 500, "internal_error")
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    assert body["error"]["message"] == "Internal server error"


async def test_validation_error_keeps_its_status_and_code(server: RunningServer) -> None:
    assert_error(await server.client.get("/_test/sleep", params={"seconds": "x"}),
                 422, "validation_failed")


async def test_readiness_passes_with_every_dependency_up(server: RunningServer) -> None:
    r = await server.client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/health+json")
    body = r.json()
    assert body["status"] == "pass"
    assert set(body["checks"]) == {"postgres:responseTime", "redis:responseTime",
                                   "storage:responseTime"}
    for entries in body["checks"].values():
        assert entries[0]["status"] == "pass"
        assert entries[0]["observedUnit"] == "ms" and entries[0]["observedValue"] >= 0


async def test_readiness_fails_fast_when_a_dependency_hangs(
    nursery: trio.Nursery, tcp_proxy, database_url: str, redis_url: str, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    from urllib.parse import urlsplit

    from innera.config import load_settings
    from tests.fixtures.server import server_environ, start_server

    db, rd = urlsplit(database_url), urlsplit(redis_url)
    pg_proxy = await tcp_proxy.start(db.hostname, db.port)
    redis_proxy = await tcp_proxy.start(rd.hostname, rd.port)
    env = server_environ(
        database_url.replace(f":{db.port}/", f":{pg_proxy.port}/"),
        redis_url.replace(f":{rd.port}/", f":{redis_proxy.port}/"),
        tmp_path / "data",
    )
    srv = await start_server(nursery, load_settings(env))
    async with srv.client:
        assert (await srv.client.get("/health/ready")).status_code == 200

        pg_proxy.set_mode("hang")
        redis_proxy.set_mode("hang")
        started = trio.current_time()
        r = await srv.client.get("/health/ready")
        elapsed = trio.current_time() - started
        assert r.status_code == 503
        assert elapsed < 1.5, f"readiness took {elapsed:.2f}s with dependencies hung"
        checks = r.json()["checks"]
        assert checks["postgres:responseTime"][0]["status"] == "fail"
        assert checks["redis:responseTime"][0]["status"] == "fail"
        assert checks["storage:responseTime"][0]["status"] == "pass"
        assert (await srv.client.get("/health")).status_code == 200  # liveness is unaffected

        pg_proxy.set_mode("pass")
        redis_proxy.set_mode("pass")
        with trio.fail_after(10):
            while (await srv.client.get("/health/ready")).status_code != 200:
                await trio.sleep(0.2)
    await srv.stop()


async def test_an_idle_keep_alive_connection_is_closed_after_5s(server: RunningServer) -> None:
    host, port = server.started.addresses[0]
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b'"pass"}' not in received:
            received += await stream.receive_some(4096)
        started = trio.current_time()
        with trio.fail_after(8):
            while await stream.receive_some(4096):
                pass
        assert 4.5 < trio.current_time() - started < 6.5


async def test_garbage_on_the_socket_gets_an_http_error_not_a_crash(server: RunningServer
                                                                   ) -> None:
    host, port = server.started.addresses[0]
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = await trio.to_thread.run_sync(lambda: s.recv(4096))
    assert data.startswith(b"HTTP/1.1 400")
    assert (await server.client.get("/health")).status_code == 200


async def test_pool_sizing_rule_warns_at_start_up(
    nursery: trio.Nursery, server_settings: dict[str, str], caplog  # type: ignore[no-untyped-def]
) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    settings = load_settings({**server_settings, "DB_POOL_MAX": "60", "INNERA_INSTANCES": "4"})
    srv = await start_server(nursery, settings)
    async with srv.client:
        pass
    await srv.stop()
    warnings = [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(warnings) == 1
    assert "DB_POOL_MAX=60 × INNERA_INSTANCES=4 = 240 exceeds" in warnings[0]


async def test_drain_does_not_wait_for_connections_the_client_closed(
    nursery: trio.Nursery, server_settings: dict[str, str]
) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    srv = await start_server(nursery, load_settings(server_settings))
    async with srv.client:
        assert (await srv.client.get("/health")).status_code == 200
    started = trio.current_time()
    assert await srv.stop() == 0
    assert trio.current_time() - started < 1.5


@pytest.mark.parametrize("failure", ["refuse", "hang"])
async def test_database_outage_answers_503_in_time_and_recovers_without_restart(
    nursery: trio.Nursery, tcp_proxy, database_url: str, redis_url: str, tmp_path,  # type: ignore[no-untyped-def]
    failure: str,
) -> None:
    from urllib.parse import urlsplit

    from innera.config import load_settings
    from tests.fixtures.accounts import signup
    from tests.fixtures.server import server_environ, start_server

    db = urlsplit(database_url)
    proxy = await tcp_proxy.start(db.hostname, db.port)
    env = server_environ(database_url.replace(f":{db.port}/", f":{proxy.port}/"), redis_url,
                         tmp_path / "data", DB_CONNECTION_TIMEOUT_MS="1500")
    srv = await start_server(nursery, load_settings(env))
    async with srv.client:
        account = await signup(srv.client)
        assert (await srv.client.get("/v1/me", headers=account.auth)).status_code == 200

        proxy.set_mode(failure)
        started = trio.current_time()
        r = await srv.client.get("/v1/me", headers=account.auth)
        elapsed = trio.current_time() - started
        assert_error(r, 503, "database_unavailable")
        assert elapsed < 1.5 + 0.5, f"answered after {elapsed:.2f}s"

        proxy.set_mode("pass")
        with trio.fail_after(10):
            while (await srv.client.get("/v1/me", headers=account.auth)).status_code != 200:
                await trio.sleep(0.1)
    await srv.stop()


async def test_an_operation_past_request_timeout_is_cancelled_with_503(
    nursery: trio.Nursery, tcp_proxy, database_url: str, redis_url: str, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from urllib.parse import urlsplit

    from innera.config import load_settings
    from tests.fixtures.accounts import signup
    from tests.fixtures.server import server_environ, start_server

    db = urlsplit(database_url)
    proxy = await tcp_proxy.start(db.hostname, db.port)
    env = server_environ(database_url.replace(f":{db.port}/", f":{proxy.port}/"), redis_url,
                         tmp_path / "data", DB_CONNECTION_TIMEOUT_MS="5000",
                         REQUEST_TIMEOUT_S="0.5")
    srv = await start_server(nursery, load_settings(env))
    async with srv.client:
        account = await signup(srv.client)
        await proxy.cut("hang")
        started = trio.current_time()
        r = await srv.client.get("/v1/me", headers=account.auth)
        assert_error(r, 503, "request_timeout")
        assert r.headers["retry-after"] == "1"
        assert 0.4 < trio.current_time() - started < 1.5
        proxy.set_mode("pass")
    await srv.stop()


async def raw_get(server: RunningServer, target: bytes, host: bytes) -> bytes:
    """The head of the response to one GET written byte for byte (clients normalise Host)."""
    address = server.started.addresses[0]
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                              % (target, host))
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received.partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize(("host", "location"), [
    (b"Example.COM:80", b"http://example.com/v1/entries"),
    (b"example.com:8080", b"http://example.com:8080/v1/entries"),
])
async def test_doubled_slashes_redirect_to_the_same_host(
        server: RunningServer, host: bytes, location: bytes) -> None:
    """Routing still sees the request's host: a path with merged slashes redirects there
    (lower-cased, the default port dropped)."""
    head = await raw_get(server, b"//v1//entries", host)
    assert head.startswith(b"HTTP/1.1 308"), head
    assert b"\r\nlocation: " + location in head.lower()



async def test_a_request_whose_client_hangs_up_stops_its_query(
        server: RunningServer, database_url: str) -> None:
    """A client that gives up on a slow request (closes its connection) does not leave the
    server working for nobody: the request's query is cancelled in PostgreSQL."""
    from innera.db.connection import TrioConnection

    async def running(conn: TrioConnection[Any]) -> int:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
            "state = 'active' AND query LIKE '%%innera hang-up test%%' AND "
            "pid <> pg_backend_pid()")
        row = await cur.fetchone()
        return row[0] if row else 0

    async with await TrioConnection.connect(database_url, autocommit=True) as watcher:
        stream = await trio.open_tcp_stream(*server.started.addresses[0])
        await stream.send_all(b"GET /_test/pg-sleep?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            while await running(watcher) == 0:
                await trio.sleep(0.05)
        await stream.aclose()
        with trio.fail_after(3):
            while await running(watcher):
                await trio.sleep(0.05)
    assert (await server.client.get("/health/ready")).status_code == 200


# --- /metrics behind METRICS_TOKEN ----------------------------------------------------------


async def test_metrics_token_guards_metrics_and_nothing_else(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    token = "metrics-" + uuid.uuid4().hex
    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "METRICS_TOKEN": token}))
    async with srv.client:
        # the plain path, and the framework's (a request with an Origin header goes there)
        for origin in ({}, {"origin": "https://example.com"}):
            for authorization in (None, "Bearer", "Bearer wrong", f"Bearer {token}x",
                                  f"Basic {token}", token, f"Bearer {token[:-1]}"):
                headers = dict(origin)
                if authorization is not None:
                    headers["authorization"] = authorization
                r = await srv.client.get("/metrics", headers=headers)
                body = assert_error(r, 401, "unauthorized")
                assert "http_requests_total" not in r.text
                assert r.headers["www-authenticate"] == "Bearer", body
            ok = await srv.client.get("/metrics", headers={
                **origin, "authorization": f"bearer  {token}"})
            assert ok.status_code == 200 and b"http_requests_total" in ok.content
        head = await srv.client.head("/metrics")
        assert head.status_code == 401 and head.content == b""
        assert (await srv.client.head("/metrics", headers={
            "authorization": f"Bearer {token}"})).status_code == 200
        # the unauthorised attempts are counted like any request, scrapes are not
        text = (await srv.client.get("/metrics", headers={
            "authorization": f"Bearer {token}"})).text
        assert 'http_requests_total{method="GET",route="/metrics",status_code="401"} 14.0' \
            in text
        assert 'route="/metrics",status_code="200"' not in text
        # health stays open
        assert (await srv.client.get("/health")).status_code == 200
        assert (await srv.client.get("/health/ready")).status_code == 200
    await srv.stop()


# --- the readiness storage check is shared for 1 s --------------------------------------------


async def test_rapid_readiness_probes_share_one_s3_call(
        nursery: trio.Nursery, server_settings: dict[str, str], s3_bucket: Any) -> None:
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    srv = await start_server(nursery, load_settings({**server_settings, **s3_bucket.env}))
    calls: list[str] = []
    # counted on innera's own S3 client as boto sends them (not replaced, only observed)
    srv.services.storage.client.meta.events.register(
        "before-call.s3.HeadBucket", lambda **_: calls.append("HeadBucket"))
    async with srv.client:
        storage: list[tuple[str, float]] = []

        async def probe() -> None:
            r = await srv.client.get("/health/ready")
            assert r.status_code == 200, r.text
            (entry,) = r.json()["checks"]["storage:responseTime"]
            assert entry["status"] == "pass"
            storage.append((entry["time"], entry["observedValue"]))

        started = trio.current_time()
        async with trio.open_nursery() as probes:  # concurrent probes ...
            for _ in range(20):
                probes.start_soon(probe)
        for _ in range(20):  # ... and back-to-back ones
            await probe()
        elapsed = trio.current_time() - started
    await srv.stop()
    # a new S3 call only once the last observation is 1 s old: however long the 40 probes
    # took, at most one call per started second, and every probe shows one of those calls
    assert 1 <= len(calls) <= 1 + int(elapsed)
    assert len(set(storage)) == len(calls)
    assert len(storage) == 40


async def test_a_shared_check_runs_once_per_ttl_for_any_number_of_callers(
        autojump_clock: trio.testing.MockClock) -> None:
    from innera.observability.readiness import Observation, SharedCheck

    runs: list[float] = []
    outcome = {"ok": True, "hang": False}

    async def probe() -> bool:
        runs.append(trio.current_time())
        await trio.sleep(3600 if outcome["hang"] else 0.2)
        return outcome["ok"]

    check = SharedCheck(ttl_s=1.0)
    seen: list[Observation] = []

    async def many(n: int) -> None:
        async def one() -> None:
            seen.append(await check.observe(probe, 1.0))
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)

    await many(10)  # concurrent callers: one run, one observation
    assert len(runs) == 1 and len(seen) == 10 and len(set(seen)) == 1
    assert seen[0].ok and seen[0].elapsed_ms == 200.0
    await trio.sleep(0.9)  # within the TTL: the same observation
    await many(5)
    assert len(runs) == 1 and len(set(seen)) == 1
    await trio.sleep(0.2)  # past it: a new run
    outcome["ok"] = False
    await many(5)
    assert len(runs) == 2 and not seen[-1].ok and len(set(seen[-5:])) == 1
    await many(5)  # a failure is shared the same way
    assert len(runs) == 2
    # a check past its deadline fails at the deadline, and that is shared too
    await trio.sleep(1.0)
    outcome["hang"] = True
    await many(3)
    assert len(runs) == 3 and not seen[-1].ok and seen[-1].elapsed_ms == 1000.0
    # the caller running the check is cancelled: a waiter runs it instead
    await trio.sleep(1.0)
    outcome.update(ok=True, hang=False)
    async with trio.open_nursery() as nursery:
        cancelled = trio.CancelScope()

        async def runner() -> None:
            with cancelled:
                await check.observe(probe, 1.0)

        nursery.start_soon(runner)
        await trio.sleep(0.1)  # the runner is in its probe
        nursery.start_soon(many, 2)
        await trio.sleep(0.05)
        cancelled.cancel()
    assert len(runs) == 5 and seen[-1].ok and seen[-1] == seen[-2]
