"""Durable job queues on Redis: :class:`JobQueue` (enqueue, inspect, and the fenced
claim/renew/complete/fail/release steps the workers use), :class:`Job`, :class:`JobInfo`.

Delivery is at-least-once: a claimed job carries a lease (renewed while the handler runs)
and a fencing token (a per-job claim counter). Completion, failure, release and progress are
accepted only with the current token, so a worker whose lease expired and whose job was given
to another worker gets :data:`LEASE_LOST` instead of finishing the job twice.

A job enqueued from a traced request or job carries that trace's ``sentry-trace`` and
``baggage`` in its payload, under ``"trace"`` (:data:`innera.observability.tracing.PAYLOAD_KEY`),
so the worker's transaction continues the trace; handlers never read that key, and a
payload without it (older jobs, the reconciler's) starts a trace of its own.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from innera.observability import tracing
from innera.queue import scripts
from innera.redis import Redis

DEFAULT_ATTEMPTS = 5
KEEP_COMPLETED = 1000
COMPLETED_AGE_S = 86_400.0
KEEP_FAILED = 10_000
FAILED_AGE_S = 7 * 86_400.0
MAX_BACKOFF_S = 3600.0

Status = Literal["waiting", "delayed", "active", "completed", "failed"]
FailOutcome = Literal["retried", "failed", "lease-lost"]
LEASE_LOST = "lease-lost"


class PermanentJobError(Exception):
    """Raised by a handler: the job fails at once, without retries. ``code``: the stable,
    machine-readable name of the failure that the job's table records beside the message.

    The message is for the logs and Sentry only: the job's row gets the fixed message of its
    code (``innera.jobs.handlers.USER_MESSAGES``), unless the error is ``public``."""

    code = "job_failed"
    #: True: the message was written by innera for the job's reader (the user, or for a job
    #: of no user the operator) and is stored as it is (:class:`UserFacingJobError`)
    public = False

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UserFacingJobError(PermanentJobError):
    """A permanent failure whose message innera wrote for the job's reader, such as the
    problem an import's parser found in the user's file ("innera-export.json: entries[3].body:
    must not be empty"). Never raise it with exception text: it is shown as it is."""

    public = True


def keys(name: str) -> dict[str, str]:
    """Every key of queue ``name``, all with the cluster hash tag ``{q:<name>}``."""
    tag = f"{{q:{name}}}"
    return {k: f"{tag}:{k}" for k in (
        "waiting", "delayed", "active", "completed", "failed", "meta", "payloads", "reaper")}


@dataclass
class Job:
    """A claimed job, as handed to a handler. ``token`` fences every write about it."""

    id: str
    queue: str
    payload: dict[str, Any]
    attempt: int
    token: int
    max_attempts: int


@dataclass
class JobInfo:
    id: str
    queue: str
    status: Status
    attempts: int
    max_attempts: int
    progress: float | None = None
    error: str | None = None
    stalls: int = 0
    created_ms: int | None = None
    finished_ms: int | None = None
    payload: dict[str, Any] | None = field(default=None, repr=False)


def job_info(queue: str, job_id: str, meta: str, payload: str | None) -> JobInfo:
    m = json.loads(meta)
    return JobInfo(
        id=job_id, queue=queue, status=m["s"], attempts=int(m.get("a", 0)),
        max_attempts=int(m.get("m", 0)), progress=m.get("p"), error=m.get("e"),
        stalls=int(m.get("st", 0)), created_ms=_int(m.get("c")), finished_ms=_int(m.get("f")),
        payload=json.loads(payload) if payload else None,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class JobQueue:
    """One named queue. ``attempts``: each queue's are stated once, in its
    ``innera.jobs.kinds.QueueSpec`` (else 5); retry ``n`` waits ``backoff_base_s × 2^(n-1)``
    (capped at 1 h) with equal jitter."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        *,
        attempts: int | None = None,
        backoff_base_s: float = 1.0,
        lease_s: float = 30.0,
        keep_completed: int = KEEP_COMPLETED,
        completed_age_s: float = COMPLETED_AGE_S,
        keep_failed: int = KEEP_FAILED,
        failed_age_s: float = FAILED_AGE_S,
    ) -> None:
        if not name or "{" in name or "}" in name:
            raise ValueError(f"bad queue name {name!r}")
        self.redis = redis
        self.name = name
        self.attempts = attempts if attempts is not None else DEFAULT_ATTEMPTS
        self.backoff_base_s = backoff_base_s
        self.lease_s = lease_s
        self.keep_completed = keep_completed
        self.completed_age_ms = int(completed_age_s * 1000)
        self.keep_failed = keep_failed
        self.failed_age_ms = int(failed_age_s * 1000)
        self.keys = keys(name)
        client = redis.client
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._claim = client.register_script(scripts.CLAIM)
        self._renew = client.register_script(scripts.RENEW)
        self._progress = client.register_script(scripts.PROGRESS)
        self._complete = client.register_script(scripts.COMPLETE)
        self._fail = client.register_script(scripts.FAIL)
        self._release = client.register_script(scripts.RELEASE)

    def keys_for(self, *names: str) -> list[str]:
        """The Redis keys of this queue named ``names`` (see ``keys``), in order (script KEYS)."""
        return [self.keys[n] for n in names]

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    # ---------------------------------------------------------------- producers

    async def enqueue(
        self, payload: dict[str, Any], *, job_id: str | None = None, delay_s: float = 0
    ) -> str:
        """Add a job; returns its id. An id that exists and is not finished is not added
        again (the existing job's id is returned); a finished one is replaced. Enqueued
        from a traced request or job, the payload also carries its trace."""
        job_id = job_id or uuid.uuid4().hex
        if tracing.SWITCH.on and (trace := tracing.trace_headers()) is not None:
            payload = {**payload, tracing.PAYLOAD_KEY: trace}
        await self._enqueue(
            keys=self.keys_for("waiting", "delayed", "completed", "failed", "meta", "payloads"),
            args=[job_id, json.dumps(payload, separators=(",", ":")),
                  max(0, int(delay_s * 1000)), self.attempts])
        return job_id

    async def get(self, job_id: str) -> JobInfo | None:
        meta = await self.redis.client.hget(self.keys["meta"], job_id)
        if meta is None:
            return None
        payload = await self.redis.client.hget(self.keys["payloads"], job_id)
        return job_info(self.name, job_id, meta, payload)

    # ---------------------------------------------------------------- workers

    async def claim(self, count: int = 1) -> list[Job]:
        """Promote due delayed jobs, pop up to ``count`` and lease them — one atomic step."""
        rows = await self._claim(
            keys=self.keys_for("waiting", "delayed", "active", "meta", "payloads"),
            args=[self.lease_ms, count])
        return [Job(id=str(r[0]), queue=self.name, payload=json.loads(r[1]), attempt=int(r[2]),
                    token=int(r[3]), max_attempts=int(r[4])) for r in rows]

    async def renew(self, job: Job) -> bool:
        """Extend the lease; False: the lease is lost (expired and reaped, or reclaimed)."""
        return bool(await self._renew(keys=self.keys_for("active", "meta"),
                                      args=[job.id, job.token, self.lease_ms]))

    async def progress(self, job: Job, fraction: float) -> bool:
        return bool(await self._progress(keys=self.keys_for("meta"),
                                         args=[job.id, job.token, repr(float(fraction))]))

    async def complete(self, job: Job) -> bool:
        """True: completed. False: the lease was lost, the completion is rejected."""
        return bool(await self._complete(
            keys=self.keys_for("active", "completed", "meta", "payloads"),
            args=[job.id, job.token, self.keep_completed, self.completed_age_ms]))

    async def fail(
        self, job: Job, error: str, *, permanent: bool = False, max_attempts: int = 0
    ) -> FailOutcome:
        """Retry later with backoff, or dead-letter after the last attempt (or at once when
        ``permanent``). ``max_attempts`` 0: the count stored on the job at enqueue."""
        reply = await self._fail(
            keys=self.keys_for("active", "delayed", "failed", "meta", "payloads"),
            args=[job.id, job.token, error[:4000], int(self.backoff_s(job.attempt) * 1000),
                  max_attempts, int(permanent), self.keep_failed, self.failed_age_ms])
        return str(reply)  # type: ignore[return-value]

    async def release(self, job: Job) -> bool:
        """Back to the head of waiting without counting the attempt or a stall (graceful
        shutdown). False: the lease was already lost."""
        return bool(await self._release(keys=self.keys_for("active", "waiting", "meta"),
                                        args=[job.id, job.token]))

    def backoff_s(self, attempt: int) -> float:
        full = min(MAX_BACKOFF_S, self.backoff_base_s * 2 ** max(0, attempt - 1))
        return full / 2 + random.random() * full / 2  # jitter, not a secret
