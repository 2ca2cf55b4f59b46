"""Counting active users: the distinct users who made an authenticated request, on every
instance, over the last 1, 7 and 30 UTC days (``innera_active_users{window}``, the spec's
"daily active users" on the info dashboard).

Not to be confused with :class:`innera.accounts.ActiveUsers`, the per-request "is this
account (still) active?" check: this module only counts users that check let through.

Where the users go: one Redis HyperLogLog per UTC day, ``active:users:{YYYY-MM-DD}``
(about 12 kB at most, whatever the number of users; counts within about 1 %), expiring
:data:`KEY_TTL_DAYS` days after that day began, so the 30-day window always finds its 30
keys. ``PFCOUNT`` of several days' keys counts their union: a user active on three days of
the week counts once in ``7d``.

What a request costs: :meth:`ActiveUserCounter.record` (called by
:func:`innera.auth.authentication.authenticate` for every user it lets in) adds the id to
an in-memory set, nothing else. :meth:`ActiveUserCounter.run`, one supervised task per
``innera serve``, writes the set to Redis every interval (``ACTIVE_USERS_INTERVAL_S``,
``PFADD`` in chunks of :data:`PFADD_CHUNK` plus one ``EXPIREAT`` per day) and then recounts
the three windows (three ``PFCOUNT``), which the metric reports at scrape time. A set that
reaches :data:`PENDING_CAP` ids wakes the task at once (an early write); while Redis cannot
be written the set is kept, but never above the cap: the ids of users not yet in it are then
dropped (they count again with their next request after Redis is back). On shutdown the
task writes what it holds one last time (bounded by :data:`FINAL_FLUSH_TIMEOUT_S`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import trio

from innera.redis import UNAVAILABLE_ERRORS, Redis

__all__ = ["KEY_PREFIX", "WINDOWS", "ActiveUserCounter", "day_key"]

log = logging.getLogger("innera.auth.active_users")

KEY_PREFIX = "active:users:"
#: window label → the number of UTC days it spans, today included
WINDOWS = {"1d": 1, "7d": 7, "30d": 30}
#: a day's key expires this many days after the day began: the 30-day window needs the key
#: of 29 days ago until today ends, and a day of margin covers clock skew between instances
KEY_TTL_DAYS = 32
#: most user ids held in memory between two writes (about 100 bytes each)
PENDING_CAP = 10_000
#: ids per PFADD: one command never holds Redis for long
PFADD_CHUNK = 1_000
#: bound of one write or one recount (each command is also bounded by the client's timeout)
REDIS_STEP_TIMEOUT_S = 5.0
#: bound of the last write on shutdown
FINAL_FLUSH_TIMEOUT_S = 2.0
_DAY_S = 86_400


def day_key(day: int) -> str:
    """The key of UTC day number ``day`` (days since 1970-01-01): ``active:users:2025-06-01``."""
    return KEY_PREFIX + datetime.fromtimestamp(day * _DAY_S, UTC).strftime("%Y-%m-%d")


class ActiveUserCounter:
    """The users this instance authenticated, written to Redis in batches, and the counts of
    every instance's users read back (see the module doc)."""

    def __init__(self, redis: Redis, *, cap: int = PENDING_CAP,
                 clock: Callable[[], float] = time.time) -> None:
        if cap < 1:
            raise ValueError("cap must be positive")
        self._redis = redis
        self._cap = cap
        self._clock = clock
        #: UTC day number → user ids seen that day and not written yet
        self._pending: dict[int, set[str]] = {}
        self._size = 0
        self._full = trio.Event()
        self._counts: dict[str, int] = {}
        #: ids not recorded because the set was full (Redis unreachable for long)
        self.dropped = 0

    @property
    def pending(self) -> int:
        """How many ids wait for the next write."""
        return self._size

    def counts(self) -> Mapping[str, int]:
        """The last counts, by window (empty until the first recount succeeded)."""
        return self._counts

    def record(self, user_id: str) -> None:
        """``user_id`` made an authenticated request now. No I/O: a set insertion."""
        day = int(self._clock()) // _DAY_S
        seen = self._pending.get(day)
        if seen is None:
            seen = self._pending[day] = set()
        elif user_id in seen:
            return
        if self._size >= self._cap:
            self.dropped += 1
            self._full.set()
            return
        seen.add(user_id)
        self._size += 1
        if self._size >= self._cap:
            self._full.set()

    async def flush(self) -> None:
        """Write the pending ids to their days' keys. On failure they are kept (up to the
        cap) for the next write, and the error is raised."""
        batch, self._pending, self._size = self._pending, {}, 0
        try:
            with trio.fail_after(REDIS_STEP_TIMEOUT_S):
                for day in sorted(batch):
                    key, ids = day_key(day), list(batch[day])
                    for start in range(0, len(ids), PFADD_CHUNK):
                        await self._redis.client.pfadd(key, *ids[start:start + PFADD_CHUNK])
                    await self._redis.client.expireat(key, (day + KEY_TTL_DAYS) * _DAY_S)
        except BaseException:
            self._restore(batch)
            raise

    def _restore(self, batch: dict[int, set[str]]) -> None:
        for day, ids in batch.items():
            seen = self._pending.setdefault(day, set())
            for user_id in ids:
                if self._size >= self._cap:
                    self.dropped += 1
                elif user_id not in seen:
                    seen.add(user_id)
                    self._size += 1

    async def recount(self) -> Mapping[str, int]:
        """Count every window from Redis (the union of its days' keys) and keep the counts
        for the metric."""
        today = int(self._clock()) // _DAY_S
        counts = {}
        with trio.fail_after(REDIS_STEP_TIMEOUT_S):
            for window, days in WINDOWS.items():
                keys = [day_key(today - back) for back in range(days)]
                counts[window] = int(await self._redis.client.pfcount(keys))
        self._counts = counts
        return counts

    async def _step(self, what: str, step: Callable[[], Awaitable[object]]) -> bool:
        """Run ``flush`` or ``recount``; whether it worked. Redis trouble is counted and
        logged, never raised."""
        try:
            await step()
            return True
        except (*UNAVAILABLE_ERRORS, trio.TooSlowError) as exc:
            if isinstance(exc, trio.TooSlowError):
                exc = TimeoutError(f"{what} took over {REDIS_STEP_TIMEOUT_S:g} s")
            self._redis.record_error(exc)
            log.warning("active users: %s failed (Redis unavailable); %d id(s) kept for "
                        "the next interval", what, self._size)
        except Exception:
            log.exception("active users: %s failed", what)
        return False

    async def run(self, interval_s: float, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The supervised task: a recount before it reports started (so the metric has its
        values from start-up), then every ``interval_s`` a write and a recount, and a write
        as soon as the set is full (only while writes succeed: a full set does not turn an
        outage into a busy loop); one last write when cancelled."""
        await self._step("recount", self.recount)
        task_status.started()
        try:
            next_recount = trio.current_time() + interval_s
            early = True
            while True:
                if early:
                    with trio.move_on_at(next_recount):
                        await self._full.wait()
                else:
                    await trio.sleep_until(next_recount)
                self._full = trio.Event()
                early = await self._step("write", self.flush)
                if trio.current_time() >= next_recount:
                    await self._step("recount", self.recount)
                    next_recount = trio.current_time() + interval_s
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(FINAL_FLUSH_TIMEOUT_S):
                if self._size:
                    await self._step("last write", self.flush)
