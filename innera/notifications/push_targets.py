"""What the push worker reads and forgets: the devices a notification goes to, the message one
device is to receive, and a device its provider says is gone. Each call runs under
:func:`~innera.notifications.deadlines.db_deadline`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from innera.db.pool import Pool
from innera.notifications.deadlines import db_deadline


@dataclass(frozen=True, slots=True)
class PushTarget:
    """One device's copy of a notification."""

    platform: str
    push_token: str
    kind: str
    title: str
    body: str
    data: dict[str, Any]


async def devices_of_notification(db: Pool, notification_id: str) -> list[str]:
    """The ids of the devices of the notification's user, oldest first."""
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT d.id FROM notifications n JOIN devices d "
                "ON d.user_id = n.user_id WHERE n.id = %s "
                "ORDER BY d.created_at, d.id", (notification_id,),
                name="push.devices_of_notification")
            return [str(row[0]) for row in await cur.fetchall()]


async def push_target(db: Pool, notification_id: str, device_id: str) -> PushTarget | None:
    """What the device is to receive; None when it or the notification is gone, or the device
    is no longer the notification's user's."""
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT d.platform, d.push_token, n.kind, n.title, n.body, n.data "
                "FROM devices d JOIN notifications n ON n.user_id = d.user_id "
                "WHERE d.id = %s AND n.id = %s", (device_id, notification_id), name="push.target")
            row = await cur.fetchone()
    if row is None:
        return None
    return PushTarget(platform=row["platform"], push_token=row["push_token"], kind=row["kind"],
                      title=row["title"], body=row["body"], data=dict(row["data"] or {}))


async def forget_device(db: Pool, device_id: str, token: str) -> bool:
    """Delete the device if it still holds ``token`` (it may have been re-registered)."""
    with db_deadline():
        async with db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM devices WHERE id = %s AND push_token = %s", (device_id, token),
                name="push.forget_device")
            return cur.rowcount == 1
