"""Accounts in PostgreSQL: create, look up, change password or status, end sessions.

``session_generation`` (migration 0012) is what ends sessions: an access token carries the
generation it was issued with, and :class:`ActiveUsers` (the per-request check) reads the
current one, so raising it ends every earlier token at once with no added round trip.
Password writes are compare-and-set on the hash that was verified, so a login in flight with
the old password (rehashing it) can never write the old password back over a change."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from innera import whitespace
from innera.batching import Batcher
from innera.db.pool import Pool
from innera.errors import AppError
from innera.ids import canonical_uuid

# no whitespace, and no control character (PostgreSQL text cannot hold NUL)
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@.\s\x00-\x1f\x7f]{2,}$")
#: what sign-up and sign-in accept as an email, as a JSON Schema pattern for the OpenAPI
#: document: ``_EMAIL`` once :func:`normalise_email` stripped it
_LOCAL = f"[^@\\x00-\\x1f\\x7f{whitespace.CHARS}]"
_DOMAIN_END = f"[^@.\\x00-\\x1f\\x7f{whitespace.CHARS}]"
EMAIL_PATTERN = (f"^{whitespace.WHITESPACE}*{_LOCAL}{{1,64}}@{_LOCAL}+\\.{_DOMAIN_END}{{2,}}"
                 f"{whitespace.WHITESPACE}*$")


class EmailTaken(AppError):
    status, code, message = 409, "email_taken", "An account with this email already exists"


@dataclass(frozen=True)
class User:
    id: str
    email: str
    status: str
    created_at: datetime
    session_generation: int = 0

    def public(self) -> dict[str, Any]:
        created = self.created_at.astimezone(UTC).isoformat(timespec="milliseconds")
        return {"id": self.id, "email": self.email, "createdAt": created.replace("+00:00", "Z")}


def normalise_email(email: str) -> str:
    return email.strip().lower()


def is_valid_email(email: str) -> bool:
    return len(email) <= 254 and _EMAIL.match(email) is not None


def _user(row: dict[str, Any]) -> User:
    return User(str(row["id"]), row["email"], row["status"], row["created_at"],
                row.get("session_generation", 0))


async def create_user(conn: psycopg.AsyncConnection[Any], email: str, password_hash: str,
                      user_id: str | None = None) -> User:
    """Insert the account (on ``conn``, inside the caller's transaction), with ``user_id``
    when the caller chose it (else PostgreSQL makes one)."""
    try:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "INSERT INTO users (id, email, password_hash) "
            "VALUES (coalesce(%s::uuid, gen_random_uuid()), %s, %s) "
            "RETURNING id, email, status, created_at, session_generation",
            (user_id, email, password_hash), name="accounts.create")
    except psycopg.errors.UniqueViolation:
        raise EmailTaken() from None
    row = await cur.fetchone()
    assert row is not None
    return _user(row)


_ACTIVE = ("SELECT id, email, status, created_at, session_generation FROM users "
           "WHERE status = 'active' AND ")


class ActiveUsers:
    """"Is this user (still) active?", asked by every authenticated request: concurrent
    requests share one query (:class:`innera.batching.Batcher`). Every answer is read from
    PostgreSQL after the request asked, never cached, so a disabled or deleted account's
    tokens stop working at once."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.batcher: Batcher[str, User | None] = Batcher(self._fetch)

    async def get(self, user_id: str) -> User | None:
        """The active user with this id (``None``: unknown, disabled or not a UUID)."""
        canonical = canonical_uuid(user_id)
        return None if canonical is None else await self.batcher(canonical)

    async def _fetch(self, user_ids: Sequence[str]) -> list[User | None]:
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                _ACTIVE + "id = ANY(%s::uuid[])", (list(set(user_ids)),),
                name="accounts.active_batch")
            users = {str(row["id"]): _user(row) for row in await cur.fetchall()}
        return [users.get(user_id) for user_id in user_ids]


async def get_active_user(pool: Pool, user_id: str) -> User | None:
    if canonical_uuid(user_id) is None:
        return None
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            _ACTIVE + "id = %s", (user_id,), name="accounts.active_by_id")
        row = await cur.fetchone()
    return _user(row) if row else None


async def find_for_login(pool: Pool, email: str) -> tuple[User, str] | None:
    """The active user with this (normalised) email and its password hash."""
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT id, email, status, created_at, session_generation, password_hash FROM users "
            "WHERE email = %s AND status = 'active'", (email,), name="auth.user_by_email")
        row = await cur.fetchone()
    return (_user(row), row["password_hash"]) if row else None


async def password_hash_of(pool: Pool, user_id: str) -> str | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT password_hash FROM users WHERE id = %s AND status = 'active'", (user_id,),
            name="accounts.password_hash")
        row = await cur.fetchone()
    return row[0] if row else None


async def rehash_password(pool: Pool, user_id: str, verified_hash: str, new_hash: str
                          ) -> bool:
    """Replace the hash just verified by a stronger one (login): only if it is still the
    stored one, so a password changed meanwhile is never overwritten."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE users SET password_hash = %s WHERE id = %s AND password_hash = %s",
            (new_hash, user_id, verified_hash), name="accounts.rehash_password")
        return cur.rowcount == 1


async def change_password(pool: Pool, user_id: str, verified_hash: str, new_hash: str
                          ) -> int | None:
    """Set a new password and end every session (the generation goes up), only if
    ``verified_hash`` (the current password's, just verified) is still the stored one. The
    new session generation, or None when the password changed meanwhile."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE users SET password_hash = %s, session_generation = session_generation + 1 "
            "WHERE id = %s AND password_hash = %s AND status = 'active' "
            "RETURNING session_generation", (new_hash, user_id, verified_hash),
            name="accounts.change_password")
        row = await cur.fetchone()
    return None if row is None else int(row[0])


async def end_sessions(pool: Pool, user_id: str) -> int | None:
    """End every session of the user at once (the generation goes up): the new generation,
    or None for an unknown user."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE users SET session_generation = session_generation + 1 WHERE id = %s "
            "RETURNING session_generation", (user_id,), name="accounts.end_sessions")
        row = await cur.fetchone()
    return None if row is None else int(row[0])
