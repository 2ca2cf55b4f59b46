"""Rate limits and idempotency over HTTP, with real Redis (and Redis outages)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from innera.config import load_settings
from tests.fixtures.accounts import new_email, signup
from tests.fixtures.server import RunningServer, server_environ, start_server
from tests.test_http import assert_error


async def test_auth_routes_allow_10_per_minute_per_ip_then_429(server: RunningServer) -> None:
    seen = []
    for _ in range(10):
        r = await server.client.post("/v1/auth/login",
                                     json={"email": new_email(), "password": "whatever1"})
        assert r.status_code == 401
        assert r.headers["ratelimit-limit"] == "10"
        seen.append(int(r.headers["ratelimit-remaining"]))
        assert 1 <= int(r.headers["ratelimit-reset"]) <= 60
    assert seen == list(range(9, -1, -1))
    r = await server.client.post("/v1/auth/login", json={"email": new_email(), "password": "x"})
    assert_error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["ratelimit-remaining"] == "0"
    # the counter is per route template: signup still has its own budget
    ok = await server.client.post("/v1/auth/signup",
                                  json={"email": new_email(), "password": "long enough"})
    assert ok.status_code == 201 and ok.headers["ratelimit-remaining"] == "9"
    ttl = await server.services.redis.client.pttl("rl:/v1/auth/login:127.0.0.1")
    assert 0 < ttl <= 60_000


async def test_authenticated_routes_are_limited_per_user(
    nursery: trio.Nursery, server_settings: dict[str, str]
) -> None:
    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "RATE_LIMIT_USER": "3/min"}))
    async with srv.client:
        alice, bob = await signup(srv.client), await signup(srv.client)
        for expected in ("2", "1", "0"):
            r = await srv.client.get("/v1/me", headers=alice.auth)
            assert r.status_code == 200 and r.headers["ratelimit-remaining"] == expected
        assert_error(await srv.client.get("/v1/me", headers=alice.auth), 429, "rate_limited")
        assert (await srv.client.get("/v1/me", headers=bob.auth)).status_code == 200
        keys = [k async for k in srv.services.redis.client.scan_iter(match="rl:/v1/me:*")]
        assert sorted(keys) == sorted([f"rl:/v1/me:{alice.id}", f"rl:/v1/me:{bob.id}"])
    await srv.stop()


async def test_a_spoofed_forwarded_for_is_ignored_unless_proxies_are_trusted(
    nursery: trio.Nursery, server_settings: dict[str, str]
) -> None:
    for trust, expected in (("0", "127.0.0.1"), ("1", "203.0.113.9")):
        srv = await start_server(nursery, load_settings({**server_settings,
                                                         "TRUST_PROXY": trust}))
        async with srv.client:
            await srv.client.post("/v1/auth/login", json={"email": new_email(), "password": "x1"},
                                  headers={"x-forwarded-for": "203.0.113.9"})
            keys = [k async for k in srv.services.redis.client.scan_iter(match="rl:/*")]
            assert keys == [f"rl:/v1/auth/login:{expected}"], keys
            await srv.services.redis.client.flushdb()
        await srv.stop()


async def test_idempotent_post_runs_once_and_replays(server: RunningServer) -> None:
    account = await signup(server.client)
    headers = {**account.auth, "idempotency-key": "reauth-1"}
    body = {"password": account.password}
    first = await server.client.post("/v1/auth/reauth", json=body, headers=headers)
    second = await server.client.post("/v1/auth/reauth", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert first.json() == second.json()
    client = server.services.redis.client
    assert len([k async for k in client.scan_iter(match="reauth:*")]) == 1  # one resource
    ttl = await client.ttl(f"idempotency:{account.id}:reauth-1")
    assert 86400 - 60 <= ttl <= 86400

    reused = await server.client.post("/v1/auth/reauth", json={"password": "different!"},
                                      headers=headers)
    assert_error(reused, 422, "idempotency_key_reused")
    # keys are per user: bob's identical key is a fresh request
    bob = await signup(server.client)
    r = await server.client.post("/v1/auth/reauth", json={"password": bob.password},
                                 headers={**bob.auth, "idempotency-key": "reauth-1"})
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers


async def test_concurrent_identical_posts_execute_exactly_once(server: RunningServer) -> None:
    account = await signup(server.client)
    headers = {**account.auth, "idempotency-key": "concurrent-1"}
    statuses: list[int] = []

    async def post() -> None:
        r = await server.client.post("/v1/auth/reauth", json={"password": account.password},
                                     headers=headers)
        statuses.append(r.status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(post)
    assert statuses.count(200) >= 1
    assert set(statuses) <= {200, 409}
    keys = [k async for k in server.services.redis.client.scan_iter(match="reauth:*")]
    assert len(keys) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "bad\tkey", "key\u00e9"])
async def test_invalid_idempotency_keys_are_400(server: RunningServer, key: str) -> None:
    account = await signup(server.client)
    r = await server.client.post("/v1/auth/reauth", json={"password": account.password},
                                 headers={**account.auth,
                                          "idempotency-key": key.encode("latin-1")})
    assert_error(r, 400, "invalid_idempotency_key")


async def test_redis_down_fails_rate_limits_open_but_keyed_writes_closed(
    nursery: trio.Nursery, database_url: str, private_redis_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    redis = private_redis_server()
    env = server_environ(database_url, redis.url, tmp_path, REFRESH_TOKEN_STORE="postgres")
    srv = await start_server(nursery, load_settings(env))
    async with srv.client:
        account = await signup(srv.client)
        errors_before = srv.services.metrics.redis_errors._value.get()
        redis.stop()

        # rate limits fail open: requests pass, without rate-limit headers
        r = await srv.client.get("/v1/me", headers=account.auth)
        assert r.status_code == 200 and "ratelimit-limit" not in r.headers
        # the Postgres refresh store keeps sessions alive while Redis is down
        r = await srv.client.post("/v1/auth/refresh", json={"refreshToken": account.refresh})
        assert r.status_code == 200, r.text
        access = r.json()["accessToken"]
        # a keyed write never runs without the idempotency guarantee
        r = await srv.client.post("/v1/auth/reauth", json={"password": account.password},
                                  headers={"authorization": f"Bearer {access}",
                                           "idempotency-key": "k-1"})
        assert_error(r, 503, "idempotency_unavailable")
        assert int(r.headers["retry-after"]) >= 1
        assert srv.services.metrics.redis_errors._value.get() > errors_before

        redis.start()
        with trio.fail_after(10):
            while "ratelimit-limit" not in (await srv.client.get(
                    "/v1/me", headers={"authorization": f"Bearer {access}"})).headers:
                await trio.sleep(0.1)
    await srv.stop()


async def test_refresh_tokens_in_postgres_are_hashed(
    nursery: trio.Nursery, server_settings: dict[str, str]
) -> None:
    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "REFRESH_TOKEN_STORE": "postgres"}))
    async with srv.client:
        account = await signup(srv.client)
        async with srv.services.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT token_hash, expires_at - created_at FROM refresh_tokens")).fetchall()
        assert [r[0] for r in rows] == [hashlib.sha256(account.refresh.encode()).hexdigest()]
        assert abs(rows[0][1].total_seconds() - 30 * 86400) < 5
        r = await srv.client.post("/v1/auth/refresh", json={"refreshToken": account.refresh})
        assert r.status_code == 200
        assert_error(await srv.client.post("/v1/auth/refresh",
                                           json={"refreshToken": account.refresh}), 401,
                     "unauthorized")
    await srv.stop()
