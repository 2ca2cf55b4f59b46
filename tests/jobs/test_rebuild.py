"""Redis loses every job in the middle of a batch (FLUSHDB): the reconciler rebuilds the
queue from the job tables and every job completes exactly once more where the table says it
has not completed, and never again where it has."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from innera.db.pool import Pool
from innera.exports import EXPORT_JOB
from innera.jobs.handlers import JobRun, table_handler
from innera.jobs.reconciler import reconcile_once
from innera.jobs.submission import submit
from innera.queue.worker import QueueConfig, run_workers
from innera.realtime.event_log import EventLog
from innera.redis import Redis
from tests.jobs.test_tables import make_user

pytestmark = pytest.mark.timeout(60)

JOBS = 40


@dataclass
class Deps:
    """The services :func:`table_handler` uses (the real pool and Redis client, and the
    event log on that client)."""

    db: Pool
    redis: Redis
    events: EventLog = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventLog(self.redis, b"event-log-key-of-the-tests-01234")


async def statuses(pool: Pool) -> Counter[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM export_jobs")
        return Counter(row[0] for row in await cur.fetchall())


async def test_flush_mid_batch_every_job_completes_as_the_tables_say(
        db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    for _ in range(JOBS):
        await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={})
    runs: Counter[uuid.UUID] = Counter()
    completed_before_flush: set[uuid.UUID] = set()

    async def work(run: JobRun) -> None:
        runs[run.id] += 1
        await trio.sleep(0.01)

    handler = table_handler(Deps(db_pool, redis), EXPORT_JOB, work)  # type: ignore[arg-type]
    config = QueueConfig(handler, concurrency=4, lease_s=2.0, reaper_interval_s=0.2)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_workers(
            redis, {"export-jobs": config}, None, stop=stop, poll_interval_s=0.02,
            task_status=task_status))
        with trio.fail_after(20):
            while (await statuses(db_pool))["completed"] < JOBS // 4:
                await trio.sleep(0.01)
        await redis.client.flushdb()  # Redis loses the whole queue mid-batch
        async with db_pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM export_jobs WHERE status = 'completed'")
            completed_before_flush = {row[0] for row in await cur.fetchall()}
        assert len(completed_before_flush) < JOBS
        assert await reconcile_once(db_pool, redis, (EXPORT_JOB,)) > 0
        with trio.fail_after(20):
            while (await statuses(db_pool))["completed"] < JOBS:
                await trio.sleep(0.02)
        stop.set()
    assert await statuses(db_pool) == Counter({"completed": JOBS})
    async with db_pool.connection() as conn:
        cur = await conn.execute("SELECT id, attempts FROM export_jobs")
        rows: list[Any] = await cur.fetchall()
    assert all(runs[row_id] >= 1 for row_id, _ in rows)  # every job did its work
    # a job the table had completed before the flush never ran again
    assert all(runs[row_id] == 1 for row_id in completed_before_flush)
    assert all(attempts == 1 for row_id, attempts in rows if row_id in completed_before_flush)
