"""Password hashing: argon2id, always off the Trio event loop.

Parameters (argon2id, v=19): ``time_cost=2``, ``memory_cost=64 MiB``, ``parallelism=1``,
16-byte salt, 32-byte hash. Measured on the 2-core CI/dev machine (``bench/argon2.py``):
~100 ms per hash or verify, ~10 verifications/s per thread, ~20/s with both threads.
RFC 9106's "low memory" profile (t=3, 64 MiB, p=4) measured ~146 ms with p=1 here: at the
top of the 50–150 ms budget, and over it as soon as the machine is busy, so one pass less.
The memory cost (what makes GPU/ASIC guessing expensive) is kept at 64 MiB.

Every hash/verify runs in ``trio.to_thread.run_sync`` through a :class:`trio.CapacityLimiter`
(``max_concurrency``, default 2 = the cores): a burst of sign-ins queues instead of taking
64 MiB × N of memory and every CPU. The queue is bounded: when every slot is busy and
``max_waiting`` (default 2 × ``max_concurrency`` = 4) calls already wait, another call fails
at once with :class:`HasherBusy` (503 ``busy``, ``Retry-After: 1``) instead of queueing, so
a flood of guesses answers in milliseconds rather than making every sign-in wait for a slot;
the ones queued still run (the last of them within ~(4 + 2) / 2 × 100 ms). Waiting in the
queue is also bounded by ``queue_timeout_s`` (a backstop; the same 503). A hash that has
started is not cancellable (a C call); it finishes within ~100 ms.

Each hash or verify (its wait for a slot included) is the Sentry span ``auth.hash``
(``argon2id hash`` / ``argon2id verify``) of a traced request.

:meth:`PasswordHasher.burn` spends the time of one verification for nothing: call it when
the e-mail is unknown, so "no such account" and "wrong password" cannot be told apart by
response time.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TypeVar

import argon2
import trio
from argon2.exceptions import InvalidHashError, VerificationError

from innera.errors import ServiceUnavailable
from innera.observability import tracing

__all__ = ["MEMORY_COST_KIB", "PARALLELISM", "TIME_COST", "HasherBusy", "PasswordHasher"]

TIME_COST = 2
MEMORY_COST_KIB = 64 * 1024
PARALLELISM = 1

T = TypeVar("T")


class HasherBusy(ServiceUnavailable):
    """Every hashing slot is taken and the queue is full (or the wait for a slot timed out)."""

    code, message = "busy", "Too many sign-ins in progress; please retry in a moment"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


class PasswordHasher:
    """argon2id hashing on worker threads; see the module documentation."""

    def __init__(
        self,
        max_concurrency: int = 2,
        *,
        time_cost: int = TIME_COST,
        memory_cost_kib: int = MEMORY_COST_KIB,
        parallelism: int = PARALLELISM,
        queue_timeout_s: float = 10.0,
        max_waiting: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_waiting is not None and max_waiting < 0:
            raise ValueError("max_waiting must not be negative")
        self._argon2 = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self.queue_timeout_s = queue_timeout_s
        #: calls that may wait for a slot; past it :class:`HasherBusy` at once
        self.max_waiting = 2 * max_concurrency if max_waiting is None else max_waiting
        self._dummy_hash: str | None = None
        #: argon2 passes finished, hashes and verifications alike: each is the same work (one
        #: set of parameters), so two answers that cost the same number of passes take the
        #: same time (the sign-in timing test counts them rather than timing them)
        self.passes = 0

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash (``$argon2id$v=19$m=...``) of ``password``."""
        return await self._run(self._argon2.hash, password, what="argon2id hash")

    async def verify(self, stored_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash``. ``False`` for a wrong password and
        for a hash that is malformed or not argon2 (never raises for those)."""
        return await self._run(self._verify_sync, stored_hash, password,
                               what="argon2id verify")

    async def burn(self) -> None:
        """Spend the time of one verification (against a dummy hash made with the same
        parameters on first use: making it costs the same time as verifying it)."""
        decoy = secrets.token_urlsafe(16)
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(decoy)
        else:
            await self.verify(self._dummy_hash, decoy)

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether ``stored_hash`` was made with other parameters (or is not a valid argon2
        hash): re-hash the password after a successful sign-in. Cheap: no hashing."""
        try:
            return self._argon2.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def _verify_sync(self, stored_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(stored_hash, password)
        except (VerificationError, InvalidHashError, ValueError):
            # VerifyMismatchError is a VerificationError; a hash of another algorithm or
            # with a broken encoding is InvalidHashError (or ValueError in some versions).
            return False

    async def _run(self, fn: Callable[..., T], *args: object, what: str) -> T:
        # Checked and then queued with no checkpoint in between: no other task interleaves.
        stats = self.limiter.statistics()
        if (stats.borrowed_tokens >= stats.total_tokens
                and stats.tasks_waiting >= self.max_waiting):
            raise HasherBusy()
        # The deadline can only interrupt the wait for a limiter slot: once the thread runs,
        # trio.to_thread.run_sync is not cancellable and returns its result normally.
        with tracing.span("auth.hash", what), trio.move_on_after(self.queue_timeout_s):
            result = await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
            self.passes += 1
            return result
        raise HasherBusy()
