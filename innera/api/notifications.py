"""``/v1/notifications``: the signed-in user's notifications (created by the server through
:func:`innera.notifications.create_notification`; there is no public route creating them).

The list is newest first with an opaque keyset cursor (``innera/pagination.py``, purpose
``notifications``). A cursor that does not verify (garbage, edited, another user's or another
list's) is a 400 ``invalid_cursor``.
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from pydantic import Field
from quart import Blueprint, g

from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model
from innera.errors import NotFound
from innera.ids import canonical_uuid
from innera.notifications import (
    db_deadline,
    mark_all_read,
    mark_read,
    serialize,
    unread_count,
)

blueprint = Blueprint("notifications", __name__, url_prefix="/v1/notifications")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
CURSOR_PURPOSE = "notifications"


class NotificationOut(Model):
    id: str
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    readAt: str | None = Field(description="ISO 8601 timestamp; null while unread")
    createdAt: str = Field(description="ISO 8601 timestamp")


class NotificationPage(Model):
    items: list[NotificationOut]
    nextCursor: str | None = Field(description="Pass as ?cursor= for the next page; "
                                               "null on the last page")


class NotificationQuery(Model):
    unread: bool = Field(False, description="true: unread notifications only")
    cursor: str | None = Field(None, description="nextCursor of the previous page")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class UnreadCountOut(Model):
    count: int


class ReadAllOut(Model):
    updated: int = Field(description="How many notifications were unread")



# --- routes ---------------------------------------------------------------------------


@operation(blueprint, "GET", "", summary="List notifications, newest first",
           description="Query: unread=true (only unread), cursor (nextCursor of the previous "
                       f"page), limit (1-{MAX_LIMIT}, default {DEFAULT_LIMIT}).",
           query=NotificationQuery, response=NotificationPage, errors=(400, 422, 429))
async def list_notifications(query: NotificationQuery) -> NotificationPage:
    svc = services()
    user_id: str = g.user_id
    conditions = ["user_id = %s"]
    params: list[Any] = [user_id]
    if query.unread:
        conditions.append("read_at IS NULL")
    if query.cursor:
        created_at, last_id = svc.cursors.decode(CURSOR_PURPOSE, user_id, query.cursor)
        conditions.append("(created_at, id) < (%s, %s)")
        params += [created_at, last_id]
    params.append(query.limit + 1)
    with db_deadline():
        async with svc.db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT id, kind, title, body, data, read_at, created_at FROM notifications "
                f"WHERE {' AND '.join(conditions)} "
                "ORDER BY created_at DESC, id DESC LIMIT %s", params)
            rows = await cur.fetchall()
    rows, next_cursor = svc.cursors.page(CURSOR_PURPOSE, user_id, rows, query.limit)
    return NotificationPage(items=[NotificationOut(**serialize(r)) for r in rows],
                            nextCursor=next_cursor)


@operation(blueprint, "GET", "/unread-count", summary="How many notifications are unread",
           description="Cached in Redis for at most 5 minutes and invalidated by every "
                       "change, so never stale after a read or a new notification.",
           response=UnreadCountOut, errors=(429,))
async def get_unread_count() -> UnreadCountOut:
    return UnreadCountOut(count=await unread_count(services(), g.user_id))


@operation(blueprint, "POST", "/read-all", summary="Mark every notification read",
           response=ReadAllOut, errors=(429,))
async def read_all() -> ReadAllOut:
    return ReadAllOut(updated=await mark_all_read(services(), g.user_id))


@operation(blueprint, "POST", "/<id>/read", summary="Mark a notification read",
           description="Idempotent: reading it again returns it with the first readAt.",
           response=NotificationOut, errors=(404, 429))
async def read_one(id: str) -> NotificationOut:
    notification_id = canonical_uuid(id)
    found = None
    if notification_id is not None:
        found = await mark_read(services(), g.user_id, notification_id)
    if found is None:
        raise NotFound("No such notification")
    return NotificationOut(**found)
