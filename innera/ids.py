"""Resource ids are UUIDs. A malformed id answers exactly like an unknown one (404), so
routes only need the canonical form or ``None``."""

from __future__ import annotations

import os
import re

# Every request parses two ids (the user's, a resource's) and makes one (its request id):
# uuid.UUID's constructor and str() cost more than the rest of that bookkeeping together.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(value: object) -> str | None:
    """``value`` as a canonical (lower-case, hyphenated) UUID string, or ``None``."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    text = value.lower()
    return text if _CANONICAL.fullmatch(text) else None


def new_uuid4() -> str:
    """``str(uuid.uuid4())``, faster: a random (version 4, RFC 4122 variant) UUID."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
