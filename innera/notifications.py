"""Notifications: the one function that creates them, marking them read, and the cached
unread count.

Creating (:func:`create_notification`): insert, invalidate the unread count, publish
``notification.created`` on the user's WebSocket channel, enqueue the push job
(:func:`enqueue_push`: ``push:<notificationId>`` on ``push-notifications``, handled by
``workers/push.py``; nothing with ``PUSH_PROVIDER=none``).

The unread count cache
----------------------
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

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import trio
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from innera.errors import DatabaseUnavailable
from innera.queue.jobs import JobQueue
from innera.realtime.events import publish_to_user
from innera.redis import UNAVAILABLE_ERRORS, Redis

__all__ = [
    "MAX_BODY",
    "MAX_TITLE",
    "UNREAD_TTL_S",
    "create_notification",
    "enqueue_push",
    "invalidate_unread",
    "mark_all_read",
    "mark_read",
    "serialize",
    "unread_count",
    "unread_key",
]

log = logging.getLogger("innera.notifications")

MAX_KIND = 64
MAX_TITLE = 200
MAX_BODY = 2000
_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")

#: Lifetime of a cached unread count (infrastructure spec: 5 min).
UNREAD_TTL_S = 300
#: Bound on each Redis call of the cache; past it the cache is treated as unavailable.
REDIS_TIMEOUT_S = 1.0
#: Bound on each database statement here.
DB_TIMEOUT_S = 5.0

_COLUMNS = "id, kind, title, body, data, read_at, created_at"

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
    return f"notif:unread:{user_id}"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    """A notification row → its API / event shape."""
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "title": row["title"],
        "body": row["body"],
        "data": row["data"] if row["data"] is not None else {},
        "readAt": _iso(row["read_at"]),
        "createdAt": _iso(row["created_at"]),
    }


@contextmanager
def db_deadline() -> Iterator[None]:
    try:
        with trio.fail_after(DB_TIMEOUT_S):
            yield
    except trio.TooSlowError:
        raise DatabaseUnavailable(
            f"The database did not answer within {DB_TIMEOUT_S:g} s") from None


# --- creating -------------------------------------------------------------------------


async def create_notification(svc: Any, user_id: str, *, kind: str, title: str, body: str,
                              data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a notification for ``user_id`` and announce it; returns it (API shape).

    ``kind``: ``[a-z][a-z0-9_.-]*``, at most 64 characters (e.g. ``entry.reminder``);
    ``title`` ≤ 200 and ``body`` ≤ 2000 characters; ``data``: a JSON object (default ``{}``).
    Raises ``ValueError`` for arguments outside those limits. The row is committed before
    the cache invalidation, the ``notification.created`` event and the push job, which are
    best effort (a Redis outage is counted and logged, never raised).
    """
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ValueError(f"kind must match {_KIND.pattern}")
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise ValueError(f"title must be a string of at most {MAX_TITLE} characters")
    if not isinstance(body, str) or len(body) > MAX_BODY:
        raise ValueError(f"body must be a string of at most {MAX_BODY} characters")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError("data must be a JSON object (dict)")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data is not JSON-serialisable: {exc}") from None
    if "\x00" in title or "\x00" in body or _has_nul(data):
        raise ValueError("NUL characters cannot be stored")  # not in PostgreSQL text/jsonb

    with db_deadline():
        async with svc.db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"INSERT INTO notifications (id, user_id, kind, title, body, data) "
                f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (uuid.uuid4(), user_id, kind, title, body, Jsonb(data)),
            )
            row = await cur.fetchone()
    assert row is not None
    notification = serialize(row)
    await invalidate_unread(svc.redis, user_id)
    await publish_to_user(svc.redis, user_id, "notification.created", notification)
    await enqueue_push(svc, notification)
    return notification


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


async def enqueue_push(svc: Any, notification: dict[str, Any]) -> None:
    """Enqueue the push job ``push:<notificationId>`` (queue ``push-notifications``, payload
    ``{notification_id}``) for a committed ``notification``; nothing when
    ``PUSH_PROVIDER=none``. Best effort, like the rest after the commit: shielded (a cancelled
    request must not skip it) and bounded; Redis unavailable or too slow is counted through
    ``redis.record_error`` and logged; no error is raised (the notification exists, unpushed).
    """
    if svc.settings.push.provider == "none":
        return
    job_id = f"push:{notification['id']}"
    try:
        with trio.move_on_after(REDIS_TIMEOUT_S) as scope:
            scope.shield = True
            await JobQueue(svc.redis, "push-notifications").enqueue(
                {"notification_id": notification["id"]}, job_id=job_id)
        if scope.cancelled_caught:
            raise TimeoutError(f"enqueue took over {REDIS_TIMEOUT_S:g} s")
    except UNAVAILABLE_ERRORS as exc:
        if scope.cancel_called and not isinstance(exc, TimeoutError):
            exc = TimeoutError(f"enqueue took over {REDIS_TIMEOUT_S:g} s")
        svc.redis.record_error(exc)
        log.warning("push job %s not enqueued (Redis unavailable): the notification is not "
                    "pushed: %s", job_id, exc)
    except Exception:  # the row is committed: failing the request would invite a duplicate
        log.exception("push job %s not enqueued: the notification is not pushed", job_id)


# --- marking read ---------------------------------------------------------------------


async def mark_read(svc: Any, user_id: str, notification_id: str) -> dict[str, Any] | None:
    """Mark one of the user's notifications read (idempotent: reading twice keeps the first
    ``readAt``). ``None`` when the user has no such notification."""
    with db_deadline():
        async with svc.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"UPDATE notifications SET read_at = now() "
                f"WHERE id = %s AND user_id = %s AND read_at IS NULL RETURNING {_COLUMNS}",
                (notification_id, user_id))
            row = await cur.fetchone()
            changed = row is not None
            if row is None:
                await cur.execute(
                    f"SELECT {_COLUMNS} FROM notifications WHERE id = %s AND user_id = %s",
                    (notification_id, user_id))
                row = await cur.fetchone()
    if changed:
        await invalidate_unread(svc.redis, user_id)
    return serialize(row) if row is not None else None


async def mark_all_read(svc: Any, user_id: str) -> int:
    """Mark every unread notification of the user read; the number changed."""
    with db_deadline():
        async with svc.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE notifications SET read_at = now() "
                "WHERE user_id = %s AND read_at IS NULL", (user_id,))
            updated = cur.rowcount
    if updated:
        await invalidate_unread(svc.redis, user_id)
    return updated


# --- the unread count -----------------------------------------------------------------


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


async def count_unread_from_db(svc: Any, user_id: str) -> int:
    """The exact unread count, from PostgreSQL (the partial index)."""
    with db_deadline():
        async with svc.db.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM notifications WHERE user_id = %s AND read_at IS NULL",
                (user_id,))
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


async def unread_count(svc: Any, user_id: str) -> int:
    """The user's unread count: from the cache, else from the database (and cached, unless
    a change happened meanwhile; see the module documentation)."""
    key = unread_key(user_id)
    claim = await _redis_call(svc.redis, _CLAIM_SCRIPT, [key], [uuid.uuid4().hex, UNREAD_TTL_S])
    if claim is None:  # Redis unavailable: the database answers
        return await count_unread_from_db(svc, user_id)
    hit, value = int(claim[0]), str(claim[1])
    if hit:
        try:
            return int(value)
        except ValueError:
            log.warning("unreadable unread count %r for user %s", value, user_id)
    count = await count_unread_from_db(svc, user_id)
    await _redis_call(svc.redis, _FILL_SCRIPT, [key], [value, count, UNREAD_TTL_S])
    return count
