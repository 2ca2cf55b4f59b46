"""The stalled-job reaper of one queue: expired leases go back to waiting (or to failed after
more than ``max_stalls`` stalls), and completed/failed retention by age is applied.

Only one reaper per queue acts at a time across instances: the REAP script takes the lock
``{q:<name>}:reaper`` (``SET NX PX``) when it is free, extends it when it is ours and does
nothing when another instance holds it. The holder keeps it while it runs (a standby takes
over within the lock TTL if the holder dies) and releases it on exit by owner compare.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import trio

from innera.queue import scripts
from innera.queue.jobs import JobQueue
from innera.redis import UNAVAILABLE_ERRORS

log = logging.getLogger("innera.queue.reaper")

MAX_STALLS = 3


@dataclass
class ReapResult:
    requeued: int
    failed: int


class Reaper:
    def __init__(self, queue: JobQueue, *, interval_s: float | None = None,
                 max_stalls: int = MAX_STALLS, lock_ttl_s: float | None = None) -> None:
        self.queue = queue
        self.interval_s = interval_s if interval_s is not None else min(
            5.0, max(0.2, queue.lease_s / 4))
        self.max_stalls = max_stalls
        self.lock_ttl_ms = int((lock_ttl_s if lock_ttl_s is not None
                                else max(1.0, self.interval_s * 3)) * 1000)
        self.token = secrets.token_hex(16)
        client = queue.redis.client
        self._reap = client.register_script(scripts.REAP)
        self._unlock = client.register_script(scripts.UNLOCK)

    async def reap_once(self) -> ReapResult | None:
        """One pass. None: another instance holds the reaper lock."""
        q = self.queue
        reply = await self._reap(
            keys=q.keys_for("active", "waiting", "completed", "failed", "meta", "payloads",
                            "reaper"),
            args=[self.token, self.lock_ttl_ms, self.max_stalls, q.keep_completed,
                  q.completed_age_ms, q.keep_failed, q.failed_age_ms])
        if reply == -1:
            return None
        result = ReapResult(int(reply[0]), int(reply[1]))
        if result.requeued or result.failed:
            log.warning("queue %s: %d stalled job(s) requeued, %d failed after too many stalls",
                        q.name, result.requeued, result.failed)
        return result

    async def release_lock(self) -> bool:
        return bool(await self._unlock(keys=[self.queue.keys["reaper"]], args=[self.token]))

    async def run(self, stop: trio.Event, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reap every ``interval_s`` until ``stop`` is set (or cancelled); then release the
        lock (shielded, bounded) so another instance can take over at once."""
        task_status.started()
        try:
            while not stop.is_set():
                try:
                    await self.reap_once()
                except UNAVAILABLE_ERRORS as exc:
                    self.queue.redis.record_error(exc)
                except Exception:
                    log.exception("queue %s: reaper pass failed", self.queue.name)
                with trio.move_on_after(self.interval_s):
                    await stop.wait()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await self.release_lock()
                except Exception as exc:
                    log.warning("queue %s: could not release the reaper lock: %s",
                                self.queue.name, exc)
