"""The reconciler: unfinished jobs Redis lost are enqueued again, once."""

from __future__ import annotations

import logging

import pytest
import trio

from innera.account_deletion import ACCOUNT_DELETION_JOB
from innera.db.pool import Pool
from innera.exports import EXPORT_JOB
from innera.imports import IMPORT_JOB
from innera.jobs import tables
from innera.jobs.reconciler import reconcile_once, run_reconciler
from innera.jobs.submission import submit
from innera.key_rotation import KEY_ROTATION_JOB
from innera.queue.jobs import JobQueue
from innera.redis import Redis
from tests.fixtures.redis import free_port
from tests.jobs.test_tables import make_user
from workers.registry import JOB_KINDS

pytestmark = pytest.mark.timeout(30)


async def known(redis: Redis, queue_id: str) -> bool:
    kind, _ = tables.parse_queue_job_id(JOB_KINDS, queue_id)
    return await JobQueue(redis, kind.queue.name).get(queue_id) is not None


async def test_lost_jobs_are_enqueued_again_once(db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    submitted = [
        await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={}),
        await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={}),
        await submit(db_pool, redis, IMPORT_JOB, user_id=user, payload={}),
        await submit(db_pool, redis, ACCOUNT_DELETION_JOB, user_id=user, payload={}),
        await submit(db_pool, redis, KEY_ROTATION_JOB, user_id=None,
                            payload={"from_version": 1, "to_version": 2}),
    ]
    running = tables.parse_queue_job_id(JOB_KINDS, submitted[0])[1]
    assert await tables.mark_running(db_pool, EXPORT_JOB, running)
    finished = []
    for mark in (tables.mark_completed, tables.mark_failed):
        queue_id = await submit(db_pool, redis, IMPORT_JOB, user_id=user, payload={})
        row_id = tables.parse_queue_job_id(JOB_KINDS, queue_id)[1]
        if mark is tables.mark_failed:
            assert await mark(db_pool, IMPORT_JOB, row_id, "boom")
        else:
            assert await mark(db_pool, IMPORT_JOB, row_id)
        finished.append(queue_id)

    assert await reconcile_once(db_pool, redis, JOB_KINDS) == 0  # Redis knows everything
    await redis.client.flushdb()
    assert not any([await known(redis, q) for q in submitted + finished])

    assert await reconcile_once(db_pool, redis, JOB_KINDS) == 5
    for queue_id in submitted:
        kind, row_id = tables.parse_queue_job_id(JOB_KINDS, queue_id)
        info = await JobQueue(redis, kind.queue.name).get(queue_id)
        assert info is not None and info.status == "waiting", queue_id
        assert info.payload is not None and info.payload["id"] == str(row_id)
    for queue_id in finished:
        assert not await known(redis, queue_id)
    assert await reconcile_once(db_pool, redis, JOB_KINDS) == 0  # dedupe: nothing new
    waiting = await redis.client.llen("{q:export-jobs}:waiting")
    assert waiting == 2


async def test_a_job_redis_finished_is_not_enqueued_again(db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    queue_id = await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={})
    queue = JobQueue(redis, "export-jobs")
    [job] = await queue.claim()
    assert await queue.complete(job)  # but the table still says pending (a crash in between)
    assert await reconcile_once(db_pool, redis, JOB_KINDS) == 0
    info = await queue.get(queue_id)
    assert info is not None and info.status == "completed"


async def test_runs_once_before_started_then_periodically(db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    queue_id = await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={})
    await redis.client.flushdb()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_reconciler(
            db_pool, redis, JOB_KINDS, interval_s=0.05, task_status=task_status))
        assert await known(redis, queue_id)  # the start-up pass
        await redis.client.flushdb()
        with trio.fail_after(5):
            while not await known(redis, queue_id):  # a periodic pass
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_survives_a_database_error_and_logs_it(
        redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    pool = Pool(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", min_size=0,
                max_size=1, acquire_timeout_s=0.5)  # a closed port, never started
    caplog.set_level(logging.INFO, logger="innera.jobs.reconciler")
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_reconciler(
            pool, redis, JOB_KINDS, interval_s=0.02, task_status=task_status))
        with trio.fail_after(5):
            while sum("pass failed" in r.getMessage() for r in caplog.records) < 3:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert all(r.levelno == logging.ERROR for r in caplog.records
               if "pass failed" in r.getMessage())


async def test_survives_a_redis_error(db_pool: Pool, private_redis_server,  # type: ignore[no-untyped-def]
                                      caplog: pytest.LogCaptureFixture) -> None:
    from innera.config import RedisSettings
    from innera.redis import run_redis

    server = private_redis_server()
    user = await make_user(db_pool)
    await tables.create_job(db_pool, EXPORT_JOB, user_id=user, payload={})
    caplog.set_level(logging.INFO, logger="innera.jobs.reconciler")
    async with trio.open_nursery() as nursery:
        client = await nursery.start(run_redis, RedisSettings(url=server.url))
        server.stop()
        await nursery.start(lambda task_status: run_reconciler(
            db_pool, client, JOB_KINDS, interval_s=0.05, task_status=task_status))
        assert any("Redis unavailable" in r.getMessage() for r in caplog.records)
        server.start()
        with trio.fail_after(10):
            while await client.client.llen("{q:export-jobs}:waiting") != 1:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
