"""Timing a readiness check, and sharing one check among every caller for a short while.

``GET /health/ready`` is unauthenticated and checks each dependency on every call. PostgreSQL
and Redis answer a ping in well under a millisecond on connections innera already holds, but
the storage check is an S3 request (``HeadBucket``): anyone probing readiness in a loop would
turn innera into an amplifier of billed, rate-limited calls to the bucket. So the storage
check goes through a :class:`SharedCheck`: concurrent probes wait for the one check in flight,
and probes within :data:`SHARED_CHECK_TTL_S` after it completed get its observation as it was
(the same ``observedValue`` and ``time``). At most one check runs at a time, and a new one
starts only once the last observation is older than the TTL, failures included (a failing
S3 is not probed harder than a healthy one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

#: how long one observation of a shared check answers every readiness probe
SHARED_CHECK_TTL_S = 1.0

Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Observation:
    ok: bool
    #: how long the check took, in milliseconds (rounded to 0.01)
    elapsed_ms: float
    #: when it completed: ISO 8601, UTC, milliseconds
    time: str
    #: when it completed, on Trio's clock
    at: float


async def observe(probe: Probe, timeout_s: float) -> Observation:
    """Run ``probe`` under a deadline of ``timeout_s``; a probe past it counts as failed."""
    started = trio.current_time()
    ok = False
    with trio.move_on_after(timeout_s):
        ok = await probe()
    now = trio.current_time()
    return Observation(ok=ok, elapsed_ms=round((now - started) * 1000, 2),
                       time=datetime.now(UTC).isoformat(timespec="milliseconds"), at=now)


class SharedCheck:
    """One check's observation, shared by every caller for ``ttl_s`` after it completed.

    No background task: the first caller that finds no fresh observation runs the check in
    its own task; callers arriving meanwhile wait for it. If that caller is cancelled (its
    client hung up), the waiters wake and one of them runs the check instead.
    """

    def __init__(self, ttl_s: float = SHARED_CHECK_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._last: Observation | None = None
        self._running: trio.Event | None = None

    async def observe(self, probe: Probe, timeout_s: float) -> Observation:
        """The last observation if younger than ``ttl_s``, else a new one of ``probe``
        (:func:`observe`; at most one in flight)."""
        while True:
            last = self._last
            if last is not None and trio.current_time() - last.at < self.ttl_s:
                return last
            if self._running is None:
                break
            await self._running.wait()
        done = self._running = trio.Event()
        try:
            self._last = await observe(probe, timeout_s)
            return self._last
        finally:
            self._running = None
            done.set()
