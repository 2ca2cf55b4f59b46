"""Opaque, tamper-checked keyset cursors for every list (entries, search, notifications).

A position is ``(timestamp, uuid)`` of the last item seen, in the list's order. Cursor:
``base64url(payload | tag)``, no padding, where payload = the timestamp in microseconds since
the Unix epoch (signed 64-bit big-endian) | the id (16 bytes), and tag = the first 16 bytes of
HMAC-SHA256(K, "innera-cursor:v1:" | purpose | ":" | user id | ":" | payload). A cursor only
opens for the user and the purpose it was made for; anything else is 400 ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from innera.errors import BadRequest

#: A keyset position: (timestamp, id) of the last item seen.
Position = tuple[datetime, str]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PAYLOAD = struct.Struct(">q16s")
_TAG_BYTES = 16


class InvalidCursor(BadRequest):
    code, message = "invalid_cursor", "The cursor is not valid (use nextCursor as returned)"


class CursorCodec:
    """Signs and checks cursors with a key of its own (``key``: 32 secret bytes)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, purpose: str, user_id: str, payload: bytes) -> bytes:
        message = f"innera-cursor:v1:{purpose}:{user_id}:".encode() + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, purpose: str, user_id: str, position: Position) -> str:
        timestamp, item_id = position
        micros = (timestamp - EPOCH) // _MICROSECOND
        payload = _PAYLOAD.pack(micros, uuid.UUID(item_id).bytes)
        token = payload + self._tag(purpose, user_id, payload)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def page(self, purpose: str, user_id: str, rows: list[Any], limit: int
             ) -> tuple[list[Any], str | None]:
        """A keyset page from ``rows`` read with ``LIMIT limit + 1`` (newest first, each row
        with ``created_at`` and ``id``): the first ``limit`` rows, and the cursor after the
        last one when there are more (else None)."""
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        last = rows[-1]
        return rows, self.encode(purpose, user_id, (last["created_at"], str(last["id"])))

    def decode(self, purpose: str, user_id: str, cursor: str) -> Position:
        """The position a cursor of ours encodes; :class:`InvalidCursor` for anything else."""
        try:
            if not cursor.isascii() or len(cursor) > 64:
                raise ValueError("not a cursor")
            token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            if len(token) != _PAYLOAD.size + _TAG_BYTES:
                raise ValueError("wrong length")
            if base64.urlsafe_b64encode(token).rstrip(b"=").decode() != cursor:
                raise ValueError("not as issued")  # "=", "+/", other trailing bits, junk
            payload, tag = token[:_PAYLOAD.size], token[_PAYLOAD.size:]
            if not hmac.compare_digest(tag, self._tag(purpose, user_id, payload)):
                raise ValueError("bad signature")
            micros, id_bytes = _PAYLOAD.unpack(payload)
            return (EPOCH + micros * _MICROSECOND, str(uuid.UUID(bytes=id_bytes)))
        except (ValueError, binascii.Error, OverflowError):
            raise InvalidCursor() from None
