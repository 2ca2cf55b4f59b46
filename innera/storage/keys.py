"""Object keys. Every object of a user lives under ``{userId}/``:

- attachments: ``{userId}/{entryId}/{attachmentId}`` (three canonical UUIDs);
- job files: ``{userId}/exports/{jobId}`` (export archives) and ``{userId}/imports/{jobId}``
  (uploaded import files).

Both stores use the same keys; the local store maps them to paths under its root, so a key is
validated (every component a canonical lower-case UUID or a known folder name) before it
touches the file system. Deleting the prefix ``{userId}/`` removes every object of the user.
"""

from __future__ import annotations

from innera.ids import canonical_uuid

__all__ = ["FOLDERS", "InvalidKey", "canonical_uuid", "entry_prefix", "job_file_key",
           "object_key", "user_prefix"]

#: folders of job files beside a user's entries
FOLDERS = ("exports", "imports")


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


def job_file_key(user_id: str, folder: str, job_id: str) -> str:
    """``{userId}/exports/{jobId}`` or ``{userId}/imports/{jobId}``."""
    user, job = canonical_uuid(user_id), canonical_uuid(job_id)
    if user is None or job is None or folder not in FOLDERS:
        raise InvalidKey("not a job file key")
    return f"{user}/{folder}/{job}"


def user_prefix(user_id: str) -> str:
    """The prefix (ending in ``/``) of every object of one user."""
    user = canonical_uuid(user_id)
    if user is None:
        raise InvalidKey("key components must be UUIDs")
    return f"{user}/"


def _is_uuid(part: str) -> bool:
    return canonical_uuid(part) == part


def split_key(key: str) -> tuple[str, str, str]:
    """``key`` → its three components (user id, entry id or folder, object id);
    :class:`InvalidKey` unless it is an attachment or job file key in canonical form."""
    parts = key.split("/")
    if (len(parts) != 3 or not _is_uuid(parts[0]) or not _is_uuid(parts[2])
            or not (_is_uuid(parts[1]) or parts[1] in FOLDERS)):
        raise InvalidKey("not an object key")
    return parts[0], parts[1], parts[2]


def split_prefix(prefix: str) -> tuple[str, ...]:
    """A user prefix ``{userId}/`` → (user,); an entry or folder prefix
    ``{userId}/{entryId|folder}/`` → (user, entry or folder); :class:`InvalidKey` otherwise."""
    parts = prefix.split("/")
    if parts[-1] != "" or not parts[0] or not _is_uuid(parts[0]):
        raise InvalidKey("not an object prefix")
    if len(parts) == 2:
        return (parts[0],)
    if len(parts) == 3 and (_is_uuid(parts[1]) or parts[1] in FOLDERS):
        return parts[0], parts[1]
    raise InvalidKey("not an object prefix")
