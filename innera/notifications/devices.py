"""A user's devices and their push tokens (the rules in prose: ``innera/api/devices.py``).

A push token identifies one app install, so it belongs to at most one device row (unique
index on its digest). :func:`register_device` upserts it in one statement: a token the user
already has keeps its device; a token of another user moves to the caller as a new device
(new id). Registrations of one account are serialised by a transaction-scoped advisory lock,
and past ``max_devices`` the least recently seen devices are replaced.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg.rows import dict_row

from innera.db.pool import Pool
from innera.ids import canonical_uuid
from innera.notifications.deadlines import db_deadline
from innera.pagination import CursorCodec

log = logging.getLogger("innera.devices")

#: The purpose of the list's keyset cursors (innera/pagination.py).
CURSOR_PURPOSE = "devices"

Platform = Literal["ios", "android", "web"]

_COLUMNS = "id, platform, push_token, created_at, updated_at, last_seen_at"

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


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    platform: Platform
    push_token: str
    created_at: datetime
    updated_at: datetime
    #: the last registration of its token
    last_seen_at: datetime


def _device(row: dict[str, Any]) -> Device:
    return Device(id=str(row["id"]), platform=row["platform"], push_token=row["push_token"],
                  created_at=row["created_at"], updated_at=row["updated_at"],
                  last_seen_at=row["last_seen_at"])


async def register_device(db: Pool, user_id: str, *, platform: Platform, push_token: str,
                          max_devices: int) -> tuple[Device, bool]:
    """Register the user's push token; returns the device and whether it is new (``False``:
    the user had registered this token; its device keeps its id, ``last_seen_at``
    refreshed). A token of another user moves here as a new device. Past ``max_devices``
    (MAX_DEVICES_PER_USER) the user's least recently seen other devices are deleted."""
    new_id = str(uuid.uuid4())
    with db_deadline():
        async with db.connection() as conn, conn.transaction():
            await conn.execute(_LOCK_ACCOUNT, (_DEVICES_LOCK_CLASS, user_id),
                               name="devices.lock_user")
            cur = await conn.cursor(row_factory=dict_row).execute(
                _UPSERT, {"id": new_id, "user_id": user_id, "platform": platform,
                          "token": push_token}, name="devices.upsert")
            row = await cur.fetchone()
            assert row is not None
            trimmed = await conn.execute(_TRIM, {
                "user_id": user_id, "keep": row["id"], "others": max_devices - 1},
                                         name="devices.trim")
            replaced = trimmed.rowcount
    if replaced > 0:
        log.info("user %s is at MAX_DEVICES_PER_USER (%d): %d least recently seen device(s) "
                 "replaced", user_id, max_devices, replaced)
    device = _device(row)
    return device, device.id == new_id


async def list_devices(db: Pool, cursors: CursorCodec, user_id: str, *, cursor: str | None,
                       limit: int) -> tuple[list[Device], str | None]:
    """One page of the user's devices, newest first (``created_at``, then id), and the
    cursor of the next page (``None`` on the last). A ``cursor`` that does not verify is
    :class:`~innera.pagination.InvalidCursor` (400)."""
    conditions = ["user_id = %s"]
    params: list[Any] = [user_id]
    if cursor:
        created_at, last_id = cursors.decode(CURSOR_PURPOSE, user_id, cursor)
        conditions.append("(created_at, id) < (%s, %s)")
        params += [created_at, last_id]
    params.append(limit + 1)
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM devices WHERE {' AND '.join(conditions)} "
                "ORDER BY created_at DESC, id DESC LIMIT %s", params, name="devices.list")
            rows = await cur.fetchall()
    rows, next_cursor = cursors.page(CURSOR_PURPOSE, user_id, rows, limit)
    return [_device(r) for r in rows], next_cursor


async def delete_device(db: Pool, user_id: str, device_id: str) -> bool:
    """Delete the user's device (its token gets no more pushes); ``False`` when the user has
    no such device (malformed ids alike)."""
    canonical = canonical_uuid(device_id)
    if canonical is None:
        return False
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM devices WHERE id = %s AND user_id = %s", (canonical, user_id),
                name="devices.delete")
            return cur.rowcount > 0
