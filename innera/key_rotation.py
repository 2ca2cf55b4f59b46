"""Master key (MEK) rotation: re-wrapping the per-user data keys (DEK) with a new MEK version.

A rotation targets the newest configured version (the one that already wraps the data keys
of new sign-ups) and re-wraps every DEK stored under an older version. The DEKs themselves do
not change, so entries, their ciphertexts and the in-memory DEK cache stay valid; once no DEK
uses an old version any more, that version can be removed from ``INNERA_MEK``.

- :func:`check_target`, :func:`plan_rotation`: is a target version usable (against the
  configured versions and the DEKs per version)? :class:`InvalidRotation` says why not.
- :data:`KEY_ROTATION_JOB`: the job kind (table ``key_rotation_jobs``, queue
  ``key-rotation``, no user); the worker is ``workers/key_rotation.py``.
- :func:`start_rotation`: records the ``key_rotation_jobs`` row and enqueues it; refused with
  :class:`RotationInProgress` while another rotation is pending or running (migration 0010
  makes that a database rule). ``from_version`` is the oldest version still wrapping DEKs;
  the job re-wraps every DEK *older than* ``to_version`` (several old versions at once).
- :func:`rewrap_batch`, :func:`rewrap_all`: the work. Each batch is one transaction over the
  next ``batch_size`` old DEKs by user id (keyset, ``FOR UPDATE``: a row being deleted is
  waited for, not skipped; a row re-wrapped meanwhile by a stale worker drops out of the
  batch). A restarted job simply starts again: rows already re-wrapped are no longer old. A
  DEK that does not unwrap is counted and left exactly as it is.
- :func:`dek_counts`, :func:`dek_counts_by_provider`, :func:`latest_rotation`: what
  ``innera keys status`` shows.

Versions are one numbering across providers: the target may be a local key (``INNERA_MEK``)
or an AWS KMS key (``INNERA_MEK_KMS_KEY_ID``), whatever wrapped the old keys, so a rotation
moves data keys from a local key to KMS and back. Each re-wrapped row gets the target's
version and provider (``user_keys.mek_provider``).

Unwrapping and wrapping one DEK with the local provider costs ~4 µs (measured: 500 re-wraps
≈ 2 ms, on the event loop); with AWS KMS it is two round trips (Decrypt, Encrypt) in worker
threads. The rows of a batch are re-wrapped concurrently, at most :data:`REWRAP_CONCURRENCY`
at a time (under the KMS provider's own thread limit, so that a rotation leaves room for
the unwraps of live requests). A KMS that cannot be used fails the batch (nothing of it is
written) and the attempt; the queue retries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from innera.crypto.data_keys import dek_context, unwrap_stored
from innera.crypto.keyring import KeyProvider, UnwrapError
from innera.db.pool import Pool
from innera.jobs import tables
from innera.jobs.kinds import JobKind, QueueSpec
from innera.jobs.submission import submit
from innera.redis import Redis

#: resumable: a rotation cut by the timeout continues from its progress on the next attempt
KEY_ROTATION_JOB = JobKind("key_rotation_jobs", "key-rotation",
                           QueueSpec("key-rotation", concurrency=1, timeout_s=3600, attempts=5),
                           userless=True)
BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
#: bound on one batch transaction (select, re-wrap, update) and on each count query
BATCH_TIMEOUT_S = 60.0
QUERY_TIMEOUT_S = 30.0
#: rows of a batch re-wrapped at once (each: an unwrap and a wrap, KMS calls with AWS KMS)
REWRAP_CONCURRENCY = 8
#: passes over the table at most (a later pass only finds DEKs written behind the cursor)
MAX_PASSES = 3
#: user ids named in a failure message at most
NAMED_FAILURES = 10

_NIL = uuid.UUID(int=0)

_SELECT_BATCH = """
SELECT user_id, mek_version, mek_provider, wrapped_dek FROM user_keys
WHERE mek_version < %s AND user_id > %s
ORDER BY user_id LIMIT %s
FOR UPDATE
"""
_UPDATE_BATCH = """
UPDATE user_keys AS k SET mek_version = %s, mek_provider = %s, wrapped_dek = v.wrapped_dek
FROM unnest(%s::uuid[], %s::integer[], %s::bytea[]) AS v(user_id, old_version, wrapped_dek)
WHERE k.user_id = v.user_id AND k.mek_version = v.old_version
"""


class InvalidRotation(ValueError):
    """The target version cannot be rotated to with these keys (the message says why)."""


class RotationInProgress(Exception):
    """Another rotation is pending or running."""


def _list(versions: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(versions, reverse=True))


def check_target(versions: frozenset[int], to_version: int) -> None:
    """``to_version`` must be configured, be the newest version (it wraps new data keys) and
    stand beside at least one older version."""
    if to_version not in versions:
        raise InvalidRotation(
            f"master key version {to_version} is not configured in INNERA_MEK or "
            f"INNERA_MEK_KMS_KEY_ID (configured: {_list(versions)}); configure it beside the "
            f"current key, as INNERA_MEK={to_version}:NEW_KEY (a local key) or "
            f"INNERA_MEK_KMS_KEY_ID={to_version}:KEY_ARN (an AWS KMS key)")
    newest = max(versions)
    if to_version != newest:
        raise InvalidRotation(
            f"master key version {to_version} is not the newest configured version "
            f"({newest}): new data keys are wrapped by the newest version, rotate to it")
    if len(versions) < 2:
        example = (f"INNERA_MEK={to_version}:NEW_KEY,{to_version - 1}:OLD_KEY" if to_version > 1
                   else "INNERA_MEK=2:NEW_KEY,1:OLD_KEY, then rotate to 2")
        raise InvalidRotation(
            f"only master key version {to_version} is configured: configure the new key "
            f"beside the old one(s) ({example}, or the old key in INNERA_MEK and the new one "
            f"in INNERA_MEK_KMS_KEY_ID, or the reverse), or the data keys wrapped by an old "
            f"version cannot be unwrapped")


def plan_rotation(versions: frozenset[int], to_version: int, counts: dict[int, int]) -> int:
    """Check the target against the keys and the DEKs per version; returns the
    ``from_version`` to record (the oldest version still wrapping DEKs)."""
    check_target(versions, to_version)
    check_old_versions(versions, to_version, counts)
    old = [v for v, n in counts.items() if v < to_version and n > 0]
    return min(old) if old else min(versions)


def check_old_versions(versions: frozenset[int], to_version: int,
                       counts: dict[int, int]) -> None:
    """Every version older than the target that still wraps DEKs must be configured."""
    missing = {v: n for v, n in counts.items() if v < to_version and n > 0 and v not in versions}
    if missing:
        raise InvalidRotation(
            f"{sum(missing.values())} data key(s) are wrapped by master key version(s) "
            f"{_list(missing)}, which neither INNERA_MEK nor INNERA_MEK_KMS_KEY_ID configures: "
            f"configure them beside version {to_version} to re-wrap these keys")


async def dek_counts(db: Pool) -> dict[int, int]:
    """How many data keys each MEK version wraps (versions without any are absent)."""
    with trio.fail_after(QUERY_TIMEOUT_S):
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT mek_version, count(*) FROM user_keys GROUP BY 1 ORDER BY 1",
                name="key_rotation.dek_counts")
            return {int(v): int(n) for v, n in await cur.fetchall()}


async def dek_counts_by_provider(db: Pool) -> dict[tuple[int, str], int]:
    """How many data keys each MEK version and provider wraps (``innera keys status``)."""
    with trio.fail_after(QUERY_TIMEOUT_S):
        async with db.connection() as conn:
            cur = await conn.execute("SELECT mek_version, mek_provider, count(*) FROM user_keys "
                                     "GROUP BY 1, 2 ORDER BY 1, 2",
                                     name="key_rotation.dek_counts_by_provider")
            return {(int(v), str(p)): int(n) for v, p, n in await cur.fetchall()}


async def latest_rotation(db: Pool) -> dict[str, Any] | None:
    """The most recent ``key_rotation_jobs`` row, or None."""
    with trio.fail_after(QUERY_TIMEOUT_S):
        async with db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM key_rotation_jobs ORDER BY created_at DESC, id LIMIT 1",
                name="key_rotation.latest")
            return await cur.fetchone()


async def unfinished_rotation(db: Pool) -> dict[str, Any] | None:
    with trio.fail_after(QUERY_TIMEOUT_S):
        async with db.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM key_rotation_jobs WHERE status IN ('pending', 'running') "
                "ORDER BY created_at LIMIT 1", name="key_rotation.unfinished")
            return await cur.fetchone()


@dataclass(frozen=True)
class Submitted:
    job_id: str  # the queue job id, "key_rotation_jobs:<uuid>"
    from_version: int
    to_version: int
    to_rewrap: int  # DEKs on older versions when submitted


def _busy(row: dict[str, Any] | None) -> RotationInProgress:
    if row is None:
        return RotationInProgress("another key rotation is already pending or running")
    return RotationInProgress(
        f"key rotation {tables.queue_job_id(KEY_ROTATION_JOB, row['id'])} (version "
        f"{row['from_version']} -> {row['to_version']}) is already {row['status']} "
        f"({float(row['progress']):.0%}); wait for it to finish (innera keys status)")


async def start_rotation(db: Pool, redis: Redis, versions: frozenset[int], to_version: int, *,
                         batch_size: int = BATCH_SIZE) -> Submitted:
    """Record and enqueue a rotation to ``to_version``; raises :class:`InvalidRotation` or
    :class:`RotationInProgress`."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidRotation(f"the batch size must be 1..{MAX_BATCH_SIZE}, not {batch_size}")
    counts = await dek_counts(db)
    from_version = plan_rotation(versions, to_version, counts)
    running = await unfinished_rotation(db)
    if running is not None:
        raise _busy(running)
    payload = {"from_version": from_version, "to_version": to_version,
               "batch_size": batch_size}
    try:
        job_id = await submit(db, redis, KEY_ROTATION_JOB, user_id=None, payload=payload)
    except pg_errors.UniqueViolation:  # a rotation started meanwhile (migration 0010)
        raise _busy(await unfinished_rotation(db)) from None
    return Submitted(job_id, from_version, to_version,
                     sum(n for v, n in counts.items() if v < to_version))


@dataclass
class Batch:
    seen: int = 0
    rewrapped: int = 0
    failed: list[str] = field(default_factory=list)
    last: uuid.UUID | None = None


async def rewrap_batch(db: Pool, provider: KeyProvider, to_version: int, *,
                       after: uuid.UUID = _NIL, limit: int = BATCH_SIZE) -> Batch:
    """Re-wrap the next ``limit`` DEKs older than ``to_version`` with a user id above
    ``after``, in one transaction. DEKs that do not unwrap are listed and not changed; a key
    service that cannot be used (:class:`~innera.crypto.errors.KeyServiceUnavailable`)
    stops the batch, which then changes nothing."""
    batch = Batch()
    to_provider = provider.provider_name(to_version)
    with trio.fail_after(BATCH_TIMEOUT_S):
        async with db.connection() as conn, conn.transaction():
            cur = await conn.execute(_SELECT_BATCH, (to_version, after, limit),
                                     name="key_rotation.select_batch")
            rows = await cur.fetchall()
            done = await _rewrap_rows(provider, to_version, rows)
            for (user_id, *_), result in zip(rows, done, strict=True):
                if result is None:
                    batch.failed.append(str(user_id))
            kept = [(row[0], row[1], sealed)
                    for row, sealed in zip(rows, done, strict=True) if sealed is not None]
            if kept:
                user_ids, old_versions, rewrapped = map(list, zip(*kept, strict=True))
                cur = await conn.execute(
                    _UPDATE_BATCH,
                    (to_version, to_provider, user_ids, old_versions, rewrapped),
                    name="key_rotation.rewrap_batch")
                batch.rewrapped = cur.rowcount
    batch.seen = len(rows)
    batch.last = rows[-1][0] if rows else None
    return batch


async def _rewrap_rows(provider: KeyProvider, to_version: int, rows: list[Any]
                       ) -> list[bytes | None]:
    """Each row's DEK wrapped by ``to_version`` (None: it did not unwrap), in row order;
    :data:`REWRAP_CONCURRENCY` rows at a time. The first other failure cancels the rest and
    is raised as itself (not in an exception group: the job records its message)."""
    done: list[bytes | None] = [None] * len(rows)
    limiter = trio.CapacityLimiter(REWRAP_CONCURRENCY)
    failure: list[Exception] = []

    async def one(i: int, user_id: uuid.UUID, version: int, stored_provider: str,
                  wrapped: bytes, cancel: trio.CancelScope) -> None:
        try:
            async with limiter:
                try:
                    dek = await unwrap_stored(provider, version, stored_provider,
                                              bytes(wrapped), str(user_id))
                except UnwrapError:
                    return
                _, done[i] = await provider.wrap(dek, dek_context(str(user_id)),
                                                 version=to_version)
        except Exception as exc:
            failure.append(exc)
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        for i, row in enumerate(rows):
            nursery.start_soon(one, i, *row, nursery.cancel_scope)
    if failure:
        raise failure[0]
    return done


@dataclass
class Rewrapped:
    """Where a rotation stands: counts taken when it (re)started, and what it did since."""

    total: int  # every DEK
    pending: int  # DEKs older than the target, at the start
    rewrapped: int = 0
    #: user ids whose DEK did not unwrap (left as they are), in the order met
    failed: dict[str, None] = field(default_factory=dict)
    #: DEKs still older than the target at the end that are not failures (written by an
    #: instance without the target key while the rotation ran)
    left_behind: int = 0

    @property
    def fraction(self) -> float:
        """Share of the DEKs on the target version (or newer): 0..1."""
        if self.total == 0:
            return 1.0
        return min(1.0, max(0.0, (self.total - self.pending + self.rewrapped) / self.total))

    def failure_message(self) -> str:
        failed = list(self.failed)
        named = ", ".join(failed[:NAMED_FAILURES])
        more = f" and {len(failed) - NAMED_FAILURES} more" if len(failed) > NAMED_FAILURES else ""
        return (f"{len(failed)} data key(s) did not unwrap and were left on their old "
                f"master key version (users {named}{more}); {self.rewrapped} re-wrapped")


Progress = Callable[[float], Awaitable[None]]


async def rewrap_all(db: Pool, provider: KeyProvider, to_version: int, *,
                     batch_size: int = BATCH_SIZE, progress: Progress | None = None
                     ) -> Rewrapped:
    """Re-wrap every DEK older than ``to_version``, batch after batch (keyset by user id),
    reporting the fraction of DEKs on the target after each; failures are collected, not
    raised. A pass ends at an empty batch (a short one may only mean rows were deleted
    meanwhile); old DEKs found behind the cursor afterwards get another pass (at most
    :data:`MAX_PASSES`), the rest is counted in ``left_behind``."""
    counts = await dek_counts(db)
    state = Rewrapped(total=sum(counts.values()),
                      pending=sum(n for v, n in counts.items() if v < to_version))
    if progress is not None:
        await progress(state.fraction)
    for _ in range(MAX_PASSES):
        before = state.rewrapped
        after = _NIL
        while True:
            batch = await rewrap_batch(db, provider, to_version, after=after, limit=batch_size)
            state.rewrapped += batch.rewrapped
            state.failed.update(dict.fromkeys(batch.failed))
            if batch.last is None:
                break
            if progress is not None:
                await progress(state.fraction)
            after = batch.last
        old = sum(n for v, n in (await dek_counts(db)).items() if v < to_version)
        state.left_behind = max(0, old - len(state.failed))
        if state.left_behind == 0 or state.rewrapped == before:
            break
    if progress is not None:
        await progress(state.fraction)
    return state
