"""Imports: entries from a file (an innera export or a Day One export), as a job.

The upload is stored under :func:`upload_key` (``{userId}/imports/{jobId}``) before its job
(:data:`IMPORT_JOB`) is submitted (:func:`submit_import`); the ``import-jobs`` worker
(``workers/imports.py``) checks and imports it, then deletes it.
"""

from __future__ import annotations

import uuid
from typing import Any

from innera.db.pool import Pool
from innera.jobs import tables
from innera.jobs.kinds import JobKind, QueueSpec
from innera.jobs.submission import submit
from innera.redis import Redis
from innera.storage.keys import job_file_key

IMPORT_JOB = JobKind("import_jobs", "import",
                     QueueSpec("import-jobs", concurrency=1, timeout_s=1800, attempts=5))
FOLDER = "imports"


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
