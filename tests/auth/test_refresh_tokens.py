"""Refresh token stores (Redis and PostgreSQL) against the real servers: rotation, reuse
detection, revocation, expiry, what is stored, outages and the PostgreSQL cleaner."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from innera.auth.errors import TokenReused
from innera.auth.refresh_tokens import (
    MAX_SESSIONS_LISTED,
    PostgresRefreshTokenStore,
    RedisRefreshTokenStore,
    RefreshTokenStore,
    hash_token,
    new_token,
    open_refresh_store,
)
from innera.config import RedisSettings, load_settings
from innera.db.pool import Pool
from innera.errors import RedisUnavailable, Unauthorized
from innera.redis import Redis, run_redis
from tests.fixtures.redis import PrivateRedisServer

pytestmark = pytest.mark.timeout(30)

TTL_S = 3600
MakeStore = Callable[[int], RefreshTokenStore]


async def create_user(pool: Pool) -> str:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO users (email, password_hash) VALUES (%s, 'x') RETURNING id",
            (f"{uuid.uuid4().hex}@example.com",))
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture(params=["redis", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(kind: str, db_pool: Pool, redis: Redis) -> MakeStore:
    def make(ttl_s: int = TTL_S) -> RefreshTokenStore:
        if kind == "redis":
            return RedisRefreshTokenStore(redis, ttl_s)
        return PostgresRefreshTokenStore(db_pool, ttl_s)
    return make


@pytest.fixture
def store(make_store: MakeStore) -> RefreshTokenStore:
    return make_store(TTL_S)


@pytest.fixture
async def user(db_pool: Pool) -> str:
    return await create_user(db_pool)


async def rejected(store: RefreshTokenStore, token: str) -> Unauthorized:
    """Rotating ``token`` fails with Unauthorized (returned for inspection)."""
    with pytest.raises(Unauthorized) as failure:
        await store.rotate(token)
    return failure.value


async def test_issue_and_rotate(store: RefreshTokenStore, user: str) -> None:
    t0 = await store.issue(user)
    assert len(t0) == 43 and "=" not in t0
    user_id, t1, _ = await store.rotate(t0)
    assert user_id == user and t1 != t0
    user_id, t2, _ = await store.rotate(t1)
    assert user_id == user and len({t0, t1, t2}) == 3


async def test_reuse_revokes_the_whole_family(store: RefreshTokenStore, user: str) -> None:
    t0 = await store.issue(user)
    other_family = await store.issue(user)
    _, t1, _ = await store.rotate(t0)
    _, t2, _ = await store.rotate(t1)

    with pytest.raises(TokenReused) as failure:
        await store.rotate(t0)  # the thief (or the victim) replays a consumed token
    error = failure.value
    assert (error.status, error.code) == (401, "unauthorized")
    assert error.message == "Refresh token reuse detected; please sign in again"

    # The newest token of that family is revoked too, and so is everything else in it.
    for token in (t2, t1, t0):
        assert not isinstance(await rejected(store, token), TokenReused)
    # Other sign-ins of the same user are untouched.
    assert (await store.rotate(other_family))[0] == user


async def test_concurrent_rotations_one_wins(store: RefreshTokenStore, user: str) -> None:
    for _ in range(3):
        token = await store.issue(user)
        outcomes: list[Any] = []

        async def attempt(token: str = token, outcomes: list[Any] = outcomes) -> None:
            try:
                outcomes.append(await store.rotate(token))
            except Unauthorized as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(attempt)
        wins = [o for o in outcomes if isinstance(o, tuple)]
        assert len(wins) == 1, outcomes
        assert sum(isinstance(o, TokenReused) for o in outcomes) == 1, outcomes
        # Treated as reuse: the winner's new token went down with the family.
        await rejected(store, wins[0][1])


async def test_revoke_is_logout_of_one_family(store: RefreshTokenStore, user: str) -> None:
    phone = await store.issue(user)
    _, laptop, _ = await store.rotate(await store.issue(user))
    await store.revoke(laptop)
    error = await rejected(store, laptop)
    assert not isinstance(error, TokenReused)
    assert (await store.rotate(phone))[0] == user
    # Idempotent, and harmless for unknown or malformed tokens.
    await store.revoke(laptop)
    await store.revoke(new_token())
    await store.revoke("not a token")


async def test_revoking_with_an_old_token_of_the_family(store: RefreshTokenStore,
                                                        user: str) -> None:
    t0 = await store.issue(user)
    _, t1, _ = await store.rotate(t0)
    await store.revoke(t0)  # logout presenting a consumed token still ends the session
    await rejected(store, t1)


async def test_revoke_user_revokes_every_family(store: RefreshTokenStore, db_pool: Pool,
                                                user: str) -> None:
    other = await create_user(db_pool)
    tokens = [await store.issue(user) for _ in range(3)]
    _, rotated, _ = await store.rotate(tokens[0])
    consumed = tokens[0]
    kept = await store.issue(other)
    await store.revoke_user(user)
    for token in (*tokens[1:], rotated, consumed):
        assert not isinstance(await rejected(store, token), TokenReused)
    assert (await store.rotate(kept))[0] == other
    await store.revoke_user(user)  # nothing left: fine
    # New sign-ins after a password change work.
    assert (await store.rotate(await store.issue(user)))[0] == user


async def test_issue_into_an_existing_family(store: RefreshTokenStore, user: str) -> None:
    family = str(uuid.uuid4())
    a = await store.issue(user, family)
    b = await store.issue(user, family)
    await store.revoke(a)
    await rejected(store, b)


async def test_the_sessions_listed_are_bounded(store: RefreshTokenStore, user: str) -> None:
    """However many sign-ins an account piles up, listing them costs the same: the
    MAX_SESSIONS_LISTED used last, newest first."""
    families = [str(uuid.uuid4()) for _ in range(MAX_SESSIONS_LISTED + 5)]
    for family in families:
        await store.issue(user, family, client="curl")
    listed = await store.sessions(user)
    assert len(listed) == MAX_SESSIONS_LISTED
    assert {s.id for s in listed} <= set(families)
    assert [s.last_used_at for s in listed] == sorted((s.last_used_at for s in listed),
                                                      reverse=True)


@pytest.mark.parametrize("token", ["", "x", "a" * 42, "a" * 44, "a" * 42 + "=", "é" * 43])
async def test_malformed_tokens(store: RefreshTokenStore, token: str) -> None:
    assert not isinstance(await rejected(store, token), TokenReused)


async def test_unknown_token(store: RefreshTokenStore) -> None:
    assert not isinstance(await rejected(store, new_token()), TokenReused)


async def test_expiry(make_store: MakeStore, user: str) -> None:
    store = make_store(1)
    token = await store.issue(user)
    consumed = await store.issue(user)
    await store.rotate(consumed)
    await trio.sleep(1.3)
    assert not isinstance(await rejected(store, token), TokenReused)
    # Past its lifetime, a consumed token is just unknown: no reuse alarm.
    assert not isinstance(await rejected(store, consumed), TokenReused)


async def test_redis_ttls_are_set(redis: Redis, user: str) -> None:
    store = RedisRefreshTokenStore(redis, TTL_S)
    client = redis.client
    token = await store.issue(user)
    key = f"rt:{hash_token(token)}"
    record = await client.get(key)
    assert record is not None
    data = json.loads(record)
    assert data["userId"] == user and {"createdAt", "familyId"} <= set(data)
    family_key, user_key = f"rt:family:{data['familyId']}", f"rt:user:{user}"
    for k in (key, family_key, user_key):
        assert TTL_S - 5 <= await client.ttl(k) <= TTL_S, k

    await trio.sleep(1.1)
    _, new, _ = await store.rotate(token)
    # The consumed record keeps its original TTL (not reset), the new one gets a full TTL.
    consumed = json.loads(await client.get(key) or "{}")
    assert consumed["consumed"] is True and consumed["familyId"] == data["familyId"]
    assert await client.ttl(key) <= TTL_S - 1
    new_key = f"rt:{hash_token(new)}"
    assert TTL_S - 5 <= await client.ttl(new_key) <= TTL_S
    for k in (family_key, user_key):
        assert TTL_S - 5 <= await client.ttl(k) <= TTL_S, k
    # Every key the store writes expires.
    for k in await client.keys("*"):
        assert await client.ttl(k) > 0, k


async def test_postgres_expiry_is_stored(db_pool: Pool, user: str) -> None:
    store = PostgresRefreshTokenStore(db_pool, TTL_S)
    token = await store.issue(user)
    async with db_pool.connection() as conn:
        cur = await conn.execute(
            "SELECT extract(epoch FROM expires_at - created_at) FROM refresh_tokens "
            "WHERE token_hash = %s", (hash_token(token),))
        row = await cur.fetchone()
    assert row is not None and float(row[0]) == TTL_S


async def test_tokens_are_never_stored(kind: str, store: RefreshTokenStore, user: str,
                                       redis: Redis, db_pool: Pool) -> None:
    t0 = await store.issue(user)
    _, t1, _ = await store.rotate(t0)
    t2 = await store.issue(user)
    dump = await _dump_redis(redis) if kind == "redis" else await _dump_postgres(db_pool)
    for token in (t0, t1, t2):
        assert hash_token(token) in dump  # the scan does see what is stored
        assert token not in dump


async def _dump_redis(redis: Redis) -> str:
    client = redis.client
    parts: list[str] = []
    for key in await client.keys("*"):
        parts.append(key)
        kind = await client.type(key)
        if kind == "string":
            parts.append(await client.get(key) or "")
        elif kind == "zset":
            parts.extend(await client.zrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected {kind} at {key}")
    return "\n".join(parts)


async def _dump_postgres(pool: Pool) -> str:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT r::text FROM refresh_tokens r")
        return "\n".join(row[0] for row in await cur.fetchall())


# --- selection and outages ----------------------------------------------------------


async def test_open_refresh_store(tmp_path: Path, db_pool: Pool, redis: Redis) -> None:
    for name, cls in (("redis", RedisRefreshTokenStore), ("postgres", PostgresRefreshTokenStore)):
        settings = load_settings({"INNERA_DATA_DIR": str(tmp_path),
                                  "REFRESH_TOKEN_STORE": name, "REFRESH_TOKEN_TTL_S": "120"})
        store = open_refresh_store(settings.auth, db_pool, redis)
        assert isinstance(store, cls) and store.ttl_s == 120


async def test_postgres_store_works_while_redis_is_down(
    tmp_path: Path, db_pool: Pool, user: str,
    private_redis_server: Callable[..., PrivateRedisServer], nursery: trio.Nursery,
) -> None:
    server = private_redis_server()
    redis: Redis = await nursery.start(run_redis, RedisSettings(url=server.url))
    settings = load_settings({"INNERA_DATA_DIR": str(tmp_path),
                              "REFRESH_TOKEN_STORE": "postgres"})
    store = open_refresh_store(settings.auth, db_pool, redis)
    redis_store = RedisRefreshTokenStore(redis, TTL_S)
    token = await store.issue(user)
    redis_token = await redis_store.issue(user)

    server.stop()
    with trio.fail_after(10):
        _, token, _ = await store.rotate(token)
        _, token, _ = await store.rotate(token)
        await store.revoke(token)
        # ... whereas the Redis store answers 503.
        with pytest.raises(RedisUnavailable):
            await redis_store.rotate(redis_token)


# --- the PostgreSQL cleaner ---------------------------------------------------------


async def _insert_rows(pool: Pool, user: str, ages: dict[str, str]) -> dict[str, str]:
    """One row per name, expiring at ``now() - <interval>``; name → token hash."""
    hashes = {}
    async with pool.connection() as conn:
        for name, age in ages.items():
            hashes[name] = hash_token(new_token())
            await conn.execute(
                "INSERT INTO refresh_tokens (token_hash, user_id, family_id, created_at, "
                "expires_at) VALUES (%s, %s, gen_random_uuid(), now() - interval '40 days', "
                "now() - %s::interval)", (hashes[name], user, age))
    return hashes


async def _remaining(pool: Pool) -> set[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT token_hash FROM refresh_tokens")
        return {row[0] for row in await cur.fetchall()}


async def test_cleaner_deletes_only_long_expired_rows(db_pool: Pool, user: str) -> None:
    store = PostgresRefreshTokenStore(db_pool, TTL_S, cleanup_batch_size=2)
    old = await _insert_rows(db_pool, user, {f"old{i}": "2 days" for i in range(5)})
    recent = await _insert_rows(db_pool, user, {"recent": "1 hour", "future": "-1 day"})
    live = await store.issue(user)
    assert await store.clean_expired() == 5
    left = await _remaining(db_pool)
    assert left == {*recent.values(), hash_token(live)}
    assert not left & set(old.values())
    assert await store.clean_expired() == 0


async def test_cleaner_survives_a_database_error(db_pool: Pool, user: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="innera.auth")
    store = PostgresRefreshTokenStore(db_pool, TTL_S)
    first = await _insert_rows(db_pool, user, {"a": "3 days"})
    async with db_pool.connection() as conn:
        await conn.execute("ALTER TABLE refresh_tokens RENAME TO refresh_tokens_away")

    async def until(condition: Callable[[], Awaitable[bool]]) -> None:
        with trio.fail_after(5):
            while not await condition():
                await trio.sleep(0.02)

    async def failures() -> bool:
        return sum("cleanup failed" in r.getMessage() for r in caplog.records) >= 2

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_cleaner, 0.05)
        await until(failures)  # failed twice (logged), still running
        async with db_pool.connection() as conn:
            await conn.execute("ALTER TABLE refresh_tokens_away RENAME TO refresh_tokens")
        second = await _insert_rows(db_pool, user, {"b": "2 days", "keep": "1 hour"})

        async def cleaned() -> bool:
            return await _remaining(db_pool) == {second["keep"]}

        await until(cleaned)
        nursery.cancel_scope.cancel()
    assert first["a"] not in await _remaining(db_pool)
