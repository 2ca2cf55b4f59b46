"""Object keys of attachments: ``{userId}/{entryId}/{attachmentId}``, three canonical UUIDs.

Both stores use the same keys; the local store maps them to paths under its root, so a key is
validated (every component a canonical lower-case UUID) before it touches the file system.
"""

from __future__ import annotations

from innera.ids import canonical_uuid

__all__ = ["InvalidKey", "canonical_uuid", "entry_prefix", "object_key"]


class InvalidKey(ValueError):
    """Not ``{uuid}/{uuid}/{uuid}`` (or a ``{uuid}/{uuid}/`` prefix)."""


def object_key(user_id: str, entry_id: str, attachment_id: str) -> str:
    parts = (user_id, entry_id, attachment_id)
    canonical = [canonical_uuid(p) for p in parts]
    if any(c is None for c in canonical):
        raise InvalidKey("key components must be UUIDs")
    return "/".join(c for c in canonical if c is not None)


def entry_prefix(user_id: str, entry_id: str) -> str:
    """The prefix (ending in ``/``) under which every object of one entry lives."""
    user, entry = canonical_uuid(user_id), canonical_uuid(entry_id)
    if user is None or entry is None:
        raise InvalidKey("key components must be UUIDs")
    return f"{user}/{entry}/"


def split_key(key: str) -> tuple[str, str, str]:
    """``key`` → (user id, entry id, attachment id); :class:`InvalidKey` unless canonical."""
    parts = key.split("/")
    if len(parts) != 3 or any(canonical_uuid(p) != p for p in parts):
        raise InvalidKey("not an attachment key")
    return parts[0], parts[1], parts[2]


def split_prefix(prefix: str) -> tuple[str, str]:
    parts = prefix.split("/")
    if len(parts) != 3 or parts[2] != "" or any(canonical_uuid(p) != p for p in parts[:2]):
        raise InvalidKey("not an entry prefix")
    return parts[0], parts[1]
