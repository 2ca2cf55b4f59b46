"""``/v1/exports``: the signed-in user's data exports (one ZIP archive of every entry,
decrypted, and every ready attachment; the format is ``docs/export-format.md``).

- ``POST /v1/exports`` (no body, or ``{}``) → **202** with the job (:class:`JobOut`) as the
  body and ``Location: /v1/exports/{id}``. While the user already has an export pending or
  running, that job is answered (202 again) and no second one is started. The archive is
  built by the ``export-jobs`` worker (``workers/exports.py``), which sends ``job.progress``
  events over the user's WebSocket and, when it is ready, an ``export.ready`` notification
  whose data carries ``exportId`` only (notifications are pushed through third parties: no
  link leaves innera that way).
- ``GET /v1/exports/{id}`` → the job; once ``completed`` it carries a fresh ``downloadUrl``
  (valid ``expiresIn`` = EXPORT_URL_TTL_S seconds, 24 h by default) to
  ``innera-export-YYYY-MM-DD.zip`` (the date the export was requested, UTC). The archive is
  kept EXPORT_RETENTION_DAYS after it was made; then it is deleted and the job's status is
  ``expired``, without a link (``innera/exports/sweeper.py``).
- ``GET /v1/exports`` → the user's exports, newest first (``{items, nextCursor}``; ``limit``
  1..100, default 20). Items carry no ``downloadUrl``: read the job for one.

Download URLs are absolute with S3 and, with the local store
(``/v1/attachments/local/{userId}/exports/{jobId}?…``, served without Authorization), absolute
on PUBLIC_URL when it is set, else relative to the API's base URL, like attachment URLs; so is
the ``Location`` header. Another user's export, an unknown or a malformed id: 404 ``not_found``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field
from quart import Blueprint, Response, g

from innera.api.bodies import storage_errors
from innera.api.context import link, services
from innera.api.jobs import JobOut, job_out, user_job_or_404
from innera.api.operation import operation
from innera.api.schemas import Cursor, Model, NextCursor, QueryInt
from innera.exports import EXPORT_JOB, download_link, export_page, submit_export

if TYPE_CHECKING:
    from innera.services import Services

blueprint = Blueprint("exports", __name__, url_prefix="/v1/exports")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class ExportIn(Model):
    """Nothing to choose (yet): an empty object, or no body at all."""


class ExportPage(Model):
    items: list[JobOut]
    nextCursor: NextCursor


class ExportListQuery(Model):
    limit: QueryInt = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    cursor: Cursor = None


async def _out(svc: Services, row: dict[str, Any]) -> JobOut:
    """The job; a completed one with a fresh download link (valid EXPORT_URL_TTL_S)."""
    if row["status"] != "completed":
        return job_out(row)
    ttl = svc.settings.jobs.export_url_ttl_s
    with storage_errors():
        url = await download_link(svc.storage, ttl, str(row["user_id"]), str(row["id"]),
                                  row["created_at"])
    return job_out(row, download_url=url, expires_in=ttl)


# --- routes ---------------------------------------------------------------------------------


@operation(blueprint, "POST", "", operation_id="createExport",
           summary="Export every entry and attachment (ZIP)",
           description="No body, or `{}`. Answers 202 with the job and `Location: "
                       "/v1/exports/{id}`; poll that (or listen for `job.progress` on the "
                       "WebSocket, and for the `export.ready` notification). While an export "
                       "of the user is pending or running, that job is answered and no second "
                       "one starts. Format: docs/export-format.md.",
           body=ExportIn, body_required=False, response=JobOut, status=202,
           response_headers={"Location": "The export's URL: `/v1/exports/{id}` (absolute on "
                                         "PUBLIC_URL when it is set)"},
           links={"getExport": {"export_id": "$response.body#/id"}})
async def start_export(body: ExportIn | None) -> Response:
    # ``body``: nothing to choose yet; the declaration has checked it is absent or ``{}``
    svc = services()
    row = await submit_export(svc.db, svc.redis, g.user_id)
    out = job_out(row)
    return Response(out.model_dump_json(), status=202, content_type="application/json",
                    headers={"Location": link(f"{blueprint.url_prefix}/{out.id}")})


@operation(blueprint, "GET", "", operation_id="listExports",
           summary="The user's exports, newest first",
           description="Items carry no downloadUrl: read the export for one.",
           query=ExportListQuery, response=ExportPage)
async def list_exports(query: ExportListQuery) -> ExportPage:
    svc = services()
    rows, cursor = await export_page(svc.db, svc.cursors, g.user_id, query.cursor, query.limit)
    return ExportPage(items=[job_out(r) for r in rows], nextCursor=cursor)


@operation(blueprint, "GET", "/<export_id>", operation_id="getExport",
           summary="An export, with its download link once completed",
           description="`downloadUrl` (fresh on every read, valid `expiresIn` seconds) is "
                       "present when the status is completed: absolute with S3 or PUBLIC_URL, "
                       "else relative to the API's base URL; no Authorization header. "
                       "EXPORT_RETENTION_DAYS after it was made the archive is deleted and "
                       "the status is `expired` (no downloadUrl).",
           response=JobOut,
           errors={404: "`not_found`: no such export of this user",
                   503: "`storage_unavailable`: the download link could not be made; retry"})
async def get_export(export_id: str) -> JobOut:
    svc = services()
    row = await user_job_or_404(svc.db, EXPORT_JOB, g.user_id, export_id, "Export")
    return await _out(svc, row)
