"""Idempotency keys: an authenticated write carrying ``Idempotency-Key`` runs at most once per
user and key; a repeat within 24 h gets the first response back (``Idempotent-Replayed: true``).

Redis keys (spec, "Redis Usage"):

- ``idempotency:{userId}:{key}`` → JSON ``{"statusCode", "body", "fingerprint",
  "contentType"}`` (``body`` is base64: any bytes), plus ``"location"`` when the response had
  a ``Location`` header (a replayed 202 still names its job), 24 h. Not written for 5xx
  responses, nor when the handler raises, so the client can retry.
- ``idempotency:{userId}:{key}:lock`` → a random owner token, ``SET NX PX`` 30 s, renewed every
  ``lock_ttl_s / 3`` while the handler runs, released by compare-and-delete.

The fingerprint (:class:`Fingerprint`: sha256 of the method, path and body) tells a repeat from
another request reusing the key (422). A route that streams its body (an import upload: up to
IMPORT_MAX_BYTES) never holds it whole, so the guard takes a function instead, awaited when the
fingerprint is needed: on a replay, the body is hashed as it streams (and dropped) before
comparing; otherwise the lock is taken first, the handler reads the body through the hasher,
and what it left unread is hashed before the response is stored.

Round trips per request (each Lua script is atomic):

1. ``ACQUIRE``: GET the cached response, else ``SET NX PX`` the lock. One script, so no request
   can finish between the two and the "re-check after locking" is implied. A replay, a 409 and
   a 422 end here.
2. ``FINISH``: store the response (``SET NX PX``: never overwrites a response stored first by
   someone else) and compare-and-delete the lock. One script.

Plus one ``RENEW`` per ``lock_ttl_s / 3`` of handler time. (``EVALSHA`` falls back to
``SCRIPT LOAD`` once per server start.)

Redis unreachable (or slower than ``timeout_s``) while acquiring → 503
``idempotency_unavailable``: a keyed request never runs without the guarantee. Failures after
the handler ran are recorded and logged but do not fail the response (the lock then expires).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from coredis.exceptions import RedisError

from innera.errors import AppError
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.guards.idempotency")

#: what an Idempotency-Key may be: 1–255 printable ASCII characters (the OpenAPI document
#: states it with this pattern; a key ending in ``:lock`` is refused besides)
KEY_PATTERN = "^[ -~]{1,255}$"
_KEY_RE = re.compile(KEY_PATTERN)
_LOCK_SUFFIX = ":lock"
RETRY_AFTER_IN_PROGRESS_S = 1
RETRY_AFTER_UNAVAILABLE_S = 5

# KEYS: cache, lock. ARGV: owner token, lock TTL ms.
# → {"replay", stored JSON} | {"locked"} | {"busy"}
ACQUIRE_LUA = """
local stored = redis.call('GET', KEYS[1])
if stored then return {'replay', stored} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'locked'} end
return {'busy'}
"""

# KEYS: lock. ARGV: owner token, lock TTL ms. → 1 renewed, 0 not ours (any more).
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: cache, lock. ARGV: owner token, stored JSON ('' = store nothing), cache TTL ms.
# → 1 lock released, 0 the lock was no longer ours (expired, maybe taken by another owner).
FINISH_LUA = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""


class InvalidIdempotencyKey(AppError):
    status, code = 400, "invalid_idempotency_key"
    message = "Idempotency-Key must be 1–255 printable ASCII characters"


class IdempotencyInProgress(AppError):
    status, code = 409, "idempotency_in_progress"
    message = "A request with this Idempotency-Key is still being processed"


class IdempotencyKeyReused(AppError):
    status, code = 422, "idempotency_key_reused"
    message = "This Idempotency-Key was already used for a different request"


class IdempotencyUnavailable(AppError):
    status, code = 503, "idempotency_unavailable"
    message = "Idempotency keys cannot be honoured right now; retry later"


def validate_key(key: str) -> str:
    """1–255 printable ASCII characters (space to ``~``), else 400 ``invalid_idempotency_key``.
    A key ending in ``:lock`` is refused too: its cache key would be another key's lock key."""
    if not _KEY_RE.fullmatch(key) or key.endswith(_LOCK_SUFFIX):
        raise InvalidIdempotencyKey()
    return key


class Fingerprint:
    """The request fingerprint, hashed incrementally: sha256 of the method (case-insensitive)
    and the path, each length-prefixed (so no two different requests share an encoding), then
    the body, fed in pieces as it arrives. The one definition of a fingerprint:
    :func:`fingerprint` hashes a buffered body through it, a streaming route its chunks."""

    def __init__(self, method: str, path: str) -> None:
        self._hash = hashlib.sha256()
        for part in (method.upper().encode(), path.encode("utf-8", "surrogateescape")):
            self._hash.update(b"%d:" % len(part))
            self._hash.update(part)

    def update(self, chunk: bytes) -> None:
        """The next piece of the body."""
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


#: a request's fingerprint, or (a streamed body) a function computing it once it has been read
FingerprintSource = str | Callable[[], Awaitable[str]]


def fingerprint(method: str, path: str, body: bytes) -> str:
    """The :class:`Fingerprint` of a request whose whole body is at hand."""
    fp = Fingerprint(method, path)
    fp.update(body)
    return fp.hexdigest()


@dataclass
class StoredResponse:
    status: int
    body: bytes
    content_type: str
    #: the response's Location header (a 201 or 202 names what it made), if any
    location: str | None = None


class Guard:
    """What ``Idempotency.guard`` yields. ``replay`` set: return it, do not run the handler.
    Otherwise run the handler and ``store`` its response (5xx ones are not kept)."""

    def __init__(self, replay: StoredResponse | None = None) -> None:
        self.replay = replay
        self._pending: StoredResponse | None = None

    def store(self, status: int, body: bytes, content_type: str,
              location: str | None = None) -> None:
        if self.replay is not None:
            return
        self._pending = None if status >= 500 else StoredResponse(status, bytes(body),
                                                                  content_type, location)


class _Unavailable(Exception):
    """A Redis call failed or timed out (already recorded)."""


class Idempotency:
    def __init__(
        self, redis: Redis, *, ttl_s: int = 86_400, lock_ttl_s: int = 30, timeout_s: float = 1.0
    ) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.renew_interval_s = lock_ttl_s / 3
        self.timeout_s = timeout_s
        client = redis.client
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._finish = client.register_script(FINISH_LUA)

    @asynccontextmanager
    async def guard(self, user_id: str, key: str, fingerprint: FingerprintSource
                    ) -> AsyncIterator[Guard]:
        """Raises 400 / 409 / 422 / 503 (see the module doc) before yielding. An exception out
        of the body releases the lock and stores nothing.

        ``fingerprint``: the request's, or a function computing it (a route streaming its body
        hashes it as it goes), awaited only when needed — on a replay, before comparing; after
        the body, when there is a response to store. If it fails then, the response stands
        but is not stored (logged)."""
        key = validate_key(key)
        if not user_id or ":" in user_id:
            raise ValueError(f"unusable user id {user_id!r}")
        cache_key = f"idempotency:{user_id}:{key}"
        lock_key = cache_key + _LOCK_SUFFIX
        token = secrets.token_hex(16)

        try:
            reply = await self._call(
                self._acquire(keys=[cache_key, lock_key], args=[token, self.lock_ttl_ms]))
        except _Unavailable:
            raise IdempotencyUnavailable(
                headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}) from None
        if reply[0] == "replay":
            stored = _decode(reply[1])
            if stored["fingerprint"] != await _resolve(fingerprint):
                raise IdempotencyKeyReused()
            yield Guard(StoredResponse(stored["statusCode"], base64.b64decode(stored["body"]),
                                       stored["contentType"], stored.get("location")))
            return
        if reply[0] != "locked":
            raise IdempotencyInProgress(
                headers={"Retry-After": str(RETRY_AFTER_IN_PROGRESS_S)})

        guard = Guard()
        stored_fp: str | None = None
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_lock, lock_key, token)
                try:
                    yield guard
                    if guard._pending is not None:  # still under the renewed lock
                        stored_fp = await self._fingerprint_after(fingerprint, lock_key)
                except BaseException as exc:  # re-raised below, unwrapped (no ExceptionGroup)
                    body_error = exc
                finally:
                    nursery.cancel_scope.cancel()
        except BaseException:
            await self._end(cache_key, lock_key, token, None)
            raise
        if body_error is not None:
            await self._end(cache_key, lock_key, token, None)
            try:
                raise body_error
            finally:
                body_error = None
        if stored_fp is None:  # nothing to store, or no fingerprint to store it under
            await self._end(cache_key, lock_key, token, None)
        else:
            await self._end(cache_key, lock_key, token, guard._pending, stored_fp)

    async def _fingerprint_after(self, fingerprint: FingerprintSource, lock_key: str
                                 ) -> str | None:
        """The fingerprint to store the response under, once the handler has run; None when it
        cannot be had (a streamed body failing past the handler): store nothing."""
        try:
            return await _resolve(fingerprint)
        except Exception:
            log.warning("idempotency: the request body could not be fingerprinted after the "
                        "handler ran; its response is not stored: %s", lock_key, exc_info=True)
            return None

    async def _call(self, request: Awaitable[Any]) -> Any:
        """One Redis call under ``timeout_s``; failures are recorded and become _Unavailable.
        (coredis may raise ConnectionError rather than Cancelled when the deadline cancels it
        mid-handshake: that is "unavailable" too.)"""
        error: BaseException
        try:
            with trio.move_on_after(self.timeout_s):
                return await request
            error = TimeoutError(f"no Redis reply within {self.timeout_s} s")
        except (*UNAVAILABLE_ERRORS, RedisError, OSError) as exc:
            error = exc
        self.redis.record_error(error)
        raise _Unavailable() from error

    async def _keep_lock(self, lock_key: str, token: str) -> None:
        """Renew the lock every lock_ttl/3 until cancelled or the lock is lost. Never raises."""
        while True:
            await trio.sleep(self.renew_interval_s)
            try:
                renewed = await self._call(self._renew(keys=[lock_key],
                                                       args=[token, self.lock_ttl_ms]))
            except _Unavailable:
                continue  # recorded; try again next interval while the lock may still live
            except Exception:
                log.exception("idempotency lock renewal failed: %s", lock_key)
                return
            if not renewed:
                log.warning("idempotency lock lost while the handler was running: %s", lock_key)
                return

    async def _end(self, cache_key: str, lock_key: str, token: str,
                   response: StoredResponse | None, fingerprint: str = "") -> None:
        """Store (if any) and release, shielded from cancellation but bounded. Never raises:
        the handler has run, its response stands; at worst the lock expires by itself."""
        value = ""
        if response is not None:
            stored: dict[str, Any] = {
                "statusCode": response.status,
                "body": base64.b64encode(response.body).decode("ascii"),
                "fingerprint": fingerprint,
                "contentType": response.content_type,
            }
            if response.location is not None:
                stored["location"] = response.location
            value = json.dumps(stored, separators=(",", ":"))
        try:
            with trio.CancelScope(shield=True):
                released = await self._call(
                    self._finish(keys=[cache_key, lock_key], args=[token, value, self.ttl_ms]))
        except _Unavailable:
            log.warning("idempotency: could not %s %s (Redis unavailable)",
                        "store and release" if value else "release", lock_key)
            return
        except Exception:
            log.exception("idempotency: finishing %s failed", lock_key)
            return
        if not released:
            log.warning("idempotency lock had expired before the handler finished: %s", lock_key)


async def _resolve(fingerprint: FingerprintSource) -> str:
    return fingerprint if isinstance(fingerprint, str) else await fingerprint()


def _decode(raw: str) -> dict[str, Any]:
    stored = json.loads(raw)
    if not isinstance(stored, dict) or not {"statusCode", "body", "fingerprint",
                                            "contentType"} <= stored.keys():
        raise ValueError("malformed idempotency cache entry")
    return stored
