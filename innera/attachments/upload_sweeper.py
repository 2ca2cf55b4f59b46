"""Attachments declared but never uploaded: a periodic sweep removes them.

An attachment row is ``pending`` from the moment its upload URL is issued until the client
completes it. A pending row older than the upload URL's lifetime plus a grace period
(:data:`GRACE_S`) can never complete: its URL has expired. :func:`sweep_once` deletes such
rows (``DELETE … WHERE status = 'pending' RETURNING``, so a completion racing the sweep wins
or loses atomically, and several instances sweeping at once never delete twice), then their
objects (a partial upload may exist). A failed object delete is logged; the row is gone, so
the object would be orphaned: the next account purge (``{userId}/`` prefix) still removes it.

:func:`run_upload_sweeper` is a supervised service task the process starts beside the job
reconciler (``innera/process.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from innera.db.pool import Pool
from innera.storage import Storage
from innera.storage.keys import object_key

log = logging.getLogger("innera.attachments.upload_sweeper")

GRACE_S = 3600
SWEEP_INTERVAL_S = 600.0
BATCH = 500
PASS_TIMEOUT_S = 120.0


async def sweep_once(db: Pool, storage: Storage, *, older_than_s: float) -> int:
    """Delete pending attachments created more than ``older_than_s`` ago; returns how many."""
    removed = 0
    while True:
        async with db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM attachments WHERE id IN ("
                "  SELECT id FROM attachments WHERE status = 'pending'"
                "  AND created_at < now() - make_interval(secs => %s)"
                "  ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                "AND status = 'pending' RETURNING id, user_id, entry_id",
                (older_than_s, BATCH), name="attachments.sweep_pending")
            rows: list[Any] = await cur.fetchall()
        for attachment_id, user_id, entry_id in rows:
            key = object_key(str(user_id), str(entry_id), str(attachment_id))
            try:
                await storage.delete(key)
            except Exception as exc:
                log.warning("stale upload %s: row removed, object not deleted: %s", key, exc)
        removed += len(rows)
        if len(rows) < BATCH:
            break
    if removed:
        log.info("removed %d attachment(s) declared but never uploaded", removed)
    return removed


async def run_upload_sweeper(
    db: Pool, storage: Storage, *, url_ttl_s: float, interval_s: float = SWEEP_INTERVAL_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval_s``: :func:`sweep_once` for uploads older than ``url_ttl_s`` +
    :data:`GRACE_S`. A failed pass is logged and retried at the next interval."""
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        try:
            with trio.fail_after(PASS_TIMEOUT_S):
                await sweep_once(db, storage, older_than_s=url_ttl_s + GRACE_S)
        except Exception as exc:
            log.error("upload sweep failed: %s: %s; retrying later", type(exc).__name__, exc)
