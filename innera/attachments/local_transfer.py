"""The local store's signed URLs (``/v1/attachments/local/{userId}/{entryId}/{attachmentId}``,
see :mod:`innera.storage.local`): what an upload to one must satisfy before its bytes are
written, and what a download from one reads.

Only with the local store: with another store these URLs do not exist (:class:`NotFound`).
A failing disk raises its own error (the HTTP layer answers it 503 ``storage_unavailable``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass

from innera.attachments.lifecycle import attachment_exists
from innera.db.pool import Pool
from innera.errors import NotFound, PayloadTooLarge
from innera.storage import LocalStorage, Storage
from innera.storage.local import InvalidSignature


@dataclass(frozen=True, slots=True)
class LocalDownload:
    """A verified download: the signed content type and file name, the size, the bytes."""

    content_type: str
    filename: str
    size: int
    chunks: AsyncIterator[bytes]


def local_store(storage: Storage) -> LocalStorage:
    """``storage`` when it is the local store, else :class:`NotFound` (no such route)."""
    if not isinstance(storage, LocalStorage):
        raise NotFound("No route matches this URL")
    return storage


async def receive_upload(db: Pool, storage: Storage, *, user_id: str, entry_id: str,
                         attachment_id: str, query: Mapping[str, str], content_type: str,
                         content_length: int | None, chunks: AsyncIterable[bytes],
                         max_bytes: int) -> None:
    """Store an upload to a signed local URL.

    The URL's signature and expiry are checked (:class:`InvalidSignature` /
    ``UrlExpired``), ``content_type`` must be the signed one, a signed size above
    ``max_bytes`` or a ``content_length`` above the signed size is :class:`PayloadTooLarge`,
    and an attachment deleted meanwhile is :class:`NotFound` (no file is written for it).
    Then ``chunks`` are streamed to disk: exactly the signed size, else nothing is stored."""
    store = local_store(storage)
    key = f"{user_id}/{entry_id}/{attachment_id}"
    grant = store.verify("PUT", key, query)
    if content_type != grant.content_type:
        raise InvalidSignature("The Content-Type header is not the one the URL was signed for")
    assert grant.size is not None
    if grant.size > max_bytes or (content_length is not None and content_length > grant.size):
        raise PayloadTooLarge(f"The body is larger than the declared size ({grant.size} bytes)")
    if not await attachment_exists(db, user_id, entry_id, attachment_id):
        raise NotFound("Attachment not found")
    await store.write(key, chunks, size=grant.size)


async def open_download(storage: Storage, *, user_id: str, entry_id: str, attachment_id: str,
                        query: Mapping[str, str]) -> LocalDownload:
    """A download from a signed local URL (signature and expiry checked); :class:`NotFound`
    when no object is stored. The chunks are read from disk when iterated."""
    store = local_store(storage)
    key = f"{user_id}/{entry_id}/{attachment_id}"
    grant = store.verify("GET", key, query)
    size = await store.head(key)
    if size is None:
        raise NotFound("Attachment not found")
    return LocalDownload(content_type=grant.content_type, filename=grant.filename or "",
                         size=size, chunks=store.read(key, size))
