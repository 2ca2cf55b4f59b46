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
"""

from __future__ import annotations

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

MAX_PUSH_TOKEN = 4096
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
    nextCursor: None = Field(None, description="Always null: the list is not paginated")



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


@operation(blueprint, "POST", "", summary="Register a device's push token",
           description="201 for a new device (including a token that moves here from another "
                       "account), 200 with the existing device when this account already "
                       "registered the token.",
           body=DeviceIn, response=DeviceOut, status=201, errors=(422, 429))
async def register_device(body: DeviceIn) -> DeviceOut | Response:
    svc = services()
    new_id = str(uuid.uuid4())
    with db_deadline():
        async with svc.db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                _UPSERT, {"id": new_id, "user_id": g.user_id, "platform": body.platform,
                          "token": body.pushToken})
            row = await cur.fetchone()
    assert row is not None
    device = _device(row)
    if device.id == new_id:
        return device
    return Response(device.model_dump_json(), status=200, content_type="application/json")


@operation(blueprint, "GET", "", summary="List the account's devices",
           response=DeviceList, errors=(429,))
async def list_devices() -> DeviceList:
    svc = services()
    with db_deadline():
        async with svc.db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM devices WHERE user_id = %s "
                "ORDER BY created_at DESC, id DESC", (g.user_id,))
            rows = await cur.fetchall()
    return DeviceList(items=[_device(r) for r in rows], nextCursor=None)


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
