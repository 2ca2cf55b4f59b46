"""Notifications and the devices they are pushed to.

- ``inbox.py``: creating a notification (the one function that does), the newest-first
  list, marking read;
- ``unread.py``: the exact cached unread count (``notif:unread:{userId}``);
- ``push_jobs.py``: submitting a notification's push job (``workers/push.py`` delivers it);
- ``devices.py``: a user's devices and their push tokens;
- ``deadlines.py``: the bounds on their database and Redis calls.

Every function takes its dependencies explicitly (pool, Redis, cursor codec, settings
values). Timestamps are formatted with :func:`innera.timestamps.iso_utc`.
"""

from innera.notifications.deadlines import DB_TIMEOUT_S, REDIS_TIMEOUT_S, db_deadline
from innera.notifications.devices import Device, delete_device, list_devices, register_device
from innera.notifications.inbox import (
    MAX_BODY,
    MAX_TITLE,
    create_notification,
    list_notifications,
    mark_all_read,
    mark_read,
    serialize,
)
from innera.notifications.push_jobs import PUSH_QUEUE, enqueue_push
from innera.notifications.unread import (
    UNREAD_TTL_S,
    count_unread_from_db,
    invalidate_unread,
    unread_count,
    unread_key,
)

__all__ = [
    "DB_TIMEOUT_S",
    "MAX_BODY",
    "MAX_TITLE",
    "PUSH_QUEUE",
    "REDIS_TIMEOUT_S",
    "UNREAD_TTL_S",
    "Device",
    "count_unread_from_db",
    "create_notification",
    "db_deadline",
    "delete_device",
    "enqueue_push",
    "invalidate_unread",
    "list_devices",
    "list_notifications",
    "mark_all_read",
    "mark_read",
    "register_device",
    "serialize",
    "unread_count",
    "unread_key",
]
