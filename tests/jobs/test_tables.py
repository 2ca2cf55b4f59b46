"""The job tables against a real PostgreSQL, and submit's enqueue on a real Redis."""

from __future__ import annotations

import uuid

import pytest

from innera.account_deletion import ACCOUNT_DELETION_JOB
from innera.db.pool import Pool
from innera.exports import EXPORT_JOB
from innera.imports import IMPORT_JOB
from innera.jobs import tables
from innera.jobs.kinds import JobKind, QueueSpec
from innera.jobs.submission import submission, submit
from innera.key_rotation import KEY_ROTATION_JOB
from innera.notifications.push_jobs import PUSH_JOBS
from innera.queue.jobs import JobQueue
from innera.redis import Redis
from workers.registry import JOB_KINDS

pytestmark = pytest.mark.timeout(30)


async def make_user(pool: Pool) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO users (id, email, password_hash) VALUES (%s, %s, 'x')",
                           (user_id, f"{user_id.hex}@example.com"))
    return user_id


async def test_create_transition_and_get_scoped_to_the_user(db_pool: Pool) -> None:
    alice, bob = await make_user(db_pool), await make_user(db_pool)
    job_id = await tables.create_job(db_pool, EXPORT_JOB, user_id=alice,
                                     payload={"format": "json"})
    job = await tables.get_job(db_pool, EXPORT_JOB, alice, job_id)
    assert job is not None
    assert (job["status"], job["attempts"], job["progress"], job["error"], job["payload"]) == (
        "pending", 0, 0, None, {"format": "json"})
    assert job["started_at"] is None and job["finished_at"] is None
    assert await tables.get_job(db_pool, EXPORT_JOB, bob, job_id) is None
    assert await tables.get_job(db_pool, EXPORT_JOB, alice, uuid.uuid4()) is None
    assert await tables.get_job(db_pool, EXPORT_JOB, alice, "not-a-uuid") is None
    assert await tables.get_job(db_pool, IMPORT_JOB, alice, job_id) is None

    assert await tables.mark_running(db_pool, EXPORT_JOB, job_id)
    assert await tables.mark_progress(db_pool, EXPORT_JOB, job_id, 0.25)
    job = await tables.get_job(db_pool, EXPORT_JOB, alice, job_id)
    assert job is not None
    assert (job["status"], job["attempts"], job["progress"]) == ("running", 1, 0.25)
    first_start = job["started_at"]
    assert first_start is not None

    assert await tables.mark_running(db_pool, EXPORT_JOB, job_id)  # a retry
    assert await tables.mark_progress(db_pool, EXPORT_JOB, job_id, 7)  # clamped
    assert await tables.mark_completed(db_pool, EXPORT_JOB, job_id)
    job = await tables.get_job(db_pool, EXPORT_JOB, alice, job_id)
    assert job is not None
    assert (job["status"], job["attempts"], job["progress"]) == ("completed", 2, 1.0)
    assert job["started_at"] == first_start and job["finished_at"] is not None
    assert job["updated_at"] >= job["created_at"]
    # a finished job does not run, progress or finish again
    assert not await tables.mark_running(db_pool, EXPORT_JOB, job_id)
    assert not await tables.mark_progress(db_pool, EXPORT_JOB, job_id, 0.5)
    assert not await tables.mark_failed(db_pool, EXPORT_JOB, job_id, "late")

    failing = await tables.create_job(db_pool, IMPORT_JOB, user_id=alice, payload={})
    assert await tables.mark_running(db_pool, IMPORT_JOB, failing)
    assert await tables.mark_failed(db_pool, IMPORT_JOB, failing, "bad file " * 1000)
    job = await tables.get_job(db_pool, IMPORT_JOB, alice, failing)
    assert job is not None and job["status"] == "failed"
    assert job["error"].startswith("bad file") and len(job["error"]) == tables.ERROR_MAX_CHARS


async def test_user_deletion_cascades_except_for_account_deletion_jobs(db_pool: Pool) -> None:
    user = await make_user(db_pool)
    export = await tables.create_job(db_pool, EXPORT_JOB, user_id=user, payload={})
    deletion = await tables.create_job(db_pool, ACCOUNT_DELETION_JOB, user_id=user,
                                       payload={})
    async with db_pool.connection() as conn:
        await conn.execute("DELETE FROM users WHERE id = %s", (user,))
    assert await tables.get_job(db_pool, EXPORT_JOB, user, export) is None
    job = await tables.get_job(db_pool, ACCOUNT_DELETION_JOB, user, deletion)
    assert job is not None and job["user_id"] == user
    assert await tables.mark_completed(db_pool, ACCOUNT_DELETION_JOB, deletion)


async def test_key_rotation_jobs_have_versions_and_no_user(db_pool: Pool) -> None:
    job_id = await tables.create_job(db_pool, KEY_ROTATION_JOB, user_id=None,
                                     payload={"from_version": 1, "to_version": 2})
    async with db_pool.connection() as conn:
        cur = await conn.execute(
            "SELECT from_version, to_version, status FROM key_rotation_jobs WHERE id = %s",
            (job_id,))
        assert await cur.fetchone() == (1, 2, "pending")
    with pytest.raises(ValueError):
        await tables.get_job(db_pool, KEY_ROTATION_JOB, uuid.uuid4(), job_id)
    with pytest.raises(ValueError):
        await tables.create_job(db_pool, KEY_ROTATION_JOB, user_id=uuid.uuid4(),
                                payload={"from_version": 1, "to_version": 2})
    with pytest.raises(ValueError):
        await tables.create_job(db_pool, EXPORT_JOB, user_id=None, payload={})
    with pytest.raises(ValueError):
        JobKind("users; --", "x", QueueSpec("x"))


@pytest.mark.parametrize("kind", JOB_KINDS, ids=lambda kind: kind.table)
async def test_submit_inserts_then_enqueues_with_the_deterministic_id(
        db_pool: Pool, redis: Redis, kind: JobKind) -> None:
    user = None if kind.userless else await make_user(db_pool)
    payload = {"from_version": 1, "to_version": 2} if user is None else {"a": 1}
    queue_id = await submit(db_pool, redis, kind, user_id=user, payload=payload)
    found, row_id = tables.parse_queue_job_id(JOB_KINDS, queue_id)
    assert found is kind and queue_id == f"{kind.table}:{row_id}"
    info = await JobQueue(redis, kind.queue.name).get(queue_id)
    assert info is not None and info.status == "waiting"
    assert info.max_attempts == kind.queue.attempts
    # an account deletion's queue job does not carry the id it is erasing
    carried = None if user is None or kind is ACCOUNT_DELETION_JOB else str(user)
    assert info.payload == {"table": kind.table, "id": str(row_id), "user_id": carried}
    if user is not None:
        job = await tables.get_job(db_pool, kind, user, row_id)
        assert job is not None and job["status"] == "pending" and job["payload"] == payload


async def test_a_failed_transaction_submits_nothing(db_pool: Pool, redis: Redis) -> None:
    user = await make_user(db_pool)
    with pytest.raises(RuntimeError):
        async with submission(db_pool, redis, EXPORT_JOB) as sub:
            job_id = await sub.insert(user_id=user, payload={})
            raise RuntimeError("rolled back")
    assert await tables.get_job(db_pool, EXPORT_JOB, user, job_id) is None
    assert await JobQueue(redis, "export-jobs").get(
        tables.queue_job_id(EXPORT_JOB, job_id)) is None


def test_the_kinds_as_they_were() -> None:
    """Each kind's table, queue, name, worker settings and attempts."""
    assert [(k.table, k.queue.name, k.name, k.userless, k.queue.concurrency,
             k.queue.timeout_s, k.queue.attempts, k.queue.backoff_base_s)
            for k in JOB_KINDS] == [
        ("export_jobs", "export-jobs", "export", False, 1, 3600, 5, 1.0),
        ("import_jobs", "import-jobs", "import", False, 1, 1800, 5, 1.0),
        ("account_deletion_jobs", "account-deletion", "account-deletion", False, 2, 1800, 10,
         1.0),
        ("key_rotation_jobs", "key-rotation", "key-rotation", True, 1, 3600, 5, 1.0),
    ]
    # the push queue has no table: its spec is declared beside its submission
    assert (PUSH_JOBS.name, PUSH_JOBS.concurrency, PUSH_JOBS.timeout_s, PUSH_JOBS.attempts) == (
        "push-notifications", 8, 60, 8)
    with pytest.raises(ValueError):
        tables.parse_queue_job_id(JOB_KINDS, "users:" + str(uuid.uuid4()))


async def test_cli_retry_reopens_a_failed_table_job_so_it_runs_again(
        db_pool: Pool, redis: Redis, database_url: str, redis_url: str) -> None:
    import trio

    from tests.test_cli import run_cli

    user = await make_user(db_pool)
    queue_id = await submit(db_pool, redis, EXPORT_JOB, user_id=user, payload={})
    _, row_id = tables.parse_queue_job_id(JOB_KINDS, queue_id)
    queue = JobQueue(redis, "export-jobs")
    [job] = await queue.claim()
    assert await tables.mark_running(db_pool, EXPORT_JOB, row_id)
    assert await tables.mark_failed(db_pool, EXPORT_JOB, row_id, "disk full")
    assert await queue.fail(job, "disk full", permanent=True) == "failed"

    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "INNERA_ENV": "test"}
    out = await trio.to_thread.run_sync(lambda: run_cli("jobs", "retry", queue_id, env=env))
    assert out.returncode == 0, out.stderr
    row = await tables.get_job(db_pool, EXPORT_JOB, user, row_id)
    assert row is not None and (row["status"], row["error"], row["attempts"]) == (
        "pending", None, 0)
    assert (await queue.get(queue_id)).status == "waiting"  # type: ignore[union-attr]
    assert await tables.mark_running(db_pool, EXPORT_JOB, row_id)  # a worker may run it

    # Redis lost the failed record: the reopened job is enqueued again
    assert await tables.mark_failed(db_pool, EXPORT_JOB, row_id, "again")
    await redis.client.flushdb()
    out = await trio.to_thread.run_sync(lambda: run_cli("jobs", "retry", queue_id, env=env))
    assert out.returncode == 0 and "enqueued again" in out.stdout, out.stderr
    assert (await queue.get(queue_id)).status == "waiting"  # type: ignore[union-attr]
