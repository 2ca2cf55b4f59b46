"""Application secrets: those generated on the embedded default and kept under
``<data_dir>/secrets/`` (mode 0600: the JWT signing secret, the master encryption key;
production supplies both from its environment), and the subkeys derived from them.

Creation is atomic: the complete file is written under a temporary name and hard-linked into
place, which fails if the file exists; so two processes starting at once both end up reading
the one file that won, never a half-written one. Blocking file I/O: run it in a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("innera.secrets")


def read_or_create_secret(path: Path, generate: Callable[[], str], what: str) -> str:
    """The secret in ``path``, created with ``generate()`` when the file does not exist."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(generate() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic "create if absent", with the content already there
                log.info("generated %s in %s", what, path)
            except FileExistsError:
                pass  # another process won: use its secret
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s had mode %o; restricting it to 0600", path, mode)
        os.chmod(path, 0o600)
    return path.read_text(encoding="ascii").strip()


def derive_key(secret: str, purpose: str) -> bytes:
    """A 32-byte subkey of ``secret`` for one purpose (HMAC-SHA256), so the signing secret
    itself is never used for anything but access tokens."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()
