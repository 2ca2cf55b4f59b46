"""innera.guards.idempotency against real Redis (a private DB, or a private server for the
outage), no mocks."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from innera.api.guards import HashedBody
from innera.config import RedisSettings
from innera.errors import AppError
from innera.guards.idempotency import (
    Fingerprint,
    Idempotency,
    StoredResponse,
    fingerprint,
    validate_key,
)
from innera.redis import Redis, run_redis
from tests.fixtures.redis import PrivateRedisServer

pytestmark = pytest.mark.timeout(20)

FP = fingerprint("POST", "/v1/notes", b'{"title":"x"}')
CACHE = "idempotency:user-a:k1"
LOCK = CACHE + ":lock"


def app_error(info: pytest.ExceptionInfo[AppError]) -> tuple[int, str]:
    return info.value.status, info.value.code


# --- validate_key / fingerprint ---


@pytest.mark.parametrize("key", ["", "x" * 256, "a\nb", "a\x00", "tab\there", "é", "k:lock"])
def test_invalid_keys(key: str) -> None:
    with pytest.raises(AppError) as info:
        validate_key(key)
    assert app_error(info) == (400, "invalid_idempotency_key")


def test_valid_keys() -> None:
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    key = (printable * 3)[:255]
    assert validate_key(key) == key
    assert validate_key("a") == "a"


def test_fingerprint() -> None:
    fp = fingerprint("post", "/a", b"x")
    assert fp == fingerprint("POST", "/a", b"x") and len(fp) == 64
    assert fp != fingerprint("PUT", "/a", b"x")
    assert fp != fingerprint("POST", "/b", b"x")
    assert fp != fingerprint("POST", "/a", b"y")
    assert fingerprint("POST", "/a", b"1") != fingerprint("POST", "/a1", b"")


def test_a_fingerprint_hashed_in_pieces_is_the_buffered_one() -> None:
    body = os.urandom(100_000)
    fp = Fingerprint("post", "/v1/imports")
    for i in range(0, len(body), 7777):
        fp.update(body[i:i + 7777])
    assert fp.hexdigest() == fingerprint("POST", "/v1/imports", body)
    empty = Fingerprint("POST", "/v1/imports")
    empty.update(b"")
    assert empty.hexdigest() == fingerprint("POST", "/v1/imports", b"")


async def chunks_of(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


async def test_a_streamed_body_fingerprints_as_the_buffered_one() -> None:
    body = os.urandom(300_000)
    expected = fingerprint("POST", "/v1/imports", body)
    # the handler reads all of it, part of it, or none of it: the rest is hashed after
    for read in (None, 3, 0):
        hashed = HashedBody(chunks_of(body, 65536), Fingerprint("POST", "/v1/imports"),
                            len(body))
        got = b""
        async for chunk in hashed:
            if read is not None and len(got) >= read * 65536:
                break
            got += chunk
        assert await hashed.fingerprint() == expected
        assert await hashed.fingerprint() == expected  # (asking again reads nothing more)
    # past its bound: 413, whoever reads
    with pytest.raises(AppError) as info:
        await HashedBody(chunks_of(body, 65536), Fingerprint("POST", "/v1/imports"),
                         len(body) - 1).fingerprint()
    assert app_error(info) == (413, "payload_too_large")


# --- the guard ---


async def run_once(idem: Idempotency, counter: list[int], *, user: str = "user-a",
                   key: str = "k1", fp: str = FP, status: int = 201,
                   body: bytes = b'{"id":1}\xff', delay: float = 0.0) -> StoredResponse:
    """What the route wrapper does: replay, or run the "handler" and store its response."""
    async with idem.guard(user, key, fp) as guard:
        if guard.replay is not None:
            return guard.replay
        counter.append(1)
        await trio.sleep(delay)
        guard.store(status, body, "application/json")
        return StoredResponse(status, body, "application/json")


async def test_first_runs_then_replays(redis: Redis) -> None:
    idem = Idempotency(redis)
    runs: list[int] = []
    first = await run_once(idem, runs)
    second = await run_once(idem, runs)
    assert runs == [1]
    assert second == first == StoredResponse(201, b'{"id":1}\xff', "application/json")
    stored = json.loads(await redis.client.get(CACHE))
    assert stored["statusCode"] == 201 and stored["fingerprint"] == FP
    assert stored["contentType"] == "application/json"
    assert await redis.client.exists([LOCK]) == 0


async def test_ttls(redis: Redis) -> None:
    idem = Idempotency(redis)
    async with idem.guard("user-a", "k1", FP) as guard:
        lock_pttl = await redis.client.pttl(LOCK)
        assert 29_000 < lock_pttl <= 30_000
        guard.store(200, b"ok", "text/plain")
    assert 86_400_000 - 5_000 < await redis.client.pttl(CACHE) <= 86_400_000
    assert await redis.client.exists([LOCK]) == 0


async def test_other_fingerprint_is_422(redis: Redis) -> None:
    idem = Idempotency(redis)
    await run_once(idem, [])
    with pytest.raises(AppError) as info:
        await run_once(idem, [], fp=fingerprint("POST", "/v1/notes", b'{"title":"y"}'))
    assert app_error(info) == (422, "idempotency_key_reused")


async def test_concurrent_requests_run_the_handler_once(redis: Redis) -> None:
    idem = Idempotency(redis)
    runs: list[int] = []
    outcomes: list[object] = []
    start = trio.Event()

    async def client(delay: float) -> None:
        await start.wait()
        await trio.sleep(delay)
        try:
            outcomes.append(await run_once(idem, runs, delay=0.3))
        except AppError as exc:
            assert (exc.status, exc.code) == (409, "idempotency_in_progress")
            assert exc.headers == {"Retry-After": "1"}
            outcomes.append(409)

    async with trio.open_nursery() as nursery:
        for i in range(10):  # 7 at once, 3 after the first has finished
            nursery.start_soon(client, 0.0 if i < 7 else 0.6)
        start.set()
    assert runs == [1]
    assert outcomes.count(409) >= 6
    responses = [o for o in outcomes if o != 409]
    assert len(responses) >= 4  # the one that ran + the late ones replayed
    assert all(r == responses[0] for r in responses)


async def test_5xx_is_not_stored(redis: Redis) -> None:
    idem = Idempotency(redis)
    runs: list[int] = []
    await run_once(idem, runs, status=503)
    assert await redis.client.exists([CACHE, LOCK]) == 0
    assert (await run_once(idem, runs, status=201)).status == 201
    assert runs == [1, 1]  # the retry ran again
    assert (await run_once(idem, runs)).status == 201
    assert runs == [1, 1]


async def test_handler_raising_releases_the_lock(redis: Redis) -> None:
    idem = Idempotency(redis)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):  # the handler's own exception, not an ExceptionGroup
        async with idem.guard("user-a", "k1", FP) as guard:
            guard.store(200, b"half", "text/plain")
            raise Boom()
    assert await redis.client.exists([CACHE, LOCK]) == 0
    runs: list[int] = []
    await run_once(idem, runs)
    assert runs == [1]


async def test_cancelled_handler_releases_the_lock(redis: Redis) -> None:
    idem = Idempotency(redis)
    with trio.move_on_after(0.2) as scope:
        async with idem.guard("user-a", "k1", FP) as guard:
            guard.store(200, b"never", "text/plain")
            await trio.sleep(5)
    assert scope.cancelled_caught
    assert await redis.client.exists([CACHE, LOCK]) == 0


async def test_lock_is_renewed_while_a_slow_handler_runs(redis: Redis) -> None:
    idem = Idempotency(redis, lock_ttl_s=1)
    runs: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_once(idem, runs, delay=2.5))
        await trio.sleep(0.1)
        for _ in range(5):  # ~2 s, well past lock_ttl_s
            with pytest.raises(AppError) as info:
                await run_once(idem, runs)
            assert app_error(info) == (409, "idempotency_in_progress")
            assert 0 < await redis.client.pttl(LOCK) <= 1000
            await trio.sleep(0.45)
    assert runs == [1]
    assert await redis.client.exists([LOCK]) == 0
    assert (await run_once(idem, runs)).status == 201
    assert runs == [1]


async def test_release_never_deletes_a_lock_owned_by_another(redis: Redis) -> None:
    idem = Idempotency(redis, lock_ttl_s=30)
    async with idem.guard("user-a", "k1", FP) as guard:
        # Our lock expired and another request took it.
        await redis.client.set(LOCK, "someone-else", px=30_000)
        guard.store(201, b"mine", "text/plain")
    assert await redis.client.get(LOCK) == "someone-else"
    assert await redis.client.exists([CACHE]) == 1  # the response is still kept

    with pytest.raises(RuntimeError):
        async with idem.guard("user-a", "k2", FP):
            await redis.client.set("idempotency:user-a:k2:lock", "other", px=30_000)
            raise RuntimeError()
    assert await redis.client.get("idempotency:user-a:k2:lock") == "other"


async def test_a_fingerprint_computed_late(redis: Redis) -> None:
    """A streamed body: the fingerprint is a function, awaited on a replay (to compare) and
    after the handler (to store) — never when nothing is stored."""
    idem = Idempotency(redis)
    asked: list[str] = []

    def late(fp: str) -> Callable[[], Any]:
        async def compute() -> str:
            asked.append(fp)
            return fp
        return compute

    # nothing to store (a 5xx, the handler raising): never asked
    async with idem.guard("user-a", "k1", late("a")) as guard:
        assert asked == []
        guard.store(503, b"later", "text/plain")
    with pytest.raises(RuntimeError):
        async with idem.guard("user-a", "k1", late("a")):
            raise RuntimeError()
    assert asked == [] and await redis.client.exists([CACHE, LOCK]) == 0

    async with idem.guard("user-a", "k1", late("a")) as guard:
        assert guard.replay is None and asked == []  # the lock comes first
        guard.store(202, b"job", "application/json", "/v1/jobs/1")
    assert asked == ["a"]
    assert json.loads(await redis.client.get(CACHE))["fingerprint"] == "a"
    async with idem.guard("user-a", "k1", late("a")) as guard:
        assert guard.replay == StoredResponse(202, b"job", "application/json", "/v1/jobs/1")
    with pytest.raises(AppError) as info:
        async with idem.guard("user-a", "k1", late("b")):
            pass
    assert app_error(info) == (422, "idempotency_key_reused")
    assert asked == ["a", "a", "b"]


async def test_a_fingerprint_failing_after_the_handler_stores_nothing(redis: Redis) -> None:
    idem = Idempotency(redis)

    async def broken() -> str:
        raise OSError("the client went away")

    async with idem.guard("user-a", "k1", broken) as guard:
        guard.store(202, b"job", "application/json")
    # the handler's response stands (no exception), but it is not kept
    assert await redis.client.exists([CACHE, LOCK]) == 0


async def test_keys_are_per_user(redis: Redis) -> None:
    idem = Idempotency(redis)
    runs: list[int] = []
    await run_once(idem, runs, user="user-a", body=b"a")
    b = await run_once(idem, runs, user="user-b", body=b"b")
    assert runs == [1, 1] and b.body == b"b"
    assert (await run_once(idem, runs, user="user-a")).body == b"a"
    assert runs == [1, 1]


async def test_redis_down_is_503(
    private_redis_server: Callable[..., PrivateRedisServer], nursery: trio.Nursery
) -> None:
    server = private_redis_server()
    errors: list[BaseException] = []
    redis = await nursery.start(run_redis, RedisSettings(url=server.url), errors.append)
    idem = Idempotency(redis, timeout_s=1.0)
    runs: list[int] = []
    await run_once(idem, runs)
    server.stop()
    for key in ("k1", "k2"):  # a replay and a new key: neither without Redis
        started = trio.current_time()
        with pytest.raises(AppError) as info:
            await run_once(idem, runs, key=key)
        assert trio.current_time() - started < 1.5
        assert app_error(info) == (503, "idempotency_unavailable")
        assert info.value.headers["Retry-After"].isdigit()
    assert runs == [1]
    assert errors


async def test_redis_hanging_is_503_within_the_timeout(
    private_redis_server: Callable[..., PrivateRedisServer], nursery: trio.Nursery
) -> None:
    import os
    import signal

    server = private_redis_server()
    redis = await nursery.start(run_redis, RedisSettings(url=server.url))
    idem = Idempotency(redis, timeout_s=0.5)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # connected but silent
    try:
        started = trio.current_time()
        with pytest.raises(AppError) as info:
            await run_once(idem, [])
        assert trio.current_time() - started < 1.0
        assert app_error(info) == (503, "idempotency_unavailable")
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
