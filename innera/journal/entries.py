"""Entries: data access (every query is scoped to the owner: another user's entry is
indistinguishable from a missing one) and the opaque keyset cursor of the list and search.

Order everywhere: newest first, ``(occurred_at DESC, id DESC)`` (the index
``entries_user_occurred_idx``); the id breaks ties between equal ``occurred_at``, so a keyset
position is exact and pages never skip or repeat an entry.

Content is sealed with the user's data key; the key is fetched once per call, before a
connection is taken from the pool (``DataKeys.get`` may need one itself).

Cursors (``innera/pagination.py``) carry a :data:`Position`; their purposes are ``list`` and
``search``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from innera.batching import Batcher
from innera.crypto.entry_cipher import EntryCipher
from innera.db.pool import Pool
from innera.errors import DatabaseUnavailable
from innera.pagination import EPOCH, Position
from innera.timestamps import iso_utc

__all__ = [
    "ROW_COLUMNS",
    "START",
    "Entry",
    "EntryReads",
    "Position",
    "delete_entry",
    "entry_from_row",
    "insert_entry",
    "list_entries",
    "update_entry",
]

_EPOCH = EPOCH

#: The columns every entry query selects, in the order :func:`entry_from_row` reads them.
ROW_COLUMNS = "id::text, content, occurred_at, created_at, updated_at"
_JOINED_COLUMNS = "e.id::text, e.content, e.occurred_at, e.created_at, e.updated_at"
#: Keyset condition "strictly after this position" in the newest-first order.
AFTER = "(occurred_at, id) < (%s, %s)"
# Qualified: a bare "id" would name the selected id::text column (and sort as text).
ORDER = "ORDER BY entries.occurred_at DESC, entries.id DESC"


@dataclass(slots=True)
class Entry:
    id: str
    body: str
    title: str | None = None
    tags: list[str] = field(default_factory=list)
    mood: str | None = None
    occurred_at: datetime = _EPOCH
    created_at: datetime = _EPOCH
    updated_at: datetime = _EPOCH

    def content(self) -> dict[str, Any]:
        """What is sealed (the plaintext JSON of the row's ``content``)."""
        return {"title": self.title, "body": self.body, "tags": self.tags, "mood": self.mood}

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "body": self.body, "tags": self.tags,
                "mood": self.mood, "occurredAt": iso_utc(self.occurred_at),
                "createdAt": iso_utc(self.created_at), "updatedAt": iso_utc(self.updated_at)}

    @property
    def position(self) -> Position:
        return (self.occurred_at, self.id)


#: The position before every entry (entries are after it): a search cut short before it
#: read a row continues from here.
START: Position = (datetime.max.replace(tzinfo=UTC), "ffffffff-ffff-ffff-ffff-ffffffffffff")


def entry_from_row(cipher: EntryCipher, dek: bytes, user_id: str, row: Sequence[Any]) -> Entry:
    """An :data:`ROW_COLUMNS` row → an Entry (decrypted; CryptoError if it does not open)."""
    entry_id = row[0]
    content = cipher.open_with(dek, user_id, entry_id, row[1])
    return Entry(id=entry_id, title=content.get("title"), body=content["body"],
                 tags=content.get("tags") or [], mood=content.get("mood"),
                 occurred_at=row[2], created_at=row[3], updated_at=row[4])


# --- data access -----------------------------------------------------------------------

#: Bound on one data-access call (key, connection and queries); past it: 503.
OPERATION_TIMEOUT_S = 10.0


class _bounded:
    """``with _bounded():`` the block gets OPERATION_TIMEOUT_S, past it DatabaseUnavailable
    (a class rather than a @contextmanager around fail_after: it runs on every read)."""

    __slots__ = ("_scope",)

    def __enter__(self) -> None:
        self._scope = trio.CancelScope(deadline=trio.current_time() + OPERATION_TIMEOUT_S)
        self._scope.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        suppressed = self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught or isinstance(exc, trio.TooSlowError):
            raise DatabaseUnavailable("The database did not answer in time") from None
        return suppressed


async def insert_entry(pool: Pool, cipher: EntryCipher, user_id: str, entry: Entry,
                       occurred_at: datetime | None) -> Entry:
    """Seal and insert ``entry`` (its id made by the caller: the AAD binds it);
    ``occurred_at`` None means now. Returns it with the stored timestamps."""
    with _bounded():
        dek = await cipher.data_keys.get(user_id)
        sealed = cipher.seal_with(dek, user_id, entry.id, entry.content())
        async with pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO entries (id, user_id, content, occurred_at) "
                "VALUES (%s, %s, %s, COALESCE(%s, now())) "
                "RETURNING occurred_at, created_at, updated_at",
                (entry.id, user_id, sealed, occurred_at), name="entries.insert")
            row = await cur.fetchone()
        assert row is not None
        entry.occurred_at, entry.created_at, entry.updated_at = row
        return entry


class EntryReads:
    """Reading one entry by id, the most frequent request: concurrent reads share one query
    (:class:`innera.batching.Batcher`), which matches each (entry, user) pair exactly, so a
    read can only ever find its own user's entry."""

    def __init__(self, pool: Pool, cipher: EntryCipher) -> None:
        self._pool = pool
        self._cipher = cipher
        self.batcher: Batcher[tuple[str, str], Sequence[Any] | None] = Batcher(self._fetch)

    async def get(self, user_id: str, entry_id: str) -> Entry | None:
        """The user's entry (decrypted), or None.

        The database work is bounded per batch, not per read (a cancel scope with a
        deadline is ~11 µs of CPU, a visible share of a read under load): a read waits for
        at most the batch in flight and its own, each bounded by OPERATION_TIMEOUT_S."""
        dek = self._cipher.data_keys.cached(user_id)
        if dek is None:
            with _bounded():
                dek = await self._cipher.data_keys.get(user_id)
        row = await self.batcher((entry_id, user_id))
        return None if row is None else entry_from_row(self._cipher, dek, user_id, row)

    async def _fetch(self, keys: Sequence[tuple[str, str]]) -> list[Sequence[Any] | None]:
        with _bounded():  # its DatabaseUnavailable reaches every read of the batch
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    f"SELECT {_JOINED_COLUMNS}, e.user_id::text FROM unnest(%s::uuid[], "
                    "%s::uuid[]) AS k(id, user_id) JOIN entries e ON e.id = k.id AND "
                    "e.user_id = k.user_id",
                    ([entry for entry, _ in keys], [user for _, user in keys]), binary=True,
                    name="entries.read")
                rows = {(row[0], row[-1]): row for row in await cur.fetchall()}
        return [rows.get(key) for key in keys]


async def list_entries(pool: Pool, cipher: EntryCipher, user_id: str, limit: int,
                       after: Position | None) -> tuple[list[Entry], Position | None]:
    """One page, newest first: the entries and the position to continue from (None on the
    last page)."""
    with _bounded():
        dek = await cipher.data_keys.get(user_id)
        where, params = "user_id = %s", [user_id]
        if after is not None:
            where += " AND " + AFTER
            params += [after[0], after[1]]
        async with pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {ROW_COLUMNS} FROM entries WHERE {where} {ORDER} LIMIT %s",
                (*params, limit + 1), binary=True, name="entries.list")
            rows = await cur.fetchall()
        entries = [entry_from_row(cipher, dek, user_id, row) for row in rows[:limit]]
        more = len(rows) > limit
        return entries, (entries[-1].position if more else None)


async def update_entry(pool: Pool, cipher: EntryCipher, user_id: str, entry_id: str,
                       changes: dict[str, Any]) -> Entry | None:
    """Apply ``changes`` (Entry attribute → new value; ``occurred_at`` included) and re-seal
    with a fresh nonce, atomically (the row is locked while read, changed and written)."""
    with _bounded():
        dek = await cipher.data_keys.get(user_id)
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT {ROW_COLUMNS} FROM entries WHERE id = %s AND user_id = %s FOR UPDATE",
                (entry_id, user_id), binary=True, name="entries.lock_for_update")
            row = await cur.fetchone()
            if row is None:
                return None
            entry = entry_from_row(cipher, dek, user_id, row)
            for name, value in changes.items():
                setattr(entry, name, value)
            sealed = cipher.seal_with(dek, user_id, entry.id, entry.content())
            cur = await conn.execute(
                "UPDATE entries SET content = %s, occurred_at = %s WHERE id = %s "
                "RETURNING occurred_at, updated_at",
                (sealed, entry.occurred_at, entry.id), name="entries.update")
            stored = await cur.fetchone()
        assert stored is not None
        entry.occurred_at, entry.updated_at = stored
        return entry


async def delete_entry(pool: Pool, user_id: str, entry_id: str) -> bool:
    with _bounded():
        async with pool.connection() as conn:
            cur = await conn.execute("DELETE FROM entries WHERE id = %s AND user_id = %s",
                                     (entry_id, user_id), name="entries.delete")
            return cur.rowcount > 0
