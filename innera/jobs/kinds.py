"""What a kind of background job is, declared once: :class:`JobKind` (its table, queue,
name, retry policy) and :class:`QueueSpec` (how its queue's workers run).

Each domain module that runs jobs declares its kind (``innera.exports.EXPORT_JOB``,
``innera.imports.IMPORT_JOB``, ``innera.account_deletion.ACCOUNT_DELETION_JOB``,
``innera.key_rotation.KEY_ROTATION_JOB``); ``workers/registry.py`` pairs each with its
handler. Everything that walks the job tables (the reconciler, ``innera jobs retry``) takes
the kinds as data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TABLE = re.compile(r"^[a-z][a-z_]*_jobs$")


@dataclass(frozen=True)
class QueueSpec:
    """A Redis queue and how the job workers run it."""

    name: str
    #: handlers running at once per process
    concurrency: int = 1
    #: a handler running longer is cancelled (the attempt fails and is retried)
    timeout_s: float = 600.0
    #: attempts stored on each job enqueued on this queue (None: the queue's default, 5)
    attempts: int | None = None
    #: retry ``n`` waits ``backoff_base_s × 2^(n-1)`` (capped, with jitter)
    backoff_base_s: float = 1.0


@dataclass(frozen=True)
class JobKind:
    """A kind of job with a table (migration 0007): the row is the source of truth, the
    queue (``queue.name``) carries the work under the id ``"<table>:<row id>"``."""

    table: str
    #: the name in API paths and ``job.progress`` events
    name: str
    queue: QueueSpec
    #: the rows have no ``user_id`` (a key rotation: ``from_version``/``to_version`` instead)
    userless: bool = False
    #: the queue payload carries the user id (an account deletion's must not spread the id
    #: it is erasing into Redis)
    queue_names_user: bool = True
    #: its ``job.progress`` events go to the user's sockets (and so into the user's event log,
    #: ``ws:events:{userId}``); an account deletion's must not: its user's sockets are closed,
    #: and an event would leave a key naming the erased user in Redis for a day
    user_events: bool = True

    def __post_init__(self) -> None:
        if not _TABLE.match(self.table):
            raise ValueError(f"not a job table name: {self.table!r}")
