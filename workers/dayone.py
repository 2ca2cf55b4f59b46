"""Day One JSON journals (``Journal.json`` of a Day One "JSON" export) → import entries.

Shape read: ``{"metadata": {...}, "entries": [{"uuid", "text", "creationDate", "tags"?, ...}]}``.

Mapping (everything else is ignored: ``richText``, ``modifiedDate``, ``starred``,
``location``, ``weather``, ``photos``/``audios``/``videos``, …):

- source ``("dayone", uuid)``: importing the same journal again skips entries already there;
- ``text`` → ``body``, Markdown kept as is (required: not empty or only whitespace). Photos
  are not imported: the text keeps Day One's ``![](dayone-moment://<md5>)`` references;
- title: when the first line is a level-1 Markdown heading (``# A walk``) and text follows
  it, the heading becomes the title (Markdown backslash escapes such as ``\\.`` undone) and
  the body is the rest (leading blank lines dropped). Otherwise there is no title and the
  whole text is the body;
- ``tags`` → tags (the entries API's rules: trimmed, duplicates dropped, at most 20);
- ``creationDate`` (ISO 8601, e.g. ``2024-01-02T03:04:05Z``) → ``occurredAt``; no mood.

Problems are named with Day One's field names: ``Journal.json: entries[3].text: must not be
empty``.
"""

from __future__ import annotations

import re
from typing import Any

from innera.journal.rules import BODY_MAX, TITLE_MAX
from workers.import_format import (
    SOURCE_ID_MAX,
    ImportEntry,
    Problems,
    add_entry,
    check_body_length,
    check_entry_count,
    check_entry_fields,
    json_type,
)

SOURCE = "dayone"
#: a text longer than this cannot give a valid body, whatever its first line: refused
#: before it is split (``entry_too_large``)
TEXT_MAX = BODY_MAX + 4 * TITLE_MAX
#: a heading line longer than this cannot give a valid title (escapes at most double it)
_HEADING_MAX = 2 * TITLE_MAX + 64
_BLANKS = " \t"
#: one backslash-escaped ASCII punctuation character (one character class: linear)
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
#: our field → Day One's, in messages
_NAMES = {"body": "text", "title": "text", "occurredAt": "creationDate", "tags": "tags"}


def looks_like_dayone(doc: Any) -> bool:
    """A JSON document with Day One's top-level shape (an ``entries`` list)."""
    return isinstance(doc, dict) and isinstance(doc.get("entries"), list)


def heading(line: str) -> str | None:
    """The text of a level-1 ATX heading line (``# A walk``, ``# A walk ##``), or None.

    Plain string steps, linear in the line: ``#``, at least one blank, then the title; a
    closing run of ``#`` preceded by a blank is dropped, as are trailing blanks."""
    if len(line) < 3 or line[0] != "#" or line[1] not in _BLANKS:
        return None
    title = line[1:].strip(_BLANKS)
    if not title or title[0].isspace():  # "# \rA" is no heading: the title starts with \S
        return None
    unclosed = title.rstrip("#")
    if unclosed != title and unclosed[-1:] in (" ", "\t") and unclosed.strip(_BLANKS):
        title = unclosed.rstrip(_BLANKS)
    return title


def split_title(text: str) -> tuple[str | None, str]:
    """(title, body) from Day One text, as the module doc describes."""
    first, _, rest = text.partition("\n")
    first = first.rstrip("\r")
    if len(first) > _HEADING_MAX or not rest.strip():
        return None, text
    title = heading(first)
    if title is None:
        return None, text
    title = _ESCAPE.sub(r"\1", title).strip()
    if not title or len(title) > TITLE_MAX:
        return None, text
    return title, rest.lstrip("\r\n")


def parse_dayone(doc: Any, *, prefix: str = "", max_entries: int = 100_000
                 ) -> list[ImportEntry]:
    """A parsed Day One journal → its entries; :class:`BadImportFile` naming every problem
    (up to a few) otherwise. More than ``max_entries`` entries, or a text longer than
    :data:`TEXT_MAX`, fail the file at once with the limit's code."""
    problems = Problems(prefix)
    if not looks_like_dayone(doc):
        raise problems.fail("", 'not a Day One journal (expected an object with an "entries" '
                                "list)")
    check_entry_count(problems, len(doc["entries"]), max_entries)
    entries: list[ImportEntry] = []
    for i, raw in enumerate(doc["entries"]):
        where = f"entries[{i}]"
        if not isinstance(raw, dict):
            problems.add(where, f"must be an object, not {json_type(raw)}")
            continue
        uuid = raw.get("uuid")
        if not isinstance(uuid, str) or not 0 < len(uuid.strip()) <= SOURCE_ID_MAX:
            problems.add(f"{where}.uuid", f"must be a string of 1..{SOURCE_ID_MAX} characters")
        text = raw.get("text")
        if text is None:
            problems.add(f"{where}.text", "required")
            continue
        if not isinstance(text, str):
            problems.add(f"{where}.text", f"must be a string, not {json_type(text)}")
            continue
        check_body_length(problems, f"{where}.text", text, TEXT_MAX)
        if raw.get("creationDate") is None:
            problems.add(f"{where}.creationDate", "required")
        title, body = split_title(text)
        check_body_length(problems, f"{where}.text", body)
        tags = raw.get("tags")
        fields = {"title": title, "body": body, "tags": [] if tags is None else tags,
                  "mood": None, "occurredAt": raw.get("creationDate")}
        valid = check_entry_fields(problems, where, fields, _NAMES)
        if valid is None or problems.items:
            continue
        assert valid.occurredAt is not None and isinstance(uuid, str)
        add_entry(problems, where, entries, ImportEntry(
            source=SOURCE, source_id=uuid.strip(), title=valid.title, body=valid.body,
            tags=valid.tags, mood=None, occurred_at=valid.occurredAt))
    problems.check()
    return entries
