"""Attachment storage behind one interface: S3 (or any S3-compatible endpoint) in
production, a directory under the data dir on the embedded default.

Attachment routes arrive with the journal issue; the foundation needs the stores to exist and
to answer the readiness check.
"""

from __future__ import annotations

from typing import Protocol

from innera.storage.local import LocalStorage
from innera.storage.s3 import S3Storage


class Storage(Protocol):
    name: str

    async def check_health(self) -> None:
        """Return when the store is usable; raise with the reason otherwise."""


__all__ = ["LocalStorage", "S3Storage", "Storage"]
