"""Attachments on S3 or an S3-compatible endpoint, through boto3 run off the event loop.

boto3 is blocking; every call goes through ``trio.to_thread`` behind a limiter so that a slow
S3 cannot take every worker thread. Each call is bounded by boto's connect/read timeouts and
by a Trio deadline of its own. Each is also the Sentry span (op ``http.client``, described
``S3 <method>``) of a traced request or job (:meth:`S3Storage.call`, the one funnel).

Upload and download URLs are SigV4 presigned URLs: an upload URL signs ``Content-Type`` and
``Content-Length`` (S3 refuses a PUT with other values), a download URL carries the stored
content type and ``Content-Disposition: attachment`` as response overrides.

On a versioned bucket a plain delete only adds a delete marker: the bytes stay as a
noncurrent version (until the bucket's lifecycle rule expires them). ``all_versions=True``
(account deletion, expired export archives) deletes every version and delete marker at once,
through ``ListObjectVersions``; a store without it (an S3-compatible service lacking
versioning) gets the plain delete.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import trio

from innera.errors import PayloadTooLarge
from innera.observability import tracing
from innera.storage.keys import split_key, split_prefix
from innera.storage.names import content_disposition

log = logging.getLogger("innera.storage")

#: ``DeleteObjects`` takes at most 1000 keys.
_DELETE_BATCH = 1000
#: what a store answers ``ListObjectVersions`` with when it has no versioning at all
_NOT_SUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "501"})
#: multipart part size for streamed uploads (S3's minimum is 5 MiB, except the last part)
PART_BYTES = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024


class S3Storage:
    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str | None,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        max_concurrency: int = 16,
        timeout_s: float = 10.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.limiter = trio.CapacityLimiter(max_concurrency)
        # connect + read timeouts, times the attempts, plus slack for the thread hand-off
        self.call_timeout_s = timeout_s * 2 * 2 + 5
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                # SigV4 also for presigned URLs (boto would presign SigV2 for custom
                # endpoints): it signs Content-Type and Content-Length of uploads.
                signature_version="s3v4",
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"} if endpoint else None,
                max_pool_connections=max_concurrency,
            ),
        )

    async def call(self, method: str, **kwargs: Any) -> Any:
        """Run one boto3 client method in a worker thread (bounded by a deadline)."""
        fn = getattr(self.client, method)
        with tracing.span("http.client", f"S3 {method}"), trio.fail_after(self.call_timeout_s):
            return await trio.to_thread.run_sync(
                lambda: fn(**kwargs), limiter=self.limiter, abandon_on_cancel=True
            )

    async def check_health(self) -> None:
        await self.call("head_bucket", Bucket=self.bucket)

    async def presign_put(self, key: str, content_type: str, size: int, ttl_s: int) -> str:
        split_key(key)
        # in a thread: resolving credentials may reach the network (instance metadata)
        return await self.call(
            "generate_presigned_url", ClientMethod="put_object", HttpMethod="PUT",
            ExpiresIn=ttl_s,
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type,
                    "ContentLength": size},
        )

    async def presign_get(self, key: str, filename: str, content_type: str, ttl_s: int
                          ) -> str:
        split_key(key)
        return await self.call(
            "generate_presigned_url", ClientMethod="get_object", HttpMethod="GET",
            ExpiresIn=ttl_s,
            Params={"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type,
                    "ResponseContentDisposition": content_disposition(filename)},
        )

    async def head(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        split_key(key)
        try:
            found = await self.call("head_object", Bucket=self.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in (
                    "404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(found["ContentLength"])

    async def delete(self, key: str, *, all_versions: bool = False) -> None:
        """Delete the object (absent: no error); ``all_versions``: every version of it and
        its delete markers too."""
        split_key(key)
        if all_versions and await self._delete_versions(key, exact=True) is not None:
            return
        await self.call("delete_object", Bucket=self.bucket, Key=key)  # absent: no error

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str,
                         max_bytes: int | None = None) -> int:
        """Store a stream of unknown length (job files) with a multipart upload: at most one
        part (8 MiB) is held in memory; on any failure the upload is aborted, so nothing is
        stored. Past ``max_bytes``: :class:`~innera.errors.PayloadTooLarge`."""
        split_key(key)
        buffer = bytearray()
        total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise PayloadTooLarge(f"The body is larger than the limit ({max_bytes} bytes)")
                buffer += chunk
                if len(buffer) >= PART_BYTES:
                    if upload_id is None:
                        created = await self.call("create_multipart_upload", Bucket=self.bucket,
                                                  Key=key, ContentType=content_type)
                        upload_id = created["UploadId"]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1,
                                                         bytes(buffer)))
                    buffer.clear()
            if upload_id is None:  # small: one PUT
                await self.call("put_object", Bucket=self.bucket, Key=key, Body=bytes(buffer),
                                ContentType=content_type)
                return total
            if buffer:
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1,
                                                     bytes(buffer)))
            await self.call("complete_multipart_upload", Bucket=self.bucket, Key=key,
                            UploadId=upload_id, MultipartUpload={"Parts": parts})
            upload_id = None
            return total
        finally:
            if upload_id is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(self.call_timeout_s):
                    try:
                        await self.call("abort_multipart_upload", Bucket=self.bucket, Key=key,
                                        UploadId=upload_id)
                    except Exception:  # the bucket's lifecycle rule is the backstop
                        log.warning("could not abort the multipart upload of %s", key)

    async def _upload_part(self, key: str, upload_id: str, number: int, body: bytes
                           ) -> dict[str, Any]:
        done = await self.call("upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id,
                               PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": done["ETag"]}

    async def get_stream(self, key: str) -> AsyncIterator[bytes]:
        """The whole object, in chunks read off the event loop (:class:`FileNotFoundError`
        when it is absent)."""
        from botocore.exceptions import ClientError

        split_key(key)
        try:
            found = await self.call("get_object", Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise
        body = found["Body"]
        try:
            while True:
                with trio.fail_after(self.call_timeout_s):
                    chunk = await trio.to_thread.run_sync(body.read, READ_CHUNK,
                                                          limiter=self.limiter,
                                                          abandon_on_cancel=True)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def delete_prefix(self, prefix: str, *, all_versions: bool = False) -> int:
        """Delete every object under a user, entry or folder prefix (``{userId}/``,
        ``{userId}/{entryId}/``); returns how many (current) objects were deleted.
        ``all_versions``: every version and delete marker under the prefix too."""
        split_prefix(prefix)
        if all_versions:
            deleted_versions = await self._delete_versions(prefix, exact=False)
            if deleted_versions is not None:
                return deleted_versions
        deleted = 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                      "MaxKeys": _DELETE_BATCH}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self.call("list_objects_v2", **kwargs)
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                await self._delete_objects(keys, prefix)
                deleted += len(keys)
            if not page.get("IsTruncated"):
                return deleted
            token = page.get("NextContinuationToken")

    async def _delete_objects(self, objects: list[dict[str, str]], prefix: str) -> None:
        """One ``DeleteObjects`` call (at most :data:`_DELETE_BATCH` objects, or versions of
        objects); any object S3 refuses fails it."""
        result = await self.call("delete_objects", Bucket=self.bucket,
                                 Delete={"Objects": objects, "Quiet": True})
        errors = result.get("Errors") or []
        if errors:
            raise RuntimeError(f"S3 refused to delete {len(errors)} object(s) under {prefix}: "
                               f"{errors[0].get('Code')}")

    async def _delete_versions(self, prefix: str, *, exact: bool) -> int | None:
        """Delete every version and delete marker of the keys under ``prefix`` (``exact``:
        of the key ``prefix`` only), a page of up to 1000 at a time; returns how many of
        them were current objects. ``None``: the store does not list versions."""
        from botocore.exceptions import ClientError

        current = 0
        markers: dict[str, Any] = {}
        while True:
            try:
                page = await self.call("list_object_versions", Bucket=self.bucket,
                                       Prefix=prefix, MaxKeys=_DELETE_BATCH, **markers)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_SUPPORTED:
                    log.warning("the store does not list object versions (%s): deleting "
                                "current objects only", exc.response["Error"].get("Code"))
                    return None
                raise
            found = [v for v in (*page.get("Versions", []), *page.get("DeleteMarkers", []))
                     if not exact or v["Key"] == prefix]
            if found:
                await self._delete_objects(
                    [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in found], prefix)
                current += sum(1 for v in page.get("Versions", [])
                               if v.get("IsLatest") and (not exact or v["Key"] == prefix))
            if not page.get("IsTruncated"):
                return current
            markers = {"KeyMarker": page["NextKeyMarker"]}
            if page.get("NextVersionIdMarker"):
                markers["VersionIdMarker"] = page["NextVersionIdMarker"]
