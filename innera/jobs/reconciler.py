"""Re-enqueue the unfinished jobs Redis has lost.

The job tables are the source of truth. A pending/running row whose job id Redis does not
know at all (lost on a Redis failover or flush, or never enqueued because Redis was down at
submit) is enqueued again, with the same deterministic id and payload. A row Redis still
knows — waiting, delayed, active, or even completed/failed there — is left alone: only a
missing record is re-enqueued, so a pass is idempotent and concurrent instances do not
duplicate work (the queue also refuses an id it holds unfinished).

:func:`run_reconciler` is a supervised service task: one pass before it reports started,
then one every ``interval_s``. A failed pass (DB or Redis) is logged and retried at the next
interval; the task never dies of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from innera.db.pool import Pool
from innera.jobs import tables
from innera.jobs.kinds import JobKind
from innera.jobs.submission import enqueue
from innera.queue.jobs import JobQueue
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.jobs.reconciler")

RECONCILE_INTERVAL_S = 60.0
PAGE = 500
#: one pass never runs longer than this (each query and command is bounded on its own too)
PASS_TIMEOUT_S = 120.0


async def reconcile_once(pool: Pool, redis: Redis, kinds: Sequence[JobKind]) -> int:
    """One pass over the tables of ``kinds``; returns how many jobs were enqueued again."""
    enqueued = 0
    for kind in kinds:
        queue = JobQueue(redis, kind.queue.name)
        after = None
        while True:
            rows = await tables.unfinished(pool, kind, after=after, limit=PAGE)
            for row in rows:
                job_id = tables.queue_job_id(kind, row["id"])
                if await queue.get(job_id) is None:
                    await enqueue(redis, kind, row)
                    enqueued += 1
                    log.info("re-enqueued job %s (unknown to Redis)", job_id)
            if len(rows) < PAGE:
                break
            after = rows[-1]["id"]
    if enqueued:
        log.warning("reconciler: %d unfinished job(s) were unknown to Redis and were "
                    "enqueued again", enqueued)
    return enqueued


async def _pass(pool: Pool, redis: Redis, kinds: Sequence[JobKind]) -> None:
    try:
        with trio.fail_after(PASS_TIMEOUT_S):
            await reconcile_once(pool, redis, kinds)
    except UNAVAILABLE_ERRORS as exc:
        redis.record_error(exc)
        log.warning("reconciler: pass failed (Redis unavailable: %s); retrying later", exc)
    except Exception as exc:  # a DB outage, a timeout, a bug: log, retry next interval
        log.error("reconciler: pass failed: %s: %s; retrying later", type(exc).__name__, exc,
                  exc_info=not isinstance(exc, OSError | trio.TooSlowError))


async def run_reconciler(
    pool: Pool, redis: Redis, kinds: Sequence[JobKind], *, interval_s: float = RECONCILE_INTERVAL_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """At start-up and then every ``interval_s``: :func:`reconcile_once` over ``kinds``. Runs
    until cancelled."""
    await _pass(pool, redis, kinds)
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        await _pass(pool, redis, kinds)
