"""Per-user data keys (DEK): 32 random bytes made at sign-up, stored only wrapped by a master
key (table ``user_keys``: the wrapped key, the master key version and the provider that
wrapped it, ``local`` or ``kms``; the wrap binds the user id, and the local provider also the
version). Unwrapped keys are cached in memory and never written anywhere.

The cache: at most ``cache_size`` keys (``INNERA_DEK_CACHE_SIZE``), least recently used
evicted first, each for ``cache_ttl_s`` (``INNERA_DEK_CACHE_TTL_S``). With AWS KMS it is what
keeps a ``Decrypt`` off most requests; it is also why a KMS key that is disabled stops reads
on a running instance only as cached keys expire (or at a restart).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import psycopg

from innera.crypto.errors import KeyServiceUnavailable, crypto_failed
from innera.crypto.keyring import KeyProvider, UnwrapError
from innera.db.pool import Pool
from innera.observability.metrics import Metrics

DEK_BYTES = 32
CACHE_TTL_S = 300.0
CACHE_SIZE = 10_000


def dek_context(user_id: str) -> bytes:
    """The context binding a wrapped DEK to its user (associated data of the local provider,
    the encryption context ``{"innera": "dek:<user id>"}`` with AWS KMS)."""
    return f"dek:{user_id}".encode()


async def unwrap_stored(provider: KeyProvider, version: int, stored_provider: str,
                        wrapped: bytes, user_id: str) -> bytes:
    """The DEK of a ``user_keys`` row. The row names its master key (version and provider):
    a version now configured with another provider cannot have wrapped it, which is said
    plainly (:class:`UnwrapError`) rather than left to a confusing refusal."""
    configured = provider.provider_name(version)
    if configured != stored_provider:
        raise UnwrapError(
            f"the data key was wrapped by a {stored_provider} master key version {version}, "
            f"but version {version} is configured as {provider.describe(version)}")
    return await provider.unwrap(version, wrapped, dek_context(user_id))


@dataclass(frozen=True)
class NewKey:
    """A new user's DEK, wrapped but not stored yet (:meth:`DataKeys.wrap_new`)."""

    dek: bytes
    version: int
    provider: str
    wrapped: bytes


class DataKeys:
    def __init__(self, pool: Pool, provider: KeyProvider, metrics: Metrics, *,
                 cache_ttl_s: float = CACHE_TTL_S, cache_size: int = CACHE_SIZE) -> None:
        self.pool = pool
        self.provider = provider
        self.metrics = metrics
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def create(self, conn: psycopg.AsyncConnection[Any], user_id: str) -> None:
        """Make, wrap and store the user's DEK (:meth:`wrap_new` then :meth:`store`)."""
        await self.store(conn, user_id, await self.wrap_new(user_id))

    async def wrap_new(self, user_id: str) -> NewKey:
        """A new DEK for ``user_id``, wrapped by the current master key: call it before the
        sign-up transaction, so a slow key service (KMS) holds no pooled connection.
        :class:`KeyServiceUnavailable` when the key service cannot wrap it now."""
        dek = os.urandom(DEK_BYTES)
        try:
            version, wrapped = await self.provider.wrap(dek, dek_context(user_id))
        except KeyServiceUnavailable:
            raise
        except Exception as exc:
            raise crypto_failed(self.metrics, "encrypt", exc, user_id=user_id) from exc
        return NewKey(dek, version, self.provider.provider_name(version), wrapped)

    async def store(self, conn: psycopg.AsyncConnection[Any], user_id: str, key: NewKey
                    ) -> None:
        """Store the wrapped DEK (inside the sign-up transaction) and cache it."""
        await conn.execute(
            "INSERT INTO user_keys (user_id, mek_version, mek_provider, wrapped_dek) "
            "VALUES (%s, %s, %s, %s)", (user_id, key.version, key.provider, key.wrapped),
            name="data_keys.insert")
        self._remember(user_id, key.dek)

    def cached(self, user_id: str) -> bytes | None:
        """The user's DEK if the cache holds it (no waiting), else None."""
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] > time.monotonic():
            self._cache.move_to_end(user_id)
            return hit[1]
        return None

    async def get(self, user_id: str) -> bytes:
        """The user's DEK (from the cache, else unwrapped from ``user_keys``).
        :class:`~innera.crypto.errors.CryptoError` when it does not unwrap,
        :class:`KeyServiceUnavailable` when the key service cannot be used now."""
        dek = self.cached(user_id)
        if dek is not None:
            return dek
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT mek_version, mek_provider, wrapped_dek FROM user_keys "
                "WHERE user_id = %s", (user_id,), name="data_keys.read")
            row = await cur.fetchone()
        try:
            if row is None:
                raise UnwrapError("the user has no data key")
            dek = await unwrap_stored(self.provider, row[0], row[1], bytes(row[2]), user_id)
        except UnwrapError as exc:
            raise crypto_failed(self.metrics, "decrypt", exc, user_id=user_id) from exc
        self._remember(user_id, dek)
        return dek

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)

    def _remember(self, user_id: str, dek: bytes) -> None:
        self._cache[user_id] = (time.monotonic() + self.cache_ttl_s, dek)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
