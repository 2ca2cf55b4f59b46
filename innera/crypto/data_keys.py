"""Per-user data keys (DEK): 32 random bytes made at sign-up, stored only wrapped by a master
key (table ``user_keys``; the associated data binds the user id and the MEK version).
Unwrapped keys are cached in memory for a short time and never written anywhere."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any

import psycopg

from innera.crypto.errors import crypto_failed
from innera.crypto.keyring import KeyProvider, UnwrapError
from innera.db.pool import Pool
from innera.observability.metrics import Metrics

DEK_BYTES = 32


def dek_context(user_id: str) -> bytes:
    """The associated data binding a wrapped DEK to its user (the MEK version is added by
    the key provider)."""
    return f"dek:{user_id}".encode()


class DataKeys:
    def __init__(self, pool: Pool, provider: KeyProvider, metrics: Metrics, *,
                 cache_ttl_s: float = 300.0, cache_size: int = 10_000) -> None:
        self.pool = pool
        self.provider = provider
        self.metrics = metrics
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def create(self, conn: psycopg.AsyncConnection[Any], user_id: str) -> None:
        """Make and store the user's DEK (call inside the sign-up transaction)."""
        dek = os.urandom(DEK_BYTES)
        try:
            version, wrapped = await self.provider.wrap(dek, dek_context(user_id))
        except Exception as exc:
            raise crypto_failed(self.metrics, "encrypt", exc, user_id=user_id) from exc
        await conn.execute(
            "INSERT INTO user_keys (user_id, mek_version, wrapped_dek) VALUES (%s, %s, %s)",
            (user_id, version, wrapped), name="data_keys.insert")
        self._remember(user_id, dek)

    def cached(self, user_id: str) -> bytes | None:
        """The user's DEK if the cache holds it (no waiting), else None."""
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] > time.monotonic():
            self._cache.move_to_end(user_id)
            return hit[1]
        return None

    async def get(self, user_id: str) -> bytes:
        """The user's DEK (from the cache, else unwrapped from ``user_keys``)."""
        dek = self.cached(user_id)
        if dek is not None:
            return dek
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT mek_version, wrapped_dek FROM user_keys WHERE user_id = %s", (user_id,),
                name="data_keys.read")
            row = await cur.fetchone()
        try:
            if row is None:
                raise UnwrapError("the user has no data key")
            dek = await self.provider.unwrap(row[0], bytes(row[1]), dek_context(user_id))
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
