"""Submitting a notification's push job: ``push:<notificationId>`` on the queue
``push-notifications``, handled by ``workers/push.py`` (which fans it out, one job per
device)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from innera.jobs.kinds import QueueSpec
from innera.notifications.deadlines import REDIS_TIMEOUT_S
from innera.queue.jobs import JobQueue
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.notifications")

#: The queue of push jobs: short handlers, many at once; a device unreachable for a while is
#: retried 8 times.
PUSH_JOBS = QueueSpec("push-notifications", concurrency=8, timeout_s=60, attempts=8)
PUSH_QUEUE = PUSH_JOBS.name


async def enqueue_push(redis: Redis, notification: dict[str, Any], *, push_provider: str
                       ) -> None:
    """Enqueue the push job ``push:<notificationId>`` (queue ``push-notifications``, payload
    ``{notification_id}``) for a committed ``notification``; nothing when ``push_provider``
    is ``"none"`` (PUSH_PROVIDER). Best effort, like the rest after the commit: shielded (a
    cancelled request must not skip it) and bounded; Redis unavailable or too slow is counted
    through ``redis.record_error`` and logged; no error is raised (the notification exists,
    unpushed).
    """
    if push_provider == "none":
        return
    job_id = f"push:{notification['id']}"
    try:
        with trio.move_on_after(REDIS_TIMEOUT_S) as scope:
            scope.shield = True
            await JobQueue(redis, PUSH_QUEUE, attempts=PUSH_JOBS.attempts).enqueue(
                {"notification_id": notification["id"]}, job_id=job_id)
        if scope.cancelled_caught:
            raise TimeoutError(f"enqueue took over {REDIS_TIMEOUT_S:g} s")
    except UNAVAILABLE_ERRORS as exc:
        if scope.cancel_called and not isinstance(exc, TimeoutError):
            exc = TimeoutError(f"enqueue took over {REDIS_TIMEOUT_S:g} s")
        redis.record_error(exc)
        log.warning("push job %s not enqueued (Redis unavailable): the notification is not "
                    "pushed: %s", job_id, exc)
    except Exception:  # the row is committed: failing the request would invite a duplicate
        log.exception("push job %s not enqueued: the notification is not pushed", job_id)
