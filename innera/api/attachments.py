"""Attachments of journal entries: photos, voice notes and PDFs, up to ATTACHMENT_MAX_BYTES.

The bytes never pass through the JSON API. A client

1. declares the file: ``POST /v1/entries/{id}/attachments`` {filename, contentType, size}
   → 201 {attachment (pending), uploadUrl, uploadMethod: "PUT", uploadHeaders, expiresIn};
2. ``PUT``s exactly ``size`` bytes to ``uploadUrl`` with ``uploadHeaders`` (the declared
   ``Content-Type``) and no Authorization header;
3. ``POST /v1/attachments/{id}/complete``: the object must exist with the declared size,
   else 409 ``upload_incomplete``; the attachment is then ``ready``;
4. ``GET /v1/attachments/{id}`` → {attachment, downloadUrl, expiresIn} (409
   ``attachment_not_ready`` while pending); ``DELETE`` removes the object and the row.

URLs live ATTACHMENT_URL_TTL_S. With S3 they are presigned S3 URLs (key
``{userId}/{entryId}/{attachmentId}`` in S3_BUCKET). With the local store they are signed
paths on innera itself (``/v1/attachments/local/…``, see ``innera.storage.local``): absolute
on PUBLIC_URL when it is set, else relative to the API's base URL; their routes stream bodies
to and from disk.

The rules, SQL and storage keys are in :mod:`innera.attachments`; this module parses,
makes one domain call and renders.

Rules: content types are allow-listed (:data:`ALLOWED_CONTENT_TYPES`, else 422); a declared
size above ATTACHMENT_MAX_BYTES is 422 ``validation_failed`` (field ``size``) — the request
itself is small, so 413 is kept for bodies: an upload body past the declared size (or the
maximum) is 413 ``payload_too_large``. File names are sanitised
(``innera.storage.names.sanitize_filename``). Ids of another user, unknown or malformed ids
are 404 ``not_found`` alike.
"""

from __future__ import annotations

from typing import Literal

import trio
from pydantic import Field, field_validator
from quart import Blueprint, Response, g, request

from innera import attachments
from innera.api.bodies import UploadTimeout, body_chunks, storage_errors
from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model, NextCursor
from innera.journal.rules import ALLOWED_CONTENT_TYPES
from innera.storage import TRANSFER_TIMEOUT_S
from innera.storage.local import URL_PATH as LOCAL_URL_PATH
from innera.storage.names import content_disposition, sanitize_filename
from innera.timestamps import iso_utc
from innera.whitespace import one_of

blueprint = Blueprint("attachments", __name__, url_prefix="/v1")

_TIMESTAMP = "ISO 8601 UTC, milliseconds, Z"
NO_ATTACHMENT = "`not_found`: no such attachment of this user"
STORAGE_UNAVAILABLE = "`storage_unavailable`: the store failed or timed out; retry"
ATTACHMENT = {"attachment_id": "$response.body#/attachment/id"}
#: where a declared attachment's id leads
ATTACHMENT_LINKS = {"getAttachment": ATTACHMENT, "completeAttachment": ATTACHMENT,
                    "deleteAttachment": ATTACHMENT}


# --- request and response bodies ------------------------------------------------------------


class AttachmentIn(Model):
    filename: str = Field(min_length=1, max_length=4096,
                          description="Sanitised: path and control characters removed, a safe "
                                      "character subset kept, at most 255 characters")
    contentType: str = Field(min_length=1, max_length=255,
                             description="One of " + ", ".join(sorted(ALLOWED_CONTENT_TYPES))
                                         + " (any letter case)",
                             json_schema_extra={"pattern": one_of(ALLOWED_CONTENT_TYPES)})
    size: int = Field(strict=True, ge=1, description="Exact size in bytes (at most "
                                                     "ATTACHMENT_MAX_BYTES, 25 MiB by default)")

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        return sanitize_filename(value)

    @field_validator("contentType")
    @classmethod
    def _content_type(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ALLOWED_CONTENT_TYPES:
            raise ValueError("content type not allowed; allowed: "
                             + ", ".join(sorted(ALLOWED_CONTENT_TYPES)))
        return value


class AttachmentOut(Model):
    id: str
    entryId: str
    filename: str
    contentType: str
    size: int
    status: Literal["pending", "ready"]
    createdAt: str = Field(description=_TIMESTAMP)
    updatedAt: str = Field(description=_TIMESTAMP)


class AttachmentUploadOut(Model):
    attachment: AttachmentOut
    uploadUrl: str = Field(description="Absolute (S3, or PUBLIC_URL set), else relative "
                                       "to the API's base URL (local store); needs no "
                                       "Authorization header")
    uploadMethod: Literal["PUT"]
    uploadHeaders: dict[str, str] = Field(description="Headers the PUT must carry")
    expiresIn: int = Field(description="Lifetime of uploadUrl in seconds")


class AttachmentOnlyOut(Model):
    attachment: AttachmentOut


class AttachmentDownloadOut(Model):
    attachment: AttachmentOut
    downloadUrl: str = Field(description="Absolute (S3, or PUBLIC_URL set), else relative "
                                         "to the API's base URL (local store); needs no "
                                         "Authorization header")
    expiresIn: int = Field(description="Lifetime of downloadUrl in seconds")


class AttachmentListOut(Model):
    items: list[AttachmentOut]
    nextCursor: NextCursor = Field(None, description="Always null: the list is one page")


def _out(attachment: attachments.Attachment) -> AttachmentOut:
    return AttachmentOut(
        id=attachment.id, entryId=attachment.entry_id, filename=attachment.filename,
        contentType=attachment.content_type, size=attachment.size, status=attachment.status,
        createdAt=iso_utc(attachment.created_at), updatedAt=iso_utc(attachment.updated_at))


# --- the API ------------------------------------------------------------------------------


@operation(blueprint, "POST", "/entries/<entry_id>/attachments",
           operation_id="createAttachment",
           summary="Declare an attachment and get its upload URL",
           description="The client then PUTs exactly `size` bytes to uploadUrl with "
                       "uploadHeaders, and calls POST /v1/attachments/{id}/complete. A size "
                       "above ATTACHMENT_MAX_BYTES or a content type outside the allow-list "
                       "is 422.",
           body=AttachmentIn, response=AttachmentUploadOut, status=201,
           errors={404: "`not_found`: no such entry of this user",
                   422: "`validation_failed`: `size` above ATTACHMENT_MAX_BYTES, or a content "
                        "type outside the allow-list",
                   503: STORAGE_UNAVAILABLE},
           links=ATTACHMENT_LINKS)
async def create_attachment(entry_id: str, body: AttachmentIn) -> AttachmentUploadOut:
    svc = services()
    with storage_errors():
        upload = await attachments.declare(
            svc.db, svc.storage, g.user_id, entry_id, filename=body.filename,
            content_type=body.contentType, size=body.size,
            max_bytes=svc.settings.storage.attachment_max_bytes,
            url_ttl_s=svc.settings.storage.attachment_url_ttl_s)
    return AttachmentUploadOut(attachment=_out(upload.attachment), uploadUrl=upload.url,
                               uploadMethod="PUT", uploadHeaders=upload.headers,
                               expiresIn=upload.expires_in)


@operation(blueprint, "GET", "/entries/<entry_id>/attachments",
           operation_id="listAttachments", summary="The attachments of an entry (oldest first)",
           response=AttachmentListOut, errors={404: "`not_found`: no such entry of this user"})
async def list_attachments(entry_id: str) -> AttachmentListOut:
    found = await attachments.entry_attachments(services().db, g.user_id, entry_id)
    return AttachmentListOut(items=[_out(a) for a in found], nextCursor=None)


@operation(blueprint, "POST", "/attachments/<attachment_id>/complete",
           operation_id="completeAttachment",
           summary="Confirm the upload: the object must exist with the declared size",
           description="409 upload_incomplete when no object, or one of another size, is "
                       "stored. Completing a ready attachment returns it unchanged.",
           response=AttachmentOnlyOut,
           errors={404: NO_ATTACHMENT,
                   409: "`upload_incomplete`: nothing, or an object of another size, was "
                        "uploaded",
                   503: STORAGE_UNAVAILABLE})
async def complete_attachment(attachment_id: str) -> AttachmentOnlyOut:
    svc = services()
    with storage_errors():
        attachment = await attachments.complete(svc.db, svc.storage, g.user_id, attachment_id)
    return AttachmentOnlyOut(attachment=_out(attachment))


@operation(blueprint, "GET", "/attachments/<attachment_id>", operation_id="getAttachment",
           summary="An attachment and a short-lived download URL",
           description="409 attachment_not_ready until the upload is completed.",
           response=AttachmentDownloadOut,
           errors={404: NO_ATTACHMENT,
                   409: "`attachment_not_ready`: the upload was not completed yet",
                   503: STORAGE_UNAVAILABLE})
async def get_attachment(attachment_id: str) -> AttachmentDownloadOut:
    svc = services()
    with storage_errors():
        found = await attachments.download(svc.db, svc.storage, g.user_id, attachment_id,
                                           url_ttl_s=svc.settings.storage.attachment_url_ttl_s)
    return AttachmentDownloadOut(attachment=_out(found.attachment), downloadUrl=found.url,
                                 expiresIn=found.expires_in)


@operation(blueprint, "DELETE", "/attachments/<attachment_id>",
           operation_id="deleteAttachment",
           summary="Delete an attachment (its stored object, then its row)",
           status=204, errors={404: NO_ATTACHMENT, 503: STORAGE_UNAVAILABLE},
           links={"getAttachment": {"attachment_id": "$request.path.attachment_id"}})
async def delete_attachment(attachment_id: str) -> None:
    svc = services()
    with storage_errors():  # the object first: a failure leaves the row, so a retry works
        await attachments.delete(svc.db, svc.storage, g.user_id, attachment_id)


# --- the local store's signed URLs ----------------------------------------------------------

_LOCAL_ROUTE = (LOCAL_URL_PATH.removeprefix(blueprint.url_prefix or "")
                + "/<user_id>/<entry_id>/<attachment_id>")
_LOCAL_PATH = {"user_id": {"type": "string"}, "attachment_id": {"type": "string"},
               "entry_id": {"type": "string",
                            "description": "An entry id, or `exports` for an export archive"}}
_BAD_SIGNATURE = "`invalid_signature`: the URL was not signed by innera, or was altered"
_EXPIRED = "`url_expired`: the URL's lifetime is over; ask the API for a new one"


def _signed_query(*names: str) -> list[dict[str, object]]:
    """The query parameters of a signed local URL (the URL as innera returned it holds them)."""
    text = {"exp": ("integer", "Expiry (Unix time)"),
            "size": ("integer", "The signed size in bytes"),
            "ct": ("string", "The signed content type"),
            "fn": ("string", "The file name the download is saved as"),
            "sig": ("string", "The signature")}
    return [{"name": name, "in": "query", "required": True, "description": text[name][1],
             "schema": {"type": text[name][0]}}
            for name in ("exp", *names, "ct", "sig")]


@operation(blueprint, "PUT", _LOCAL_ROUTE, operation_id="uploadAttachmentFile", auth=False,
           status=204, summary="Upload to a signed local URL (local store only)",
           description="The uploadUrl of the local store: no Authorization header; the URL's "
                       "signature and expiry are checked (403 invalid_signature / url_expired), "
                       "the body must have the signed Content-Type and exactly the signed size "
                       "(413 past it, 400 size_mismatch when short). Streamed to disk.",
           raw_body={ct: "The file: exactly the signed size, with the signed Content-Type"
                     for ct in sorted(ALLOWED_CONTENT_TYPES)},
           path_params=_LOCAL_PATH, parameters=_signed_query("size"),
           errors={400: "`size_mismatch`: the body is shorter than the signed size",
                   403: (_BAD_SIGNATURE, _EXPIRED,
                         "`invalid_signature`: the Content-Type is not the signed one"),
                   404: ("`not_found`: the attachment was deleted meanwhile",
                         "`not_found`: the store is S3 (no local URLs)"),
                   408: "`request_timeout`: the upload took longer than the transfer limit",
                   413: "`payload_too_large`: the body is longer than the signed size",
                   503: STORAGE_UNAVAILABLE},
           timeout_s=TRANSFER_TIMEOUT_S)
async def local_upload(user_id: str, entry_id: str, attachment_id: str) -> None:
    svc = services()
    with trio.move_on_after(TRANSFER_TIMEOUT_S) as transfer, storage_errors():
        await attachments.receive_upload(
            svc.db, svc.storage, user_id=user_id, entry_id=entry_id,
            attachment_id=attachment_id, query=request.args,
            content_type=request.headers.get("content-type", ""),
            content_length=request.content_length, chunks=body_chunks(request.body),
            max_bytes=svc.settings.storage.attachment_max_bytes)
    if transfer.cancelled_caught:
        raise UploadTimeout()


@operation(blueprint, "GET", _LOCAL_ROUTE, operation_id="downloadAttachmentFile", auth=False,
           summary="Download from a signed local URL (local store only)",
           description="The downloadUrl of the local store: no Authorization header; streams "
                       "the file with its content type and Content-Disposition: attachment.",
           path_params=_LOCAL_PATH, parameters=_signed_query("fn"),
           errors={403: (_BAD_SIGNATURE, _EXPIRED),
                   404: ("`not_found`: no file is stored (deleted meanwhile)",
                         "`not_found`: the store is S3 (no local URLs)"),
                   503: STORAGE_UNAVAILABLE})
async def local_download(user_id: str, entry_id: str, attachment_id: str) -> Response:
    with storage_errors():
        found = await attachments.open_download(
            services().storage, user_id=user_id, entry_id=entry_id,
            attachment_id=attachment_id, query=request.args)
    response = Response(found.chunks, status=200, content_type=found.content_type,
                        headers={"Content-Disposition": content_disposition(found.filename),
                                 "Content-Length": str(found.size)})
    response.timeout = TRANSFER_TIMEOUT_S
    return response
