"""``innera_active_users{window}``: the distinct users who made an authenticated request on
any instance, from per-day Redis HyperLogLogs written in batches
(innera/auth/active_user_counter.py)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from innera.auth.active_user_counter import (
    KEY_TTL_DAYS,
    PFADD_CHUNK,
    ActiveUserCounter,
    day_key,
)
from innera.config import RedisSettings, load_settings
from innera.redis import UNAVAILABLE_ERRORS, Redis, run_redis
from tests.fixtures.accounts import signup
from tests.fixtures.redis import PrivateRedisServer, _connect
from tests.fixtures.server import RunningServer, server_environ, start_server
from tests.test_metrics_port import metric
from tests.test_realtime import connect

pytestmark = pytest.mark.timeout(90)

DAY_S = 86_400


def today() -> int:
    return int(time.time()) // DAY_S


def user_ids(n: int) -> list[str]:
    """``n`` fixed user ids: HyperLogLog estimates them the same way every run."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"innera-test-user-{i}")) for i in range(n)]


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "ACTIVE_USERS_INTERVAL_S": "0.2"}


async def active_users(server: RunningServer) -> dict[str, float | None]:
    text = (await server.client.get("/metrics")).text
    return {window: metric(text, "innera_active_users", window=window)
            for window in ("1d", "7d", "30d")}


async def test_active_users_are_the_distinct_users_authenticated_on_every_instance(
        server: RunningServer, nursery: trio.Nursery, server_settings: dict[str, str],
        redis: Redis) -> None:
    """Seven accounts: five make API requests (one on both instances, several times each),
    one only opens a WebSocket, one only signed up; refused tokens count nobody. Both
    instances report the six within 30 s."""
    other = await start_server(nursery, load_settings(server_settings))
    async with other.client:
        assert await active_users(server) == {"1d": 0, "7d": 0, "30d": 0}
        accounts = [await signup(server.client) for _ in range(7)]
        for account in accounts[:3]:
            for _ in range(3):
                assert (await server.client.get("/v1/me", headers=account.auth)).status_code \
                    == 200
        for account in accounts[2:5]:
            assert (await other.client.get("/v1/me", headers=account.auth)).status_code == 200
        socket = await connect(other.url, accounts[5].access)
        await socket.aclose()
        refused = await server.client.get("/v1/me", headers={"authorization": "Bearer nope"})
        assert refused.status_code == 401
        assert (await server.client.get("/v1/me")).status_code == 401

        # six users; HyperLogLog may count two ids as one (about 1 in 1000 for six): what
        # PFCOUNT says of exactly these ids
        await redis.client.pfadd("reference", *(a.id for a in accounts[:6]))
        six = await redis.client.pfcount(["reference"])
        assert six in (5, 6)
        expected = {"1d": six, "7d": six, "30d": six}
        with trio.fail_after(30):  # the spec: visible within 30 s
            while (await active_users(server), await active_users(other)) \
                    != (expected, expected):
                await trio.sleep(0.05)

        key = day_key(today())
        assert await redis.client.pfcount([key, "reference"]) == six  # the same users
        ttl = await redis.client.ttl(key)
        assert (KEY_TTL_DAYS - 1) * DAY_S < ttl <= KEY_TTL_DAYS * DAY_S
    assert await other.stop() == 0


def commands_called(redis_server: PrivateRedisServer, command: str) -> int:
    with _connect(redis_server.url) as conn:
        stats = conn.call("INFO", "commandstats")
    for line in stats.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_requests_are_written_in_one_batch_and_the_last_one_at_shutdown(
        nursery: trio.Nursery, database_url: str, redis_url: str, tmp_path: Path,
        private_redis_server: Callable[..., PrivateRedisServer]) -> None:
    """Twenty authenticated requests of four users cost Redis one PFADD, written when the
    server stops (the interval is an hour): never a Redis call per request."""
    redis_server = private_redis_server()
    srv = await start_server(nursery, load_settings(server_environ(
        database_url, redis_server.url, tmp_path / "data", ACTIVE_USERS_INTERVAL_S="3600")))
    async with srv.client:
        accounts = [await signup(srv.client) for _ in range(4)]
        for _ in range(5):
            for account in accounts:
                assert (await srv.client.get("/v1/me", headers=account.auth)).status_code \
                    == 200
        assert commands_called(redis_server, "pfadd") == 0
        assert srv.services.active_user_counter.pending == 4
    assert await srv.stop() == 0
    assert commands_called(redis_server, "pfadd") == 1
    with _connect(redis_server.url) as conn:
        conn.call("PFADD", "reference", *(a.id for a in accounts))
        four = conn.call("PFCOUNT", "reference")  # HyperLogLog: 4, or 3 once in ~4000 runs
        assert four in (3, 4)
        assert conn.call("PFCOUNT", day_key(today()), "reference") == four  # the same users


async def test_a_full_set_is_written_at_once(redis: Redis, nursery: trio.Nursery) -> None:
    """The interval is an hour: only the full set makes the counter write (two PFADD
    chunks to one key)."""
    counter = ActiveUserCounter(redis, cap=PFADD_CHUNK + 10)
    await nursery.start(counter.run, 3600.0)
    for user_id in user_ids(PFADD_CHUNK + 10):
        counter.record(user_id)
    key = day_key(today())
    with trio.fail_after(10):
        while await redis.client.pfcount([key]) == 0:
            await trio.sleep(0.02)
    # HyperLogLog counts within about 1 %
    assert abs(await redis.client.pfcount([key]) - (PFADD_CHUNK + 10)) <= 0.02 * PFADD_CHUNK
    assert counter.pending == 0


async def test_while_redis_is_down_the_set_is_kept_up_to_its_cap(
        nursery: trio.Nursery,
        private_redis_server: Callable[..., PrivateRedisServer]) -> None:
    """250 users while Redis is down: the first 100 (the cap) are kept and written once it
    is back; the others are dropped (they count again with their next request)."""
    redis_server = private_redis_server()
    redis: Redis = await nursery.start(run_redis, RedisSettings(url=redis_server.url))
    counter = ActiveUserCounter(redis, cap=100)
    await nursery.start(counter.run, 0.1)
    redis_server.stop()
    ids = user_ids(250)
    for user_id in ids:
        counter.record(user_id)
    assert (counter.pending, counter.dropped) == (100, 150)
    redis_server.start()
    # what PFCOUNT says of exactly the kept ids (HyperLogLog may count 100 ids as 99)
    with trio.fail_after(30):
        while True:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):  # until the client reconnects
                await redis.client.pfadd("reference", *ids[:100])
                break
            await trio.sleep(0.05)
    kept = await redis.client.pfcount(["reference"])
    assert 98 <= kept <= 100
    key = day_key(today())
    with trio.fail_after(30):
        while await redis.client.pfcount([key]) != kept:
            await trio.sleep(0.05)
    assert await redis.client.pfcount([key, "reference"]) == kept  # the same ids
    assert counter.pending == 0


async def test_the_windows_count_the_union_of_their_days(redis: Redis) -> None:
    """1d: today; 7d: today and the six days before; 30d: the 30 days up to today. A user
    active on several days counts once."""
    now = [time.time()]
    counter = ActiveUserCounter(redis, clock=lambda: now[0])
    users = user_ids(6)
    active_on: dict[int, list[str]] = {
        0: users[0:2],          # today: 0, 1
        3: users[1:4],          # 3 days ago: 1, 2, 3
        20: users[3:5],         # 20 days ago: 3, 4
        40: users[5:6],         # 40 days ago: 5 (outside every window)
    }
    base = now[0]
    for days_ago, ids in active_on.items():
        now[0] = base - days_ago * DAY_S
        for user_id in ids:
            counter.record(user_id)
    await counter.flush()
    now[0] = base
    counts: Any = await counter.recount()
    assert dict(counts) == {"1d": 2, "7d": 4, "30d": 5}
    assert counter.counts() == counts
