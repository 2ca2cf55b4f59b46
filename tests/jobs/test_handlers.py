"""The table ↔ queue bridge: what a job's row says after each way a job can end."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from innera.db.pool import Pool
from innera.jobs import tables
from innera.jobs.handlers import JobRun, mark_dead_lettered, table_handler
from innera.queue.jobs import JobQueue
from innera.queue.worker import QueueConfig, run_workers
from innera.redis import Redis
from tests.jobs.test_rebuild import Deps
from tests.jobs.test_tables import make_user

pytestmark = pytest.mark.timeout(30)


async def row_of(pool: Pool, user: object, queue_id: str) -> dict[str, object]:
    _, row_id = tables.parse_queue_job_id(queue_id)
    row = await tables.get_job(pool, "export_jobs", user, row_id)  # type: ignore[arg-type]
    assert row is not None
    return row


async def run_until(redis: Redis, config: QueueConfig, done: object) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_workers(
            redis, {"export-jobs": config}, None, stop=stop, poll_interval_s=0.02,
            task_status=task_status))
        with trio.fail_after(10):
            while not await done():  # type: ignore[operator]
                await trio.sleep(0.02)
        stop.set()


async def test_a_job_cut_off_by_its_timeout_on_the_last_attempt_is_failed_in_its_table(
        db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    queue_id = await tables.submit(db_pool, redis, "export_jobs", user_id=user, payload={})

    async def work(run: JobRun) -> None:
        await run.progress(0.5)
        await trio.sleep(60)  # cancelled by the handler timeout: it records nothing itself

    deps = Deps(db_pool, redis)
    config = QueueConfig(table_handler(deps, "export_jobs", work),  # type: ignore[arg-type]
                         attempts=1, timeout_s=0.3,
                         on_dead_letter=partial(mark_dead_lettered, deps))  # type: ignore[arg-type]

    async def failed() -> bool:
        return (await row_of(db_pool, user, queue_id))["status"] == "failed"

    await run_until(redis, config, failed)
    row = await row_of(db_pool, user, queue_id)
    assert "TooSlowError" in str(row["error"]) and row["progress"] == pytest.approx(0.5)
    info = await JobQueue(redis, "export-jobs").get(queue_id)
    assert info is not None and info.status == "failed"


async def test_a_redelivered_finished_job_does_no_work(db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    queue_id = await tables.submit(db_pool, redis, "export_jobs", user_id=user, payload={})
    runs: list[JobRun] = []

    async def work(run: JobRun) -> None:
        runs.append(run)

    handler = table_handler(Deps(db_pool, redis), "export_jobs", work)  # type: ignore[arg-type]
    queue = JobQueue(redis, "export-jobs")

    async def completed() -> bool:
        info = await queue.get(queue_id)
        return info is not None and info.status == "completed"

    await run_until(redis, QueueConfig(handler), completed)
    assert (await row_of(db_pool, user, queue_id))["status"] == "completed"
    await tables.enqueue(redis, "export_jobs", {"id": tables.parse_queue_job_id(queue_id)[1],
                                                "user_id": user})  # delivered once more
    await run_until(redis, QueueConfig(handler), completed)
    assert len(runs) == 1
