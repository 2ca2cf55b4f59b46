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
from innera.api.operation import operation
from innera.api.schemas import Model
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
    items, next_cursor = await inbox.list_notifications(
        svc.db, svc.cursors, g.user_id, unread=query.unread, cursor=query.cursor,
        limit=query.limit)
    return NotificationPage(items=[NotificationOut(**n) for n in items], nextCursor=next_cursor)


@operation(blueprint, "GET", "/unread-count", summary="How many notifications are unread",
           description="Cached in Redis for at most 5 minutes and invalidated by every "
                       "change, so never stale after a read or a new notification.",
           response=UnreadCountOut, errors=(429,))
async def get_unread_count() -> UnreadCountOut:
    svc = services()
    return UnreadCountOut(count=await unread_count(svc.db, svc.redis, g.user_id))


@operation(blueprint, "POST", "/read-all", summary="Mark every notification read",
           response=ReadAllOut, errors=(429,))
async def read_all() -> ReadAllOut:
    svc = services()
    return ReadAllOut(updated=await inbox.mark_all_read(svc.db, svc.redis, g.user_id))


@operation(blueprint, "POST", "/<id>/read", summary="Mark a notification read",
           description="Idempotent: reading it again returns it with the first readAt.",
           response=NotificationOut, errors=(404, 429))
async def read_one(id: str) -> NotificationOut:
    svc = services()
    found = await inbox.mark_read(svc.db, svc.redis, g.user_id, id)
    if found is None:
        raise NotFound("No such notification")
    return NotificationOut(**found)
