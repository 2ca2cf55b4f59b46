"""The life of an attachment: declared (``pending``, with an upload URL), completed once its
object is stored with the declared size (``ready``), downloaded through short-lived URLs,
deleted (object first, then row). Rows live in ``attachments``; objects under
``{userId}/{entryId}/{attachmentId}`` (:func:`innera.storage.keys.object_key`).

Every function takes its dependencies explicitly: the pool, the store, the settings values it
needs. A failing store raises the store's own error (S3 error or timeout, disk error); the
HTTP layer answers it 503 ``storage_unavailable``. Ids of another user, unknown or malformed
ids are :class:`~innera.errors.NotFound` alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg.rows import dict_row

from innera.db.pool import Pool
from innera.errors import Conflict, NotFound, ValidationFailed
from innera.storage import Storage
from innera.storage.keys import InvalidKey, canonical_uuid, entry_prefix, object_key

_COLUMNS = "id, user_id, entry_id, filename, content_type, size, status, created_at, updated_at"


class UploadIncomplete(Conflict):
    code = "upload_incomplete"
    message = "The upload has not been received with the declared size"


class AttachmentNotReady(Conflict):
    code = "attachment_not_ready"
    message = "The attachment's upload has not been completed"


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    user_id: str
    entry_id: str
    filename: str
    content_type: str
    size: int
    status: Literal["pending", "ready"]
    created_at: datetime
    updated_at: datetime

    @property
    def key(self) -> str:
        """The stored object's key."""
        return object_key(self.user_id, self.entry_id, self.id)


@dataclass(frozen=True, slots=True)
class Upload:
    """A declared attachment and where its bytes go: PUT ``url`` with ``headers``."""

    attachment: Attachment
    url: str
    headers: dict[str, str]
    expires_in: int


@dataclass(frozen=True, slots=True)
class Download:
    """A ready attachment and a URL its bytes are read from (valid ``expires_in`` s)."""

    attachment: Attachment
    url: str
    expires_in: int


def _attachment(row: dict[str, Any]) -> Attachment:
    return Attachment(
        id=str(row["id"]), user_id=str(row["user_id"]), entry_id=str(row["entry_id"]),
        filename=row["filename"], content_type=row["content_type"], size=row["size"],
        status=row["status"], created_at=row["created_at"], updated_at=row["updated_at"])


def id_or_404(value: str, what: str) -> str:
    """``value`` as a canonical UUID, else :class:`NotFound` ("<what> not found")."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise NotFound(f"{what} not found")
    return canonical


async def _fetch(db: Pool, user_id: str, attachment_id: str) -> Attachment:
    """The user's attachment, else 404 (another user's, unknown and malformed ids alike)."""
    attachment_id = id_or_404(attachment_id, "Attachment")
    async with db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM attachments WHERE id = %s AND user_id = %s",
            (attachment_id, user_id), name="attachments.read")
        row = await cur.fetchone()
    if row is None:
        raise NotFound("Attachment not found")
    return _attachment(row)


async def declare(db: Pool, storage: Storage, user_id: str, entry_id: str, *, filename: str,
                  content_type: str, size: int, max_bytes: int, url_ttl_s: int) -> Upload:
    """Declare an attachment of the user's entry (``pending``) and presign its upload.

    ``filename`` is already sanitised and ``content_type`` allow-listed; a ``size`` above
    ``max_bytes`` is :class:`ValidationFailed` (field ``size``); an entry that is not the
    user's is :class:`NotFound`."""
    entry_id = id_or_404(entry_id, "Entry")
    if size > max_bytes:
        raise ValidationFailed(details=[{
            "field": "size", "message": f"must be at most {max_bytes} bytes",
            "type": "less_than_equal"}])
    attachment_id = str(uuid.uuid4())
    url = await storage.presign_put(
        object_key(user_id, entry_id, attachment_id), content_type, size, url_ttl_s)
    async with db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "INSERT INTO attachments (id, user_id, entry_id, filename, content_type, size) "
            "SELECT %s, e.user_id, e.id, %s, %s, %s FROM entries e "
            f"WHERE e.id = %s AND e.user_id = %s RETURNING {_COLUMNS}",
            (attachment_id, filename, content_type, size, entry_id, user_id),
            name="attachments.declare")
        row = await cur.fetchone()
    if row is None:
        raise NotFound("Entry not found")
    return Upload(attachment=_attachment(row), url=url,
                  headers={"Content-Type": content_type}, expires_in=url_ttl_s)


async def entry_attachments(db: Pool, user_id: str, entry_id: str) -> list[Attachment]:
    """The attachments of the user's entry, oldest first; :class:`NotFound` for an entry
    that is not the user's."""
    entry_id = id_or_404(entry_id, "Entry")
    async with db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT 1 FROM entries WHERE id = %s AND user_id = %s", (entry_id, user_id),
            name="attachments.entry_exists")
        if await cur.fetchone() is None:
            raise NotFound("Entry not found")
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM attachments WHERE entry_id = %s AND user_id = %s "
            "ORDER BY created_at, id", (entry_id, user_id), name="attachments.list_by_entry")
        rows = await cur.fetchall()
    return [_attachment(r) for r in rows]


async def complete(db: Pool, storage: Storage, user_id: str, attachment_id: str) -> Attachment:
    """Mark the attachment ``ready``: its object must be stored with the declared size, else
    :class:`UploadIncomplete`. A ready attachment is returned unchanged."""
    attachment = await _fetch(db, user_id, attachment_id)
    if attachment.status == "ready":
        return attachment
    size = await storage.head(attachment.key)
    if size is None:
        raise UploadIncomplete("Nothing has been uploaded for this attachment yet")
    if size != attachment.size:
        raise UploadIncomplete("The uploaded object does not have the declared size",
                               details={"expectedSize": attachment.size, "actualSize": size})
    async with db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"UPDATE attachments SET status = 'ready' WHERE id = %s AND user_id = %s "
            f"RETURNING {_COLUMNS}", (attachment.id, user_id), name="attachments.complete")
        updated = await cur.fetchone()
    if updated is None:  # deleted meanwhile
        raise NotFound("Attachment not found")
    return _attachment(updated)


async def download(db: Pool, storage: Storage, user_id: str, attachment_id: str, *,
                   url_ttl_s: int) -> Download:
    """The attachment and a presigned download URL; :class:`AttachmentNotReady` while it is
    pending."""
    attachment = await _fetch(db, user_id, attachment_id)
    if attachment.status != "ready":
        raise AttachmentNotReady()
    url = await storage.presign_get(attachment.key, attachment.filename,
                                    attachment.content_type, url_ttl_s)
    return Download(attachment=attachment, url=url, expires_in=url_ttl_s)


async def delete(db: Pool, storage: Storage, user_id: str, attachment_id: str) -> None:
    """Delete the attachment: its object first (a failing store leaves the row, so a retry
    works), then its row."""
    attachment = await _fetch(db, user_id, attachment_id)
    await storage.delete(attachment.key)
    async with db.connection() as conn:
        await conn.execute("DELETE FROM attachments WHERE id = %s AND user_id = %s",
                           (attachment.id, user_id), name="attachments.delete")


async def delete_entry_objects(storage: Storage, user_id: str, entry_id: str) -> int:
    """Delete every stored object of an entry (``{userId}/{entryId}/…``, including uploads
    never completed). Call it when an entry is deleted: the rows go with the entry
    (``ON DELETE CASCADE``), the objects do not. Returns how many objects were deleted (0 for
    a malformed id); a failing store raises (nothing is lost: safe to retry)."""
    try:
        prefix = entry_prefix(user_id, entry_id)
    except InvalidKey:
        return 0
    return await storage.delete_prefix(prefix)


async def attachment_exists(db: Pool, user_id: str, entry_id: str, attachment_id: str) -> bool:
    """Whether the row of ``{userId}/{entryId}/{attachmentId}`` exists (pending or ready)."""
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT 1 FROM attachments WHERE id = %s AND user_id = %s AND entry_id = %s",
            (attachment_id, user_id, entry_id), name="attachments.exists")
        return await cur.fetchone() is not None
