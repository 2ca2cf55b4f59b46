"""Resource ids are UUIDs. A malformed id answers exactly like an unknown one (404), so
routes only need the canonical form or ``None``."""

from __future__ import annotations

import uuid


def canonical_uuid(value: object) -> str | None:
    """``value`` as a canonical (lower-case, hyphenated) UUID string, or ``None``."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        text = str(uuid.UUID(value))
    except ValueError:
        return None
    return text if text == value.lower() else None
