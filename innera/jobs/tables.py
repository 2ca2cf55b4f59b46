"""The job tables: ``import_jobs``, ``export_jobs``, ``account_deletion_jobs``,
``key_rotation_jobs`` (migration 0007), one per :class:`~innera.jobs.kinds.JobKind`. A row is
the source of truth for its job's state (pending → running → completed | failed, attempts,
progress 0..1, error, timestamps); the Redis queue only carries the work, under the
deterministic id ``"<table>:<row id>"``.

Submitting (insert, then enqueue) is :mod:`innera.jobs.submission`.

Functions taking ``db`` accept a :class:`~innera.db.pool.Pool` or a connection (to be part
of the caller's transaction).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from innera.db.connection import TrioConnection
from innera.db.pool import Pool
from innera.jobs.kinds import JobKind

UNFINISHED = ("pending", "running")
ERROR_MAX_CHARS = 4000
#: the error code of a job that failed for a reason without a code of its own
JOB_FAILED = "job_failed"

Db = Pool | TrioConnection[Any]


def queue_job_id(kind: JobKind, job_id: uuid.UUID | str) -> str:
    """The id of the job on its Redis queue: ``"<table>:<row id>"``."""
    return f"{kind.table}:{job_id}"


def parse_queue_job_id(kinds: Iterable[JobKind], queue_id: str) -> tuple[JobKind, uuid.UUID]:
    """``"export_jobs:<uuid>"`` → ``(the kind of table export_jobs, UUID(...))``, among
    ``kinds``; ValueError otherwise."""
    table, _, raw = queue_id.partition(":")
    for kind in kinds:
        if kind.table == table:
            return kind, uuid.UUID(raw)
    raise ValueError(f"not the id of a job of a job table: {queue_id!r}")


def queue_payload(kind: JobKind, row: dict[str, Any]) -> dict[str, Any]:
    """What goes on the Redis queue for a row (the same at submit and on reconciliation):
    the row's identity; the handler reads the rest from the table."""
    user = row.get("user_id")
    return {
        "table": kind.table,
        "id": str(row["id"]),
        "user_id": None if user is None or not kind.queue_names_user else str(user),
    }


@asynccontextmanager
async def _connection(db: Db) -> AsyncIterator[TrioConnection[Any]]:
    if isinstance(db, Pool):
        async with db.connection() as conn:
            yield conn
    else:
        yield db


def _t(kind: JobKind) -> sql.Identifier:
    return sql.Identifier(kind.table)


def _user_column(kind: JobKind) -> sql.SQL:
    return sql.SQL("NULL::uuid AS user_id" if kind.userless else "user_id")


async def create_job(db: Db, kind: JobKind, *, user_id: uuid.UUID | str | None,
                     payload: dict[str, Any], job_id: uuid.UUID | None = None) -> uuid.UUID:
    """Insert a pending job; returns its id (``job_id`` when given: a caller that must
    name a file after the job before the row exists). A user-less kind (key rotations) has
    no user: its ``payload`` carries ``from_version`` and ``to_version`` (also stored as
    columns)."""
    job_id = job_id or uuid.uuid4()
    if kind.userless:
        if user_id is not None:
            raise ValueError(f"{kind.table} jobs have no user")
        query = sql.SQL("INSERT INTO {} (id, from_version, to_version, payload) "
                        "VALUES (%s, %s, %s, %s)").format(_t(kind))
        params: tuple[Any, ...] = (job_id, int(payload["from_version"]),
                                   int(payload["to_version"]), Jsonb(payload))
    else:
        if user_id is None:
            raise ValueError(f"{kind.table} jobs need a user_id")
        query = sql.SQL("INSERT INTO {} (id, user_id, payload) VALUES (%s, %s, %s)"
                        ).format(_t(kind))
        params = (job_id, user_id, Jsonb(payload))
    async with _connection(db) as conn:
        await conn.execute(query, params, name="jobs.create")
    return job_id


async def mark_running(db: Db, kind: JobKind, job_id: uuid.UUID | str) -> bool:
    """pending|running → running, one more attempt (``started_at`` kept from the first).
    False: the job is finished (or unknown) and must not run."""
    query = sql.SQL(
        "UPDATE {} SET status = 'running', attempts = attempts + 1, error = NULL, "
        "error_code = NULL, started_at = coalesce(started_at, now()) "
        "WHERE id = %s AND status IN ('pending', 'running')").format(_t(kind))
    return await _update(db, query, (job_id,), name="jobs.mark_running")


async def mark_progress(db: Db, kind: JobKind, job_id: uuid.UUID | str,
                        progress: float) -> bool:
    """Store the progress (clamped to 0..1) of a running job."""
    query = sql.SQL("UPDATE {} SET progress = %s WHERE id = %s AND status = 'running'"
                    ).format(_t(kind))
    return await _update(db, query, (min(1.0, max(0.0, float(progress))), job_id),
                         name="jobs.mark_progress")


async def mark_completed(db: Db, kind: JobKind, job_id: uuid.UUID | str) -> bool:
    query = sql.SQL(
        "UPDATE {} SET status = 'completed', progress = 1, error = NULL, error_code = NULL, "
        "finished_at = now() "
        "WHERE id = %s AND status IN ('pending', 'running')").format(_t(kind))
    return await _update(db, query, (job_id,), name="jobs.mark_completed")


async def mark_failed(db: Db, kind: JobKind, job_id: uuid.UUID | str, error: str,
                      code: str = JOB_FAILED) -> bool:
    """pending|running → failed, with the message and its stable ``code``."""
    query = sql.SQL(
        "UPDATE {} SET status = 'failed', error = %s, error_code = %s, finished_at = now() "
        "WHERE id = %s AND status IN ('pending', 'running')").format(_t(kind))
    return await _update(db, query, (error[:ERROR_MAX_CHARS], code, job_id),
                         name="jobs.mark_failed")


async def reopen_failed(db: Db, kind: JobKind, job_id: uuid.UUID | str
                        ) -> dict[str, Any] | None:
    """failed → pending, for an operator's retry (``innera jobs retry``): attempts, error and
    finish time cleared. Returns the row's identity (for
    :func:`~innera.jobs.submission.enqueue`), or None when the job is not failed (or
    unknown)."""
    query = sql.SQL(
        "UPDATE {} SET status = 'pending', attempts = 0, error = NULL, error_code = NULL, "
        "finished_at = NULL "
        "WHERE id = %s AND status = 'failed' RETURNING id, {}").format(_t(kind),
                                                                      _user_column(kind))
    async with _connection(db) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, (job_id,),
                                                              name="jobs.reopen_failed")
        return await cur.fetchone()


async def _update(db: Db, query: sql.Composed, params: tuple[Any, ...], *, name: str
                  ) -> bool:
    """Run the UPDATE named ``name`` (the caller's); whether it changed the row."""
    async with _connection(db) as conn:
        cur = await conn.execute(query, params, name=name)
        return cur.rowcount == 1


async def get_job(db: Db, kind: JobKind, user_id: uuid.UUID | str,
                  job_id: uuid.UUID | str) -> dict[str, Any] | None:
    """The job as a dict, or None when it does not exist or belongs to another user."""
    if kind.userless:
        raise ValueError(f"{kind.table} jobs belong to no user")
    try:
        job_uuid = uuid.UUID(str(job_id))
    except ValueError:
        return None
    query = sql.SQL(
        "SELECT id, user_id, status, attempts, progress, error, error_code, payload, "
        "created_at, "
        "started_at, finished_at, updated_at FROM {} WHERE id = %s AND user_id = %s"
    ).format(_t(kind))
    async with _connection(db) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, (job_uuid, user_id),
                                                              name="jobs.read")
        return await cur.fetchone()


async def load_row(db: Db, kind: JobKind, job_id: uuid.UUID) -> dict[str, Any] | None:
    """Every column of the row, or None when it is gone."""
    query = sql.SQL("SELECT * FROM {} WHERE id = %s").format(_t(kind))
    async with _connection(db) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, (job_id,),
                                                              name="jobs.load_row")
        return await cur.fetchone()


async def unfinished(db: Db, kind: JobKind, *, after: uuid.UUID | None = None,
                     limit: int = 1000) -> list[dict[str, Any]]:
    """Pending/running rows of the kind's table by id, after ``after`` (keyset pages)."""
    query = sql.SQL(
        "SELECT id, {} FROM {} WHERE status IN ('pending', 'running') AND id > %s "
        "ORDER BY id LIMIT %s").format(_user_column(kind), _t(kind))
    async with _connection(db) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            query, (after or uuid.UUID(int=0), limit), name="jobs.unfinished")
        return await cur.fetchall()
