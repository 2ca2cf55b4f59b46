"""The table ↔ queue bridge: what a job's row says after each way a job can end, and that a
failed job shows its user a stable code and a fixed message, never exception text."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio

from innera.db.pool import Pool
from innera.exports import EXPORT_JOB
from innera.jobs import tables
from innera.jobs.handlers import USER_MESSAGES, JobRun, mark_dead_lettered, table_handler
from innera.jobs.submission import enqueue, submit
from innera.queue.jobs import JobQueue, PermanentJobError, UserFacingJobError
from innera.queue.worker import QueueConfig, run_workers
from innera.redis import Redis
from tests.jobs.test_rebuild import Deps
from tests.jobs.test_tables import make_user
from workers.registry import JOB_KINDS

pytestmark = pytest.mark.timeout(30)


async def row_of(pool: Pool, user: object, queue_id: str) -> dict[str, object]:
    _, row_id = tables.parse_queue_job_id(JOB_KINDS, queue_id)
    row = await tables.get_job(pool, EXPORT_JOB, user, row_id)  # type: ignore[arg-type]
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
    queue_id = await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={})

    async def work(run: JobRun) -> None:
        await run.progress(0.5)
        await trio.sleep(60)  # cancelled by the handler timeout: it records nothing itself

    deps = Deps(db_pool, redis)
    config = QueueConfig(table_handler(deps, EXPORT_JOB, work),  # type: ignore[arg-type]
                         attempts=1, timeout_s=0.3,
                         on_dead_letter=partial(mark_dead_lettered, deps, EXPORT_JOB))  # type: ignore[arg-type]

    async def failed() -> bool:
        return (await row_of(db_pool, user, queue_id))["status"] == "failed"

    await run_until(redis, config, failed)
    row = await row_of(db_pool, user, queue_id)
    assert row["progress"] == pytest.approx(0.5)
    assert (row["error_code"], row["error"]) == ("job_failed", USER_MESSAGES["job_failed"])
    info = await JobQueue(redis, "export-jobs").get(queue_id)
    assert info is not None and info.status == "failed"
    assert "TooSlowError" in str(info.error)  # the queue's record, for operators


async def test_a_redelivered_finished_job_does_no_work(db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    queue_id = await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={})
    runs: list[JobRun] = []

    async def work(run: JobRun) -> None:
        runs.append(run)

    handler = table_handler(Deps(db_pool, redis), EXPORT_JOB, work)  # type: ignore[arg-type]
    queue = JobQueue(redis, "export-jobs")

    async def completed() -> bool:
        info = await queue.get(queue_id)
        return info is not None and info.status == "completed"

    await run_until(redis, QueueConfig(handler), completed)
    assert (await row_of(db_pool, user, queue_id))["status"] == "completed"
    await enqueue(redis, EXPORT_JOB, {"id": tables.parse_queue_job_id(JOB_KINDS, queue_id)[1],
                                                "user_id": user})  # delivered once more
    await run_until(redis, QueueConfig(handler), completed)
    assert len(runs) == 1


async def test_a_failed_job_shows_its_code_and_a_fixed_message_unless_innera_wrote_it(
        db_pool: Pool, redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Exception text (a library's, or innera's own words for operators) never reaches the
    job's row; a :class:`UserFacingJobError`'s message, written for the user, does."""
    user = await make_user(db_pool)
    errors: list[Exception] = [
        RuntimeError("connection to server at '10.0.3.7', port 5432 failed: FATAL: role x"),
        PermanentJobError("payload field user_id is not a UUID: 'abc'"),
        PermanentJobError("the child wrote garbage at offset 17", code="too_deep"),
        PermanentJobError("code of no table", code="no_such_code"),
        UserFacingJobError("innera-export.json: entries[3].body: must not be empty",
                           code="invalid_import_file"),
        UserFacingJobError("51 entries, more than the limit of 50 (IMPORT_MAX_ENTRIES)",
                           code="too_many_entries"),
    ]
    ids = [await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={"n": n})
           for n in range(len(errors))]

    async def work(run: JobRun) -> None:
        raise errors[run.payload["n"]]

    deps = Deps(db_pool, redis)
    config = QueueConfig(table_handler(deps, EXPORT_JOB, work),  # type: ignore[arg-type]
                         attempts=1, on_dead_letter=partial(mark_dead_lettered, deps, EXPORT_JOB))  # type: ignore[arg-type]

    async def all_failed() -> bool:
        return [(await row_of(db_pool, user, i))["status"] for i in ids] == ["failed"] * len(
            ids)

    with caplog.at_level(logging.WARNING, logger="innera.jobs"):
        await run_until(redis, config, all_failed)
    rows = [await row_of(db_pool, user, i) for i in ids]
    shown = [(row["error_code"], row["error"]) for row in rows]
    assert shown == [
        ("job_failed", "The job failed; try again later or contact support."),
        ("job_failed", USER_MESSAGES["job_failed"]),
        ("too_deep", USER_MESSAGES["too_deep"]),
        ("no_such_code", USER_MESSAGES["job_failed"]),
        ("invalid_import_file", "innera-export.json: entries[3].body: must not be empty"),
        ("too_many_entries", "51 entries, more than the limit of 50 (IMPORT_MAX_ENTRIES)"),
    ]
    # the real failure is in the log: a permanent one with its traceback; the first, retryable
    # (the queue gave up on it after its one attempt), as the queue reported it
    logged = [r for r in caplog.records if r.name == "innera.jobs"]
    assert any(str(errors[0]) in r.getMessage() for r in logged)
    for error in errors[1:4]:
        assert any(str(error) in r.getMessage() and r.exc_info
                   and r.exc_info[1] is error for r in logged), error
