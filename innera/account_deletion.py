"""Deleting an account: what ``DELETE /v1/me`` does at once (:func:`delete_account`), and the
job (:data:`ACCOUNT_DELETION_JOB`) that purges the rest (``workers/account_deletion.py``).

At once: the user's refresh tokens are revoked, the account is disabled (status
``deleted``: sign-in and every access token stop working) and its deletion job is created in
the same transaction, then enqueued; the user's sockets are closed with
:data:`ACCOUNT_DELETED` on every instance. Migration 0009 allows one unfinished deletion job
per user: a request racing the one that started the deletion gets that job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row

from innera.db.pool import Pool
from innera.jobs.kinds import JobKind, QueueSpec
from innera.jobs.submission import submission
from innera.realtime.events import close_user_everywhere
from innera.redis import Redis

if TYPE_CHECKING:
    from innera.auth.refresh_tokens import RefreshTokenStore
    from innera.realtime.hub import Hub

#: the queue payload does not name the user (it must not spread the id it is erasing into
#: Redis): the handler reads the row
ACCOUNT_DELETION_JOB = JobKind(
    "account_deletion_jobs", "account-deletion",
    QueueSpec("account-deletion", concurrency=2, timeout_s=1800, attempts=10),
    queue_names_user=False, user_events=False)
#: the close code and reason of a deleted account's sockets
ACCOUNT_DELETED = (4003, "Account deleted")


async def delete_account(db: Pool, redis: Redis, refresh_tokens: RefreshTokenStore, hub: Hub,
                         user_id: str) -> dict[str, Any] | None:
    """Revoke the user's refresh tokens (first: a failure here leaves the account as it was,
    so the client can retry), disable the account and submit its deletion job
    (:func:`start_deletion`), then close the user's sockets. The unfinished deletion job, or
    None when the account's deletion finished meanwhile (nothing is closed then)."""
    await refresh_tokens.revoke_user(user_id)
    row = await start_deletion(db, redis, user_id)
    if row is None:
        return None
    hub.close_user(user_id, *ACCOUNT_DELETED)  # this instance's sockets, even without Redis
    await close_user_everywhere(redis, user_id, *ACCOUNT_DELETED)
    return row


async def start_deletion(db: Pool, redis: Redis, user_id: str) -> dict[str, Any] | None:
    """Disable the account and create its deletion job in one transaction (row lock on the
    user: concurrent requests serialise; the second finds the account disabled and gets the
    first one's job), then enqueue it once committed (without Redis, the reconciler enqueues
    it later). The unfinished job of the user, or None."""
    async with submission(db, redis, ACCOUNT_DELETION_JOB) as sub:
        conn = sub.conn
        cur = await conn.execute(
            "UPDATE users SET status = 'deleted' WHERE id = %s AND status = 'active'",
            (user_id,), name="account_deletion.disable_user")
        if cur.rowcount == 1:
            try:
                async with conn.transaction():  # savepoint
                    await sub.insert(user_id=user_id, payload={})
            except UniqueViolation:  # one is unfinished already (migration 0009)
                pass
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT id, status, progress, error, created_at, started_at, finished_at "
            "FROM account_deletion_jobs WHERE user_id = %s "
            "AND status IN ('pending', 'running') ORDER BY created_at DESC LIMIT 1",
            (user_id,), name="account_deletion.unfinished_job")
        row = await cur.fetchone()
        if row is not None:
            sub.enqueue_after_commit({"id": row["id"], "user_id": None})
    return row
