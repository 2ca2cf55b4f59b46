"""Job workers: :func:`run_workers` (a supervised service task) runs, per queue, a claim loop,
up to ``concurrency`` handlers (each with its lease renewed every lease/3), and the queue's
stalled-job reaper.

Waking is by polling (``poll_interval_s``, and at once when a handler finishes): no blocking
Redis reads, which must not be cancelled (see innera/redis.py).

Stopping: once ``stop`` is set, nothing more is claimed and the running handlers finish;
``run_workers`` returns when they have. If it is cancelled first (the caller's deadline), each
unfinished job is released back to the head of waiting — shielded, bounded, fenced — without
consuming its attempt or counting a stall.

Tracing: each delivery of a job is one Sentry transaction, ``job <queue>``, tagged with the
queue and the job id, continuing the trace its payload carries
(:func:`innera.observability.tracing.job_transaction`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from innera.observability import tracing
from innera.observability.metrics import Metrics
from innera.observability.sentry import capture_task_exception
from innera.queue.jobs import (
    COMPLETED_AGE_S,
    FAILED_AGE_S,
    KEEP_COMPLETED,
    KEEP_FAILED,
    LEASE_LOST,
    Job,
    JobQueue,
    PermanentJobError,
    keys,
)
from innera.queue.reaper import MAX_STALLS, Reaper
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.queue.worker")

RELEASE_TIMEOUT_S = 2.0
ERROR_BACKOFF_S = 1.0


class JobContext:
    """What a handler gets besides the job: progress reporting and the lease state."""

    def __init__(self, job: Job, queue: JobQueue) -> None:
        self.job = job
        self._queue = queue
        #: set when a renewal found the lease gone: the job now belongs to another worker,
        #: and this worker's completion will be rejected.
        self.lease_lost = False

    async def progress(self, fraction: float) -> bool:
        """Store the progress (0..1) on the job. False when the lease is lost."""
        ok = await self._queue.progress(self.job, min(1.0, max(0.0, fraction)))
        if not ok:
            self.lease_lost = True
        return ok


Handler = Callable[[Job, JobContext], Awaitable[None]]
#: called once a job is dead-lettered (its last attempt failed), with the error text
DeadLetterHook = Callable[[Job, str], Awaitable[None]]
DEAD_LETTER_HOOK_TIMEOUT_S = 10.0


@dataclass
class QueueConfig:
    handler: Handler
    concurrency: int = 1
    #: None: the count stored on each job at enqueue (the queue's default); else overrides it
    attempts: int | None = None
    backoff_base_s: float = 1.0
    lease_s: float = 30.0
    #: a handler running longer is cancelled and counts as a failed attempt
    timeout_s: float = 600.0
    keep_completed: int = KEEP_COMPLETED
    completed_age_s: float = COMPLETED_AGE_S
    keep_failed: int = KEEP_FAILED
    failed_age_s: float = FAILED_AGE_S
    max_stalls: int = MAX_STALLS
    reaper: bool = True
    reaper_interval_s: float | None = None
    #: jobs claimed per script call at most
    batch: int = 32
    #: told when a job is dead-lettered, whatever failed it (an exception of the handler,
    #: or its timeout, which cancels the handler before it can record anything itself)
    on_dead_letter: DeadLetterHook | None = None

    def queue(self, redis: Redis, name: str) -> JobQueue:
        return JobQueue(redis, name, attempts=self.attempts, backoff_base_s=self.backoff_base_s,
                        lease_s=self.lease_s, keep_completed=self.keep_completed,
                        completed_age_s=self.completed_age_s, keep_failed=self.keep_failed,
                        failed_age_s=self.failed_age_s)


async def run_workers(
    redis: Redis,
    queues: dict[str, QueueConfig],
    metrics: Metrics | None,
    *,
    stop: trio.Event,
    poll_interval_s: float = 0.1,
    gauge_interval_s: float = 15.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Claim and run jobs of ``queues`` until ``stop`` is set, then let the running jobs
    finish and return. Also refreshes ``innera_jobs_waiting`` every ``gauge_interval_s``."""
    async with trio.open_nursery() as nursery:
        for name, config in queues.items():
            worker = _QueueWorker(redis, name, config, metrics, poll_interval_s)
            await nursery.start(worker.run, stop)
        if metrics is not None and gauge_interval_s > 0:
            nursery.start_soon(run_waiting_gauges, redis, metrics, list(queues), stop,
                               gauge_interval_s)
        task_status.started()


@asynccontextmanager
async def job_workers(
    redis: Redis, queues: dict[str, QueueConfig], metrics: Metrics | None, *,
    drain_timeout_s: float, **options: Any,
) -> AsyncIterator[None]:
    """For the process' exit stack: workers run inside the block; leaving it stops claiming
    and waits up to ``drain_timeout_s`` for the running jobs, then releases the rest."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_workers, redis, queues, metrics, stop=stop, **options))
        try:
            yield
        finally:
            stop.set()
            nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline,
                                                trio.current_time() + drain_timeout_s)


async def refresh_waiting_gauges(redis: Redis, metrics: Metrics, queues: list[str]) -> None:
    """``innera_jobs_waiting{queue}`` = length of the waiting list (not delayed jobs)."""
    for name in queues:
        metrics.jobs_waiting.labels(queue=name).set(await redis.client.llen(keys(name)["waiting"]))


async def run_waiting_gauges(redis: Redis, metrics: Metrics, queues: list[str],
                             stop: trio.Event, interval_s: float) -> None:
    while not stop.is_set():
        try:
            await refresh_waiting_gauges(redis, metrics, queues)
        except UNAVAILABLE_ERRORS as exc:
            redis.record_error(exc)
        except Exception:
            log.exception("refreshing the jobs_waiting gauges failed")
        with trio.move_on_after(interval_s):
            await stop.wait()


class _QueueWorker:
    def __init__(self, redis: Redis, name: str, config: QueueConfig, metrics: Metrics | None,
                 poll_interval_s: float) -> None:
        if config.concurrency < 1:
            raise ValueError(f"queue {name}: concurrency must be ≥ 1")
        self.redis = redis
        self.name = name
        self.config = config
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.queue = config.queue(redis, name)
        self.running = 0
        self.wake = trio.Event()

    async def run(self, stop: trio.Event, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as services:
            services.start_soon(self._watch_stop, stop)
            if self.config.reaper:
                reaper = Reaper(self.queue, interval_s=self.config.reaper_interval_s,
                                max_stalls=self.config.max_stalls)
                await services.start(reaper.run, stop)
            async with trio.open_nursery() as jobs:
                task_status.started()
                await self._claim_loop(jobs, stop)
            services.cancel_scope.cancel()
        log.info("queue %s: workers stopped", self.name)

    async def _watch_stop(self, stop: trio.Event) -> None:
        await stop.wait()
        self.wake.set()

    async def _sleep(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self.wake.wait()

    async def _claim_loop(self, jobs: trio.Nursery, stop: trio.Event) -> None:
        while not stop.is_set():
            self.wake = trio.Event()  # set by a finishing handler or by stop
            free = self.config.concurrency - self.running
            if free <= 0:
                await self._sleep(1.0)
                continue
            want = min(free, self.config.batch)
            try:
                claimed = await self.queue.claim(want)
            except UNAVAILABLE_ERRORS as exc:
                self.redis.record_error(exc)
                await self._sleep(ERROR_BACKOFF_S)
                continue
            except Exception:
                log.exception("queue %s: claim failed", self.name)
                await self._sleep(ERROR_BACKOFF_S)
                continue
            for job in claimed:
                self.running += 1
                jobs.start_soon(self._run_job, job, name=f"job {self.name} {job.id}")
            if len(claimed) < want:  # the queue is empty (for now)
                await self._sleep(self.poll_interval_s)

    async def _run_job(self, job: Job) -> None:
        with tracing.job_transaction(self.name, job.id, job.payload):
            await self._run_traced_job(job)

    async def _run_traced_job(self, job: Job) -> None:
        ctx = JobContext(job, self.queue)
        started = trio.current_time()
        settled = False
        try:
            error: Exception | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_lease, job, ctx)
                try:
                    with trio.fail_after(self.config.timeout_s):
                        await self.config.handler(job, ctx)
                except Exception as exc:
                    error = exc
                    tracing.mark_failed()
                nursery.cancel_scope.cancel()
            await self._settle(job, error, trio.current_time() - started)
            settled = True
        finally:
            self.running -= 1
            self.wake.set()
            if not settled:  # cancelled (shutdown deadline): give the job back
                with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_S):
                    await self._release(job)

    async def _release(self, job: Job) -> None:
        try:
            if await self.queue.release(job):
                log.info("queue %s: job %s released to waiting (shutdown)", self.name, job.id)
            else:
                log.warning("queue %s: job %s: lease lost, not released", self.name, job.id)
        except Exception as exc:
            log.warning("queue %s: could not release job %s (%s); the reaper will requeue it",
                        self.name, job.id, exc)

    async def _keep_lease(self, job: Job, ctx: JobContext) -> None:
        interval = self.queue.lease_s / 3
        while True:
            await trio.sleep(interval)
            try:
                # shielded (bounded): a cancelled command would cost its pooled connection
                with trio.CancelScope(shield=True), trio.move_on_after(interval):
                    ok = await self.queue.renew(job)
            except UNAVAILABLE_ERRORS as exc:
                self.redis.record_error(exc)
                continue
            except Exception:
                log.exception("queue %s: renewing the lease of job %s failed", self.name, job.id)
                continue
            if not ok:
                ctx.lease_lost = True
                log.warning("queue %s: job %s: lease lost (expired and given to another "
                            "worker); its result will be rejected", self.name, job.id)
                return

    async def _settle(self, job: Job, error: Exception | None, duration_s: float) -> None:
        try:
            if error is None:
                if await self.queue.complete(job):
                    self._count("completed", duration_s)
                else:
                    log.warning("queue %s: job %s: lease lost, completion rejected "
                                "(token %d)", self.name, job.id, job.token)
                return
            outcome = await self.queue.fail(
                job, f"{type(error).__name__}: {error}",
                permanent=isinstance(error, PermanentJobError),
                max_attempts=self.config.attempts or 0)
        except UNAVAILABLE_ERRORS as exc:
            self.redis.record_error(exc)
            log.warning("queue %s: job %s: result not stored (Redis unavailable); the reaper "
                        "will requeue it", self.name, job.id)
            return
        except Exception:
            log.exception("queue %s: job %s: storing the result failed", self.name, job.id)
            return
        if outcome == LEASE_LOST:
            log.warning("queue %s: job %s: lease lost, failure rejected: %r",
                        self.name, job.id, error)
            return
        self._count(outcome, duration_s)
        log.warning("queue %s: job %s attempt %d %s: %r", self.name, job.id, job.attempt,
                    outcome, error)
        capture_task_exception(error, queue=self.name, job_id=job.id)
        if outcome != "failed":
            return
        if self.metrics is not None and self.name == "account-deletion":
            self.metrics.account_deletion_failed.inc()
        if self.config.on_dead_letter is not None:
            try:
                with trio.fail_after(DEAD_LETTER_HOOK_TIMEOUT_S):
                    await self.config.on_dead_letter(job, f"{type(error).__name__}: {error}")
            except Exception:
                log.exception("queue %s: job %s: the dead-letter hook failed", self.name, job.id)

    def _count(self, outcome: str, duration_s: float) -> None:
        if self.metrics is not None:
            self.metrics.jobs_processed.labels(queue=self.name, outcome=outcome).inc()
            self.metrics.job_duration.labels(queue=self.name).observe(duration_s)
