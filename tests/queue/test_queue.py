"""The job queue against a real Redis (a private DB per test)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from innera.observability.metrics import Metrics
from innera.queue import admin
from innera.queue import worker as worker_mod
from innera.queue.jobs import Job, JobQueue, PermanentJobError
from innera.queue.reaper import Reaper
from innera.queue.worker import JobContext, QueueConfig, job_workers, run_workers
from innera.redis import Redis

pytestmark = pytest.mark.timeout(30)

Q = "export-jobs"
ROOT = Path(__file__).resolve().parents[2]


async def wait_until(cond: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not await cond():
            await trio.sleep(0.02)


async def status(queue: JobQueue, job_id: str) -> str | None:
    info = await queue.get(job_id)
    return None if info is None else info.status


def count(metrics: Metrics, outcome: str, queue: str = Q) -> float:
    return metrics.jobs_processed.labels(queue=queue, outcome=outcome)._value.get()


async def start_workers(nursery: trio.Nursery, redis: Redis, queues: dict[str, QueueConfig],
                        metrics: Metrics | None = None, **kw: Any) -> trio.Event:
    stop = trio.Event()
    await nursery.start(lambda task_status: run_workers(
        redis, queues, metrics, stop=stop, poll_interval_s=0.02, task_status=task_status, **kw))
    return stop


# ------------------------------------------------------------------ the queue itself


async def test_enqueue_claim_complete(redis: Redis) -> None:
    q = JobQueue(redis, Q)
    job_id = await q.enqueue({"user": "u1"})
    info = await q.get(job_id)
    assert info is not None
    assert (info.status, info.attempts, info.max_attempts, info.payload) == (
        "waiting", 0, 5, {"user": "u1"})
    [job] = await q.claim(5)
    assert (job.id, job.queue, job.payload, job.attempt, job.token) == (
        job_id, Q, {"user": "u1"}, 1, 1)
    assert await status(q, job_id) == "active"
    assert await q.claim() == []
    assert await q.progress(job, 0.5)
    assert (await q.get(job_id)).progress == 0.5  # type: ignore[union-attr]
    assert await q.complete(job)
    assert await status(q, job_id) == "completed"
    assert not await q.complete(job)  # not active any more
    assert await q.get("nope") is None
    assert JobQueue(redis, "any").attempts == 5  # a kind states its own (tests/jobs)


async def test_dedupe_by_id(redis: Redis) -> None:
    q = JobQueue(redis, "account-deletion")
    assert await q.enqueue({"n": 1}, job_id="account-deletion:u1") == "account-deletion:u1"
    assert await q.enqueue({"n": 2}, job_id="account-deletion:u1") == "account-deletion:u1"
    assert await redis.client.llen(q.keys["waiting"]) == 1
    assert (await q.get("account-deletion:u1")).payload == {"n": 1}  # type: ignore[union-attr]
    [job] = await q.claim()
    await q.enqueue({"n": 3}, job_id="account-deletion:u1")  # active: still deduplicated
    assert await q.claim() == []
    assert await q.complete(job)
    await q.enqueue({"n": 4}, job_id="account-deletion:u1")  # finished: enqueued afresh
    [job] = await q.claim()
    assert (job.payload, job.attempt) == ({"n": 4}, 1)


async def test_delayed_job_runs_after_its_delay(redis: Redis) -> None:
    q = JobQueue(redis, Q)
    job_id = await q.enqueue({}, delay_s=0.4)
    assert await status(q, job_id) == "delayed"
    assert await q.claim() == []
    await trio.sleep(0.2)
    assert await q.claim() == []
    await trio.sleep(0.25)
    [job] = await q.claim()
    assert job.id == job_id


async def test_delayed_job_through_a_worker(redis: Redis) -> None:
    started: list[float] = []

    async def handler(job: Job, ctx: JobContext) -> None:
        started.append(trio.current_time())

    q = JobQueue(redis, Q)
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: QueueConfig(handler)})
        t0 = trio.current_time()
        job_id = await q.enqueue({}, delay_s=0.3)
        await wait_until(lambda: _is(q, job_id, "completed"))
        stop.set()
    assert len(started) == 1 and 0.28 <= started[0] - t0 < 1.0


async def _is(q: JobQueue, job_id: str, wanted: str) -> bool:
    return await status(q, job_id) == wanted


async def test_retry_with_backoff_then_dead_letter(redis: Redis) -> None:
    metrics = Metrics()
    times: list[float] = []

    async def handler(job: Job, ctx: JobContext) -> None:
        times.append(trio.current_time())
        assert job.attempt == len(times)
        raise RuntimeError(f"boom {job.attempt}")

    q = JobQueue(redis, Q, attempts=3)
    job_id = await q.enqueue({"x": 1})
    config = QueueConfig(handler, backoff_base_s=0.1)
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: config}, metrics)
        await wait_until(lambda: _is(q, job_id, "failed"))
        stop.set()
    info = await q.get(job_id)
    assert info is not None and info.attempts == 3 and info.error == "RuntimeError: boom 3"
    assert len(times) == 3
    # equal jitter: retry n waits between base·2^(n-1)/2 and base·2^(n-1)
    assert 0.05 <= times[1] - times[0] < 0.5
    assert 0.1 <= times[2] - times[1] < 0.6
    assert (count(metrics, "retried"), count(metrics, "failed"), count(metrics, "completed")) \
        == (2, 1, 0)
    assert [f.id for f in await admin.list_failed(redis, Q)] == [job_id]


async def test_permanent_error_fails_at_once(redis: Redis) -> None:
    metrics = Metrics()
    calls = 0

    async def handler(job: Job, ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        raise PermanentJobError("user gone")

    q = JobQueue(redis, "account-deletion")
    job_id = await q.enqueue({}, job_id="account-deletion:u9")
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {"account-deletion": QueueConfig(handler)},
                                   metrics)
        await wait_until(lambda: _is(q, job_id, "failed"))
        stop.set()
    info = await q.get(job_id)
    assert info is not None and info.attempts == 1 and calls == 1
    assert info.error == "PermanentJobError: user gone"
    assert count(metrics, "failed", "account-deletion") == 1
    assert count(metrics, "retried", "account-deletion") == 0
    assert metrics.account_deletion_failed._value.get() == 1


async def test_handler_exception_goes_to_sentry(redis: Redis,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[tuple[BaseException, dict[str, str]]] = []
    monkeypatch.setattr(worker_mod, "capture_task_exception",
                        lambda exc, **tags: captured.append((exc, tags)))

    async def handler(job: Job, ctx: JobContext) -> None:
        raise PermanentJobError("nope")

    q = JobQueue(redis, Q)
    job_id = await q.enqueue({})
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: QueueConfig(handler)})
        await wait_until(lambda: _is(q, job_id, "failed"))
        stop.set()
    assert [(type(e), t) for e, t in captured] == [
        (PermanentJobError, {"queue": Q, "job_id": job_id})]


# ------------------------------------------------------------------ leases and fencing


async def test_fencing_rejects_a_stale_owner(redis: Redis) -> None:
    q = JobQueue(redis, Q, lease_s=0.2)
    job_id = await q.enqueue({})
    [old] = await q.claim()
    await trio.sleep(0.3)
    assert await Reaper(q).reap_once() is not None
    [new] = await q.claim()
    assert (new.id, new.token, new.attempt) == (job_id, 2, 1)  # the stall gave the attempt back
    assert not await q.renew(old)
    assert not await q.progress(old, 0.9)
    assert not await q.complete(old)
    assert await q.fail(old, "late") == "lease-lost"
    assert not await q.release(old)
    assert await q.complete(new)
    info = await q.get(job_id)
    assert info is not None and (info.status, info.stalls) == ("completed", 1)


async def test_worker_that_lost_its_lease_cannot_complete(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewal off: the first handler sleeps past its lease, the reaper hands the job to a
    second handler that completes it; the first one's completion is rejected."""

    async def no_renewal(self: Any, job: Job, ctx: JobContext) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(worker_mod._QueueWorker, "_keep_lease", no_renewal)
    metrics = Metrics()
    calls: list[int] = []
    first_done = trio.Event()

    async def handler(job: Job, ctx: JobContext) -> None:
        calls.append(job.token)
        if job.token == 1:
            await trio.sleep(1.0)  # lease is 0.3 s
            first_done.set()

    q = JobQueue(redis, Q)
    job_id = await q.enqueue({})
    caplog.set_level(logging.WARNING, "innera.queue")
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: QueueConfig(
            handler, concurrency=2, lease_s=0.3, reaper_interval_s=0.05)}, metrics)
        with trio.fail_after(5):
            await first_done.wait()
        await trio.sleep(0.1)
        stop.set()
    assert calls == [1, 2]
    assert count(metrics, "completed") == 1
    info = await q.get(job_id)
    assert info is not None and info.status == "completed" and info.stalls == 1
    assert "lease lost, completion rejected" in caplog.text


async def test_lease_is_renewed_while_the_handler_runs(redis: Redis) -> None:
    calls = 0

    async def handler(job: Job, ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        await ctx.progress(0.25)
        await trio.sleep(1.0)  # > 3 leases

    q = JobQueue(redis, Q)
    job_id = await q.enqueue({})
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: QueueConfig(
            handler, lease_s=0.3, reaper_interval_s=0.05)})
        await wait_until(lambda: _progress_is(q, job_id, 0.25))
        await wait_until(lambda: _is(q, job_id, "completed"))
        stop.set()
    info = await q.get(job_id)
    assert info is not None and calls == 1 and info.stalls == 0 and info.attempts == 1


async def _progress_is(q: JobQueue, job_id: str, value: float) -> bool:
    info = await q.get(job_id)
    return info is not None and info.progress == value


async def test_reaper_lock_one_acts(redis: Redis) -> None:
    q = JobQueue(redis, Q, lease_s=0.1)
    a, b = Reaper(q), Reaper(q)
    results: list[Any] = []

    async def reap(r: Reaper) -> None:
        results.append(await r.reap_once())

    await q.enqueue({})
    await q.claim()
    await trio.sleep(0.15)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reap, a)
        nursery.start_soon(reap, b)
    acted = [r for r in results if r is not None]
    assert len(acted) == 1 and (acted[0].requeued, acted[0].failed) == (1, 0)
    holder, standby = (a, b) if await redis.client.get(q.keys["reaper"]) == a.token else (b, a)
    assert await standby.reap_once() is None  # the holder keeps the lock between passes
    assert 0 < await redis.client.pttl(q.keys["reaper"]) <= holder.lock_ttl_ms
    assert not await standby.release_lock()
    assert await holder.release_lock()
    assert await standby.reap_once() is not None


async def test_too_many_stalls_fail_the_job(redis: Redis) -> None:
    q = JobQueue(redis, Q, lease_s=0.05)
    reaper = Reaper(q, max_stalls=2)
    job_id = await q.enqueue({})
    for _ in range(3):
        [job] = await q.claim()
        assert job.attempt == 1
        await trio.sleep(0.08)
        await reaper.reap_once()
    info = await q.get(job_id)
    assert info is not None and info.status == "failed" and info.stalls == 3
    assert "stalled" in (info.error or "")


# ------------------------------------------------------------------ shutdown and crashes


async def test_graceful_stop_lets_the_current_job_finish(redis: Redis) -> None:
    started = trio.Event()

    async def handler(job: Job, ctx: JobContext) -> None:
        started.set()
        await trio.sleep(0.3)

    q = JobQueue(redis, Q)
    first = await q.enqueue({})
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: QueueConfig(handler)})
        with trio.fail_after(5):
            await started.wait()
        second = await q.enqueue({})
        stop.set()
    # run_workers returned by itself once the running job had finished
    assert await status(q, first) == "completed"
    assert await status(q, second) == "waiting"


async def test_cancelled_workers_release_the_unfinished_job(redis: Redis) -> None:
    started = trio.Event()

    async def handler(job: Job, ctx: JobContext) -> None:
        started.set()
        await trio.sleep(30)

    q = JobQueue(redis, Q)
    job_id = await q.enqueue({})
    async with job_workers(redis, {Q: QueueConfig(handler, lease_s=1)}, None,
                           drain_timeout_s=0.2, poll_interval_s=0.02):
        with trio.fail_after(5):
            await started.wait()
    # the drain deadline passed: released to waiting, attempt given back, no stall counted
    info = await q.get(job_id)
    assert info is not None
    assert (info.status, info.attempts, info.stalls) == ("waiting", 0, 0)
    assert await redis.client.zcard(q.keys["active"]) == 0
    [job] = await q.claim()
    assert (job.id, job.attempt, job.token) == (job_id, 1, 2)


CRASHING_WORKER = textwrap.dedent("""
    import sys, trio
    from innera.queue.worker import QueueConfig, run_workers
    from innera.config import RedisSettings
    from innera.redis import run_redis

    async def handler(job, ctx):
        print("started", job.id, flush=True)
        await trio.sleep(60)

    async def main():
        async with trio.open_nursery() as nursery:
            redis = await nursery.start(run_redis, RedisSettings(url=sys.argv[1]))
            await nursery.start(lambda task_status: run_workers(
                redis, {"import-jobs": QueueConfig(handler, lease_s=1.0)}, None,
                stop=trio.Event(), poll_interval_s=0.02, task_status=task_status))

    trio.run(main)
""")


async def test_job_of_a_killed_worker_is_completed_by_another(redis: Redis,
                                                             redis_url: str) -> None:
    q = JobQueue(redis, "import-jobs")
    job_id = await q.enqueue({"file": "a.csv"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", CRASHING_WORKER, redis_url], stdout=subprocess.PIPE, env=env,
        cwd=ROOT)
    try:
        assert proc.stdout is not None
        with trio.fail_after(15):
            out = b""
            while b"\n" not in out:  # the whole line: a pipe read may end mid-line
                chunk = await proc.stdout.receive_some()
                assert chunk, "the worker process exited"
                out += chunk
        assert out.decode().split() == ["started", job_id]
    finally:
        proc.kill()  # SIGKILL: no release, the lease is simply abandoned
        with trio.fail_after(5):
            await proc.wait()
    assert await status(q, job_id) == "active"
    done: list[Job] = []

    async def handler(job: Job, ctx: JobContext) -> None:
        done.append(job)

    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {"import-jobs": QueueConfig(
            handler, lease_s=1.0, reaper_interval_s=0.1)})
        await wait_until(lambda: _is(q, job_id, "completed"), timeout_s=5)
        stop.set()
    assert [(j.id, j.token, j.attempt) for j in done] == [(job_id, 2, 1)]
    assert (await q.get(job_id)).stalls == 1  # type: ignore[union-attr]


# ------------------------------------------------------------------ limits and retention


async def test_concurrency_limit(redis: Redis) -> None:
    running = peak = done = 0

    async def handler(job: Job, ctx: JobContext) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.05)
        running -= 1
        done += 1

    q = JobQueue(redis, Q)
    for i in range(12):
        await q.enqueue({"i": i})
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: QueueConfig(handler, concurrency=3)})
        await wait_until(lambda: _done(lambda: done == 12))
        stop.set()
    assert peak == 3


async def _done(pred: Callable[[], bool]) -> bool:
    return pred()


async def test_retention_by_count_and_age(redis: Redis) -> None:
    q = JobQueue(redis, Q, keep_completed=3, keep_failed=2, failed_age_s=0.2, attempts=1)
    ids = [await q.enqueue({"i": i}, job_id=f"c{i}") for i in range(5)]  # ties: by id
    for _ in ids:
        [job] = await q.claim()
        assert await q.complete(job)
    assert list(await redis.client.zrange(q.keys["completed"], 0, -1)) == ids[2:]
    assert await q.get(ids[0]) is None and await q.get(ids[1]) is None
    assert await redis.client.hlen(q.keys["payloads"]) == 3
    failed = [await q.enqueue({}, job_id=f"f{i}") for i in range(3)]
    for _ in failed:
        [job] = await q.claim()
        assert await q.fail(job, "x") == "failed"
    assert list(await redis.client.zrange(q.keys["failed"], 0, -1)) == failed[1:]
    await trio.sleep(0.25)
    await Reaper(q).reap_once()  # age limit applied by the reaper
    assert await redis.client.zcard(q.keys["failed"]) == 0
    assert await redis.client.hlen(q.keys["meta"]) == 3


# ------------------------------------------------------------------ metrics, CLI, keys


async def test_metrics_and_waiting_gauge(redis: Redis) -> None:
    metrics = Metrics()

    async def handler(job: Job, ctx: JobContext) -> None:
        if job.payload.get("fail"):
            raise ValueError("bad")

    q = JobQueue(redis, Q, attempts=2)
    await q.enqueue({})
    await q.enqueue({"fail": True})
    await worker_mod.refresh_waiting_gauges(redis, metrics, [Q])
    assert metrics.jobs_waiting.labels(queue=Q)._value.get() == 2
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {Q: QueueConfig(handler, backoff_base_s=0.02)},
                                   metrics)
        await wait_until(lambda: _done(lambda: count(metrics, "failed") == 1))
        stop.set()
    assert (count(metrics, "completed"), count(metrics, "retried")) == (1, 1)
    text = metrics.render().decode()
    assert f'innera_jobs_processed_total{{outcome="completed",queue="{Q}"}} 1.0' in text
    assert f'innera_job_duration_seconds_count{{queue="{Q}"}} 3.0' in text
    await worker_mod.refresh_waiting_gauges(redis, metrics, [Q])
    assert metrics.jobs_waiting.labels(queue=Q)._value.get() == 0


async def test_cli_functions(redis: Redis) -> None:
    exports = JobQueue(redis, Q, attempts=1)
    pushes = JobQueue(redis, "push-notifications", attempts=1)
    await exports.enqueue({}, job_id="e1")
    await exports.enqueue({}, job_id="e2", delay_s=60)
    await pushes.enqueue({}, job_id="p1")
    [job] = await pushes.claim()
    assert await pushes.fail(job, "APNs said no") == "failed"
    stats = await admin.stats(redis)
    assert set(stats) == {"push-notifications", "import-jobs", "export-jobs",
                          "account-deletion", "key-rotation"}
    assert stats[Q] == {"waiting": 1, "delayed": 1, "active": 0, "completed": 0, "failed": 0}
    assert stats["push-notifications"]["failed"] == 1
    [failed] = await admin.list_failed(redis)
    assert (failed.id, failed.queue, failed.error, failed.attempts) == (
        "p1", "push-notifications", "APNs said no", 1)
    assert await admin.list_failed(redis, Q) == []
    assert not await admin.retry(redis, "e1")  # not failed
    assert not await admin.retry(redis, "missing")
    assert await admin.retry(redis, "p1")
    info = await pushes.get("p1")
    assert info is not None and (info.status, info.attempts) == ("waiting", 0)
    [job] = await pushes.claim()
    assert job.id == "p1" and job.attempt == 1


async def test_all_keys_share_the_queue_hash_tag(redis: Redis) -> None:
    async def handler(job: Job, ctx: JobContext) -> None:
        if job.payload.get("fail"):
            raise PermanentJobError("x")

    for name in ("account-deletion", "key-rotation"):
        q = JobQueue(redis, name, lease_s=0.5)
        await q.enqueue({})
        await q.enqueue({"fail": True})
        await q.enqueue({}, delay_s=30)
        await q.enqueue({})
    async with trio.open_nursery() as nursery:
        stop = await start_workers(nursery, redis, {
            "account-deletion": QueueConfig(handler, reaper_interval_s=0.05),
            "key-rotation": QueueConfig(handler, reaper_interval_s=0.05)})
        await trio.sleep(0.3)
        stop.set()
    rotation = JobQueue(redis, "key-rotation")
    await rotation.enqueue({})
    assert len(await rotation.claim()) == 1  # one active job left behind
    await rotation.enqueue({})  # and one waiting
    await Reaper(rotation).reap_once()  # holds the lock
    found = [k async for k in redis.client.scan_iter(match="*")]
    assert found
    kinds = set()
    for key in found:
        m = re.fullmatch(r"\{q:(account-deletion|key-rotation)\}:(\w+)", key)
        assert m, key
        kinds.add(m.group(2))
    assert {"waiting", "delayed", "active", "completed", "failed", "meta", "payloads",
            "reaper"} <= kinds
