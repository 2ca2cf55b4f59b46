"""RateLimiter against real Redis (no mocks): the shared test server for counting, private
``redis-server`` processes for outages (stopped, hung, restarted)."""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import trio

from innera.config import RedisSettings
from innera.guards.ratelimit import Decision, RateLimiter
from innera.redis import Redis, run_redis
from tests.fixtures.proxy import Proxy
from tests.fixtures.redis import PrivateRedisServer

pytestmark = pytest.mark.timeout(30)

StartServer = Callable[..., PrivateRedisServer]
ROUTE = "/v1/auth/login"
LOGGER = "innera.guards.ratelimit"
TIMEOUT_S = 0.5
MARGIN_S = 0.3  # scheduling slack on a busy test machine


async def start_redis(nursery: trio.Nursery, url: str,
                      on_error: Callable[[BaseException], None] | None = None) -> Redis:
    return await nursery.start(run_redis, RedisSettings(url=url), on_error)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


async def test_counts_down_then_refuses(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    decisions = [await limiter.hit(ROUTE, "1.2.3.4", 5, 60) for _ in range(5)]
    assert all(d is not None and d.allowed for d in decisions)
    assert [d.remaining for d in decisions if d] == [4, 3, 2, 1, 0]
    assert {d.reset_s for d in decisions if d} == {60}
    assert {d.limit for d in decisions if d} == {5}
    assert decisions[0] is not None
    assert decisions[0].headers() == {
        "RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": "60",
    }

    refused = await limiter.hit(ROUTE, "1.2.3.4", 5, 60)
    assert refused is not None
    assert not refused.allowed
    assert refused.remaining == 0
    assert 1 <= refused.reset_s <= 60
    assert refused.headers() == {
        "RateLimit-Limit": "5", "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(refused.reset_s), "Retry-After": str(refused.reset_s),
    }


async def test_key_and_ttl(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    await limiter.hit(ROUTE, "1.2.3.4", 10, 60)
    await limiter.hit("/v1/entries", "user-42", 300, 5)
    await limiter.hit("/v1/entries", "user-42", 300, 5)
    assert sorted(await redis.client.keys("*")) == [
        "rl:/v1/auth/login:1.2.3.4", "rl:/v1/entries:user-42",
    ]
    assert await redis.client.get("rl:/v1/entries:user-42") == "2"
    assert 0 < await redis.client.pttl("rl:/v1/auth/login:1.2.3.4") <= 60_000
    assert 0 < await redis.client.pttl("rl:/v1/entries:user-42") <= 5_000


async def test_a_key_without_ttl_gets_one(redis: Redis) -> None:
    await redis.client.set("rl:/x:c", "3")  # e.g. left behind without an expiry
    decision = await RateLimiter(redis).hit("/x", "c", 10, 30)
    assert decision == Decision(allowed=True, limit=10, remaining=6, reset_s=30)
    assert 0 < await redis.client.pttl("rl:/x:c") <= 30_000


async def test_routes_and_clients_have_separate_counters(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    for _ in range(2):
        await limiter.hit("/a", "alice", 2, 60)
    refused = await limiter.hit("/a", "alice", 2, 60)
    assert refused is not None and not refused.allowed
    for route, client in (("/b", "alice"), ("/a", "bob"), ("/a", "::1")):
        decision = await limiter.hit(route, client, 2, 60)
        assert decision is not None and decision.allowed and decision.remaining == 1


async def test_window_expiry_resets_the_counter(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    assert (await limiter.hit(ROUTE, "c", 2, 1)) is not None
    await limiter.hit(ROUTE, "c", 2, 1)
    refused = await limiter.hit(ROUTE, "c", 2, 1)
    assert refused is not None and not refused.allowed and refused.reset_s == 1
    await trio.sleep(1.1)
    decision = await limiter.hit(ROUTE, "c", 2, 1)
    assert decision is not None and decision.allowed and decision.remaining == 1


async def test_concurrent_hits_allow_exactly_the_limit(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    decisions: list[Decision | None] = []

    async def one() -> None:
        decisions.append(await limiter.hit(ROUTE, "burst", 20, 60))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert len(decisions) == 50 and None not in decisions
    assert sum(1 for d in decisions if d and d.allowed) == 20
    assert sorted(d.remaining for d in decisions if d and d.allowed) == list(range(20))
    assert await redis.client.get(f"rl:{ROUTE}:burst") == "50"
    assert limiter.batcher.batches < 50  # they shared script calls


async def test_a_key_redis_refuses_fails_open_alone(redis: Redis) -> None:
    """A counter Redis cannot INCR fails its own requests open, not the others batched with
    them."""
    await redis.client.lpush("rl:/x:bad", ["not a counter"])
    limiter = RateLimiter(redis)
    decisions: dict[tuple[str, int], Decision | None] = {}

    async def one(client: str, i: int) -> None:
        decisions[client, i] = await limiter.hit("/x", client, 10, 60)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, "good", i)
            nursery.start_soon(one, "bad", i)
    assert limiter.batcher.batches < 10
    assert [decisions["bad", i] for i in range(5)] == [None] * 5
    good = [decisions["good", i] for i in range(5)]
    assert sorted(d.remaining for d in good if d is not None) == [5, 6, 7, 8, 9]


async def test_a_redis_side_error_fails_open(redis: Redis) -> None:
    errors: list[BaseException] = []
    redis.on_error = errors.append
    await redis.client.lpush("rl:/x:c", ["not a counter"])  # INCR fails: WRONGTYPE
    assert await RateLimiter(redis).hit("/x", "c", 10, 60) is None
    assert len(errors) == 1


async def test_fails_open_when_redis_is_down_and_warns_once(
    private_redis_server: StartServer, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = private_redis_server()
    errors: list[BaseException] = []
    redis = await start_redis(nursery, server.url, errors.append)
    limiter = RateLimiter(redis, warn_interval_s=60, timeout_s=TIMEOUT_S)
    assert await limiter.hit(ROUTE, "c", 10, 60) is not None

    server.stop()
    for _ in range(100):
        started = trio.current_time()
        assert await limiter.hit(ROUTE, "c", 10, 60) is None
        assert trio.current_time() - started < TIMEOUT_S + MARGIN_S
    assert len(errors) == 100  # every failure counted (innera_redis_errors_total)
    warnings = warnings_of(caplog)
    assert [w.getMessage() for w in warnings] == [
        "rate limiting disabled: Redis unavailable "
        "(1 requests passed unchecked since last warning)"
    ]

    server.start()  # same port, empty: no counter and no cached script (NOSCRIPT -> load)
    with trio.fail_after(5):
        decision = await limiter.hit(ROUTE, "c", 10, 60)
    assert decision == Decision(allowed=True, limit=10, remaining=9, reset_s=60)
    assert len(errors) == 100
    assert any("rate limiting restored" in r.getMessage() and "(99 requests" in r.getMessage()
               for r in caplog.records if r.name == LOGGER)
    assert len(warnings_of(caplog)) == 1


async def test_warns_again_after_the_interval(
    private_redis_server: StartServer, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis_server()
    redis = await start_redis(nursery, server.url)
    interval = 1.0
    limiter = RateLimiter(redis, warn_interval_s=interval, timeout_s=TIMEOUT_S)
    server.stop()
    started = trio.current_time()
    for _ in range(5):
        assert await limiter.hit(ROUTE, "c", 10, 60) is None
    burst = trio.current_time() - started
    await trio.sleep(interval + 0.05)
    assert await limiter.hit(ROUTE, "c", 10, 60) is None
    messages = [w.getMessage() for w in warnings_of(caplog)]
    assert "(1 requests passed unchecked" in messages[0]
    if burst < interval:  # the usual case; a loaded machine may stretch the burst
        assert len(messages) == 2
        assert "(5 requests passed unchecked" in messages[1]
    else:  # still one warning per interval, never one per request
        elapsed = trio.current_time() - started
        assert 2 <= len(messages) <= 1 + math.ceil(elapsed / interval)


async def test_fails_open_when_redis_hangs(
    private_redis_server: StartServer, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis_server()
    errors: list[BaseException] = []
    redis = await start_redis(nursery, server.url, errors.append)
    limiter = RateLimiter(redis, timeout_s=TIMEOUT_S)
    assert await limiter.hit(ROUTE, "c", 10, 60) is not None
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)  # connected but silent
    try:
        for _ in range(3):
            started = trio.current_time()
            assert await limiter.hit(ROUTE, "c", 10, 60) is None
            assert trio.current_time() - started < TIMEOUT_S + MARGIN_S
        assert len(errors) == 3
        assert all(isinstance(e, TimeoutError) for e in errors)
        assert len(warnings_of(caplog)) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    # Once the server answers again, limiting works again with the same limiter.
    with trio.fail_after(5):
        while (decision := await limiter.hit(ROUTE, "c", 10, 60)) is None:
            await trio.sleep(0.05)
    assert decision.allowed and decision.remaining < 9  # the counter survived the pause


async def test_fails_open_when_the_network_hangs_mid_handshake(
    redis_url: str, tcp_proxy: type[Proxy], nursery: trio.Nursery
) -> None:
    # The proxy cuts the pooled connection and then accepts new ones without forwarding: the
    # reconnect hangs in coredis' handshake, where our deadline's cancellation comes out of
    # coredis as ConnectionError. It must still be a quick None, recorded as a timeout.
    parts = urlsplit(redis_url)
    proxy = await tcp_proxy.start(parts.hostname or "127.0.0.1", parts.port or 6379)
    errors: list[BaseException] = []
    redis = await start_redis(nursery, f"redis://127.0.0.1:{proxy.port}{parts.path}",
                              errors.append)
    limiter = RateLimiter(redis, timeout_s=TIMEOUT_S)
    assert await limiter.hit(ROUTE, "c", 10, 60) is not None
    proxy.set_mode("hang")
    for _ in range(3):
        started = trio.current_time()
        assert await limiter.hit(ROUTE, "c", 10, 60) is None
        assert trio.current_time() - started < TIMEOUT_S + MARGIN_S
    assert len(errors) == 3
    assert all(isinstance(e, TimeoutError) for e in errors)
    proxy.set_mode("pass")
    with trio.fail_after(5):
        decision = await limiter.hit(ROUTE, "c", 10, 60)
    assert decision is not None and decision.allowed
