"""Refresh tokens: opaque, rotated on every use, with reuse detection by family.

A refresh token is 256 random bits, base64url without padding (43 characters). Only
``sha256(token).hexdigest()`` is stored, in Redis or PostgreSQL (``REFRESH_TOKEN_STORE``).

Every sign-in starts a *family*. :meth:`RefreshTokenStore.rotate` consumes the presented
token and issues its successor in the same family, atomically. A consumed token presented
again means two parties hold the family (a stolen token, or the legitimate client's copy
after the thief used it): the whole family is revoked, including the newest token, and
:class:`TokenReused` (401) is raised. Unknown, expired and revoked tokens raise
:class:`~innera.errors.Unauthorized`.

Two refreshes racing with the same token are reuse too: exactly one succeeds and the other
revokes the family (so the winner's new token dies with it). Clients must serialise refreshes.

Redis layout (:class:`RedisRefreshTokenStore`), every key with a TTL:

- ``rt:{hash}`` → JSON ``{"userId", "createdAt", "familyId", "familyCreatedAt", "client"}``
  (the spec's key; the family's start and the client family that last used it are carried
  from token to token, for ``GET /v1/me/sessions``), plus ``"consumed": true,
  "consumedAt"`` once rotated; expires ``ttl_s`` after issue. A consumed key keeps its TTL,
  so reuse is detected until the token would have expired anyway.
- ``rt:family:{familyId}`` → sorted set of token hashes, scored by expiry (ms);
- ``rt:user:{userId}`` → sorted set of family ids, scored by the latest expiry (ms).

The index keys get ``ttl_s`` on every write, and members past their expiry are pruned then,
so a long-lived family does not grow without bound. The Lua scripts address the index keys
they derive from a token's record: fine for a single Redis or Sentinel, not Redis Cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from innera.auth.errors import TokenReused
from innera.auth.sessions import Session
from innera.config import AuthSettings
from innera.db.pool import Pool
from innera.errors import DatabaseUnavailable, Unauthorized
from innera.redis import Redis

__all__ = [
    "PostgresRefreshTokenStore",
    "RedisRefreshTokenStore",
    "RefreshTokenStore",
    "TokenReused",
    "hash_token",
    "new_token",
    "open_refresh_store",
]

log = logging.getLogger("innera.auth")

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
#: ``sessions()`` lists at most this many families, the most recently used
MAX_SESSIONS_LISTED = 100


def new_token() -> str:
    """256 random bits, base64url without padding."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What is stored instead of the token: the hex SHA-256 of its ASCII text."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _checked_hash(token: str | None) -> str:
    """The hash of a well-formed token; :class:`Unauthorized` for anything else (without
    touching the store)."""
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise Unauthorized("Invalid refresh token")
    return hash_token(token)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _invalid() -> Unauthorized:
    return Unauthorized("Invalid or expired refresh token")


class RefreshTokenStore(Protocol):
    async def issue(self, user_id: str, family_id: str | None = None, *,
                    client: str = "") -> str:
        """A new token for ``user_id``: in a new family (``family_id``, or a random one)."""
        ...

    async def rotate(self, token: str, *, client: str = "") -> tuple[str, str, str]:
        """Consume ``token``; return ``(user_id, new_token, family_id)`` (same family)."""
        ...

    async def owner(self, token: str) -> str | None:
        """The user of a live (unconsumed, unrevoked, unexpired) token, else None."""
        ...

    async def sessions(self, user_id: str) -> list[Session]:
        """The user's live families, most recently used first: at most
        :data:`MAX_SESSIONS_LISTED` of them (the listing costs the same for any account)."""
        ...

    async def revoke_session(self, user_id: str, family_id: str) -> bool:
        """Revoke one family of ``user_id``; False when it is not one of theirs (or gone)."""
        ...

    async def revoke(self, token: str) -> None:
        """Sign-out: revoke the family of ``token`` (no-op for an unknown token)."""
        ...

    async def revoke_user(self, user_id: str) -> None:
        """Revoke every token of ``user_id`` (password change, account deletion)."""
        ...


# --- Redis ------------------------------------------------------------------------------

_LUA_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function store(hash, record, family, user, ttl)
  local now = now_ms()
  local expires = now + ttl * 1000
  redis.call('SET', 'rt:' .. hash, record, 'EX', ttl)
  local fkey = 'rt:family:' .. family
  redis.call('ZREMRANGEBYSCORE', fkey, '-inf', now)
  redis.call('ZADD', fkey, expires, hash)
  redis.call('EXPIRE', fkey, ttl)
  local ukey = 'rt:user:' .. user
  redis.call('ZREMRANGEBYSCORE', ukey, '-inf', now)
  redis.call('ZADD', ukey, expires, family)
  redis.call('EXPIRE', ukey, ttl)
end

local function revoke_family(family, user)
  local fkey = 'rt:family:' .. family
  for _, hash in ipairs(redis.call('ZRANGE', fkey, 0, -1)) do
    redis.call('DEL', 'rt:' .. hash)
  end
  redis.call('DEL', fkey)
  redis.call('ZREM', 'rt:user:' .. user, family)
end
"""

# ARGV: hash, record JSON, family id, user id, ttl_s
_ISSUE = _LUA_LIB + """
store(ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]))
return 1
"""

# KEYS[1] = rt:{old hash}; ARGV: new hash, createdAt, ttl_s, client ('' keeps the last one)
# → {'ok'|'reused'|'unknown', userId, familyId}
_ROTATE = _LUA_LIB + """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'unknown'} end
local rec = cjson.decode(raw)
if rec.consumed then
  revoke_family(rec.familyId, rec.userId)
  return {'reused', rec.userId, rec.familyId}
end
rec.consumed = true
rec.consumedAt = ARGV[2]
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
local client = ARGV[4]
if client == '' then client = rec.client or '' end
local new = cjson.encode({userId = rec.userId, createdAt = ARGV[2], familyId = rec.familyId,
                          familyCreatedAt = rec.familyCreatedAt or rec.createdAt,
                          client = client})
store(ARGV[1], new, rec.familyId, rec.userId, tonumber(ARGV[3]))
return {'ok', rec.userId, rec.familyId}
"""

# KEYS[1] = rt:{hash}
_REVOKE = _LUA_LIB + """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
revoke_family(rec.familyId, rec.userId)
return 1
"""

# KEYS[1] = rt:user:{userId}; ARGV[1] = userId
_REVOKE_USER = _LUA_LIB + """
local families = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, family in ipairs(families) do revoke_family(family, ARGV[1]) end
redis.call('DEL', KEYS[1])
return #families
"""


# KEYS[1] = rt:user:{userId}; ARGV[1] = most families → the newest record of each of the live
# families used last (their score is their latest token's expiry)
_SESSIONS = _LUA_LIB + """
local ukey = KEYS[1]
redis.call('ZREMRANGEBYSCORE', ukey, '-inf', now_ms())
local out = {}
for _, family in ipairs(redis.call('ZREVRANGE', ukey, 0, tonumber(ARGV[1]) - 1)) do
  local newest = redis.call('ZRANGE', 'rt:family:' .. family, -1, -1)
  if newest[1] then
    local raw = redis.call('GET', 'rt:' .. newest[1])
    if raw then table.insert(out, raw) end
  end
end
return out
"""

# KEYS[1] = rt:user:{userId}; ARGV: family id, user id → 1 revoked, 0 not the user's
_REVOKE_SESSION = _LUA_LIB + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
revoke_family(ARGV[1], ARGV[2])
return 1
"""


class RedisRefreshTokenStore:
    """Refresh tokens in Redis (see the module documentation for the keys). Redis being
    unreachable raises :class:`~innera.errors.RedisUnavailable`; every command is bounded
    by the client's socket timeout (``RedisSettings.socket_timeout_s``)."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be positive")
        self._redis = redis
        self.ttl_s = ttl_s
        client = redis.client
        self._issue = client.register_script(_ISSUE)
        self._rotate = client.register_script(_ROTATE)
        self._revoke = client.register_script(_REVOKE)
        self._revoke_user = client.register_script(_REVOKE_USER)
        self._sessions = client.register_script(_SESSIONS)
        self._revoke_session = client.register_script(_REVOKE_SESSION)

    async def issue(self, user_id: str, family_id: str | None = None, *,
                    client: str = "") -> str:
        token = new_token()
        token_hash = hash_token(token)
        family_id = family_id or str(uuid.uuid4())
        now = _now_iso()
        record = json.dumps({"userId": str(user_id), "createdAt": now, "familyId": family_id,
                             "familyCreatedAt": now, "client": client},
                            separators=(",", ":"))
        with self._redis.unavailable_as_503():
            await self._issue(
                keys=[f"rt:{token_hash}", f"rt:family:{family_id}", f"rt:user:{user_id}"],
                args=[token_hash, record, family_id, str(user_id), self.ttl_s],
            )
        return token

    async def rotate(self, token: str, *, client: str = "") -> tuple[str, str, str]:
        old_hash = _checked_hash(token)
        new = new_token()
        with self._redis.unavailable_as_503():
            reply: Any = await self._rotate(
                keys=[f"rt:{old_hash}"],
                args=[hash_token(new), _now_iso(), self.ttl_s, client])
        outcome = reply[0]
        if outcome == "ok":
            return str(reply[1]), new, str(reply[2])
        if outcome == "reused":
            log.warning("refresh token reuse: revoked family %s of user %s", reply[2], reply[1])
            raise TokenReused()
        raise _invalid()

    async def revoke(self, token: str) -> None:
        try:
            token_hash = _checked_hash(token)
        except Unauthorized:
            return
        with self._redis.unavailable_as_503():
            await self._revoke(keys=[f"rt:{token_hash}"], args=[])

    async def revoke_user(self, user_id: str) -> None:
        with self._redis.unavailable_as_503():
            await self._revoke_user(keys=[f"rt:user:{user_id}"], args=[str(user_id)])

    async def owner(self, token: str) -> str | None:
        try:
            token_hash = _checked_hash(token)
        except Unauthorized:
            return None
        with self._redis.unavailable_as_503():
            raw = await self._redis.client.get(f"rt:{token_hash}")
        if raw is None:
            return None
        rec = json.loads(raw)
        return None if rec.get("consumed") else str(rec["userId"])

    async def sessions(self, user_id: str) -> list[Session]:
        with self._redis.unavailable_as_503():
            raws: Any = await self._sessions(keys=[f"rt:user:{user_id}"],
                                             args=[MAX_SESSIONS_LISTED])
        found = []
        for raw in raws:
            rec = json.loads(raw)
            created = rec.get("familyCreatedAt") or rec["createdAt"]
            found.append(Session(rec["familyId"], datetime.fromisoformat(created),
                                 datetime.fromisoformat(rec["createdAt"]),
                                 rec.get("client") or "Unknown"))
        return sorted(found, key=lambda session: session.last_used_at, reverse=True)

    async def revoke_session(self, user_id: str, family_id: str) -> bool:
        with self._redis.unavailable_as_503():
            revoked = await self._revoke_session(keys=[f"rt:user:{user_id}"],
                                                 args=[str(family_id), str(user_id)])
        return revoked == 1


# --- PostgreSQL -------------------------------------------------------------------------

_INSERT = """
INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at, family_created_at,
                            client)
VALUES (%s, %s, %s, now() + make_interval(secs => %s), coalesce(%s, now()), %s)
"""

_CONSUME = """
UPDATE refresh_tokens SET consumed_at = now()
 WHERE token_hash = %s AND consumed_at IS NULL AND revoked_at IS NULL AND expires_at > now()
RETURNING user_id, family_id, family_created_at, client
"""

_SESSIONS_SQL = """
SELECT family_id, min(family_created_at), max(created_at),
       (array_agg(client ORDER BY created_at DESC))[1]
  FROM refresh_tokens
 WHERE user_id = %s AND revoked_at IS NULL AND expires_at > now()
 GROUP BY family_id
HAVING bool_or(consumed_at IS NULL)
 ORDER BY max(created_at) DESC
 LIMIT %s
"""

_REVOKE_SESSION_SQL = """
UPDATE refresh_tokens SET revoked_at = now()
 WHERE family_id = %s AND user_id = %s AND revoked_at IS NULL
"""

_INSPECT = """
SELECT family_id, consumed_at IS NOT NULL, revoked_at IS NOT NULL, expires_at > now()
  FROM refresh_tokens WHERE token_hash = %s
"""

_REVOKE_FAMILY = """
UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = %s AND revoked_at IS NULL
"""

_REVOKE_BY_TOKEN = """
UPDATE refresh_tokens SET revoked_at = now()
 WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = %s)
   AND revoked_at IS NULL
"""

_REVOKE_USER_SQL = """
UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL
"""

_DELETE_EXPIRED_BATCH = """
DELETE FROM refresh_tokens WHERE token_hash IN (
    SELECT token_hash FROM refresh_tokens
     WHERE expires_at < now() - make_interval(secs => %s)
     LIMIT %s FOR UPDATE SKIP LOCKED)
"""


class PostgresRefreshTokenStore:
    """Refresh tokens in the ``refresh_tokens`` table (migration ``0002_auth.sql``): keeps
    refresh working while Redis is down. Rows stay after consumption/revocation (that is
    how reuse is detected) until :meth:`run_cleaner` deletes them a day after expiry.

    Every operation is bounded by ``timeout_s`` (connection wait included); past it, or when
    PostgreSQL cannot be reached, :class:`~innera.errors.DatabaseUnavailable`."""

    #: Rows are deleted this long after they expired.
    CLEANUP_GRACE_S = 86_400

    def __init__(self, pool: Pool, ttl_s: int, *, timeout_s: float = 10.0,
                 cleanup_batch_size: int = 1000) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be positive")
        self._pool = pool
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.cleanup_batch_size = cleanup_batch_size

    async def issue(self, user_id: str, family_id: str | None = None, *,
                    client: str = "") -> str:
        token = new_token()
        family = uuid.UUID(family_id) if family_id else uuid.uuid4()
        with self._deadline():
            async with self._pool.connection() as conn:
                await conn.execute(_INSERT, (hash_token(token), uuid.UUID(str(user_id)), family,
                                             self.ttl_s, None, client),
                                   name="refresh_tokens.insert")
        return token

    async def rotate(self, token: str, *, client: str = "") -> tuple[str, str, str]:
        old_hash = _checked_hash(token)
        new = new_token()
        outcome, user_id, family_id = "unknown", None, None
        with self._deadline():
            async with self._pool.connection() as conn:
                async with conn.transaction():
                    cur = await conn.execute(_CONSUME, (old_hash,), name="refresh_tokens.consume")
                    row = await cur.fetchone()
                    if row is not None:
                        user_id, family_id, family_created_at, last_client = row
                        await conn.execute(
                            _INSERT, (hash_token(new), user_id, family_id, self.ttl_s,
                                      family_created_at, client or last_client),
                            name="refresh_tokens.insert")
                        outcome = "ok"
                    else:
                        # Not consumable. A concurrent rotation of the same token waited on
                        # the row lock above and now (new snapshot) sees it consumed.
                        cur = await conn.execute(_INSPECT, (old_hash,),
                                                 name="refresh_tokens.inspect")
                        found = await cur.fetchone()
                        if found is not None:
                            family_id, consumed, revoked, live = found
                            if consumed and not revoked and live:
                                await conn.execute(_REVOKE_FAMILY, (family_id,),
                                                   name="refresh_tokens.revoke_family")
                                outcome = "reused"
                            else:
                                outcome = "invalid"
        # Raised after the commit: raising inside the transaction would undo the revocation.
        if outcome == "ok":
            return str(user_id), new, str(family_id)
        if outcome == "reused":
            log.warning("refresh token reuse: revoked family %s", family_id)
            raise TokenReused()
        raise _invalid()

    async def revoke(self, token: str) -> None:
        try:
            token_hash = _checked_hash(token)
        except Unauthorized:
            return
        with self._deadline():
            async with self._pool.connection() as conn:
                await conn.execute(_REVOKE_BY_TOKEN, (token_hash,), name="refresh_tokens.revoke")

    async def revoke_user(self, user_id: str) -> None:
        with self._deadline():
            async with self._pool.connection() as conn:
                await conn.execute(_REVOKE_USER_SQL, (uuid.UUID(str(user_id)),),
                                   name="refresh_tokens.revoke_user")

    async def owner(self, token: str) -> str | None:
        try:
            token_hash = _checked_hash(token)
        except Unauthorized:
            return None
        with self._deadline():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT user_id FROM refresh_tokens WHERE token_hash = %s AND consumed_at "
                    "IS NULL AND revoked_at IS NULL AND expires_at > now()", (token_hash,),
                    name="refresh_tokens.owner")
                row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def sessions(self, user_id: str) -> list[Session]:
        with self._deadline():
            async with self._pool.connection() as conn:
                cur = await conn.execute(_SESSIONS_SQL,
                                         (uuid.UUID(str(user_id)), MAX_SESSIONS_LISTED),
                                         name="refresh_tokens.sessions")
                rows = await cur.fetchall()
        return [Session(str(family), created, used, client or "Unknown")
                for family, created, used, client in rows]

    async def revoke_session(self, user_id: str, family_id: str) -> bool:
        try:
            family = uuid.UUID(str(family_id))
        except ValueError:
            return False
        with self._deadline():
            async with self._pool.connection() as conn:
                cur = await conn.execute(_REVOKE_SESSION_SQL,
                                         (family, uuid.UUID(str(user_id))),
                                         name="refresh_tokens.revoke_session")
        return cur.rowcount > 0

    async def clean_expired(self) -> int:
        """Delete rows expired more than :attr:`CLEANUP_GRACE_S` ago, in batches of
        ``cleanup_batch_size`` (each its own statement, so locks stay short); the count."""
        total = 0
        while True:
            with self._deadline():
                async with self._pool.connection() as conn:
                    cur = await conn.execute(
                        _DELETE_EXPIRED_BATCH, (self.CLEANUP_GRACE_S, self.cleanup_batch_size),
                        name="refresh_tokens.delete_expired")
                    deleted = max(cur.rowcount, 0)
            total += deleted
            if deleted < self.cleanup_batch_size:
                return total

    async def run_cleaner(self, interval_s: float = 3600, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        """Service task: :meth:`clean_expired` now and every ``interval_s`` until cancelled.
        A failure (database down, ...) is logged and retried at the next interval."""
        task_status.started()
        while True:
            try:
                deleted = await self.clean_expired()
                if deleted:
                    log.info("deleted %d expired refresh tokens", deleted)
            except Exception as exc:
                log.warning("refresh token cleanup failed (retrying in %g s): %s: %s",
                            interval_s, type(exc).__name__, exc, exc_info=exc)
            await trio.sleep(interval_s)

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        try:
            with trio.fail_after(self.timeout_s):
                yield
        except trio.TooSlowError:
            raise DatabaseUnavailable(
                f"The database did not answer within {self.timeout_s:g} s") from None


# --- selection --------------------------------------------------------------------------


def open_refresh_store(auth: AuthSettings, pool: Pool | None, redis: Redis | None
                       ) -> RefreshTokenStore:
    """The store ``REFRESH_TOKEN_STORE`` names (``redis`` | ``postgres``). The Postgres
    store's :meth:`~PostgresRefreshTokenStore.run_cleaner` must be started by the caller."""
    kind = auth.refresh_token_store
    if kind == "postgres":
        if pool is None:
            raise ValueError("REFRESH_TOKEN_STORE=postgres needs the database pool")
        return PostgresRefreshTokenStore(pool, auth.refresh_token_ttl_s)
    if kind == "redis":
        if redis is None:
            raise ValueError("REFRESH_TOKEN_STORE=redis needs Redis")
        return RedisRefreshTokenStore(redis, auth.refresh_token_ttl_s)
    raise ValueError(f"unknown refresh token store {kind!r}")

