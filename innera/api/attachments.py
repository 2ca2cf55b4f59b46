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
paths on innera itself (``/v1/attachments/local/…``, see ``innera.storage.local``), resolved
against the API's base URL; their routes stream bodies to and from disk.

Rules: content types are allow-listed (:data:`ALLOWED_CONTENT_TYPES`, else 422); a declared
size above ATTACHMENT_MAX_BYTES is 422 ``validation_failed`` (field ``size``) — the request
itself is small, so 413 is kept for bodies: an upload body past the declared size (or the
maximum) is 413 ``payload_too_large``. File names are sanitised
(``innera.storage.names.sanitize_filename``). Ids of another user, unknown or malformed ids
are 404 ``not_found`` alike.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import trio
from psycopg.rows import dict_row
from pydantic import Field, field_validator
from quart import Blueprint, Response, g, request

from innera.api.bodies import UploadTimeout, body_chunks, storage_errors
from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model
from innera.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
)
from innera.journal.rules import ALLOWED_CONTENT_TYPES
from innera.storage import TRANSFER_TIMEOUT_S, LocalStorage, Storage
from innera.storage.keys import InvalidKey, canonical_uuid, entry_prefix, object_key
from innera.storage.local import URL_PATH as LOCAL_URL_PATH
from innera.storage.local import InvalidSignature
from innera.storage.names import content_disposition, sanitize_filename

blueprint = Blueprint("attachments", __name__, url_prefix="/v1")

_COLUMNS = "id, user_id, entry_id, filename, content_type, size, status, created_at, updated_at"


# --- request and response bodies ------------------------------------------------------------


class AttachmentIn(Model):
    filename: str = Field(min_length=1, max_length=4096,
                          description="Sanitised: path and control characters removed, a safe "
                                      "character subset kept, at most 255 characters")
    contentType: str = Field(min_length=1, max_length=255,
                             description="One of " + ", ".join(sorted(ALLOWED_CONTENT_TYPES)))
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
    createdAt: str
    updatedAt: str


class AttachmentUploadOut(Model):
    attachment: AttachmentOut
    uploadUrl: str = Field(description="Absolute (S3) or relative to the API's base URL "
                                       "(local store); needs no Authorization header")
    uploadMethod: Literal["PUT"]
    uploadHeaders: dict[str, str] = Field(description="Headers the PUT must carry")
    expiresIn: int = Field(description="Lifetime of uploadUrl in seconds")


class AttachmentOnlyOut(Model):
    attachment: AttachmentOut


class AttachmentDownloadOut(Model):
    attachment: AttachmentOut
    downloadUrl: str = Field(description="Absolute (S3) or relative to the API's base URL "
                                         "(local store); needs no Authorization header")
    expiresIn: int = Field(description="Lifetime of downloadUrl in seconds")


class AttachmentListOut(Model):
    items: list[AttachmentOut]
    nextCursor: str | None = None


class UploadIncomplete(Conflict):
    code = "upload_incomplete"
    message = "The upload has not been received with the declared size"


class AttachmentNotReady(Conflict):
    code = "attachment_not_ready"
    message = "The attachment's upload has not been completed"


# --- helpers ------------------------------------------------------------------------------



def _storage(svc: Any) -> Storage:
    """The attachment store."""
    return svc.storage


def _local_storage(svc: Any) -> LocalStorage:
    storage = _storage(svc)
    if not isinstance(storage, LocalStorage):
        raise NotFound("No route matches this URL")
    return storage


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _out(row: dict[str, Any]) -> AttachmentOut:
    return AttachmentOut(
        id=str(row["id"]), entryId=str(row["entry_id"]), filename=row["filename"],
        contentType=row["content_type"], size=row["size"], status=row["status"],
        createdAt=_iso(row["created_at"]), updatedAt=_iso(row["updated_at"]))


def _key(row: dict[str, Any]) -> str:
    return object_key(str(row["user_id"]), str(row["entry_id"]), str(row["id"]))


def _id_or_404(value: str, what: str) -> str:
    canonical = canonical_uuid(value)
    if canonical is None:
        raise NotFound(f"{what} not found")
    return canonical


async def _fetch(svc: Any, user_id: str, attachment_id: str) -> dict[str, Any]:
    """The user's attachment, else 404 (another user's, unknown and malformed ids alike)."""
    attachment_id = _id_or_404(attachment_id, "Attachment")
    async with svc.db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM attachments WHERE id = %s AND user_id = %s",
            (attachment_id, user_id))
        row = await cur.fetchone()
    if row is None:
        raise NotFound("Attachment not found")
    return row


async def delete_entry_objects(svc: Any, user_id: str, entry_id: str) -> int:
    """Delete every stored object of an entry (``{userId}/{entryId}/…``, including uploads
    never completed). Call it when an entry is deleted: the rows go with the entry
    (``ON DELETE CASCADE``), the objects do not. Returns how many objects were deleted;
    raises 503 ``storage_unavailable`` when the store fails (safe to retry)."""
    try:
        prefix = entry_prefix(user_id, entry_id)
    except InvalidKey:
        return 0
    with storage_errors():
        return await _storage(svc).delete_prefix(prefix)


# --- the API ------------------------------------------------------------------------------


@operation(blueprint, "POST", "/entries/<entry_id>/attachments",
           summary="Declare an attachment and get its upload URL",
           description="The client then PUTs exactly `size` bytes to uploadUrl with "
                       "uploadHeaders, and calls POST /v1/attachments/{id}/complete. A size "
                       "above ATTACHMENT_MAX_BYTES or a content type outside the allow-list "
                       "is 422.",
           body=AttachmentIn, response=AttachmentUploadOut, status=201,
           errors=(404, 422, 429))
async def create_attachment(entry_id: str, body: AttachmentIn) -> AttachmentUploadOut:
    svc = services()
    user_id = g.user_id
    entry_id = _id_or_404(entry_id, "Entry")
    maximum = svc.settings.storage.attachment_max_bytes
    if body.size > maximum:
        raise ValidationFailed(details=[{
            "field": "size", "message": f"must be at most {maximum} bytes",
            "type": "less_than_equal"}])
    attachment_id = str(uuid.uuid4())
    ttl = svc.settings.storage.attachment_url_ttl_s
    with storage_errors():
        url = await _storage(svc).presign_put(
            object_key(user_id, entry_id, attachment_id), body.contentType, body.size, ttl)
    async with svc.db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "INSERT INTO attachments (id, user_id, entry_id, filename, content_type, size) "
            "SELECT %s, e.user_id, e.id, %s, %s, %s FROM entries e "
            f"WHERE e.id = %s AND e.user_id = %s RETURNING {_COLUMNS}",
            (attachment_id, body.filename, body.contentType, body.size, entry_id, user_id))
        row = await cur.fetchone()
    if row is None:
        raise NotFound("Entry not found")
    return AttachmentUploadOut(attachment=_out(row), uploadUrl=url, uploadMethod="PUT",
                               uploadHeaders={"Content-Type": body.contentType},
                               expiresIn=ttl)


@operation(blueprint, "GET", "/entries/<entry_id>/attachments",
           summary="The attachments of an entry (oldest first)",
           response=AttachmentListOut, errors=(404, 429))
async def list_attachments(entry_id: str) -> AttachmentListOut:
    svc = services()
    entry_id = _id_or_404(entry_id, "Entry")
    async with svc.db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT 1 FROM entries WHERE id = %s AND user_id = %s", (entry_id, g.user_id))
        if await cur.fetchone() is None:
            raise NotFound("Entry not found")
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM attachments WHERE entry_id = %s AND user_id = %s "
            "ORDER BY created_at, id", (entry_id, g.user_id))
        rows = await cur.fetchall()
    return AttachmentListOut(items=[_out(r) for r in rows], nextCursor=None)


@operation(blueprint, "POST", "/attachments/<attachment_id>/complete",
           summary="Confirm the upload: the object must exist with the declared size",
           description="409 upload_incomplete when no object, or one of another size, is "
                       "stored. Completing a ready attachment returns it unchanged.",
           response=AttachmentOnlyOut, errors=(404, 409, 429))
async def complete_attachment(attachment_id: str) -> AttachmentOnlyOut:
    svc = services()
    row = await _fetch(svc, g.user_id, attachment_id)
    if row["status"] == "ready":
        return AttachmentOnlyOut(attachment=_out(row))
    with storage_errors():
        size = await _storage(svc).head(_key(row))
    if size is None:
        raise UploadIncomplete("Nothing has been uploaded for this attachment yet")
    if size != row["size"]:
        raise UploadIncomplete("The uploaded object does not have the declared size",
                               details={"expectedSize": row["size"], "actualSize": size})
    async with svc.db.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"UPDATE attachments SET status = 'ready' WHERE id = %s AND user_id = %s "
            f"RETURNING {_COLUMNS}", (row["id"], g.user_id))
        updated = await cur.fetchone()
    if updated is None:  # deleted meanwhile
        raise NotFound("Attachment not found")
    return AttachmentOnlyOut(attachment=_out(updated))


@operation(blueprint, "GET", "/attachments/<attachment_id>",
           summary="An attachment and a short-lived download URL",
           description="409 attachment_not_ready until the upload is completed.",
           response=AttachmentDownloadOut, errors=(404, 409, 429))
async def get_attachment(attachment_id: str) -> AttachmentDownloadOut:
    svc = services()
    row = await _fetch(svc, g.user_id, attachment_id)
    if row["status"] != "ready":
        raise AttachmentNotReady()
    ttl = svc.settings.storage.attachment_url_ttl_s
    with storage_errors():
        url = await _storage(svc).presign_get(_key(row), row["filename"], row["content_type"],
                                              ttl)
    return AttachmentDownloadOut(attachment=_out(row), downloadUrl=url, expiresIn=ttl)


@operation(blueprint, "DELETE", "/attachments/<attachment_id>",
           summary="Delete an attachment (its stored object, then its row)",
           status=204, errors=(404, 429))
async def delete_attachment(attachment_id: str) -> None:
    svc = services()
    row = await _fetch(svc, g.user_id, attachment_id)
    with storage_errors():  # the object first: a failure leaves the row, so a retry works
        await _storage(svc).delete(_key(row))
    async with svc.db.connection() as conn:
        await conn.execute("DELETE FROM attachments WHERE id = %s AND user_id = %s",
                           (row["id"], g.user_id))


# --- the local store's signed URLs ----------------------------------------------------------

_LOCAL_ROUTE = (LOCAL_URL_PATH.removeprefix(blueprint.url_prefix or "")
                + "/<user_id>/<entry_id>/<attachment_id>")


@operation(blueprint, "PUT", _LOCAL_ROUTE, auth=False, status=204,
           summary="Upload to a signed local URL (local store only)",
           description="The uploadUrl of the local store: no Authorization header; the URL's "
                       "signature and expiry are checked (403 invalid_signature / url_expired), "
                       "the body must have the signed Content-Type and exactly the signed size "
                       "(413 past it, 400 size_mismatch when short). Streamed to disk.",
           errors=(400, 403, 404, 408, 413, 429), timeout_s=TRANSFER_TIMEOUT_S)
async def local_upload(user_id: str, entry_id: str, attachment_id: str) -> None:
    svc = services()
    storage = _local_storage(svc)
    key = f"{user_id}/{entry_id}/{attachment_id}"
    grant = storage.verify("PUT", key, request.args)
    if request.headers.get("content-type", "") != grant.content_type:
        raise InvalidSignature("The Content-Type header is not the one the URL was signed for")
    assert grant.size is not None
    maximum = svc.settings.storage.attachment_max_bytes
    length = request.content_length
    if grant.size > maximum or (length is not None and length > grant.size):
        raise PayloadTooLarge(f"The body is larger than the declared size ({grant.size} bytes)")
    async with svc.db.connection() as conn:  # no file for an attachment deleted meanwhile
        cur = await conn.execute(
            "SELECT 1 FROM attachments WHERE id = %s AND user_id = %s AND entry_id = %s",
            (attachment_id, user_id, entry_id))
        if await cur.fetchone() is None:
            raise NotFound("Attachment not found")
    with trio.move_on_after(TRANSFER_TIMEOUT_S) as transfer, storage_errors():
        await storage.write(key, body_chunks(request.body), size=grant.size)
    if transfer.cancelled_caught:
        raise UploadTimeout()


@operation(blueprint, "GET", _LOCAL_ROUTE, auth=False,
           summary="Download from a signed local URL (local store only)",
           description="The downloadUrl of the local store: no Authorization header; streams "
                       "the file with its content type and Content-Disposition: attachment.",
           errors=(403, 404, 429))
async def local_download(user_id: str, entry_id: str, attachment_id: str) -> Response:
    svc = services()
    storage = _local_storage(svc)
    key = f"{user_id}/{entry_id}/{attachment_id}"
    grant = storage.verify("GET", key, request.args)
    with storage_errors():
        size = await storage.head(key)
    if size is None:
        raise NotFound("Attachment not found")
    response = Response(storage.read(key, size), status=200, content_type=grant.content_type,
                        headers={"Content-Disposition": content_disposition(grant.filename or ""),
                                 "Content-Length": str(size)})
    response.timeout = TRANSFER_TIMEOUT_S
    return response
