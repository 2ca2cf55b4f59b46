"""``/v1/notifications``: the signed-in user's notifications (created by the server through
:func:`innera.notifications.create_notification`; there is no public route creating them).

The list is newest first with an opaque keyset cursor: ``base64url(createdAtMicros.id)``
``.`` ``base64url(HMAC-SHA256(k, "v1|" userId "|" payload)[:16])`` with
``k = HMAC(JWT secret, "notifications-cursor")``. A cursor that does not verify (garbage,
edited, or another user's) is a 400 ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from pydantic import Field
from quart import Blueprint, g

from innera.api.operation import operation
from innera.api.schemas import Model
from innera.errors import AppError, NotFound
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_CURSOR_CHARS = 200


class InvalidCursor(AppError):
    status, code, message = 400, "invalid_cursor", "The cursor is not valid"


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


def _svc():  # type: ignore[no-untyped-def]
    from innera.app import services

    return services()


def parse_id(value: str) -> str | None:
    """The canonical UUID string, or ``None`` for anything malformed (→ 404)."""
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        return None
    return canonical if canonical == value.lower() else None


# --- the cursor -----------------------------------------------------------------------


def _cursor_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"notifications-cursor", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, user_id: str, payload: bytes) -> bytes:
    return hmac.new(key, b"v1|" + user_id.encode() + b"|" + payload, hashlib.sha256).digest()[:16]


def encode_cursor(secret: str, user_id: str, created_at: datetime, notification_id: str
                  ) -> str:
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    payload = f"{micros}.{notification_id}".encode()
    return _b64(payload) + "." + _b64(_mac(_cursor_key(secret), user_id, payload))


def decode_cursor(secret: str, user_id: str, cursor: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of a cursor issued to ``user_id``; :class:`InvalidCursor`."""
    try:
        if len(cursor) > _MAX_CURSOR_CHARS or cursor.count(".") != 1 or not cursor.isascii():
            raise ValueError
        encoded, tag = cursor.split(".")
        payload, mac = _unb64(encoded), _unb64(tag)
        if not hmac.compare_digest(mac, _mac(_cursor_key(secret), user_id, payload)):
            raise ValueError
        micros, notification_id = payload.decode().split(".")
        return _EPOCH + timedelta(microseconds=int(micros)), str(uuid.UUID(notification_id))
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise InvalidCursor() from None


# --- routes ---------------------------------------------------------------------------


@operation(blueprint, "GET", "", summary="List notifications, newest first",
           description="Query: unread=true (only unread), cursor (nextCursor of the previous "
                       f"page), limit (1-{MAX_LIMIT}, default {DEFAULT_LIMIT}).",
           query=NotificationQuery, response=NotificationPage, errors=(400, 422, 429))
async def list_notifications(query: NotificationQuery) -> NotificationPage:
    svc = _svc()
    user_id: str = g.user_id
    secret = svc.access_tokens._secret
    conditions = ["user_id = %s"]
    params: list[Any] = [user_id]
    if query.unread:
        conditions.append("read_at IS NULL")
    if query.cursor:
        created_at, last_id = decode_cursor(secret, user_id, query.cursor)
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
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[:query.limit]
        last = rows[-1]
        next_cursor = encode_cursor(secret, user_id, last["created_at"], str(last["id"]))
    return NotificationPage(items=[NotificationOut(**serialize(r)) for r in rows],
                            nextCursor=next_cursor)


@operation(blueprint, "GET", "/unread-count", summary="How many notifications are unread",
           description="Cached in Redis for at most 5 minutes and invalidated by every "
                       "change, so never stale after a read or a new notification.",
           response=UnreadCountOut, errors=(429,))
async def get_unread_count() -> UnreadCountOut:
    return UnreadCountOut(count=await unread_count(_svc(), g.user_id))


@operation(blueprint, "POST", "/read-all", summary="Mark every notification read",
           response=ReadAllOut, errors=(429,))
async def read_all() -> ReadAllOut:
    return ReadAllOut(updated=await mark_all_read(_svc(), g.user_id))


@operation(blueprint, "POST", "/<id>/read", summary="Mark a notification read",
           description="Idempotent: reading it again returns it with the first readAt.",
           response=NotificationOut, errors=(404, 429))
async def read_one(id: str) -> NotificationOut:
    notification_id = parse_id(id)
    found = None
    if notification_id is not None:
        found = await mark_read(_svc(), g.user_id, notification_id)
    if found is None:
        raise NotFound("No such notification")
    return NotificationOut(**found)
