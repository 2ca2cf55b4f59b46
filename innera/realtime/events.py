"""Events for a user's devices: a ``PUBLISH`` on ``ws:user:{userId}``, so every instance's
pub/sub listener (realtime issue) forwards them to that user's sockets.

Publishing is best effort: the change it announces is already committed, so a Redis outage
is counted and logged, never turned into a failed request. Clients re-sync on reconnect.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.realtime")
PUBLISH_TIMEOUT_S = 0.5


def user_channel(user_id: str) -> str:
    return f"ws:user:{user_id}"


async def publish_to_user(redis: Redis, user_id: str, event_type: str, data: dict[str, Any]
                          ) -> bool:
    """Send ``{"type": event_type, "data": data}`` to the user's sockets on every instance."""
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
