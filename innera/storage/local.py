"""Attachments on local disk (the embedded default).

Objects live at ``<root>/<key>`` (``<userId>/<entryId>/<attachmentId>``, or a job file
``<userId>/exports|imports/<jobId>``; every component validated, so a key cannot leave the
root). Uploads stream to a temporary file next to the target
and are renamed into place only when complete; the bytes are never held whole in memory.

Upload and download URLs imitate presigned S3 URLs: a path on innera itself
(``/v1/attachments/local/<userId>/<entryId>/<attachmentId>``, absolute on ``PUBLIC_URL``
when that is set, else relative to the API's URL) with a query string
``exp`` (unix seconds), ``size`` + ``ct`` (uploads) or ``ct`` + ``fn`` (downloads) and
``sig``, the base64url HMAC-SHA256, under a key derived from the JWT secret, of the JSON array
``["innera-local-url-v1", METHOD, key, exp, size, contentType, filename]``. The route that
serves the URL recomputes it from the request's method, path and query: any change → 403
``invalid_signature``; a valid signature past ``exp`` → 403 ``url_expired``. Comparison is
constant-time. All file I/O runs off the event loop (``trio.Path`` / ``trio.open_file`` /
worker threads).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trio

from innera.errors import AppError, BadRequest, PayloadTooLarge
from innera.storage.keys import InvalidKey, split_key, split_prefix

URL_PATH = "/v1/attachments/local"
_SIG_VERSION = "innera-local-url-v1"
_WRITE_BUFFER = 256 * 1024
READ_CHUNK = 64 * 1024


class InvalidSignature(AppError):
    status, code, message = 403, "invalid_signature", "The URL signature is not valid"


class UrlExpired(AppError):
    status, code, message = 403, "url_expired", "The URL has expired"


class SizeMismatch(BadRequest):
    code, message = "size_mismatch", "The body does not have the declared size"


def derive_url_key(secret: str | bytes) -> bytes:
    """The HMAC key of local attachment URLs: HMAC-SHA256(secret, "attachments-url")."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, b"attachments-url", hashlib.sha256).digest()


@dataclass(frozen=True)
class Grant:
    """What a verified URL allows."""

    method: str
    key: str
    expires: int
    content_type: str
    size: int | None = None  # uploads: the exact number of bytes
    filename: str | None = None  # downloads: the Content-Disposition name


def _ignore_missing(function: Any, path: str, exc_info: Any) -> None:
    """``rmtree`` error handler: something already gone is fine (a concurrent delete)."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


class LocalStorage:
    name = "local"

    def __init__(self, root: Path, *, url_key: bytes | None = None, url_path: str = URL_PATH,
                 base_url: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.url_path = url_path.rstrip("/")
        #: PUBLIC_URL: URLs are absolute on it; ``None``: paths, relative to the API's URL
        self.base_url = (base_url or "").rstrip("/")
        self._url_key = url_key
        self.clock = clock
        root.mkdir(parents=True, exist_ok=True)

    # --- signing -----------------------------------------------------------------------------

    @property
    def has_url_key(self) -> bool:
        return self._url_key is not None

    def set_url_key(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the URL signing key must have at least 32 bytes")
        self._url_key = key

    def _sign(self, method: str, key: str, expires: int, size: int | None, content_type: str,
              filename: str | None) -> str:
        if self._url_key is None:
            raise RuntimeError("LocalStorage has no URL signing key (set_url_key)")
        message = json.dumps([_SIG_VERSION, method, key, expires, size, content_type, filename],
                             ensure_ascii=True, separators=(",", ":")).encode()
        digest = hmac.new(self._url_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _url(self, key: str, params: dict[str, Any]) -> str:
        return f"{self.base_url}{self.url_path}/{key}?{urlencode(params)}"

    async def presign_put(self, key: str, content_type: str, size: int, ttl_s: int) -> str:
        split_key(key)
        expires = int(self.clock()) + ttl_s
        sig = self._sign("PUT", key, expires, size, content_type, None)
        return self._url(key, {"exp": expires, "size": size, "ct": content_type, "sig": sig})

    async def presign_get(self, key: str, filename: str, content_type: str, ttl_s: int
                          ) -> str:
        split_key(key)
        expires = int(self.clock()) + ttl_s
        sig = self._sign("GET", key, expires, None, content_type, filename)
        return self._url(key, {"exp": expires, "ct": content_type, "fn": filename, "sig": sig})

    def verify(self, method: str, key: str, query: Mapping[str, str]) -> Grant:
        """The grant of a signed URL; :class:`InvalidSignature` or :class:`UrlExpired`."""
        method = "GET" if method == "HEAD" else method
        try:
            split_key(key)
            expires = int(query["exp"])
            content_type = query["ct"]
            sig = query["sig"]
            if method == "PUT":
                size: int | None = int(query["size"])
                filename = None
            elif method == "GET":
                size, filename = None, query["fn"]
            else:
                raise InvalidSignature()
        except (KeyError, ValueError, InvalidKey):
            raise InvalidSignature() from None
        expected = self._sign(method, key, expires, size, content_type, filename)
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise InvalidSignature()
        if self.clock() > expires:
            raise UrlExpired()
        return Grant(method, key, expires, content_type, size, filename)

    # --- objects -----------------------------------------------------------------------------

    def path_of(self, key: str) -> Path:
        user, entry, attachment = split_key(key)
        return self.root / user / entry / attachment

    async def head(self, key: str) -> int | None:
        try:
            stat = await trio.Path(self.path_of(key)).stat()
        except FileNotFoundError:
            return None
        return stat.st_size

    async def delete(self, key: str, *, all_versions: bool = False) -> None:
        """Delete the object (no error when absent). Files have no versions: ``all_versions``
        changes nothing here."""
        await trio.to_thread.run_sync(self._delete, self.path_of(key))

    def _delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        for parent in (path.parent, path.parent.parent):  # tidy up empty directories
            try:
                parent.rmdir()
            except OSError:
                break

    async def delete_prefix(self, prefix: str, *, all_versions: bool = False) -> int:
        """Delete every object under a user, entry or folder prefix (``{userId}/``,
        ``{userId}/{entryId}/``); returns how many. (Files have no versions.)"""
        return await trio.to_thread.run_sync(
            self._delete_tree, self.root.joinpath(*split_prefix(prefix)))

    def _delete_tree(self, directory: Path) -> int:
        try:
            count = sum(1 for p in directory.rglob("*")
                        if p.is_file() and not p.name.startswith("."))
        except FileNotFoundError:
            return 0
        shutil.rmtree(directory, onerror=_ignore_missing)  # any other failure raises
        if directory.parent != self.root:
            try:
                directory.parent.rmdir()
            except OSError:
                pass
        return count

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, size: int) -> int:
        """Stream ``chunks`` into the object: exactly ``size`` bytes, else nothing is stored
        (:class:`~innera.errors.PayloadTooLarge` as soon as the body goes past ``size``,
        :class:`SizeMismatch` when it ends short). Written to a temporary file in the same
        directory, flushed to disk, then renamed over the object."""
        return await self._write(key, chunks, size=size, max_bytes=size)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str,
                         max_bytes: int | None = None) -> int:
        """Store a stream of unknown length (job files); returns its size. Past
        ``max_bytes``: :class:`~innera.errors.PayloadTooLarge` and nothing is stored."""
        del content_type  # the local store keeps no metadata; downloads sign their type
        return await self._write(key, chunks, size=None, max_bytes=max_bytes)

    async def _write(self, key: str, chunks: AsyncIterable[bytes], *, size: int | None,
                     max_bytes: int | None) -> int:
        path = self.path_of(key)
        await trio.Path(path.parent).mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        total = 0
        done = False
        try:
            fd = await trio.to_thread.run_sync(
                os.open, temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            async with trio.wrap_file(os.fdopen(fd, "wb")) as out:
                buffer = bytearray()
                async for chunk in chunks:
                    total += len(chunk)
                    if max_bytes is not None and total > max_bytes:
                        raise PayloadTooLarge(
                            f"The body is larger than the declared size ({size} bytes)"
                            if size is not None else
                            f"The body is larger than the limit ({max_bytes} bytes)")
                    buffer += chunk
                    if len(buffer) >= _WRITE_BUFFER:
                        await out.write(bytes(buffer))
                        buffer.clear()
                if buffer:
                    await out.write(bytes(buffer))
                if size is not None and total != size:
                    raise SizeMismatch(f"The body has {total} bytes, {size} were declared")
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            await trio.Path(temp).replace(path)
            done = True
        finally:
            if not done:
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + 5
                    await trio.Path(temp).unlink(missing_ok=True)
        return total

    async def get_stream(self, key: str) -> AsyncIterator[bytes]:
        """The whole object, in chunks (:class:`FileNotFoundError` when it is absent)."""
        async with await trio.open_file(self.path_of(key), "rb") as src:
            while chunk := await src.read(READ_CHUNK):
                yield chunk

    async def read(self, key: str, size: int) -> AsyncIterator[bytes]:
        """The first ``size`` bytes of the object, in chunks (opened when iterated)."""
        async with await trio.open_file(self.path_of(key), "rb") as src:
            left = size
            while left > 0:
                chunk = await src.read(min(READ_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    # --- health ------------------------------------------------------------------------------

    async def check_health(self) -> None:
        """Write and remove a probe file (off the event loop): proves the disk is writable."""
        await trio.to_thread.run_sync(self._probe, abandon_on_cancel=True)

    def _probe(self) -> None:
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
