"""The bridge between a job table and the queue: :func:`table_handler` turns "do the work of
this row" into a queue :data:`~innera.queue.worker.Handler` that keeps the row in step.

For each delivery of a job ``"<table>:<id>"``:

1. ``mark_running`` (one more attempt). A row already finished (completed/failed) or gone is
   not run again: the delivery is a duplicate (at-least-once) and completes at once.
2. The work runs with a :class:`JobRun`: the row, and ``progress(fraction)`` which stores the
   progress in the table and on the queue and sends ``job.progress`` to the user's sockets.
3. Success → ``mark_completed`` (only while this worker still holds the lease: a stale worker
   raises instead, so its queue completion is rejected too). Failure → re-raised for the
   queue's retry/backoff; on the last attempt (or a :class:`PermanentJobError`) the row is
   marked ``failed`` with the error first, so the table never says "running" for a
   dead-lettered job.

**What a failed job shows** (:func:`job_error`): a stable ``error_code`` and a fixed message
per code (:data:`USER_MESSAGES`), never exception text, which may hold paths, SQL, hosts or
another system's words. Only a :class:`~innera.queue.jobs.UserFacingJobError` (``public``)
keeps its own message: one innera wrote for the job's reader, such as the problem an
import's parser found in the user's file. The real exception is logged here (with its
traceback), and the queue worker it is re-raised to reports it to Sentry.

Every status change is published to the user as ``job.progress``
``{id, kind, status, progress, error}``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio

from innera.db.pool import Pool
from innera.jobs import tables
from innera.jobs.kinds import JobKind
from innera.queue.jobs import Job, PermanentJobError
from innera.queue.worker import Handler, JobContext
from innera.realtime.event_log import EventLog
from innera.realtime.events import publish_to_user
from innera.redis import Redis

log = logging.getLogger("innera.jobs")

#: progress events are sent at most this often per job (the final state always is)
PROGRESS_INTERVAL_S = 0.25


class JobServices(Protocol):
    """What the bridge itself uses of the services a handler is given (the workers pass the
    whole :class:`~innera.services.Services`)."""

    @property
    def db(self) -> Pool: ...

    @property
    def redis(self) -> Redis: ...

    @property
    def events(self) -> EventLog: ...


S = TypeVar("S", bound=JobServices)


#: the message a failed job shows for its code, whatever the exception said
USER_MESSAGES: dict[str, str] = {
    tables.JOB_FAILED: "The job failed; try again later or contact support.",
    "invalid_import_file": "The file could not be imported.",
    "import_too_large": "The file is too large to import.",
    "too_many_entries": "The file holds more entries than one import may.",
    "too_many_attachments": "The file holds more attachments than one import may.",
    "entry_too_large": "An entry of the file is too large to import.",
    "too_deep": "The file's JSON is nested too deeply.",
}


def job_error(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` a failed job shows for ``exc``: a public error's own message, else
    the fixed message of its code (an unknown code: ``job_failed``'s)."""
    if isinstance(exc, PermanentJobError):
        code = exc.code or tables.JOB_FAILED
        if exc.public and str(exc):
            return code, str(exc)
    else:
        code = tables.JOB_FAILED
    return code, USER_MESSAGES.get(code, USER_MESSAGES[tables.JOB_FAILED])


class LeaseLost(Exception):
    """This worker's lease expired and the job went to another worker: stop, store nothing."""


@dataclass
class JobRun(Generic[S]):
    """What the work function gets: the services, the job's kind, its row and progress
    reporting."""

    svc: S
    kind: JobKind
    row: dict[str, Any]
    ctx: JobContext
    _last_sent: float = -1e9

    @property
    def id(self) -> uuid.UUID:
        return self.row["id"]

    @property
    def user_id(self) -> str | None:
        user = self.row.get("user_id")
        return None if user is None else str(user)

    @property
    def payload(self) -> dict[str, Any]:
        return self.row.get("payload") or {}

    @property
    def last_attempt(self) -> bool:
        return self.ctx.job.attempt >= self.ctx.job.max_attempts

    def check_lease(self) -> None:
        if self.ctx.lease_lost:
            raise LeaseLost(f"job {self.ctx.job.id}: lease lost")

    async def progress(self, fraction: float, *, force: bool = False) -> None:
        """Store ``fraction`` (0..1) and tell the user's sockets (rate-limited)."""
        self.check_lease()
        await tables.mark_progress(self.svc.db, self.kind, self.id, fraction)
        if not await self.ctx.progress(fraction):
            raise LeaseLost(f"job {self.ctx.job.id}: lease lost")
        now = trio.current_time()
        if force or now - self._last_sent >= PROGRESS_INTERVAL_S:
            self._last_sent = now
            await self.publish("running", fraction)

    async def publish(self, status: str, progress: float, error: str | None = None,
                      **extra: Any) -> None:
        await publish_status(self.svc.events, self.kind, self.row, status, progress, error,
                             **extra)


async def publish_status(events: EventLog, kind: JobKind, row: dict[str, Any], status: str,
                         progress: float, error: str | None = None, **extra: Any) -> None:
    """``job.progress`` to the job's user (nothing for a job of no user, nor for a kind that
    sends no events: :attr:`JobKind.user_events`)."""
    if row.get("user_id") is None or not kind.user_events:
        return
    await publish_to_user(events, str(row["user_id"]), "job.progress", {
        "id": str(row["id"]), "kind": kind.name, "status": status,
        "progress": round(float(progress), 4), "error": error, **extra})


Work = Callable[[JobRun[S]], Awaitable[None]]


def table_handler(svc: S, kind: JobKind, work: Work[S], *,
                  on_completed: Work[S] | None = None) -> Handler:
    """A queue handler running ``work`` for the rows of ``kind``'s table (see the module
    doc).

    ``on_completed(run)``, if given, runs once per job: only in the delivery whose
    ``mark_completed`` changed the row (so a redelivered job never runs it twice), after the
    ``completed`` event. The job is completed by then: an exception in it is logged, not
    raised (a retry would not run it again)."""
    async def handle(job: Job, ctx: JobContext) -> None:
        try:
            _, job_id = tables.parse_queue_job_id((kind,), job.id)
        except ValueError:
            raise PermanentJobError(f"job {job.id} is not a {kind.table} job") from None
        if not await tables.mark_running(svc.db, kind, job_id):
            log.info("job %s: already finished or gone; this delivery does nothing", job.id)
            return
        row = await tables.load_row(svc.db, kind, job_id)
        if row is None:
            return
        run = JobRun(svc, kind, row, ctx)
        await run.publish("running", float(row["progress"]))
        try:
            await work(run)
            run.check_lease()
        except LeaseLost:
            raise
        except Exception as exc:
            if isinstance(exc, PermanentJobError) or run.last_attempt:
                code, message = job_error(exc)
                if isinstance(exc, PermanentJobError) and exc.public:
                    log.warning("job %s failed (%s): %s", job.id, code, message)
                else:
                    log.error("job %s failed for good (%s): %s: %s", job.id, code,
                              type(exc).__name__, exc, exc_info=exc)
                await tables.mark_failed(svc.db, kind, job_id, message, code)
                await run.publish("failed", float(row["progress"]), message, errorCode=code)
            raise
        if await tables.mark_completed(svc.db, kind, job_id):
            await run.publish("completed", 1.0)
            if on_completed is not None:
                try:
                    await on_completed(run)
                except Exception:
                    log.exception("job %s: completed, but its on_completed step failed", job.id)

    return handle


async def mark_dead_lettered(svc: JobServices, kind: JobKind, job: Job, error: str) -> None:
    """The queue gave up on a job of ``kind``: its row says ``failed`` too (a no-op when the
    handler already marked it, or for a job of its queue that has no row). Needed for
    failures the handler cannot record itself, such as its timeout, which cancels it. The
    row gets ``job_failed`` and its fixed message; ``error`` (the queue's ``"Type: text"``)
    goes to the log only."""
    try:
        _, job_id = tables.parse_queue_job_id((kind,), job.id)
    except ValueError:
        return
    code = tables.JOB_FAILED
    message = USER_MESSAGES[code]
    if await tables.mark_failed(svc.db, kind, job_id, message, code):
        log.error("job %s dead-lettered by the queue: %s", job.id, error)
        row = await tables.load_row(svc.db, kind, job_id)
        if row is not None:
            await publish_status(svc.events, kind, row, "failed", float(row["progress"]),
                                 message, errorCode=code)
