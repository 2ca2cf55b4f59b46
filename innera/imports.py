"""Imports: entries from a file (an innera export or a Day One export), as a job.

The upload is stored under :func:`upload_key` (``{userId}/imports/{jobId}``) before its job
(:data:`IMPORT_JOB`) is submitted (:func:`submit_import`); the ``import-jobs`` worker
(``workers/imports.py``) checks and imports it, then deletes it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio

from innera.db.pool import Pool
from innera.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from innera.jobs import tables
from innera.jobs.kinds import JobKind, QueueSpec
from innera.jobs.submission import submit
from innera.redis import Redis
from innera.storage import Storage
from innera.storage.keys import job_file_key

log = logging.getLogger("innera.imports")

IMPORT_JOB = JobKind("import_jobs", "import",
                     QueueSpec("import-jobs", concurrency=1, timeout_s=1800, attempts=5))
FOLDER = "imports"
#: what an import file may be sent as
CONTENT_TYPES = ("application/zip", "application/json")
#: what some clients send for a zip (Windows browsers), stored as ``application/zip``
ZIP_ALIASES = frozenset({"application/x-zip-compressed", "application/x-zip"})
#: bound on removing a stored file after a failed submit
CLEANUP_TIMEOUT_S = 10.0


class EmptyUpload(BadRequest):
    code, message = "empty_upload", "The body is empty: send the file to import"


def accepted_content_type(mimetype: str) -> str:
    """The content type an upload is stored as; 415 for one an import cannot read."""
    content_type = mimetype.lower()
    if content_type in ZIP_ALIASES:
        content_type = "application/zip"
    if content_type not in CONTENT_TYPES:
        raise UnsupportedMediaType(
            "Send the file as application/zip (an innera or Day One export) or "
            "application/json (a Day One Journal.json)",
            details={"contentType": content_type or None, "accepted": list(CONTENT_TYPES)})
    return content_type


def check_declared_size(length: int | None, max_bytes: int) -> None:
    """Refuse an upload by its Content-Length before reading it: 413 past ``max_bytes``
    (IMPORT_MAX_BYTES), 400 ``empty_upload`` for none."""
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"The file is larger than the limit ({max_bytes} bytes)")
    if length == 0:
        raise EmptyUpload()


def upload_key(user_id: str, job_id: str) -> str:
    """Where the file of an import is stored until its job is done:
    ``{userId}/imports/{jobId}``."""
    return job_file_key(user_id, FOLDER, job_id)


async def submit_import(db: Pool, redis: Redis, user_id: str, job_id: uuid.UUID, *,
                        content_type: str, size: int) -> dict[str, Any]:
    """Submit the import of the file stored under ``upload_key(user_id, job_id)``; returns
    the job's row."""
    await submit(db, redis, IMPORT_JOB, user_id=user_id, job_id=job_id,
                 payload={"contentType": content_type, "size": size})
    row = await tables.get_job(db, IMPORT_JOB, user_id, job_id)
    assert row is not None
    return row


async def start_import(db: Pool, redis: Redis, storage: Storage, user_id: str,
                       chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int
                       ) -> dict[str, Any]:
    """Store the streamed file (at most ``max_bytes``: 413 past it, nothing stored) and submit
    its import job; returns the job's row. A file that turns out empty (400
    ``empty_upload``) or a submit that fails leaves nothing stored."""
    job_id = uuid.uuid4()
    key = upload_key(user_id, str(job_id))
    size = await storage.put_stream(key, chunks, content_type=content_type,
                                    max_bytes=max_bytes)  # stores nothing when it fails
    try:
        if size == 0:
            raise EmptyUpload()
        return await submit_import(db, redis, user_id, job_id, content_type=content_type,
                                   size=size)
    except BaseException:
        await _remove(storage, key)
        raise


async def _remove(storage: Storage, key: str) -> None:
    """Delete a stored upload, whatever happens around (shielded, bounded, logged)."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT_S):
        try:
            await storage.delete(key)
        except Exception:
            log.warning("could not delete the import upload %s", key, exc_info=True)
