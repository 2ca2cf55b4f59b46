"""innera.redis against real Redis servers (no mocks): the shared local one (a private DB per
test) and private ``redis-server`` processes for passwords, outages and Sentinel."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable

import pytest
import trio
from coredis.exceptions import WatchError, WrongTypeError

from innera.config import RedisSettings
from innera.errors import RedisUnavailable
from innera.redis import Redis, check_redis_health, run_redis
from tests.fixtures.redis import PrivateRedisServer, free_port

pytestmark = pytest.mark.timeout(15)

StartServer = Callable[..., PrivateRedisServer]


async def start_redis(nursery: trio.Nursery, settings: RedisSettings,
                      on_error: Callable[[BaseException], None] | None = None) -> Redis:
    # As the process does it: positional on_error through nursery.start.
    return await nursery.start(run_redis, settings, on_error)


async def test_set_get_in_a_private_db(redis: Redis, redis_url: str) -> None:
    assert 1 <= int(redis_url.rsplit("/", 1)[1]) <= 15
    assert await redis.client.dbsize() == 0
    assert await redis.client.set("greeting", "hello", ex=60) is True
    assert await redis.client.get("greeting") == "hello"
    assert await redis.client.get("missing") is None


async def test_pipeline(redis: Redis) -> None:
    async with redis.client.pipeline(transaction=False) as pipe:
        pipe.set("a", "1")
        counter = pipe.incrby("n", 5)
        value = pipe.get("a")
    assert await counter == 5
    assert await value == "1"
    assert pipe.results == (True, 5, "1")


async def test_multi_exec_transaction(redis: Redis) -> None:
    async with redis.client.pipeline(transaction=True) as tx:
        tx.incr("n")
        tx.incr("n")
        tx.rpush("log", ["x"])
    assert tx.results == (1, 2, 1)

    # WATCH: a concurrent write aborts the transaction.
    with pytest.raises(WatchError):
        async with redis.client.pipeline(transaction=True) as tx, tx.watch("n"):
            await redis.client.set("n", "changed elsewhere")
            tx.set("n", "mine")
    assert await redis.client.get("n") == "changed elsewhere"


async def test_pubsub_publish_and_receive(redis: Redis) -> None:
    channel = f"events-{uuid.uuid4().hex}"  # channels are server-wide, not per DB
    async with redis.client.pubsub(channels=[channel], ignore_subscribe_messages=True) as ps:
        assert await redis.client.publish(channel, "hello") == 1
        message = None
        with trio.fail_after(3):
            while message is None:  # get_message returns None for skipped messages: loop
                message = await ps.get_message(timeout=0.5)
    assert message["channel"] == channel
    assert message["data"] == "hello"


async def test_lua_script(redis: Redis) -> None:
    script = redis.client.register_script(
        "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) "
        "redis.call('EXPIRE', KEYS[1], ARGV[2]) return v"
    )
    assert await script(keys=["hits"], args=[3, 60]) == 3
    assert await script(keys=["hits"], args=[4, 60]) == 7
    assert 0 < await redis.client.ttl("hits") <= 60


async def test_health_true(redis: Redis) -> None:
    assert await check_redis_health(redis) is True


async def test_health_false_when_the_server_is_gone(
    private_redis_server: StartServer, nursery: trio.Nursery
) -> None:
    server = private_redis_server()
    errors: list[BaseException] = []
    redis = await start_redis(nursery, RedisSettings(url=server.url), errors.append)
    assert await check_redis_health(redis) is True
    server.stop()
    started = trio.current_time()
    assert await check_redis_health(redis, 1.0) is False
    assert trio.current_time() - started < 1.2
    assert errors


async def test_health_false_when_the_server_hangs(
    private_redis_server: StartServer, nursery: trio.Nursery
) -> None:
    server = private_redis_server()
    redis = await start_redis(nursery, RedisSettings(url=server.url))
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # connected but silent
    started = trio.current_time()
    assert await check_redis_health(redis, 1.0) is False
    assert trio.current_time() - started < 1.2


async def test_start_fails_fast_on_a_closed_port(nursery: trio.Nursery) -> None:
    errors: list[BaseException] = []
    started = trio.current_time()
    with pytest.raises(RedisUnavailable, match="Unable to establish a connection"):
        await start_redis(nursery, RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
                          errors.append)
    assert trio.current_time() - started < 1.0
    assert errors


async def test_password_protected_server(
    private_redis_server: StartServer, nursery: trio.Nursery
) -> None:
    server = private_redis_server(password="s3cr3t/pa:ss")
    redis = await start_redis(nursery, RedisSettings(url=server.url))
    await redis.client.set("k", "v")
    assert await redis.client.get("k") == "v"

    wrong = f"redis://:nope@{server.host}:{server.port}/0"
    with pytest.raises(RedisUnavailable) as failure:
        await start_redis(nursery, RedisSettings(url=wrong))
    assert "nope" not in str(failure.value)  # the reason names no password
    with pytest.raises(RedisUnavailable):
        await start_redis(nursery, RedisSettings(url=f"redis://{server.host}:{server.port}/0"))


async def test_tls_with_password(private_redis_server: StartServer, nursery: trio.Nursery) -> None:
    server = private_redis_server(tls=True, password="tls-pw")
    assert server.url.startswith("rediss://")
    redis = await start_redis(nursery, RedisSettings(url=server.url))
    await redis.client.set("k", "over tls")
    assert await redis.client.get("k") == "over tls"
    assert await check_redis_health(redis) is True
    # The server certificate is verified: without its CA the connection is refused.
    untrusted = server.url.split("?", 1)[0]
    with pytest.raises(RedisUnavailable):
        await start_redis(nursery, RedisSettings(url=untrusted))
    # innera's config also accepts valkeys:// for TLS.
    await start_redis(nursery, RedisSettings(url=server.url.replace("rediss://", "valkeys://")))


async def test_outage_then_recovery_with_the_same_client(
    private_redis_server: StartServer, nursery: trio.Nursery
) -> None:
    server = private_redis_server()
    errors: list[BaseException] = []
    redis = await start_redis(nursery, RedisSettings(url=server.url), errors.append)
    await redis.client.set("k", "before")

    server.stop()
    for _ in range(3):
        started = trio.current_time()
        with pytest.raises(RedisUnavailable) as failure, redis.unavailable_as_503():
            await redis.client.get("k")
        assert trio.current_time() - started < 0.5
        assert failure.value.status == 503
        assert failure.value.code == "redis_unavailable"
    assert len(errors) == 3

    server.start()  # same port; the private server keeps no data
    with redis.unavailable_as_503():
        assert await redis.client.get("k") is None
        await redis.client.set("k", "after")
        assert await redis.client.get("k") == "after"
    assert await check_redis_health(redis) is True
    assert len(errors) == 3


async def test_other_errors_are_not_turned_into_503(redis: Redis) -> None:
    errors: list[BaseException] = []
    redis.on_error = errors.append
    await redis.client.set("s", "string")
    with pytest.raises(WrongTypeError), redis.unavailable_as_503():
        await redis.client.lpush("s", ["x"])
    assert errors == []


async def test_blocking_reads_with_server_timeouts_and_cancellations(redis: Redis) -> None:
    client = redis.client
    # The right way: a server-side timeout below socket_timeout_s.
    started = trio.current_time()
    assert await client.blpop(["queue"], timeout=0.2) is None
    assert 0.15 < trio.current_time() - started < 1.0

    # Cancelled blocking reads cost their connection; more of them than the pool has slots
    # must not starve the pool (coredis 6.9 alone would hang here forever).
    for _ in range(client.connection_pool.max_connections + 2):
        with trio.move_on_after(0.01):
            await client.blpop(["queue"], timeout=5)
    with trio.fail_after(2):
        assert await client.ping() == "PONG"
        await client.rpush("queue", ["item"])
        assert await client.blpop(["queue"], timeout=1) == ["queue", "item"]


async def test_sentinel_finds_the_master(
    private_redis_server: StartServer, nursery: trio.Nursery
) -> None:
    master = private_redis_server(password="m4ster")
    sentinel = private_redis_server(sentinel_conf=(
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel auth-pass mymaster m4ster\n"
        "sentinel down-after-milliseconds mymaster 10000\n"
    ))
    settings = RedisSettings(
        url="redis://:m4ster@host-ignored-with-sentinels:1/2",  # password and DB only
        sentinels=((sentinel.host, sentinel.port),),
        sentinel_master="mymaster",
    )
    redis = await start_redis(nursery, settings)
    await redis.client.set("via", "sentinel")
    assert await redis.client.get("via") == "sentinel"
    assert (await redis.client.info("server"))["tcp_port"] == master.port
    assert await check_redis_health(redis) is True

    with pytest.raises(RedisUnavailable, match="PrimaryNotFoundError"):
        await start_redis(nursery, RedisSettings(
            url=None, sentinels=((sentinel.host, sentinel.port),), sentinel_master="other"))


async def test_cancellation_closes_the_client_promptly(redis_url: str) -> None:
    async with trio.open_nursery() as nursery:
        redis = await start_redis(nursery, RedisSettings(url=redis_url))
        # Connections of several kinds: multiplexed, pub/sub (ended first, as features end
        # before Redis at shutdown) and a blocking read that is still waiting.
        async with redis.client.pubsub(channels=["c"]):
            await redis.client.set("k", "v")

        async def blocked_reader() -> None:
            await redis.client.blpop(["queue"], timeout=3)

        nursery.start_soon(blocked_reader)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
        started = trio.current_time()
    assert trio.current_time() - started < 0.5
    with pytest.raises(RuntimeError, match="not initialized or has exited"):
        await redis.client.get("k")
