"""What an import is made of, and innera's own export format (``docs/export-format.md``).

Every source format is turned into a list of :class:`ImportEntry` by a pure, synchronous
parser (run in the parsing child process, ``workers/import_child.py``): this module's
:func:`parse_innera_export` for innera's own ``innera-export.json``, ``workers/dayone.py``
for Day One journals. A parser validates everything before anything is stored and raises
:class:`BadImportFile` naming the first problems precisely
(``innera-export.json: entries[12].body: must not be empty``), with a stable code: a limit
(:data:`LIMIT_CODES`) or ``invalid_import_file``.

Field rules are the entries API's own (:mod:`innera.journal.rules`: lengths, tag count and
trimming, mood, ``occurredAt`` with an offset), so an import cannot store what the API would
refuse. Lengths are checked before anything else looks at a value: a body longer than the
API allows fails the file at once with ``entry_too_large``.

This module and the parsers import nothing heavier than pydantic: the child process that runs
them starts for every import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from innera.journal.rules import ALLOWED_CONTENT_TYPES, BODY_MAX, EntryIn

#: the member of an innera export holding the entries
INNERA_JSON = "innera-export.json"
INNERA_FORMAT = "innera-export"
INNERA_VERSION = 1
#: a file's problems named in the job's error, at most
MAX_PROBLEMS = 5
SOURCE_ID_MAX = 200
#: an attachment's file name, as the file gives it (sanitised when stored), at most
FILENAME_MAX = 1024

INVALID = "invalid_import_file"
IMPORT_TOO_LARGE = "import_too_large"
TOO_MANY_ENTRIES = "too_many_entries"
TOO_MANY_ATTACHMENTS = "too_many_attachments"
ENTRY_TOO_LARGE = "entry_too_large"
TOO_DEEP = "too_deep"
#: the codes of a file that passes a limit (each limit's message names it)
LIMIT_CODES = frozenset({IMPORT_TOO_LARGE, TOO_MANY_ENTRIES, TOO_MANY_ATTACHMENTS,
                         ENTRY_TOO_LARGE, TOO_DEEP})


#: an archive may expand to at most this many times IMPORT_MAX_BYTES (attachments included)
EXPAND_FACTOR = 4


@dataclass(frozen=True)
class Limits:
    """What one import may hold. Each is a documented setting (``IMPORT_*``)."""

    #: IMPORT_MAX_BYTES: the upload, and the JSON documents in it once expanded
    max_bytes: int
    #: ATTACHMENT_MAX_BYTES: one attachment
    attachment_max_bytes: int
    #: IMPORT_MAX_ENTRIES
    max_entries: int = 100_000
    #: IMPORT_MAX_ATTACHMENTS: attachment references in the whole file
    max_attachments: int = 5_000

    @property
    def max_expanded(self) -> int:
        """The archive's members in all, and the bytes of every attachment reference."""
        return EXPAND_FACTOR * self.max_bytes


class BadImportFile(Exception):
    """The file can never be imported; the message names the problem, ``code`` its kind."""

    def __init__(self, message: str, code: str = INVALID) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ImportAttachment:
    filename: str  # as the file gives it (sanitised when stored)
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


def check_body_length(problems: Problems, where: str, text: Any, maximum: int = BODY_MAX
                      ) -> None:
    """A text longer than an entry's body may be fails the whole file at once
    (``entry_too_large``), before anything parses it."""
    if isinstance(text, str) and len(text) > maximum:
        raise BadImportFile(f"{problems.prefix}{where}: {len(text)} characters, more than the "
                            f"limit of {maximum} for an entry", ENTRY_TOO_LARGE)


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
                        limits: Limits) -> list[ImportEntry]:
    """``innera-export.json`` (parsed) → its entries. ``members``: the archive's member
    names → uncompressed sizes (None when the JSON was uploaded alone: then an entry with
    attachments is refused, the bytes being absent).

    Attachment references are bounded as a whole: at most ``limits.max_attachments`` of them
    (``too_many_attachments``), and their bytes, each reference counted (every one is stored
    as an object of its own), at most ``limits.max_expanded`` (``import_too_large``)."""
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
    check_entry_count(problems, len(raw_entries), limits.max_entries)
    entries: list[ImportEntry] = []
    references = referenced_bytes = 0
    for i, raw in enumerate(raw_entries):
        where = f"entries[{i}]"
        if not isinstance(raw, dict):
            problems.add(where, f"must be an object, not {json_type(raw)}")
            continue
        check_body_length(problems, f"{where}.body", raw.get("body"))
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
                                   limits.attachment_max_bytes)
        if attachments:
            references += len(attachments)
            referenced_bytes += sum(a.size for a in attachments)
            _check_references(problems, references, referenced_bytes, limits)
        if valid is None or attachments is None or problems.items:
            continue
        assert valid.occurredAt is not None and isinstance(source_id, str)
        add_entry(problems, where, entries, ImportEntry(
            source="innera", source_id=source_id.strip(), title=valid.title, body=valid.body,
            tags=valid.tags, mood=valid.mood, occurred_at=valid.occurredAt,
            attachments=attachments))
    problems.check()
    return entries


def add_entry(problems: Problems, where: str, entries: list[ImportEntry], entry: ImportEntry
              ) -> None:
    """Append ``entry`` unless some text of it is not valid Unicode: JSON's ``\\ud800``
    escapes give lone surrogates, which UTF-8 (and so storage) cannot hold."""
    texts = [entry.source_id, entry.title or "", entry.body, entry.mood or "", *entry.tags]
    texts += [t for a in entry.attachments for t in (a.filename, a.member)]
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        problems.add(where, "holds text that is not valid Unicode (a lone surrogate)")
        return
    entries.append(entry)


def check_entry_count(problems: Problems, count: int, maximum: int) -> None:
    """More entries than an import may hold fail the file at once (``too_many_entries``)."""
    if count > maximum:
        raise BadImportFile(f"{problems.prefix}{count} entries, more than the limit of "
                            f"{maximum} (IMPORT_MAX_ENTRIES)", TOO_MANY_ENTRIES)


def _check_references(problems: Problems, count: int, size: int, limits: Limits) -> None:
    if count > limits.max_attachments:
        raise BadImportFile(f"{problems.prefix}more than {limits.max_attachments} attachments "
                            "(IMPORT_MAX_ATTACHMENTS)", TOO_MANY_ATTACHMENTS)
    if size > limits.max_expanded:
        raise BadImportFile(
            f"{problems.prefix}the attachments come to more than {limits.max_expanded} bytes "
            f"({EXPAND_FACTOR} × IMPORT_MAX_BYTES), each reference counted", IMPORT_TOO_LARGE)


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
        if (not isinstance(filename, str) or not filename.strip()
                or len(filename) > FILENAME_MAX):
            problems.add(f"{at}.filename", f"must be a non-empty string of at most "
                                           f"{FILENAME_MAX} characters")
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
            out.append(ImportAttachment(filename, content_type.strip().lower(), size, path))
    return out if len(problems.items) == before else None
