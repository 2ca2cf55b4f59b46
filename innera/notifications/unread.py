"""The cached unread count of a user's notifications.

``notif:unread:{userId}`` (TTL 5 min) is a Redis hash with two fields:

- ``gen``: a random token, written by the reader that found the count missing (a "claim");
- ``count``: the cached count, written only by a reader holding the current ``gen``.

Change (new notification, read, read-all): ``DEL notif:unread:{userId}`` **after** the
database change committed. Read (:func:`unread_count`): one script either returns
``count`` (hit) or returns ``gen``, creating it first if the key is absent; then the count is
computed from the database; then a second script stores it only if ``gen`` is still that
token and no count is there yet (compare-and-set), with ``EXPIRE 300``.

Why no stale count can survive a change: a reader's claim happens before its database
query, so a change committed after that query's snapshot has its ``DEL`` run after the
claim. The ``DEL`` removes the token: either the reader's compare-and-set comes later and
fails (tokens are random, a later claim never brings the same one back), or it came earlier
and the ``DEL`` removes the count it stored. Changes committed before the snapshot are in the
count. A plain ``SET NX`` after the query would not do: a recompute that read the database
before a change can ``SET`` its old value after the change's ``DEL``.

Redis unavailable: the count is served from the database (errors counted through
``redis.record_error``). A ``DEL`` that fails (Redis unreachable just after a commit) leaves a
count that may be stale until its TTL (5 min) ends; it is counted and logged.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import trio

from innera.db.pool import Pool
from innera.notifications.deadlines import REDIS_TIMEOUT_S, db_deadline
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.notifications")

#: Lifetime of a cached unread count (infrastructure spec: 5 min).
UNREAD_TTL_S = 300

# KEYS[1] the cache key; ARGV: a fresh token, the TTL. → {1, count} (hit) or {0, gen}.
_CLAIM_SCRIPT = """
local count = redis.call('HGET', KEYS[1], 'count')
if count then return {1, count} end
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then
  gen = ARGV[1]
  redis.call('HSET', KEYS[1], 'gen', gen)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {0, gen}
"""

# KEYS[1] the cache key; ARGV: the claimed gen, the count, the TTL. → 1 stored, 0 not.
_FILL_SCRIPT = """
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1]
   and redis.call('HEXISTS', KEYS[1], 'count') == 0 then
  redis.call('HSET', KEYS[1], 'count', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""


def unread_key(user_id: str) -> str:
    """The Redis key of the user's cached unread count."""
    return f"notif:unread:{user_id}"


async def invalidate_unread(redis: Redis, user_id: str) -> None:
    """``DEL notif:unread:{userId}``; call it after the change committed. Shielded (a
    cancelled request must not skip it) and bounded; a failure is counted, not raised."""
    try:
        with trio.move_on_after(REDIS_TIMEOUT_S) as scope:
            scope.shield = True
            await redis.client.delete([unread_key(user_id)])
        if scope.cancelled_caught:
            raise TimeoutError(f"DEL took over {REDIS_TIMEOUT_S:g} s")
    except UNAVAILABLE_ERRORS as exc:
        if scope.cancel_called and not isinstance(exc, TimeoutError):
            exc = TimeoutError(f"DEL took over {REDIS_TIMEOUT_S:g} s")
        redis.record_error(exc)
        log.warning("unread count of user %s not invalidated (stale for at most %d s): %s",
                    user_id, UNREAD_TTL_S, exc)


async def count_unread_from_db(db: Pool, user_id: str) -> int:
    """The exact unread count, from PostgreSQL (the partial index)."""
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM notifications WHERE user_id = %s AND read_at IS NULL",
                (user_id,), name="notifications.count_unread")
            row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _redis_call(redis: Redis, script: str, keys: list[str], args: list[Any]
                      ) -> Any | None:
    """Run a cache script under the deadline; ``None`` (error recorded) when Redis is
    unavailable or too slow."""
    reply = None
    try:
        with trio.move_on_after(REDIS_TIMEOUT_S) as scope:
            reply = await redis.client.register_script(script)(keys=keys, args=args)
    except UNAVAILABLE_ERRORS as exc:
        # Cancelled by our deadline mid-handshake, coredis raises ConnectionError.
        error: BaseException = exc
        if scope.cancel_called:
            error = TimeoutError(f"no reply within {REDIS_TIMEOUT_S:g} s")
            error.__cause__ = exc
        redis.record_error(error)
        return None
    if scope.cancelled_caught:
        redis.record_error(TimeoutError(f"no reply within {REDIS_TIMEOUT_S:g} s"))
    return reply


async def unread_count(db: Pool, redis: Redis, user_id: str) -> int:
    """The user's unread count: from the cache, else from the database (and cached, unless
    a change happened meanwhile; see the module documentation)."""
    key = unread_key(user_id)
    claim = await _redis_call(redis, _CLAIM_SCRIPT, [key], [uuid.uuid4().hex, UNREAD_TTL_S])
    if claim is None:  # Redis unavailable: the database answers
        return await count_unread_from_db(db, user_id)
    hit, value = int(claim[0]), str(claim[1])
    if hit:
        try:
            return int(value)
        except ValueError:
            log.warning("unreadable unread count %r for user %s", value, user_id)
    count = await count_unread_from_db(db, user_id)
    await _redis_call(redis, _FILL_SCRIPT, [key], [value, count, UNREAD_TTL_S])
    return count
