"""Attachments on local disk (the embedded default)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import trio


class LocalStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

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
