"""Attachment storage behind one interface: S3 (or any S3-compatible endpoint) in
production, a directory under the data dir on the embedded default.

Objects are addressed by keys ``{userId}/{entryId}/{attachmentId}`` and job files
``{userId}/exports|imports/{jobId}`` (``innera.storage.keys``).
Clients move the bytes themselves, through short-lived URLs: presigned S3 URLs, or signed URLs
on innera itself for the local store (``innera.storage.local``). Nothing here blocks the
event loop: boto3 runs in worker threads behind a limiter, local file I/O through Trio's
thread-backed file API.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from innera.storage.keys import InvalidKey, entry_prefix, job_file_key, object_key, user_prefix
from innera.storage.local import LocalStorage
from innera.storage.names import content_disposition, sanitize_filename
from innera.storage.s3 import S3Storage

#: Longest single transfer through innera (a local upload or download, an import upload):
#: routes that stream bytes run under it, and sweeps that must not race one wait past it.
TRANSFER_TIMEOUT_S = 30 * 60.0


class Storage(Protocol):
    name: str

    async def check_health(self) -> None:
        """Return when the store is usable; raise with the reason otherwise."""

    async def presign_put(self, key: str, content_type: str, size: int, ttl_s: int) -> str:
        """A URL accepting one ``PUT`` of exactly ``size`` bytes with this ``Content-Type``
        for ``ttl_s`` seconds, without an Authorization header. Absolute for S3; a path +
        query on innera itself for the local store (resolve it against the API's base URL)."""

    async def presign_get(self, key: str, filename: str, content_type: str, ttl_s: int
                          ) -> str:
        """A URL serving the object for ``ttl_s`` seconds with this ``Content-Type`` and
        ``Content-Disposition: attachment; filename="…"``."""

    async def head(self, key: str) -> int | None:
        """The object's size in bytes, or ``None`` when it does not exist."""

    async def delete(self, key: str, *, all_versions: bool = False) -> None:
        """Delete the object (no error when it does not exist). ``all_versions``: on a
        versioned bucket, every earlier version and delete marker of the key too (else they
        stay until the bucket's lifecycle rule expires them)."""

    async def delete_prefix(self, prefix: str, *, all_versions: bool = False) -> int:
        """Delete every object under a prefix: ``{userId}/`` (everything of a user) or
        ``{userId}/{entryId}/``; returns how many were deleted. ``all_versions``: every
        version and delete marker under the prefix too (account deletion)."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str,
                         max_bytes: int | None = None) -> int:
        """Store a stream of unknown length under a job file key; returns its size. Nothing
        is stored when it fails (:class:`~innera.errors.PayloadTooLarge` past
        ``max_bytes``)."""

    def get_stream(self, key: str) -> AsyncIterator[bytes]:
        """The whole object in chunks (:class:`FileNotFoundError` when it is absent)."""


__all__ = [
    "InvalidKey",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "content_disposition",
    "entry_prefix",
    "job_file_key",
    "object_key",
    "sanitize_filename",
    "user_prefix",
]
