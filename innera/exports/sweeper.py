"""Export archives past their retention: a periodic sweep deletes them.

A completed export's archive (``{userId}/exports/{jobId}``) holds the user's decrypted
journal. EXPORT_RETENTION_DAYS after the export finished, :func:`sweep_once` deletes the
archive (with every version of it on a versioned bucket) and turns the job's status from
``completed`` to ``expired`` (migration 0013): ``GET /v1/exports/{id}`` then answers the job
without a download link, and the user can start a new export.

Safe on every instance at once and after a crash at any point, without locks: the object is
deleted first (idempotent: an absent object is no error), then the row changes ``completed →
expired`` in a conditional ``UPDATE`` (counted once, whoever gets there first). A row never
says ``expired`` while its archive may still exist. Two instances sweeping at the same moment
may both delete an object: harmless. A pass walks the candidates in keyset pages of
:data:`BATCH` ordered by ``(finished_at, id)`` (index ``export_jobs_completed_idx``): a row
whose object delete failed stays ``completed`` (logged) and is tried again by the next pass.

:func:`run_export_sweeper` is a supervised service task, started beside the job reconciler.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import trio

from innera.db.pool import Pool
from innera.exports import archive_key
from innera.storage import Storage

log = logging.getLogger("innera.jobs.export_sweeper")

SWEEP_INTERVAL_S = 3600.0
BATCH = 200
PASS_TIMEOUT_S = 600.0


async def sweep_once(db: Pool, storage: Storage, *, retention_days: int) -> int:
    """Delete the archives of exports finished more than ``retention_days`` ago and mark
    their jobs ``expired``; returns how many jobs this call expired."""
    expired = 0
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        where = ("status = 'completed' "
                 "AND finished_at < now() - make_interval(days => %s)")
        params: list[Any] = [retention_days]
        if after is not None:
            where += " AND (finished_at, id) > (%s, %s)"
            params += list(after)
        async with db.connection() as conn:
            cur = await conn.execute(
                f"SELECT id, user_id, finished_at FROM export_jobs WHERE {where} "
                "ORDER BY finished_at, id LIMIT %s", (*params, BATCH), name="exports.expired_batch")
            rows: list[Any] = await cur.fetchall()
        if not rows:
            break
        done = []
        for job_id, user_id, _finished_at in rows:
            key = archive_key(str(user_id), str(job_id))
            try:
                await storage.delete(key, all_versions=True)
            except Exception as exc:
                log.warning("expired export %s: archive not deleted (kept as completed, "
                            "tried again next pass): %s: %s", job_id, type(exc).__name__, exc)
                continue
            done.append(job_id)
        if done:
            async with db.connection() as conn:
                cur = await conn.execute(
                    "UPDATE export_jobs SET status = 'expired' "
                    "WHERE id = ANY(%s) AND status = 'completed'", (done,),
                    name="exports.mark_expired")
                expired += max(cur.rowcount, 0)
        if len(rows) < BATCH:
            break
        after = (rows[-1][2], rows[-1][0])
    if expired:
        log.info("deleted the archives of %d export(s) older than %d day(s)", expired,
                 retention_days)
    return expired


async def run_export_sweeper(
    db: Pool, storage: Storage, *, retention_days: int, interval_s: float = SWEEP_INTERVAL_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval_s``: :func:`sweep_once`. A failed pass is logged and retried at the
    next interval."""
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        try:
            with trio.fail_after(PASS_TIMEOUT_S):
                await sweep_once(db, storage, retention_days=retention_days)
        except Exception as exc:
            log.error("export sweep failed: %s: %s; retrying later", type(exc).__name__, exc)
