"""``/v1/devices``: the signed-in user's devices and their push tokens.

A push token identifies one app install, so it belongs to at most one device row (unique
index). Registering a token:

- new token → a new device, 201;
- a token the user already registered → the same device (same id; platform updated,
  ``lastSeenAt`` refreshed), 200;
- a token registered by **another** user (a phone changed hands, or someone signed in as
  another account on it) → the token moves to the caller: the other user's device row is
  replaced by a new device with a **new id** for the caller, 201. Pushes for the previous
  owner stop at once; nothing of the previous row (id, dates) is shown to the caller, and the
  previous owner's id answers 404 like any unknown id.

**At most** ``MAX_DEVICES_PER_USER`` **devices per account** (every notification fans out one
push per device, so the cap bounds what one account costs the push queue). Registering a
device past the cap **replaces the least recently seen one** (the smallest ``lastSeenAt``:
the device whose app registered its token longest ago) instead of answering 409. A push token
changes on every reinstall, restore or OS token rotation, and nothing tells the client which
of its old rows are dead: a 409 would lock out a user who reinstalls often until they find and
delete stale devices by hand, while replacing the stalest row keeps them working and bounds
the fan-out all the same. Re-registering a token the account already has never removes
anything (it refreshes that device's ``lastSeenAt``). Registrations of one account are
serialised (a transaction-scoped advisory lock), so concurrent ones cannot overshoot the cap;
after ``MAX_DEVICES_PER_USER`` is lowered, an account's next registration trims it to the new
cap.

The list is paginated like every list: newest first (``createdAt``, then id), ``limit``
(1-100, default 20) and the opaque ``cursor`` of :mod:`innera.pagination` (purpose
``devices``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg.rows import dict_row
from pydantic import Field, field_validator
from quart import Blueprint, Response, g

from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model
from innera.errors import NotFound
from innera.ids import canonical_uuid
from innera.notifications import db_deadline

blueprint = Blueprint("devices", __name__, url_prefix="/v1/devices")
log = logging.getLogger("innera.devices")

MAX_PUSH_TOKEN = 4096
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
CURSOR_PURPOSE = "devices"
_COLUMNS = "id, platform, push_token, created_at, updated_at, last_seen_at"


class DeviceIn(Model):
    platform: Literal["ios", "android", "web"]
    pushToken: str = Field(min_length=1, max_length=MAX_PUSH_TOKEN)

    @field_validator("pushToken")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("must not contain control characters")
        return value


class DeviceOut(Model):
    id: str
    platform: Literal["ios", "android", "web"]
    pushToken: str
    createdAt: str = Field(description="ISO 8601 timestamp")
    updatedAt: str = Field(description="ISO 8601 timestamp")
    lastSeenAt: str = Field(description="ISO 8601 timestamp of the last registration")


class DeviceList(Model):
    items: list[DeviceOut]
    nextCursor: str | None = Field(description="Pass as ?cursor= for the next page; "
                                               "null on the last page")


class DeviceQuery(Model):
    cursor: str | None = Field(None, description="nextCursor of the previous page")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _device(row: dict[str, Any]) -> DeviceOut:
    return DeviceOut(id=str(row["id"]), platform=row["platform"], pushToken=row["push_token"],
                     createdAt=_iso(row["created_at"]), updatedAt=_iso(row["updated_at"]),
                     lastSeenAt=_iso(row["last_seen_at"]))


# One statement, so concurrent registrations of a token cannot both insert. In DO UPDATE,
# `d.*` is the existing row: it keeps its id and created_at only if it is the caller's.
_UPSERT = f"""
INSERT INTO devices AS d (id, user_id, platform, push_token)
VALUES (%(id)s, %(user_id)s, %(platform)s, %(token)s)
ON CONFLICT ((push_token_digest(push_token))) DO UPDATE SET
    id = CASE WHEN d.user_id = EXCLUDED.user_id THEN d.id ELSE EXCLUDED.id END,
    created_at = CASE WHEN d.user_id = EXCLUDED.user_id THEN d.created_at ELSE now() END,
    user_id = EXCLUDED.user_id,
    platform = EXCLUDED.platform,
    last_seen_at = now()
RETURNING {_COLUMNS}
"""

# Registrations of one account run one at a time (until their transaction ends), so the
# count below cannot be raced past the cap. The lock's key is the account's, in a class of
# its own (two ints: the first names the class).
_LOCK_ACCOUNT = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
_DEVICES_LOCK_CLASS = 0x1D_DE01

# Keep the caller's `keep` device and its `others` most recently seen other devices; delete
# the rest (at most one after a registration, unless MAX_DEVICES_PER_USER was lowered).
_TRIM = """
DELETE FROM devices WHERE id IN (
    SELECT id FROM devices WHERE user_id = %(user_id)s AND id <> %(keep)s
    ORDER BY last_seen_at DESC, created_at DESC, id DESC
    OFFSET %(others)s)
RETURNING id
"""


@operation(blueprint, "POST", "", summary="Register a device's push token",
           description="201 for a new device (including a token that moves here from another "
                       "account), 200 with the existing device when this account already "
                       "registered the token. An account holds at most MAX_DEVICES_PER_USER "
                       "devices (default 20): a new device past it replaces the account's "
                       "least recently seen device (smallest lastSeenAt).",
           body=DeviceIn, response=DeviceOut, status=201, errors=(422, 429))
async def register_device(body: DeviceIn) -> DeviceOut | Response:
    svc = services()
    user_id: str = g.user_id
    new_id = str(uuid.uuid4())
    with db_deadline():
        async with svc.db.connection() as conn, conn.transaction():
            await conn.execute(_LOCK_ACCOUNT, (_DEVICES_LOCK_CLASS, user_id))
            cur = await conn.cursor(row_factory=dict_row).execute(
                _UPSERT, {"id": new_id, "user_id": user_id, "platform": body.platform,
                          "token": body.pushToken})
            row = await cur.fetchone()
            assert row is not None
            trimmed = await conn.execute(_TRIM, {
                "user_id": user_id, "keep": row["id"],
                "others": svc.settings.limits.max_devices_per_user - 1})
            replaced = trimmed.rowcount
    if replaced > 0:
        log.info("user %s is at MAX_DEVICES_PER_USER (%d): %d least recently seen device(s) "
                 "replaced", user_id, svc.settings.limits.max_devices_per_user, replaced)
    device = _device(row)
    if device.id == new_id:
        return device
    return Response(device.model_dump_json(), status=200, content_type="application/json")


@operation(blueprint, "GET", "", summary="List the account's devices, newest first",
           description="Query: cursor (nextCursor of the previous page), limit "
                       f"(1-{MAX_LIMIT}, default {DEFAULT_LIMIT}).",
           query=DeviceQuery, response=DeviceList, errors=(400, 422, 429))
async def list_devices(query: DeviceQuery) -> DeviceList:
    svc = services()
    user_id: str = g.user_id
    conditions = ["user_id = %s"]
    params: list[Any] = [user_id]
    if query.cursor:
        created_at, last_id = svc.cursors.decode(CURSOR_PURPOSE, user_id, query.cursor)
        conditions.append("(created_at, id) < (%s, %s)")
        params += [created_at, last_id]
    params.append(query.limit + 1)
    with db_deadline():
        async with svc.db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM devices WHERE {' AND '.join(conditions)} "
                "ORDER BY created_at DESC, id DESC LIMIT %s", params)
            rows = await cur.fetchall()
    rows, next_cursor = svc.cursors.page(CURSOR_PURPOSE, user_id, rows, query.limit)
    return DeviceList(items=[_device(r) for r in rows], nextCursor=next_cursor)


@operation(blueprint, "DELETE", "/<id>", summary="Remove a device (its token gets no pushes)",
           status=204, errors=(404, 429))
async def delete_device(id: str) -> None:
    device_id = canonical_uuid(id)
    deleted = 0
    if device_id is not None:
        svc = services()
        with db_deadline():
            async with svc.db.connection() as conn:
                cur = await conn.execute(
                    "DELETE FROM devices WHERE id = %s AND user_id = %s",
                    (device_id, g.user_id))
                deleted = cur.rowcount
    if not deleted:
        raise NotFound("No such device")
