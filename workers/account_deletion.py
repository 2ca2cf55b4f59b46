"""The ``account-deletion`` queue: purges everything of an account whose owner deleted it.

``DELETE /v1/me`` (``innera/account_deletion.py``) disables the account at once (status ``deleted``:
sign-in and every access token stop working), revokes its refresh tokens, closes its sockets
on every instance and inserts an ``account_deletion_jobs`` row (migration 0009 allows one
unfinished row per user). This module does the rest, in :data:`STEPS`, each idempotent and
each reported as progress, so a delivery after a crash (or a retry after a failure) simply
runs them all again and finishes the work:

1. ``disable`` — status ``deleted`` again (a no-op after the request) and the
   ``control.close`` message again: a socket whose handshake raced the request is closed too;
2. ``keys`` — the user's data key (``user_keys``): from here on no entry can be decrypted;
3. ``entries`` — entries, in batches, with their ``attachments`` rows (search has no table
   of its own: it scans the sealed entries);
4. ``storage`` — every stored object under ``{userId}/`` (attachments, export archives,
   import uploads), with every version and delete marker of a versioned bucket (a plain
   delete there would keep the bytes as noncurrent versions), then a delayed *late sweep*
   (below);
5. ``notifications``, 6. ``devices``;
7. ``tokens`` — refresh tokens in both stores (Redis and the ``refresh_tokens`` table,
   whichever ``REFRESH_TOKEN_STORE`` is: a store switch leaves tokens in the other);
8. ``jobs`` — the user's ``import_jobs`` / ``export_jobs`` rows (their queued work then finds
   no row and does nothing);
9. ``redis`` — every key naming the user (``notif:unread:{id}``, ``rt:user:{id}``,
   ``idempotency:{id}:…``, ``rl:…:{id}``, …: one ``SCAN`` of the keyspace) and the
   re-authentication tokens issued to the user (``reauth:…`` whose value is the id);
10. ``account`` — one transaction: the ``users`` row goes (every table with a foreign key to it
    follows, ``ON DELETE CASCADE``) and every ``account_deletion_jobs`` row of the user is
    anonymised: its ``user_id`` becomes the nil UUID (:data:`NIL_USER`). That column has no
    foreign key (the row outlives the user) and is NOT NULL; the nil UUID names no one, and
    the API, which scopes jobs by their user, can never return such a row. A delivery that
    finds its row anonymised has nothing left to do.

After that, no row of any table holds the user's id or email.

**The late sweep.** Some writes authorised before the deletion can land after the storage
step: an S3 upload URL stays valid ATTACHMENT_URL_TTL_S, a local upload that had passed its
checks may stream for TRANSFER_TIMEOUT_S, an export job already running writes its archive.
So the storage step also schedules ``account-deletion-sweep:<jobId>`` on this queue, due
:func:`sweep_delay_s` later, which deletes ``{userId}/`` and the user's Redis keys once more
(:func:`sweep`). Its payload holds the user id until it has run.

Failures are retried by the queue (10 attempts for this queue, with backoff); the last one
marks the row ``failed`` (it keeps its user_id: the work is not done) and counts
``innera_account_deletion_jobs_failed_total`` (queue worker). The account stays disabled
meanwhile. To run it again, set the row back to ``pending`` and ``innera jobs retry
account_deletion_jobs:<id>`` (a ``failed`` row is never run again by itself).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from psycopg import sql
from psycopg.abc import Query

from innera.account_deletion import ACCOUNT_DELETED, ACCOUNT_DELETION_JOB
from innera.auth.refresh_tokens import RedisRefreshTokenStore
from innera.jobs.handlers import JobRun, table_handler
from innera.notifications import unread_key
from innera.queue.jobs import Job, JobQueue, PermanentJobError
from innera.queue.worker import Handler, JobContext
from innera.realtime.events import close_user_everywhere
from innera.storage import TRANSFER_TIMEOUT_S
from innera.storage.keys import InvalidKey, canonical_uuid, split_prefix, user_prefix

if TYPE_CHECKING:
    from innera.services import Services

__all__ = [
    "ACCOUNT_DELETED",
    "NIL_USER",
    "QUEUE",
    "STEPS",
    "TABLE",
    "Purge",
    "make_handler",
    "purge",
    "sweep",
    "sweep_delay_s",
    "sweep_job_id",
]

log = logging.getLogger("innera.jobs.account_deletion")

TABLE = ACCOUNT_DELETION_JOB.table
QUEUE = ACCOUNT_DELETION_JOB.queue.name
#: what an anonymised job row holds instead of the deleted user's id
NIL_USER = uuid.UUID(int=0)
#: rows per DELETE statement (short statements, short locks)
BATCH = 1000
#: keys per SCAN round trip
SCAN_COUNT = 1000
#: the longest a single statement, storage call or Redis round trip may take
CALL_TIMEOUT_S = 60.0
SWEEP_PREFIX = "account-deletion-sweep:"
#: margin added to the longest late write (slow clients, clock skew)
SWEEP_MARGIN_S = 300


@dataclass
class Purge:
    """What every step gets: the services, the user, the job row's id and a check that stops
    the work when this worker lost its lease."""

    svc: Services
    user_id: str
    job_id: uuid.UUID
    check: Callable[[], None] = lambda: None


Step = Callable[[Purge], Awaitable[None]]


async def _execute(p: Purge, query: Query, params: tuple[Any, ...], *, name: str) -> int:
    """One autocommitted statement named ``name`` (bounded); the number of rows it
    touched."""
    with trio.fail_after(CALL_TIMEOUT_S):
        async with p.svc.db.connection() as conn:
            cur = await conn.execute(query, params, name=name)
            return max(cur.rowcount, 0)


async def _delete_batched(p: Purge, table: str, key: str = "id", *, name: str) -> int:
    """Delete the user's rows of ``table``, :data:`BATCH` at a time (statements named
    ``name``); how many."""
    query = sql.SQL("DELETE FROM {t} WHERE {k} IN "
                    "(SELECT {k} FROM {t} WHERE user_id = %s LIMIT %s)"
                    ).format(t=sql.Identifier(table), k=sql.Identifier(key))
    total = 0
    while True:
        p.check()
        deleted = await _execute(p, query, (p.user_id, BATCH), name=name)
        total += deleted
        if deleted < BATCH:
            return total


# --- the steps ------------------------------------------------------------------------------


async def disable(p: Purge) -> None:
    await _execute(p, "UPDATE users SET status = 'deleted' WHERE id = %s AND status <> "
                      "'deleted'", (p.user_id,), name="account_deletion.mark_deleted")
    p.svc.hub.close_user(p.user_id, *ACCOUNT_DELETED)
    await close_user_everywhere(p.svc.redis, p.user_id, *ACCOUNT_DELETED)


async def delete_keys(p: Purge) -> None:
    await _execute(p, "DELETE FROM user_keys WHERE user_id = %s", (p.user_id,),
                   name="account_deletion.delete_keys")
    p.svc.data_keys.forget(p.user_id)  # other instances' caches expire by themselves


async def delete_entries(p: Purge) -> None:
    await _delete_batched(p, "attachments", name="account_deletion.delete_attachments")
    # attachments rows of a racing upload: cascade
    await _delete_batched(p, "entries", name="account_deletion.delete_entries")


async def delete_objects(p: Purge) -> None:
    await schedule_sweep(p.svc, p.user_id, p.job_id)
    with trio.fail_after(CALL_TIMEOUT_S * 10):  # many S3 pages: each call bounded too
        await p.svc.storage.delete_prefix(user_prefix(p.user_id), all_versions=True)


async def delete_notifications(p: Purge) -> None:
    await _delete_batched(p, "notifications", name="account_deletion.delete_notifications")


async def delete_devices(p: Purge) -> None:
    await _delete_batched(p, "devices", name="account_deletion.delete_devices")


async def delete_tokens(p: Purge) -> None:
    svc = p.svc
    with trio.fail_after(CALL_TIMEOUT_S):
        await svc.refresh_tokens.revoke_user(p.user_id)
        redis_store = RedisRefreshTokenStore(svc.redis, svc.settings.auth.refresh_token_ttl_s)
        await redis_store.revoke_user(p.user_id)
    await _delete_batched(p, "refresh_tokens", key="token_hash",
                          name="account_deletion.delete_refresh_tokens")


async def delete_job_rows(p: Purge) -> None:
    await _delete_batched(p, "import_jobs", name="account_deletion.delete_import_jobs")
    await _delete_batched(p, "export_jobs", name="account_deletion.delete_export_jobs")


async def delete_redis_keys(p: Purge) -> None:
    await purge_redis(p.svc, p.user_id, p.check)


async def delete_account(p: Purge) -> None:
    with trio.fail_after(CALL_TIMEOUT_S):
        async with p.svc.db.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM users WHERE id = %s", (p.user_id,),
                               name="account_deletion.delete_user")
            await conn.execute("UPDATE account_deletion_jobs SET user_id = %s "
                               "WHERE user_id = %s", (NIL_USER, p.user_id),
                               name="account_deletion.detach_job")


#: the steps in order, by name
STEPS: tuple[tuple[str, Step], ...] = (
    ("disable", disable),
    ("keys", delete_keys),
    ("entries", delete_entries),
    ("storage", delete_objects),
    ("notifications", delete_notifications),
    ("devices", delete_devices),
    ("tokens", delete_tokens),
    ("jobs", delete_job_rows),
    ("redis", delete_redis_keys),
    ("account", delete_account),
)


async def purge(p: Purge, *, steps: int | None = None,
                progress: Callable[[float], Awaitable[None]] | None = None) -> None:
    """Run the first ``steps`` of :data:`STEPS` (all by default), reporting the share done
    after each."""
    todo = STEPS if steps is None else STEPS[:steps]
    for done, (name, step) in enumerate(todo, start=1):
        p.check()
        try:
            await step(p)
        except Exception as exc:  # re-raised: the queue retries the job
            log.warning("account deletion %s: step %s failed: %s: %s", p.job_id, name,
                        type(exc).__name__, exc)
            raise
        log.debug("account deletion %s: step %s done", p.job_id, name)
        if progress is not None:
            await progress(done / len(STEPS))


# --- Redis ------------------------------------------------------------------------------------


async def purge_redis(svc: Services, user_id: str, check: Callable[[], None] = lambda: None
                      ) -> int:
    """Delete every key whose name contains the user's id, and the user's re-authentication
    tokens (their value is the id); how many keys."""
    user = canonical_uuid(user_id)
    if user is None:
        raise ValueError(f"not a user id: {user_id!r}")
    client = svc.redis.client
    with trio.fail_after(CALL_TIMEOUT_S):
        deleted = await client.delete([unread_key(user)])
    cursor: int | None = None
    while cursor != 0:  # a UUID has no glob metacharacters
        check()
        with trio.fail_after(CALL_TIMEOUT_S):
            cursor, keys = await client.scan(cursor or 0, match=f"*{user}*", count=SCAN_COUNT)
            if keys:
                deleted += await client.delete(keys)
    cursor = None
    while cursor != 0:
        check()
        with trio.fail_after(CALL_TIMEOUT_S):
            cursor, keys = await client.scan(cursor or 0, match="reauth:*", count=SCAN_COUNT)
            if keys:
                values = await client.mget(keys)
                mine = [k for k, v in zip(keys, values, strict=True) if v == user]
                if mine:
                    deleted += await client.delete(mine)
    return deleted


# --- the late sweep ---------------------------------------------------------------------------


def sweep_job_id(job_id: uuid.UUID | str) -> str:
    return f"{SWEEP_PREFIX}{job_id}"


def sweep_delay_s(svc: Services) -> float:
    """When the late sweep runs: after the last write authorised before the deletion."""
    return svc.settings.storage.attachment_url_ttl_s + TRANSFER_TIMEOUT_S + SWEEP_MARGIN_S


async def schedule_sweep(svc: Services, user_id: str, job_id: uuid.UUID) -> None:
    with trio.fail_after(CALL_TIMEOUT_S):
        queue = JobQueue(svc.redis, QUEUE, attempts=ACCOUNT_DELETION_JOB.queue.attempts)
        await queue.enqueue(
            {"user_id": user_id}, job_id=sweep_job_id(job_id), delay_s=sweep_delay_s(svc))


async def sweep(svc: Services, payload: dict[str, Any]) -> None:
    """The late sweep: the user's stored objects and Redis keys, once more."""
    try:
        prefix = user_prefix(str(payload.get("user_id")))
        split_prefix(prefix)
    except InvalidKey:
        raise PermanentJobError("the sweep's payload has no valid user_id") from None
    with trio.fail_after(CALL_TIMEOUT_S * 10):
        objects = await svc.storage.delete_prefix(prefix, all_versions=True)
    keys = await purge_redis(svc, prefix[:-1])
    if objects or keys:
        log.warning("account deletion late sweep: deleted %d object(s) and %d Redis key(s) "
                    "written after the deletion", objects, keys)


# --- the queue handler ------------------------------------------------------------------------


async def work(svc: Services, run: JobRun[Services]) -> None:
    """The work of one ``account_deletion_jobs`` row."""
    user_id = run.user_id
    if user_id is None or uuid.UUID(user_id) == NIL_USER:
        log.info("account deletion %s: already done (row anonymised)", run.id)
        return
    started = trio.current_time()
    await purge(Purge(svc, user_id, run.id, run.check_lease), progress=run.progress)
    log.info("account deletion %s: done in %.1f s", run.id, trio.current_time() - started)


def make_handler(svc: Services) -> Handler:
    async def run_job(run: JobRun[Services]) -> None:
        await work(svc, run)

    deletion = table_handler(svc, ACCOUNT_DELETION_JOB, run_job)

    async def handle(job: Job, ctx: JobContext) -> None:
        if job.id.startswith(SWEEP_PREFIX):
            await sweep(svc, job.payload)
        else:
            await deletion(job, ctx)

    return handle
