"""A user's notifications: the one function that creates them, the newest-first list, and
marking them read.

Creating (:func:`create_notification`): insert, invalidate the unread count, publish
``notification.created`` on the user's WebSocket channel, enqueue the push job
(:func:`~innera.notifications.push_jobs.enqueue_push`; nothing with ``PUSH_PROVIDER=none``).
Every change commits before its unread count is invalidated (``unread.py``).

The API / event shape (:func:`serialize`) formats its moments with
:func:`innera.timestamps.iso_utc` (ISO 8601 UTC, milliseconds, ``Z``).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from innera.db.pool import Pool
from innera.ids import canonical_uuid
from innera.notifications.deadlines import db_deadline
from innera.notifications.push_jobs import enqueue_push
from innera.notifications.unread import invalidate_unread
from innera.pagination import CursorCodec
from innera.realtime.event_log import EventLog
from innera.realtime.events import publish_to_user
from innera.redis import Redis
from innera.timestamps import iso_utc

MAX_KIND = 64
MAX_TITLE = 200
MAX_BODY = 2000
_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")

#: The purpose of the list's keyset cursors (innera/pagination.py).
CURSOR_PURPOSE = "notifications"

_COLUMNS = "id, kind, title, body, data, read_at, created_at"


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    """A notification row → its API / event shape."""
    read_at = row["read_at"]
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "title": row["title"],
        "body": row["body"],
        "data": row["data"] if row["data"] is not None else {},
        "readAt": iso_utc(read_at) if read_at is not None else None,
        "createdAt": iso_utc(row["created_at"]),
    }


# --- creating -------------------------------------------------------------------------


async def create_notification(db: Pool, redis: Redis, user_id: str, *, events: EventLog,
                              push_provider: str, kind: str, title: str, body: str,
                              data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a notification for ``user_id`` and announce it (``notification.created``
    through ``events``); returns it (API shape).

    ``kind``: ``[a-z][a-z0-9_.-]*``, at most 64 characters (e.g. ``entry.reminder``);
    ``title`` ≤ 200 and ``body`` ≤ 2000 characters; ``data``: a JSON object (default ``{}``).
    Raises ``ValueError`` for arguments outside those limits. The row is committed before
    the cache invalidation, the ``notification.created`` event and the push job (none when
    ``push_provider`` is ``"none"``), which are best effort (a Redis outage is counted and
    logged, never raised).
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
        async with db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"INSERT INTO notifications (id, user_id, kind, title, body, data) "
                f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (uuid.uuid4(), user_id, kind, title, body, Jsonb(data)),
                name="notifications.create",
            )
            row = await cur.fetchone()
    assert row is not None
    notification = serialize(row)
    await invalidate_unread(redis, user_id)
    await publish_to_user(events, user_id, "notification.created", notification)
    await enqueue_push(redis, notification, push_provider=push_provider)
    return notification


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


# --- reading --------------------------------------------------------------------------


async def list_notifications(db: Pool, cursors: CursorCodec, user_id: str, *, unread: bool,
                             cursor: str | None, limit: int
                             ) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the user's notifications (API shape), newest first, and the cursor of the
    next page (``None`` on the last). ``unread``: unread ones only. A ``cursor`` that does not
    verify is :class:`~innera.pagination.InvalidCursor` (400)."""
    conditions = ["user_id = %s"]
    params: list[Any] = [user_id]
    if unread:
        conditions.append("read_at IS NULL")
    if cursor:
        created_at, last_id = cursors.decode(CURSOR_PURPOSE, user_id, cursor)
        conditions.append("(created_at, id) < (%s, %s)")
        params += [created_at, last_id]
    params.append(limit + 1)
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM notifications "
                f"WHERE {' AND '.join(conditions)} "
                "ORDER BY created_at DESC, id DESC LIMIT %s", params, name="notifications.list")
            rows = await cur.fetchall()
    rows, next_cursor = cursors.page(CURSOR_PURPOSE, user_id, rows, limit)
    return [serialize(r) for r in rows], next_cursor


# --- marking read ---------------------------------------------------------------------


async def mark_read(db: Pool, redis: Redis, user_id: str, notification_id: str
                    ) -> dict[str, Any] | None:
    """Mark one of the user's notifications read (idempotent: reading twice keeps the first
    ``readAt``). ``None`` when the user has no such notification (malformed ids alike)."""
    canonical = canonical_uuid(notification_id)
    if canonical is None:
        return None
    notification_id = canonical
    with db_deadline():
        async with db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"UPDATE notifications SET read_at = now() "
                f"WHERE id = %s AND user_id = %s AND read_at IS NULL RETURNING {_COLUMNS}",
                (notification_id, user_id), name="notifications.mark_read")
            row = await cur.fetchone()
            changed = row is not None
            if row is None:
                await cur.execute(
                    f"SELECT {_COLUMNS} FROM notifications WHERE id = %s AND user_id = %s",
                    (notification_id, user_id), name="notifications.read")
                row = await cur.fetchone()
    if changed:
        await invalidate_unread(redis, user_id)
    return serialize(row) if row is not None else None


async def mark_all_read(db: Pool, redis: Redis, user_id: str) -> int:
    """Mark every unread notification of the user read; the number changed."""
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.execute(
                "UPDATE notifications SET read_at = now() "
                "WHERE user_id = %s AND read_at IS NULL", (user_id,),
                name="notifications.mark_all_read")
            updated = cur.rowcount
    if updated:
        await invalidate_unread(redis, user_id)
    return updated
