"""``/v1/imports``: importing entries from a file, as a job.

``POST /v1/imports`` takes the file itself as the raw body (no multipart): an innera export
(``application/zip``, ``docs/export-format.md``) or a Day One JSON export (the ``.zip``, or
its ``Journal.json`` as ``application/json``). Any other Content-Type is 415
``unsupported_media_type``; a body over IMPORT_MAX_BYTES is 413 ``payload_too_large`` (at once
from Content-Length, else when the stream passes the limit) and nothing is stored; an empty
body is 400 ``empty_upload``. The body is streamed into storage
(``{userId}/imports/{jobId}``), then the job is submitted: 202 with the job resource and a
``Location`` header. If storing or submitting fails, the stored file is removed. With an
``Idempotency-Key`` the body is fingerprinted as it streams (``streams_body``), never buffered
whole; a replay still streams it through the hash to compare.

``GET /v1/imports/{id}`` → the job; once completed its ``result`` says what was done
(``{"imported": n, "skipped": m, "format": ..., "attachments": k}``). Another user's id, an
unknown or a malformed one → 404 alike. The file is checked and imported by
``workers/imports.py``; a bad file fails the job with a message naming the problem.

The app's MAX_BODY_BYTES (1 MiB) does not apply to the upload: the app's request class gives
this route a body bounded by IMPORT_MAX_BYTES instead (:func:`is_import_upload`).
"""

from __future__ import annotations

from quart import Blueprint, Response, g, request

from innera.api.bodies import body_chunks, storage_errors
from innera.api.context import link, services
from innera.api.guards import request_body
from innera.api.jobs import JobOut, job_out, user_job_or_404
from innera.api.operation import operation
from innera.imports import (
    IMPORT_JOB,
    accepted_content_type,
    check_declared_size,
    start_import,
)
from innera.storage import TRANSFER_TIMEOUT_S

blueprint = Blueprint("imports", __name__, url_prefix="/v1/imports")

def is_import_upload(method: str, path: str) -> bool:
    """The request is an import upload (its body may exceed MAX_BODY_BYTES)."""
    return method == "POST" and path.rstrip("/") == blueprint.url_prefix


@operation(blueprint, "POST", "", operation_id="createImport",
           summary="Import entries from a file (as a job)",
           description="The raw body is the file: an innera export (`application/zip`, see "
                       "docs/export-format.md) or a Day One JSON export (its `.zip` as "
                       "`application/zip`, or its `Journal.json` as `application/json`), at "
                       "most IMPORT_MAX_BYTES (50 MiB). 415 for another Content-Type, 413 "
                       "past the limit, 400 `empty_upload` for no body. 202: the job (poll "
                       "`Location`); entries already imported from the same source are "
                       "skipped, and a bad file fails the job without storing anything.",
           raw_body={"application/zip": "An innera export, or a Day One export's `.zip`",
                     "application/json": "A Day One export's `Journal.json`"},
           response=JobOut, status=202,
           response_headers={"Location": "The import's URL: `/v1/imports/{id}` (absolute on "
                                         "PUBLIC_URL when it is set)"},
           links={"getImport": {"import_id": "$response.body#/id"}},
           errors={400: "`empty_upload`: the body is empty",
                   408: "`request_timeout`: the upload stalled (no data for 60 s) or took "
                        "longer than the transfer limit",
                   413: "`payload_too_large`: the file is over IMPORT_MAX_BYTES",
                   415: "`unsupported_media_type`: the Content-Type is neither "
                        "`application/zip` nor `application/json`",
                   503: "`storage_unavailable`: the file could not be stored; retry"},
           timeout_s=TRANSFER_TIMEOUT_S, streams_body=True)
async def create_import() -> Response:
    svc = services()
    content_type = accepted_content_type(request.mimetype)
    maximum = svc.settings.jobs.import_max_bytes
    check_declared_size(request.content_length, maximum)
    with storage_errors():
        row = await start_import(svc.db, svc.redis, svc.storage, g.user_id,
                                 body_chunks(request_body()), content_type=content_type,
                                 max_bytes=maximum)
    return Response(job_out(row).model_dump_json(), status=202,
                    content_type="application/json",
                    headers={"Location": link(f"{blueprint.url_prefix}/{row['id']}")})


@operation(blueprint, "GET", "/<import_id>", operation_id="getImport", summary="An import job",
           description="`result` (`{imported, skipped, format, attachments}`) once completed; "
                       "`error` names the problem of a file that could not be imported.",
           response=JobOut, errors={404: "`not_found`: no such import of this user"})
async def read_import(import_id: str) -> JobOut:
    row = await user_job_or_404(services().db, IMPORT_JOB, g.user_id, import_id, "Import")
    return job_out(row, result=(row.get("payload") or {}).get("result"))
