"""The job tables: ``import_jobs``, ``export_jobs``, ``account_deletion_jobs``,
``key_rotation_jobs`` (migration 0007). A row is the source of truth for its job's state
(pending → running → completed | failed, attempts, progress 0..1, error, timestamps); the
Redis queue only carries the work, under the deterministic id ``"<table>:<row id>"``.

Submitting is insert-then-enqueue (:func:`submit`). A job whose enqueue failed stays
``pending`` and is enqueued by the reconciler, so a Redis outage delays jobs, never loses them.

Functions taking ``db`` accept a :class:`~innera.db.pool.Pool` or a connection (to be part
of the caller's transaction).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from innera.db.connection import TrioConnection
from innera.db.pool import Pool
from innera.queue.jobs import JobQueue
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.jobs")

#: job table → Redis queue name
QUEUE_OF: dict[str, str] = {
    "import_jobs": "import-jobs",
    "export_jobs": "export-jobs",
    "account_deletion_jobs": "account-deletion",
    "key_rotation_jobs": "key-rotation",
}
TABLES = tuple(QUEUE_OF)
USERLESS = frozenset({"key_rotation_jobs"})
UNFINISHED = ("pending", "running")
ERROR_MAX_CHARS = 4000
#: the error code of a job that failed for a reason without a code of its own
JOB_FAILED = "job_failed"

Db = Pool | TrioConnection[Any]


def check_table(table: str) -> str:
    if table not in QUEUE_OF:
        raise ValueError(f"unknown job table {table!r} (one of: {', '.join(TABLES)})")
    return table


def queue_job_id(table: str, job_id: uuid.UUID | str) -> str:
    """The id of the job on its Redis queue: ``"<table>:<row id>"``."""
    return f"{check_table(table)}:{job_id}"


def parse_queue_job_id(queue_id: str) -> tuple[str, uuid.UUID]:
    """``"export_jobs:<uuid>"`` → ``("export_jobs", UUID(...))``; ValueError otherwise."""
    table, _, raw = queue_id.partition(":")
    return check_table(table), uuid.UUID(raw)


def queue_payload(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """What goes on the Redis queue for a row (the same at submit and on reconciliation):
    the row's identity; the handler reads the rest from the table."""
    user = row.get("user_id")
    return {
        "table": table,
        "id": str(row["id"]),
        # an account deletion's job must not spread the id it is erasing into Redis
        "user_id": None if user is None or table == "account_deletion_jobs" else str(user),
    }


@asynccontextmanager
async def _connection(db: Db) -> AsyncIterator[TrioConnection[Any]]:
    if isinstance(db, Pool):
        async with db.connection() as conn:
            yield conn
    else:
        yield db


def _t(table: str) -> sql.Identifier:
    return sql.Identifier(check_table(table))


async def create_job(db: Db, table: str, *, user_id: uuid.UUID | str | None,
                     payload: dict[str, Any], job_id: uuid.UUID | None = None) -> uuid.UUID:
    """Insert a pending job; returns its id (``job_id`` when given: a caller that must
    name a file after the job before the row exists). Key rotations have no user: their
    ``payload`` carries ``from_version`` and ``to_version`` (also stored as columns)."""
    job_id = job_id or uuid.uuid4()
    if table in USERLESS:
        if user_id is not None:
            raise ValueError(f"{table} jobs have no user")
        query = sql.SQL("INSERT INTO {} (id, from_version, to_version, payload) "
                        "VALUES (%s, %s, %s, %s)").format(_t(table))
        params: tuple[Any, ...] = (job_id, int(payload["from_version"]),
                                   int(payload["to_version"]), Jsonb(payload))
    else:
        if user_id is None:
            raise ValueError(f"{table} jobs need a user_id")
        query = sql.SQL("INSERT INTO {} (id, user_id, payload) VALUES (%s, %s, %s)"
                        ).format(_t(table))
        params = (job_id, user_id, Jsonb(payload))
    async with _connection(db) as conn:
        await conn.execute(query, params)
    return job_id


async def enqueue(redis: Redis, table: str, row: dict[str, Any]) -> str:
    """Put the row's job on its queue (a job id the queue holds unfinished is not added
    twice). Returns the queue job id."""
    return await JobQueue(redis, QUEUE_OF[check_table(table)]).enqueue(
        queue_payload(table, row), job_id=queue_job_id(table, row["id"]))


async def submit(svc_db: Db, redis: Redis, kind: str, *, user_id: uuid.UUID | str | None,
                 payload: dict[str, Any], job_id: uuid.UUID | None = None) -> str:
    """Insert a pending job in table ``kind`` (with id ``job_id`` when given), then enqueue
    it; returns the queue job id (``"<kind>:<id>"``). If Redis is unavailable the job stays
    pending in the table and the reconciler enqueues it later (logged, not raised)."""
    job_id = await create_job(svc_db, kind, user_id=user_id, payload=payload, job_id=job_id)
    row = {"id": job_id, "user_id": user_id}
    try:
        return await enqueue(redis, kind, row)
    except UNAVAILABLE_ERRORS as exc:
        redis.record_error(exc)
        log.warning("job %s: not enqueued (Redis unavailable); the reconciler will enqueue it",
                    queue_job_id(kind, job_id))
        return queue_job_id(kind, job_id)


async def mark_running(db: Db, table: str, job_id: uuid.UUID | str) -> bool:
    """pending|running → running, one more attempt (``started_at`` kept from the first).
    False: the job is finished (or unknown) and must not run."""
    query = sql.SQL(
        "UPDATE {} SET status = 'running', attempts = attempts + 1, error = NULL, "
        "error_code = NULL, started_at = coalesce(started_at, now()) "
        "WHERE id = %s AND status IN ('pending', 'running')").format(_t(table))
    return await _update(db, query, (job_id,))


async def mark_progress(db: Db, table: str, job_id: uuid.UUID | str, progress: float) -> bool:
    """Store the progress (clamped to 0..1) of a running job."""
    query = sql.SQL("UPDATE {} SET progress = %s WHERE id = %s AND status = 'running'"
                    ).format(_t(table))
    return await _update(db, query, (min(1.0, max(0.0, float(progress))), job_id))


async def mark_completed(db: Db, table: str, job_id: uuid.UUID | str) -> bool:
    query = sql.SQL(
        "UPDATE {} SET status = 'completed', progress = 1, error = NULL, error_code = NULL, "
        "finished_at = now() "
        "WHERE id = %s AND status IN ('pending', 'running')").format(_t(table))
    return await _update(db, query, (job_id,))


async def mark_failed(db: Db, table: str, job_id: uuid.UUID | str, error: str,
                      code: str = JOB_FAILED) -> bool:
    """pending|running → failed, with the message and its stable ``code``."""
    query = sql.SQL(
        "UPDATE {} SET status = 'failed', error = %s, error_code = %s, finished_at = now() "
        "WHERE id = %s AND status IN ('pending', 'running')").format(_t(table))
    return await _update(db, query, (error[:ERROR_MAX_CHARS], code, job_id))


async def reopen_failed(db: Db, table: str, job_id: uuid.UUID | str) -> dict[str, Any] | None:
    """failed → pending, for an operator's retry (``innera jobs retry``): attempts, error and
    finish time cleared. Returns the row's identity (for :func:`enqueue`), or None when the
    job is not failed (or unknown)."""
    user = sql.SQL("NULL::uuid AS user_id" if table in USERLESS else "user_id")
    query = sql.SQL(
        "UPDATE {} SET status = 'pending', attempts = 0, error = NULL, error_code = NULL, "
        "finished_at = NULL "
        "WHERE id = %s AND status = 'failed' RETURNING id, {}").format(_t(table), user)
    async with _connection(db) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, (job_id,))
        return await cur.fetchone()


async def _update(db: Db, query: sql.Composed, params: tuple[Any, ...]) -> bool:
    async with _connection(db) as conn:
        cur = await conn.execute(query, params)
        return cur.rowcount == 1


async def get_job(db: Db, table: str, user_id: uuid.UUID | str,
                  job_id: uuid.UUID | str) -> dict[str, Any] | None:
    """The job as a dict, or None when it does not exist or belongs to another user."""
    if check_table(table) in USERLESS:
        raise ValueError(f"{table} jobs belong to no user")
    try:
        job_uuid = uuid.UUID(str(job_id))
    except ValueError:
        return None
    query = sql.SQL(
        "SELECT id, user_id, status, attempts, progress, error, error_code, payload, "
        "created_at, "
        "started_at, finished_at, updated_at FROM {} WHERE id = %s AND user_id = %s"
    ).format(_t(table))
    async with _connection(db) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, (job_uuid, user_id))
        return await cur.fetchone()


async def unfinished(db: Db, table: str, *, after: uuid.UUID | None = None,
                     limit: int = 1000) -> list[dict[str, Any]]:
    """Pending/running rows of ``table`` by id, after ``after`` (keyset pages)."""
    user = sql.SQL("NULL::uuid AS user_id" if table in USERLESS else "user_id")
    query = sql.SQL(
        "SELECT id, {} FROM {} WHERE status IN ('pending', 'running') AND id > %s "
        "ORDER BY id LIMIT %s").format(user, _t(table))
    async with _connection(db) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            query, (after or uuid.UUID(int=0), limit))
        return await cur.fetchall()
