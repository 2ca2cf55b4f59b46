"""Data exports: one ZIP archive of every entry of the user, decrypted, and every ready
attachment (the format is ``docs/export-format.md``), built by the ``export-jobs`` worker
(``workers/exports.py``).

This package owns the export job (:data:`EXPORT_JOB`), where an archive lives
(:func:`archive_key`), its download link (:func:`download_link`), the SQL of the user's
exports (:func:`submit_export`, :func:`export_page`) and the sweep of
archives past EXPORT_RETENTION_DAYS (:mod:`innera.exports.sweeper`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row

from innera.db.pool import Pool
from innera.jobs import tables
from innera.jobs.kinds import JobKind, QueueSpec
from innera.jobs.submission import submission
from innera.pagination import CursorCodec
from innera.redis import Redis
from innera.storage import Storage
from innera.storage.keys import job_file_key

#: archives of large accounts stream for a while; a retry starts the archive again
EXPORT_JOB = JobKind("export_jobs", "export",
                     QueueSpec("export-jobs", concurrency=1, timeout_s=3600, attempts=5))
CONTENT_TYPE = "application/zip"
CURSOR_PURPOSE = "exports"
_COLUMNS = ("id, user_id, status, attempts, progress, error, error_code, payload, created_at, "
            "started_at, finished_at, updated_at")


def archive_key(user_id: str, job_id: str) -> str:
    """Where the archive of an export lives: ``{userId}/exports/{jobId}``."""
    return job_file_key(user_id, "exports", job_id)


def archive_filename(requested_at: datetime) -> str:
    """The download name: ``innera-export-YYYY-MM-DD.zip`` (UTC date of the request)."""
    return f"innera-export-{requested_at.astimezone(UTC).date().isoformat()}.zip"


async def download_link(storage: Storage, ttl_s: int, user_id: str, job_id: str,
                        requested_at: datetime) -> str:
    """A fresh download URL of a completed export, valid ``ttl_s`` seconds
    (EXPORT_URL_TTL_S)."""
    return await storage.presign_get(archive_key(user_id, job_id),
                                     archive_filename(requested_at), CONTENT_TYPE, ttl_s)


async def submit_export(db: Pool, redis: Redis, user_id: str) -> dict[str, Any]:
    """The user's unfinished export, or a new one (inserted, then enqueued once committed).
    Serialised per user by a transaction-scoped advisory lock, so two requests at once start
    one job."""
    async with submission(db, redis, EXPORT_JOB) as sub:
        conn = sub.conn
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"export_jobs:{user_id}",), name="exports.lock_user")
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM export_jobs WHERE user_id = %s "
            "AND status IN ('pending', 'running') ORDER BY created_at DESC LIMIT 1", (user_id,),
            name="exports.unfinished")
        row = await cur.fetchone()
        if row is not None:
            return row
        job_id = await sub.insert(user_id=user_id, payload={})
    row = await tables.get_job(db, EXPORT_JOB, user_id, job_id)
    assert row is not None
    return row


async def export_page(db: Pool, cursors: CursorCodec, user_id: str, cursor: str | None,
                      limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """The user's exports, newest first, after ``cursor``: ``limit`` rows at most and the
    cursor of the next page (None on the last)."""
    where, params = "user_id = %s", [user_id]
    if cursor is not None:
        created_at, after_id = cursors.decode(CURSOR_PURPOSE, user_id, cursor)
        where += " AND (created_at, id) < (%s, %s)"
        params += [created_at, after_id]
    async with db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM export_jobs WHERE {where} "
            "ORDER BY created_at DESC, id DESC LIMIT %s", (*params, limit + 1), name="exports.list")
        rows = await cur.fetchall()
    return cursors.page(CURSOR_PURPOSE, user_id, rows, limit)

