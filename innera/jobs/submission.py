"""Submitting a job: insert its row, commit, then enqueue it (:func:`submit`, or
:func:`submission` when the insert is part of a larger transaction).

The row is the job: it is enqueued only once committed (a worker must find it), and if the
enqueue fails because Redis is unavailable, the row stays ``pending`` and the reconciler
(:mod:`innera.jobs.reconciler`) enqueues it later, so a Redis outage delays jobs, never loses
them (logged, not raised). Enqueueing is idempotent: the queue does not add a job id it holds
unfinished.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from innera.db.connection import TrioConnection
from innera.db.pool import Pool
from innera.jobs import tables
from innera.jobs.kinds import JobKind
from innera.queue.jobs import JobQueue
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.jobs")


async def enqueue(redis: Redis, kind: JobKind, row: dict[str, Any]) -> str:
    """Put the row's job on its queue (a job id the queue holds unfinished is not added
    twice), with the kind's attempts. Returns the queue job id."""
    queue = JobQueue(redis, kind.queue.name, attempts=kind.queue.attempts,
                     backoff_base_s=kind.queue.backoff_base_s)
    return await queue.enqueue(tables.queue_payload(kind, row),
                               job_id=tables.queue_job_id(kind, row["id"]))


async def enqueue_or_leave(redis: Redis, kind: JobKind, row: dict[str, Any]) -> str:
    """:func:`enqueue`; while Redis is unavailable the row stays pending for the reconciler
    (logged, not raised). Returns the queue job id either way."""
    try:
        return await enqueue(redis, kind, row)
    except UNAVAILABLE_ERRORS as exc:
        redis.record_error(exc)
        queue_id = tables.queue_job_id(kind, row["id"])
        log.warning("job %s: not enqueued (Redis unavailable); the reconciler will enqueue it",
                    queue_id)
        return queue_id


class Submission:
    """A transaction submitting jobs of one kind: rows inserted with :meth:`insert` (or
    named with :meth:`enqueue_after_commit`) are enqueued once it commits."""

    def __init__(self, conn: TrioConnection[Any], kind: JobKind) -> None:
        self.conn = conn
        self.kind = kind
        self._rows: dict[uuid.UUID, dict[str, Any]] = {}

    async def insert(self, *, user_id: uuid.UUID | str | None, payload: dict[str, Any],
                     job_id: uuid.UUID | None = None) -> uuid.UUID:
        """Insert a pending job (:func:`~innera.jobs.tables.create_job`), enqueued after the
        commit; returns its id."""
        job_id = await tables.create_job(self.conn, self.kind, user_id=user_id,
                                         payload=payload, job_id=job_id)
        self.enqueue_after_commit({"id": job_id, "user_id": user_id})
        return job_id

    def enqueue_after_commit(self, row: dict[str, Any]) -> None:
        """Enqueue this row's job (``{"id", "user_id"}``) once the transaction commits."""
        self._rows[row["id"]] = row

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())


@asynccontextmanager
async def submission(db: Pool, redis: Redis, kind: JobKind) -> AsyncIterator[Submission]:
    """A transaction on a connection of ``db`` (``.conn``) whose submitted jobs are enqueued
    after it commits (:func:`enqueue_or_leave`); nothing is enqueued when it rolls back."""
    async with db.connection() as conn:
        async with conn.transaction():
            sub = Submission(conn, kind)
            yield sub
    for row in sub.rows:
        await enqueue_or_leave(redis, kind, row)


async def submit(db: Pool, redis: Redis, kind: JobKind, *, user_id: uuid.UUID | str | None,
                 payload: dict[str, Any], job_id: uuid.UUID | None = None) -> str:
    """Insert a pending job of ``kind`` (with id ``job_id`` when given), commit, then enqueue
    it; returns the queue job id (``"<table>:<id>"``). If Redis is unavailable the job stays
    pending in the table and the reconciler enqueues it later (logged, not raised)."""
    async with submission(db, redis, kind) as sub:
        job_id = await sub.insert(user_id=user_id, payload=payload, job_id=job_id)
    return tables.queue_job_id(kind, job_id)
