"""Streaming request bodies and the store behind them, shared by the routes that stream
(attachment uploads, import uploads) and by idempotency, which hashes a body as it streams.

- :func:`body_chunks`: the request body, each chunk awaited at most
  :data:`UPLOAD_IDLE_TIMEOUT_S` (408 ``request_timeout`` past it).
- :func:`storage_errors`: a failing store (S3 error or timeout, disk error) → 503
  ``storage_unavailable``.
- :class:`StreamingUploadRequest`: the request class that lets a local upload stream past
  Quart's ``MAX_CONTENT_LENGTH``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import trio
from botocore.exceptions import BotoCoreError, ClientError
from quart_trio.wrappers import TrioRequest

from innera.errors import AppError, StorageUnavailable
from innera.storage.local import URL_PATH as LOCAL_URL_PATH

#: An upload whose client sends nothing for this long is answered 408.
UPLOAD_IDLE_TIMEOUT_S = 60.0
#: Most request-body bytes Quart may buffer ahead of a streaming upload (it has no
#: back-pressure; the route writes in 256 KiB pieces, so this only fills on a stalled disk).
UPLOAD_BACKLOG_BYTES = 32 * 1024 * 1024


class UploadTimeout(AppError):
    status, code, message = 408, "request_timeout", "The upload took too long"


def _is_storage_failure(exc: BaseException) -> bool:
    return isinstance(exc, trio.TooSlowError | OSError | BotoCoreError | ClientError)


@contextmanager
def storage_errors() -> Iterator[None]:
    """A failing store (S3 error or timeout, disk error) → 503 ``storage_unavailable``."""
    try:
        yield
    except AppError:
        raise
    except Exception as exc:
        if _is_storage_failure(exc):
            raise StorageUnavailable() from exc
        raise


def is_local_upload(method: str, path: str) -> bool:
    return method == "PUT" and path.startswith(LOCAL_URL_PATH + "/")


class StreamingUploadRequest(TrioRequest):
    """The app's request class must derive from this (``class InneraRequest(
    StreamingUploadRequest)``): a PUT to a local upload URL gets a body without Quart's
    MAX_CONTENT_LENGTH — which Quart applies from the Content-Length header when the request
    object is created, before any route code, discarding the body — because the route
    enforces the signed size and ATTACHMENT_MAX_BYTES itself while streaming. Quart's guard on
    the bytes it buffers ahead of the route still applies, at :data:`UPLOAD_BACKLOG_BYTES`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if is_local_upload(self.method, self.path):
            self.body = self.body_class(None, UPLOAD_BACKLOG_BYTES)


async def body_chunks(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The request body, each chunk awaited at most UPLOAD_IDLE_TIMEOUT_S."""
    chunks = body.__aiter__()
    while True:
        with trio.move_on_after(UPLOAD_IDLE_TIMEOUT_S) as waited:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
        if waited.cancelled_caught:
            raise UploadTimeout(f"No data received for {UPLOAD_IDLE_TIMEOUT_S:g} s")
        if chunk:
            yield chunk
