"""Events for a user's devices: appended to the user's event log and published on
``ws:user:{userId}`` in one step (:mod:`innera.realtime.event_log`), so every instance's
pub/sub listener forwards them to that user's sockets, each with its ``id``, and a client that
reconnects with the last id it got (``/v1/ws?since=``) receives what it missed.

Publishing is best effort: the change it announces is already committed, so a Redis outage
is counted and logged, never turned into a failed request; a client that reconnects then gets
``resync_required`` or, when the log itself was fine, simply no event for that change (its
next re-fetch shows it).

Control messages travel on the same channel but are for the instances, not the clients:
``{"type": "control.close", "data": {"code", "reason"}}`` (:func:`close_user_everywhere`)
makes every instance's listener close the user's local sockets (account deletion). They are
plain ``PUBLISH``es, never in the log. Types under ``control.`` are reserved:
:func:`publish_to_user` refuses them, and an event's message starts with its id, so no event
can pose as one, and the listener never forwards one to a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from innera.realtime.event_log import EventLog
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.realtime")
PUBLISH_TIMEOUT_S = 0.5
#: event types reserved for messages between instances
CONTROL_PREFIX = "control."
CLOSE = "control.close"
#: how every control message starts (json.dumps keeps "type" first, without spaces)
_CONTROL_HEAD = '{"type":"' + CONTROL_PREFIX
#: close codes a control message may ask for (application codes) and the reason's limit
CLOSE_CODES = (4000, 4999)
MAX_REASON_BYTES = 123


def user_channel(user_id: str) -> str:
    return f"ws:user:{user_id}"


async def publish_to_user(events: EventLog, user_id: str, event_type: str,
                          data: dict[str, Any]) -> bool:
    """Send ``{"id": …, "type": event_type, "data": data}`` to the user's sockets on every
    instance, and keep it in the user's event log; False when Redis is unavailable."""
    if event_type.startswith(CONTROL_PREFIX):
        raise ValueError(f"event type {event_type!r} is reserved for control messages")
    return await events.publish(user_id, user_channel(user_id), event_type, data) is not None


async def close_user_everywhere(redis: Redis, user_id: str, code: int, reason: str) -> bool:
    """Ask every instance to close the user's sockets with ``code`` / ``reason`` (best effort,
    like events: False when Redis is unavailable; close this instance's sockets directly)."""
    if not CLOSE_CODES[0] <= code <= CLOSE_CODES[1] or len(reason.encode()) > MAX_REASON_BYTES:
        raise ValueError(f"unusable close code or reason: {code} {reason!r}")
    return await _publish_control(redis, user_id, CLOSE, {"code": code, "reason": reason})


def is_control(message: str) -> bool:
    """Whether a message of a user channel is a control message (never for clients)."""
    return message.startswith(_CONTROL_HEAD)


def parse_close(message: str) -> tuple[int, str] | None:
    """``(code, reason)`` of a well-formed ``control.close`` message, else None."""
    try:
        decoded = json.loads(message)
        data = decoded["data"]
        code, reason = data["code"], data["reason"]
        if (decoded["type"] != CLOSE or type(code) is not int or not isinstance(reason, str)
                or not CLOSE_CODES[0] <= code <= CLOSE_CODES[1]
                or len(reason.encode()) > MAX_REASON_BYTES):
            return None
    except (ValueError, TypeError, KeyError):  # UnicodeEncodeError: a lone surrogate
        return None
    return code, reason


async def _publish_control(redis: Redis, user_id: str, event_type: str, data: dict[str, Any]
                           ) -> bool:
    message = json.dumps({"type": event_type, "data": data}, separators=(",", ":"))
    try:
        with trio.move_on_after(PUBLISH_TIMEOUT_S) as scope:
            await redis.client.publish(user_channel(user_id), message)
        if scope.cancelled_caught:
            raise TimeoutError(f"PUBLISH took over {PUBLISH_TIMEOUT_S}s")
    except UNAVAILABLE_ERRORS as exc:
        redis.record_error(exc)
        log.warning("event %s for user %s not published: %s", event_type, user_id, exc)
        return False
    return True
