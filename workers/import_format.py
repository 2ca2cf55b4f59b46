"""What an import is made of, and innera's own export format (``docs/export-format.md``).

Every source format is turned into a list of :class:`ImportEntry` by a pure, synchronous
parser (run in a worker thread): this module's :func:`parse_innera_export` for innera's own
``innera-export.json``, ``workers/dayone.py`` for Day One journals. A parser validates
everything before anything is stored and raises :class:`BadImportFile` naming the first
problems precisely (``innera-export.json: entries[12].body: must not be empty``).

Field rules are the entries API's own (:class:`innera.api.entries.EntryIn`: lengths, tag
count and trimming, mood, ``occurredAt`` with an offset), so an import cannot store what the
API would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from innera.api.attachments import ALLOWED_CONTENT_TYPES
from innera.api.entries import EntryIn
from innera.queue.jobs import PermanentJobError
from innera.storage.names import sanitize_filename

#: the member of an innera export holding the entries
INNERA_JSON = "innera-export.json"
INNERA_FORMAT = "innera-export"
INNERA_VERSION = 1
#: a file's problems named in the job's error, at most
MAX_PROBLEMS = 5
SOURCE_ID_MAX = 200


class BadImportFile(PermanentJobError):
    """The file can never be imported (no retry); the message names the problem."""


@dataclass(frozen=True, slots=True)
class ImportAttachment:
    filename: str  # sanitised
    content_type: str
    size: int
    member: str  # the archive member holding the bytes


@dataclass(slots=True)
class ImportEntry:
    source: str  # "innera" | "dayone"
    source_id: str
    title: str | None
    body: str
    tags: list[str]
    mood: str | None
    occurred_at: datetime
    attachments: list[ImportAttachment] = field(default_factory=list)


class Problems:
    """Collects a file's problems; :meth:`check` raises them as one :class:`BadImportFile`
    (the first :data:`MAX_PROBLEMS`, then how many more)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = f"{prefix}: " if prefix else ""
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{self.prefix}{where}: {message}" if where else
                          f"{self.prefix}{message}")

    def fail(self, where: str, message: str) -> BadImportFile:
        """A problem that stops the parse at once (the file's structure is wrong)."""
        self.add(where, message)
        return BadImportFile(self.message())

    def message(self) -> str:
        shown = "; ".join(self.items[:MAX_PROBLEMS])
        more = len(self.items) - MAX_PROBLEMS
        return shown + (f" (and {more} more problems)" if more > 0 else "")

    def check(self) -> None:
        if self.items:
            raise BadImportFile(self.message())


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _message(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind == "string_type":
        return "must be a string"
    if kind == "list_type":
        return "must be a list of strings"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    message = str(err["msg"]).removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def check_entry_fields(problems: Problems, where: str, fields: Mapping[str, Any],
                       names: Mapping[str, str] | None = None) -> EntryIn | None:
    """``fields`` (title, body, tags, mood, occurredAt) under the entries API's rules: the
    validated fields, or None after adding each problem to ``problems`` as
    ``{where}.{name}: message``. ``names`` maps our field names to the file's (Day One's
    ``text`` for ``body``)."""
    names = names or {}
    try:
        return EntryIn.model_validate(dict(fields))
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            loc = [str(p) for p in err["loc"]]
            name = names.get(loc[0], loc[0]) if loc else ""
            path = name + "".join(f"[{p}]" for p in loc[1:])
            problems.add(f"{where}.{path}" if path else where, _message(err))
        return None


# --- innera's own format ---------------------------------------------------------------


def parse_innera_export(doc: Any, members: Mapping[str, int] | None, *, prefix: str,
                        attachment_max_bytes: int) -> list[ImportEntry]:
    """``innera-export.json`` (parsed) → its entries. ``members``: the archive's member
    names → uncompressed sizes (None when the JSON was uploaded alone: then an entry with
    attachments is refused, the bytes being absent)."""
    problems = Problems(prefix)
    if not isinstance(doc, dict):
        raise problems.fail("", f"must be a JSON object, not {json_type(doc)}")
    if doc.get("format") != INNERA_FORMAT:
        raise problems.fail("format", f'must be "{INNERA_FORMAT}"')
    if doc.get("version") != INNERA_VERSION:
        raise problems.fail("version", f"unsupported version {doc.get('version')!r} (this "
                                       f"server reads version {INNERA_VERSION})")
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise problems.fail("entries", f"must be a list, not {json_type(raw_entries)}")
    entries: list[ImportEntry] = []
    for i, raw in enumerate(raw_entries):
        where = f"entries[{i}]"
        if not isinstance(raw, dict):
            problems.add(where, f"must be an object, not {json_type(raw)}")
            continue
        source_id = raw.get("id")
        if not isinstance(source_id, str) or not 0 < len(source_id.strip()) <= SOURCE_ID_MAX:
            problems.add(f"{where}.id", f"must be a string of 1..{SOURCE_ID_MAX} characters")
        if raw.get("occurredAt") is None:
            problems.add(f"{where}.occurredAt", "required")
        fields = {name: raw.get(name) for name in ("title", "body", "mood", "occurredAt")}
        fields["tags"] = raw.get("tags", [])
        if fields["tags"] is None:
            fields["tags"] = []
        valid = check_entry_fields(problems, where, fields)
        attachments = _attachments(problems, where, raw.get("attachments"), members,
                                   attachment_max_bytes)
        if valid is None or attachments is None or problems.items:
            continue
        assert valid.occurredAt is not None and isinstance(source_id, str)
        entries.append(ImportEntry(
            source="innera", source_id=source_id.strip(), title=valid.title, body=valid.body,
            tags=valid.tags, mood=valid.mood, occurred_at=valid.occurredAt,
            attachments=attachments))
    problems.check()
    return entries


def _attachments(problems: Problems, where: str, raw: Any, members: Mapping[str, int] | None,
                 maximum: int) -> list[ImportAttachment] | None:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add(f"{where}.attachments", f"must be a list, not {json_type(raw)}")
        return None
    out: list[ImportAttachment] = []
    before = len(problems.items)
    for k, item in enumerate(raw):
        at = f"{where}.attachments[{k}]"
        if not isinstance(item, dict):
            problems.add(at, f"must be an object, not {json_type(item)}")
            continue
        filename, content_type = item.get("filename"), item.get("contentType")
        size, path = item.get("size"), item.get("path")
        if not isinstance(filename, str) or not filename.strip():
            problems.add(f"{at}.filename", "must be a non-empty string")
        if not isinstance(content_type, str) or content_type.strip().lower() not in (
                ALLOWED_CONTENT_TYPES):
            problems.add(f"{at}.contentType", "must be one of "
                         + ", ".join(sorted(ALLOWED_CONTENT_TYPES)))
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= maximum:
            problems.add(f"{at}.size", f"must be a whole number of bytes, 1..{maximum}")
        if not isinstance(path, str) or not path:
            problems.add(f"{at}.path", "must be a non-empty string")
        elif members is None:
            problems.add(f"{at}.path", "the file was uploaded without its archive; upload "
                                       "the whole export .zip")
        elif path not in members:
            problems.add(f"{at}.path", f"{path!r} is not in the archive")
        elif isinstance(size, int) and members[path] != size:
            problems.add(f"{at}.size", f"{size} bytes declared, the archive member has "
                                       f"{members[path]}")
        if len(problems.items) == before:
            assert isinstance(filename, str) and isinstance(content_type, str)
            assert isinstance(size, int) and isinstance(path, str)
            out.append(ImportAttachment(sanitize_filename(filename),
                                        content_type.strip().lower(), size, path))
    return out if len(problems.items) == before else None
