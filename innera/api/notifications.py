"""``/v1/notifications``: the signed-in user's notifications (created by the server through
:func:`innera.notifications.create_notification`; there is no public route creating them).

The list is newest first with an opaque keyset cursor (``innera/pagination.py``, purpose
``notifications``). A cursor that does not verify (garbage, edited, another user's or another
list's) is a 400 ``invalid_cursor``.

The rules and SQL are in :mod:`innera.notifications`; this module parses, makes one domain
call and renders. Timestamps: ISO 8601 UTC, milliseconds, ``Z``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from quart import Blueprint, g

from innera.api.context import services
from innera.api.operation import Caller, operation
from innera.api.schemas import Cursor, Model, NextCursor, QueryBool, QueryInt
from innera.errors import NotFound
from innera.notifications import inbox
from innera.notifications.unread import unread_count

blueprint = Blueprint("notifications", __name__, url_prefix="/v1/notifications")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class NotificationOut(Model):
    id: str
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    readAt: str | None = Field(description="ISO 8601 UTC, milliseconds, Z; null while unread")
    createdAt: str = Field(description="ISO 8601 UTC, milliseconds, Z")


class NotificationPage(Model):
    items: list[NotificationOut]
    nextCursor: NextCursor


class NotificationQuery(Model):
    unread: QueryBool = Field(False, description="true: unread notifications only")
    cursor: Cursor = None
    limit: QueryInt = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class UnreadCountOut(Model):
    count: int


class ReadAllOut(Model):
    updated: int = Field(description="How many notifications were unread")


# --- routes ---------------------------------------------------------------------------


@operation(blueprint, "GET", "", operation_id="listNotifications",
           summary="List notifications, newest first",
           description="Query: unread=true (only unread), cursor (nextCursor of the previous "
                       f"page), limit (1-{MAX_LIMIT}, default {DEFAULT_LIMIT}).",
           query=NotificationQuery, response=NotificationPage)
async def list_notifications(query: NotificationQuery) -> NotificationPage:
    svc = services()
    items, next_cursor = await inbox.list_notifications(
        svc.db, svc.cursors, g.user_id, unread=query.unread, cursor=query.cursor,
        limit=query.limit)
    return NotificationPage(items=[NotificationOut(**n) for n in items], nextCursor=next_cursor)


@operation(blueprint, "GET", "/unread-count", operation_id="countUnreadNotifications",
           summary="How many notifications are unread",
           description="Cached in Redis for at most 5 minutes and invalidated by every "
                       "change, so never stale after a read or a new notification.",
           response=UnreadCountOut, direct=True)
async def get_unread_count(caller: Caller) -> UnreadCountOut:
    svc = caller.svc
    return UnreadCountOut(count=await unread_count(svc.db, svc.redis, caller.user_id))


@operation(blueprint, "POST", "/read-all", operation_id="markAllNotificationsRead",
           summary="Mark every notification read", response=ReadAllOut)
async def read_all() -> ReadAllOut:
    svc = services()
    return ReadAllOut(updated=await inbox.mark_all_read(svc.db, svc.redis, g.user_id))


@operation(blueprint, "POST", "/<notification_id>/read", operation_id="markNotificationRead",
           summary="Mark a notification read",
           description="Idempotent: reading it again returns it with the first readAt.",
           response=NotificationOut,
           errors={404: "`not_found`: no such notification of this user"})
async def read_one(notification_id: str) -> NotificationOut:
    svc = services()
    found = await inbox.mark_read(svc.db, svc.redis, g.user_id, notification_id)
    if found is None:
        raise NotFound("No such notification")
    return NotificationOut(**found)
