"""The job resource the API returns for exports, imports and account deletions:
``{id, status, progress, error, errorCode, createdAt, startedAt, finishedAt}`` plus
``downloadUrl`` / ``expiresIn`` for a completed export. ``error`` is a message written for the
user: the fixed one of ``errorCode``, or the precise problem of an imported file, never
exception text (``innera/jobs/handlers.py``). Moments are :func:`innera.timestamps.iso_utc`
(milliseconds, ``Z``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from innera.api.schemas import Model
from innera.db.pool import Pool
from innera.errors import NotFound
from innera.ids import canonical_uuid
from innera.jobs import tables
from innera.jobs.kinds import JobKind
from innera.timestamps import iso_utc


class JobOut(Model):
    id: str = Field(description="Job id (UUID)")
    status: Literal["pending", "running", "completed", "failed", "expired"] = Field(
        description="`expired`: an export whose archive was deleted EXPORT_RETENTION_DAYS "
                    "after it was made")
    progress: float = Field(ge=0, le=1, description="0..1")
    error: str | None = Field(
        None, description="Why the job failed (status failed), for the user: the fixed "
                          "message of errorCode, or for an import the problem found in the "
                          "file")
    errorCode: str | None = Field(
        None, description="The failure's stable code (status failed): for imports "
                          "`invalid_import_file`, `import_too_large`, `too_many_entries`, "
                          "`too_many_attachments`, `entry_too_large`, `too_deep`; "
                          "`job_failed` otherwise")
    createdAt: str
    startedAt: str | None = None
    finishedAt: str | None = None
    downloadUrl: str | None = Field(
        None, description="Completed exports: a link to the archive")
    expiresIn: int | None = Field(None, description="Seconds the downloadUrl stays valid")
    result: dict[str, Any] | None = Field(
        None, description="What the job did (e.g. entries imported and skipped)")


def job_out(row: dict[str, Any], *, download_url: str | None = None,
            expires_in: int | None = None, result: dict[str, Any] | None = None) -> JobOut:
    """A job table row (as from :func:`innera.jobs.tables.get_job`) → :class:`JobOut`."""
    started, finished = row.get("started_at"), row.get("finished_at")
    return JobOut(
        id=str(row["id"]), status=row["status"], progress=round(float(row["progress"]), 4),
        error=row.get("error"), errorCode=row.get("error_code"),
        createdAt=iso_utc(row["created_at"]),
        startedAt=None if started is None else iso_utc(started),
        finishedAt=None if finished is None else iso_utc(finished),
        downloadUrl=download_url, expiresIn=expires_in, result=result)


async def user_job_or_404(db: Pool, kind: JobKind, user_id: str, raw_id: str, what: str
                          ) -> dict[str, Any]:
    """The user's job of ``kind`` by its id as given in the URL; 404 ``not_found`` for
    another user's, an unknown or a malformed id alike."""
    job_id = canonical_uuid(raw_id)
    row = None if job_id is None else await tables.get_job(db, kind, user_id, job_id)
    if row is None:
        raise NotFound(f"{what} not found")
    return row
