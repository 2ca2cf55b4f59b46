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

The rules and SQL are in :mod:`innera.notifications.devices`; this module parses, makes one
domain call and renders. Timestamps: ISO 8601 UTC, milliseconds, ``Z``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from quart import Blueprint, Response, g

from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Cursor, Model, NextCursor, QueryInt
from innera.errors import NotFound
from innera.notifications import devices
from innera.timestamps import iso_utc

blueprint = Blueprint("devices", __name__, url_prefix="/v1/devices")

MAX_PUSH_TOKEN = 4096
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


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
    createdAt: str = Field(description="ISO 8601 UTC, milliseconds, Z")
    updatedAt: str = Field(description="ISO 8601 UTC, milliseconds, Z")
    lastSeenAt: str = Field(description="ISO 8601 UTC, milliseconds, Z: the last "
                                        "registration")


class DeviceList(Model):
    items: list[DeviceOut]
    nextCursor: NextCursor


class DeviceQuery(Model):
    cursor: Cursor = None
    limit: QueryInt = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


def _out(device: devices.Device) -> DeviceOut:
    return DeviceOut(id=device.id, platform=device.platform, pushToken=device.push_token,
                     createdAt=iso_utc(device.created_at), updatedAt=iso_utc(device.updated_at),
                     lastSeenAt=iso_utc(device.last_seen_at))


@operation(blueprint, "POST", "", operation_id="registerDevice",
           summary="Register a device's push token",
           description="201 for a new device (including a token that moves here from another "
                       "account), 200 with the existing device when this account already "
                       "registered the token. An account holds at most MAX_DEVICES_PER_USER "
                       "devices (default 20): a new device past it replaces the account's "
                       "least recently seen device (smallest lastSeenAt).",
           body=DeviceIn, response=DeviceOut, status=201,
           also={200: "This account had already registered the token: the same device (same "
                      "id), lastSeenAt refreshed"},
           links={"deleteDevice": {"device_id": "$response.body#/id"}})
async def register_device(body: DeviceIn) -> DeviceOut | Response:
    svc = services()
    device, created = await devices.register_device(
        svc.db, g.user_id, platform=body.platform, push_token=body.pushToken,
        max_devices=svc.settings.limits.max_devices_per_user)
    out = _out(device)
    if created:
        return out
    return Response(out.model_dump_json(), status=200, content_type="application/json")


@operation(blueprint, "GET", "", operation_id="listDevices",
           summary="List the account's devices, newest first",
           description="Query: cursor (nextCursor of the previous page), limit "
                       f"(1-{MAX_LIMIT}, default {DEFAULT_LIMIT}).",
           query=DeviceQuery, response=DeviceList)
async def list_devices(query: DeviceQuery) -> DeviceList:
    svc = services()
    found, next_cursor = await devices.list_devices(svc.db, svc.cursors, g.user_id,
                                                    cursor=query.cursor, limit=query.limit)
    return DeviceList(items=[_out(d) for d in found], nextCursor=next_cursor)


@operation(blueprint, "DELETE", "/<device_id>", operation_id="deleteDevice",
           summary="Remove a device (its token gets no pushes)", status=204,
           errors={404: "`not_found`: no such device of this user"})
async def delete_device(device_id: str) -> None:
    if not await devices.delete_device(services().db, g.user_id, device_id):
        raise NotFound("No such device")
