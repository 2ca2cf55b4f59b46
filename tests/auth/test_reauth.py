"""Re-authentication tokens in the real Redis: single use, bound to the user, 300 s TTL."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

import pytest
import trio

from innera.auth.reauth import ReauthTokens
from innera.config import RedisSettings
from innera.errors import RedisUnavailable
from innera.redis import Redis, run_redis
from tests.fixtures.redis import PrivateRedisServer

pytestmark = pytest.mark.timeout(30)

ALICE, BOB = str(uuid.uuid4()), str(uuid.uuid4())


async def test_issue_stores_the_hash_with_a_300_s_ttl(redis: Redis) -> None:
    reauth = ReauthTokens(redis)
    token = await reauth.issue(ALICE)
    key = "reauth:" + hashlib.sha256(token.encode()).hexdigest()
    assert await redis.client.get(key) == f"{ALICE}:0"  # the user and its session generation
    assert 295 <= await redis.client.ttl(key) <= 300
    for k in await redis.client.keys("*"):  # the token itself is stored nowhere
        assert token not in k and token not in (await redis.client.get(k) or "")


async def test_single_use(redis: Redis) -> None:
    reauth = ReauthTokens(redis)
    token = await reauth.issue(ALICE)
    assert await reauth.consume(ALICE, token) is True
    assert await reauth.consume(ALICE, token) is False


async def test_bound_to_the_user(redis: Redis) -> None:
    reauth = ReauthTokens(redis)
    token = await reauth.issue(ALICE)
    assert await reauth.consume(BOB, token) is False  # not consumed by the attempt
    assert await reauth.consume(ALICE, token) is True


async def test_dead_once_the_sessions_ended(redis: Redis) -> None:
    """A token of an earlier session generation (before a password change or a sign-out
    everywhere) fails."""
    reauth = ReauthTokens(redis)
    token = await reauth.issue(ALICE, 3)
    assert await reauth.consume(ALICE, token, 4) is False
    assert await reauth.consume(ALICE, token, 3) is True


@pytest.mark.parametrize("token", [None, "", "garbage", "a" * 43])
async def test_unknown_or_malformed(redis: Redis, token: str | None) -> None:
    assert await ReauthTokens(redis).consume(ALICE, token) is False


async def test_expires(redis: Redis) -> None:
    reauth = ReauthTokens(redis, ttl_s=1)
    token = await reauth.issue(ALICE)
    await trio.sleep(1.2)
    assert await reauth.consume(ALICE, token) is False


async def test_redis_down_is_503(private_redis_server: Callable[..., PrivateRedisServer],
                                 nursery: trio.Nursery) -> None:
    server = private_redis_server()
    redis: Redis = await nursery.start(run_redis, RedisSettings(url=server.url))
    reauth = ReauthTokens(redis)
    token = await reauth.issue(ALICE)
    server.stop()
    with trio.fail_after(10):
        with pytest.raises(RedisUnavailable):
            await reauth.consume(ALICE, token)
        with pytest.raises(RedisUnavailable):
            await reauth.issue(ALICE)
