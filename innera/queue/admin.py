"""Support for the ``innera jobs`` CLI: ``stats``, ``failed [QUEUE]``, ``retry JOB_ID``."""

from __future__ import annotations

from innera.observability.metrics import QUEUES
from innera.queue import scripts
from innera.queue.jobs import JobInfo, job_info, keys
from innera.redis import Redis

COUNTS = ("waiting", "delayed", "active", "completed", "failed")


async def stats(redis: Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, dict[str, int]]:
    """``{queue: {waiting, delayed, active, completed, failed}}`` (one atomic read a queue)."""
    script = redis.client.register_script(scripts.STATS)
    out: dict[str, dict[str, int]] = {}
    for name in queues:
        k = keys(name)
        counts = await script(keys=[k[c] for c in COUNTS])
        out[name] = dict(zip(COUNTS, (int(n) for n in counts), strict=True))
    return out


async def list_failed(redis: Redis, queue: str | None = None, *, limit: int = 100
                      ) -> list[JobInfo]:
    """The dead-letter set(s), newest first, at most ``limit`` a queue, with their errors."""
    out: list[JobInfo] = []
    for name in (queue,) if queue else QUEUES:
        k = keys(name)
        ids = await redis.client.zrange(k["failed"], 0, limit - 1, rev=True)
        if not ids:
            continue
        metas = await redis.client.hmget(k["meta"], ids)
        payloads = await redis.client.hmget(k["payloads"], ids)
        out += [job_info(name, job_id, meta, payload)
                for job_id, meta, payload in zip(ids, metas, payloads, strict=True)
                if meta is not None]
    return out


async def retry(redis: Redis, job_id: str, queue: str | None = None) -> bool:
    """Move a failed job back to waiting with its attempts reset. ``job_id`` is looked up in
    every queue unless ``queue`` is given; False when no failed job has that id."""
    script = redis.client.register_script(scripts.RETRY)
    for name in (queue,) if queue else QUEUES:
        k = keys(name)
        if await script(keys=[k["failed"], k["waiting"], k["meta"]], args=[job_id]):
            return True
    return False
