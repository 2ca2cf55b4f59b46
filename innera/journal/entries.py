"""Entries: data access (every query is scoped to the owner: another user's entry is
indistinguishable from a missing one) and the opaque keyset cursor of the list and search.

Order everywhere: newest first, ``(occurred_at DESC, id DESC)`` (the index
``entries_user_occurred_idx``); the id breaks ties between equal ``occurred_at``, so a keyset
position is exact and pages never skip or repeat an entry.

Content is sealed with the user's data key; the key is fetched once per call, before a
connection is taken from the pool (``DataKeys.get`` may need one itself).

Cursor: ``base64url(payload | tag)``, no padding, where payload = occurred_at in microseconds
since the Unix epoch (signed 64-bit big-endian) | the entry id (16 bytes), and tag = the first
16 bytes of HMAC-SHA256(K, "innera-cursor:v1:" | purpose | ":" | user id | ":" | payload)
with K = HMAC-SHA256(JWT secret, "innera:cursor:v1"). A cursor only opens for the user and
the purpose (``list`` / ``search``) it was made for; anything else is 400 ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from innera.crypto.entry_cipher import EntryCipher
from innera.db.pool import Pool
from innera.errors import BadRequest

__all__ = [
    "ROW_COLUMNS",
    "START",
    "CursorCodec",
    "Entry",
    "InvalidCursor",
    "Position",
    "cursor_codec",
    "delete_entry",
    "entry_from_row",
    "get_entry",
    "insert_entry",
    "iso_utc",
    "list_entries",
    "parse_entry_id",
    "update_entry",
]

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: The columns every entry query selects, in the order :func:`entry_from_row` reads them.
ROW_COLUMNS = "id::text, content, occurred_at, created_at, updated_at"
#: Keyset condition "strictly after this position" in the newest-first order.
AFTER = "(occurred_at, id) < (%s, %s)"
# Qualified: a bare "id" would name the selected id::text column (and sort as text).
ORDER = "ORDER BY entries.occurred_at DESC, entries.id DESC"


def parse_entry_id(text: str) -> str | None:
    """The canonical (lower-case, hyphenated) form of an entry id, or None if ``text`` is not
    one (the routes answer 404 for those, like for unknown ids)."""
    if not _UUID_RE.fullmatch(text):
        return None
    return text.lower()


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with ``Z``, millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


#: A keyset position: (occurred_at, id) of the last entry seen.
Position = tuple[datetime, str]
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


# --- cursor ----------------------------------------------------------------------------


class InvalidCursor(BadRequest):
    code, message = "invalid_cursor", "The cursor is not valid (use nextCursor as returned)"


_PAYLOAD = struct.Struct(">q16s")
_TAG_BYTES = 16


class CursorCodec:
    """Signs and checks keyset cursors (see the module documentation for the format)."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        self._key = hmac.new(raw, b"innera:cursor:v1", hashlib.sha256).digest()

    def _tag(self, purpose: str, user_id: str, payload: bytes) -> bytes:
        message = f"innera-cursor:v1:{purpose}:{user_id}:".encode() + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, purpose: str, user_id: str, position: Position) -> str:
        occurred_at, entry_id = position
        micros = (occurred_at - _EPOCH) // _MICROSECOND
        payload = _PAYLOAD.pack(micros, uuid.UUID(entry_id).bytes)
        token = payload + self._tag(purpose, user_id, payload)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def decode(self, purpose: str, user_id: str, cursor: str) -> Position:
        """The position a cursor of ours encodes; :class:`InvalidCursor` for anything else."""
        try:
            if not cursor.isascii() or len(cursor) > 64:
                raise ValueError("not a cursor")
            token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            if len(token) != _PAYLOAD.size + _TAG_BYTES:
                raise ValueError("wrong length")
            payload, tag = token[:_PAYLOAD.size], token[_PAYLOAD.size:]
            if not hmac.compare_digest(tag, self._tag(purpose, user_id, payload)):
                raise ValueError("bad signature")
            micros, id_bytes = _PAYLOAD.unpack(payload)
            return (_EPOCH + micros * _MICROSECOND, str(uuid.UUID(bytes=id_bytes)))
        except (ValueError, binascii.Error, OverflowError):
            raise InvalidCursor() from None


@lru_cache(maxsize=4)
def cursor_codec(secret: str) -> CursorCodec:
    return CursorCodec(secret)


# --- data access -----------------------------------------------------------------------


async def insert_entry(pool: Pool, cipher: EntryCipher, user_id: str, entry: Entry,
                       occurred_at: datetime | None) -> Entry:
    """Seal and insert ``entry`` (its id made by the caller: the AAD binds it);
    ``occurred_at`` None means now. Returns it with the stored timestamps."""
    dek = await cipher.data_keys.get(user_id)
    sealed = cipher.seal_with(dek, user_id, entry.id, entry.content())
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO entries (id, user_id, content, occurred_at) "
            "VALUES (%s, %s, %s, COALESCE(%s, now())) "
            "RETURNING occurred_at, created_at, updated_at",
            (entry.id, user_id, sealed, occurred_at))
        row = await cur.fetchone()
    assert row is not None
    entry.occurred_at, entry.created_at, entry.updated_at = row
    return entry


async def get_entry(pool: Pool, cipher: EntryCipher, user_id: str, entry_id: str
                    ) -> Entry | None:
    dek = await cipher.data_keys.get(user_id)
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {ROW_COLUMNS} FROM entries WHERE id = %s AND user_id = %s",
            (entry_id, user_id), binary=True)
        row = await cur.fetchone()
    return None if row is None else entry_from_row(cipher, dek, user_id, row)


async def list_entries(pool: Pool, cipher: EntryCipher, user_id: str, limit: int,
                       after: Position | None) -> tuple[list[Entry], Position | None]:
    """One page, newest first: the entries and the position to continue from (None on the
    last page)."""
    dek = await cipher.data_keys.get(user_id)
    where, params = "user_id = %s", [user_id]
    if after is not None:
        where += " AND " + AFTER
        params += [after[0], after[1]]
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {ROW_COLUMNS} FROM entries WHERE {where} {ORDER} LIMIT %s",
            (*params, limit + 1), binary=True)
        rows = await cur.fetchall()
    entries = [entry_from_row(cipher, dek, user_id, row) for row in rows[:limit]]
    more = len(rows) > limit
    return entries, (entries[-1].position if more else None)


async def update_entry(pool: Pool, cipher: EntryCipher, user_id: str, entry_id: str,
                       changes: dict[str, Any]) -> Entry | None:
    """Apply ``changes`` (Entry attribute → new value; ``occurred_at`` included) and re-seal
    with a fresh nonce, atomically (the row is locked while read, changed and written)."""
    dek = await cipher.data_keys.get(user_id)
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            f"SELECT {ROW_COLUMNS} FROM entries WHERE id = %s AND user_id = %s FOR UPDATE",
            (entry_id, user_id), binary=True)
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
            (sealed, entry.occurred_at, entry.id))
        stored = await cur.fetchone()
    assert stored is not None
    entry.occurred_at, entry.updated_at = stored
    return entry


async def delete_entry(pool: Pool, user_id: str, entry_id: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM entries WHERE id = %s AND user_id = %s",
                                 (entry_id, user_id))
        return cur.rowcount > 0
