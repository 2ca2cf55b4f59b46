"""The job handlers this package provides, by queue: :data:`HANDLERS` maps each job kind
(declared by its domain module) or plain queue to the factory of its handler (a factory takes
the :class:`~innera.services.Services` and returns ``async def handler(job, ctx)``).
:func:`innera.jobs.runtime.worker_queues` turns it into queue configurations;
:data:`JOB_KINDS` is what the reconciler and ``innera jobs retry`` walk.

A new kind of job: its :class:`~innera.jobs.kinds.JobKind` in its domain module, its
handler in a module of ``workers/``, and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from innera.account_deletion import ACCOUNT_DELETION_JOB
from innera.exports import EXPORT_JOB
from innera.imports import IMPORT_JOB
from innera.jobs.kinds import JobKind, QueueSpec
from innera.key_rotation import KEY_ROTATION_JOB
from innera.notifications.push_jobs import PUSH_JOBS
from innera.queue.worker import Handler
from workers import account_deletion, exports, imports, key_rotation, push

if TYPE_CHECKING:
    from innera.services import Services


HANDLERS: dict[JobKind | QueueSpec, Callable[[Services], Handler]] = {
    PUSH_JOBS: push.make_handler,
    EXPORT_JOB: exports.make_handler,
    IMPORT_JOB: imports.make_handler,
    ACCOUNT_DELETION_JOB: account_deletion.make_handler,
    KEY_ROTATION_JOB: key_rotation.make_handler,
}

#: every job kind with a table
JOB_KINDS: tuple[JobKind, ...] = tuple(k for k in HANDLERS if isinstance(k, JobKind))
