"""Search: a scan of one user's entries, newest first, decrypted and matched in the
application (the database holds only ciphertext).

Matching
    The query and each entry's text (title, body and tags; each field matched on its own)
    are normalised by :func:`normalise`: Unicode NFKC, then case folding, then NFD with every
    combining mark (canonical combining class ≠ 0) and the emoji variation selectors U+FE0E /
    U+FE0F removed. So ``cafe`` finds ``Café`` and ``CAFÉ`` finds ``cafe``, ``STRASSE`` finds
    ``Straße``, ``ﬁ`` finds ``fi``, and an emoji finds itself (with or without VS16). The
    normalised query is split on whitespace into terms; an entry matches when EVERY term
    (AND) is a substring of its normalised title, body or one of its tags (terms may match
    in different fields, and inside words: ``run`` finds ``running``).

Scan
    One ``cursor.stream()`` (libpq chunked mode, ``BATCH_SIZE`` rows per chunk, binary
    results) over ``(user_id, occurred_at DESC, id DESC)``; the data key is fetched once and
    rows are opened with the synchronous ``open_with``; ASCII text takes a fast path
    (``str.lower``: NFKC, NFD and case folding are the identity or ``lower`` on ASCII). The
    task checkpoints after every batch so that a long scan does not starve other requests.
    It stops when ``limit`` entries matched, at the end, or at the deadline (``timeout_s``,
    which also bounds getting the key and the connection): then ``complete`` is False and
    what was found so far is returned. A row that does not decrypt fails the search
    (500 ``crypto_error``, counted), like it fails a read of the entry.

Snippet
    Up to ~``SNIPPET_CHARS`` characters of the ORIGINAL body around the first (leftmost)
    match of any term in the body (or its start when only the title or tags matched), cut at
    word boundaries when one is near, never inside a combining sequence, whitespace runs
    collapsed to one space, ``…`` where text was cut. The match position in the normalised
    text is mapped back to the original by normalising character by character.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import lru_cache

import trio

from innera.crypto.entry_cipher import EntryCipher
from innera.db.pool import Pool
from innera.journal.entries import AFTER, ORDER, ROW_COLUMNS, START, Entry, Position

__all__ = [
    "BATCH_SIZE",
    "SNIPPET_CHARS",
    "SearchResult",
    "normalise",
    "parse_terms",
    "search_entries",
    "snippet",
]

BATCH_SIZE = 500
SNIPPET_CHARS = 120
#: Characters the scan strips after NFD: every code point with a non-zero canonical combining
#: class (none lies above plane 1; tests check that against the whole range), and the emoji
#: presentation selectors.
_STRIPPED = [c for c in range(0x20000) if unicodedata.combining(chr(c))] + [0xFE0E, 0xFE0F]


def _char_class(code_points: list[int]) -> str:
    ranges: list[tuple[int, int]] = []
    for cp in sorted(code_points):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)


# Two classes: one of BMP characters compiles to a bitmap (fast); a class holding astral
# characters is matched range by range (slow), so it only runs on text that has some
# character of the astral blocks with marks (emoji lie above them all).
_MARKS_BMP = re.compile(f"[{_char_class([c for c in _STRIPPED if c < 0x10000])}]+")
_ASTRAL_MARKS = [c for c in _STRIPPED if c >= 0x10000]
_MARKS_ASTRAL = re.compile(f"[{_char_class(_ASTRAL_MARKS)}]+")
_MAY_HAVE_ASTRAL_MARKS = re.compile(f"[{chr(min(_ASTRAL_MARKS))}-{chr(max(_ASTRAL_MARKS))}]")
_STRIPPED_SET = frozenset(map(chr, _STRIPPED))
_normalize = unicodedata.normalize


def normalise_reference(text: str) -> str:
    """The definition of :func:`normalise`, character by character in Python's terms."""
    text = _MARKS_BMP.sub("", _normalize("NFD", _normalize("NFKC", text).casefold()))
    if _MAY_HAVE_ASTRAL_MARKS.search(text):
        text = _MARKS_ASTRAL.sub("", text)
    return text


class _CodePage:
    """:func:`normalise_reference` for text that a single-byte code page can encode: one
    ``bytes.translate`` (~5 µs per KB instead of ~30). Characters whose normalised form is
    not one character of the page (``ß`` → ``ss``, ``…`` → ``...``) are translated to
    themselves, then replaced in the (rare) texts that have some."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        table, marks = bytearray(range(256)), bytearray(b"\x01" * 256)
        self.longer: dict[str, str] = {}
        for byte in range(256):
            try:
                char = bytes([byte]).decode(encoding)
            except UnicodeDecodeError:
                continue  # unassigned: encode() never produces it
            folded = normalise_reference(char)
            assert "&#" not in folded or char in "&#"  # see normalise(): character references
            try:
                encoded = folded.encode(encoding)
            except UnicodeEncodeError:
                encoded = b""
            if len(encoded) == 1:
                table[byte] = encoded[0]
            else:
                self.longer[char] = folded
                marks[byte] = 0
        self.table, self.marks = bytes(table), bytes(marks)

    def fold(self, raw: bytes) -> str:
        text = raw.translate(self.table).decode(self.encoding)
        if b"\x00" in raw.translate(self.marks):
            for char, folded in self.longer.items():
                if char in text:
                    text = text.replace(char, folded)
        return text


# Western European first (tried on every non-ASCII text); then Central European, Cyrillic,
# Greek, Turkish, Baltic (tried when they have the first character cp1252 lacks).
_CP1252, *_OTHER_PAGES = (_CodePage(e) for e in ("cp1252", "cp1250", "cp1251", "cp1253",
                                                 "cp1254", "cp1257"))
_PAGES_WITH: dict[str, list[_CodePage]] = {}
for _page in _OTHER_PAGES:
    for _char in bytes(range(128, 256)).decode(_page.encoding, "ignore"):
        _PAGES_WITH.setdefault(_char, []).append(_page)
_CHAR_REF = re.compile(r"&#(\d+);")
#: At most this many characters outside the chosen page go through as references.
_MAX_REFS = 16


def normalise(text: str) -> str:
    """The form both the query and the entries are compared in (see the module docs):
    :func:`normalise_reference`, computed fast. ASCII text only needs ``lower()``; text of
    one code page is translated as bytes; a few characters outside the page (emoji, say) go
    through it as ``&#N;`` references, normalised one by one; anything else (CJK, say) takes
    the reference path."""
    if text.isascii():
        return text.lower()
    try:
        return _CP1252.fold(text.encode("cp1252"))
    except UnicodeEncodeError as exc:
        pages = _PAGES_WITH.get(text[exc.start], ())
    for page in pages:
        try:
            return page.fold(text.encode(page.encoding))
        except UnicodeEncodeError:
            pass
    page = pages[0] if pages else _CP1252
    if ("&#" not in text
            and len(text) - len(text.encode(page.encoding, "ignore")) <= _MAX_REFS):
        return _CHAR_REF.sub(_fold_ref, page.fold(text.encode(page.encoding,
                                                              "xmlcharrefreplace")))
    return normalise_reference(text)


def _fold_ref(match: re.Match[str]) -> str:
    return _normalise_char(chr(int(match[1])))


#: One character's normal form (cached: for character references and snippets).
_normalise_char = lru_cache(maxsize=8192)(normalise_reference)


def parse_terms(q: str) -> list[str]:
    """The distinct normalised terms of a query (empty when it has none: e.g. blank)."""
    return list(dict.fromkeys(normalise(q).split()))


# --- snippet ---------------------------------------------------------------------------


def _first_hit(text: str, terms: list[str]) -> tuple[int, int] | None:
    hits = [(i, i + len(t)) for t in terms if (i := text.find(t)) >= 0]
    return min(hits) if hits else None


def _locate(body: str, terms: list[str]) -> tuple[int, int] | None:
    """``[start, end)`` in ``body`` of the leftmost match of any term, or None."""
    if body.isascii():  # lower() keeps every offset
        return _first_hit(body.lower(), terms)
    hit = _first_hit(normalise(body), terms)
    if hit is None:
        return None
    # Normalising character by character gives the same text (case folding and
    # decomposition are per character and every combining mark is dropped) but tells which
    # original character each normalised one came from. Only walk as far as the match;
    # should a character sequence ever normalise differently as a whole, walk everything.
    for stop in (hit[1], sys.maxsize):
        pieces: list[str] = []
        owner: list[int] = []  # owner[k]: index in body of normalised character k
        for i, ch in enumerate(body):
            if piece := _normalise_char(ch):
                pieces.append(piece)
                owner.extend([i] * len(piece))
                if len(owner) >= stop:
                    break
        found = _first_hit("".join(pieces), terms)
        if found is not None:
            start, end = owner[found[0]], owner[found[1] - 1] + 1
            while end < len(body) and body[end] in _STRIPPED_SET:  # the last char's marks
                end += 1
            return start, end
    return None


def snippet(body: str, terms: list[str], width: int = SNIPPET_CHARS) -> str:
    """~``width`` characters of ``body`` around the first match (see the module docs)."""
    n = len(body)
    hit = _locate(body, terms)
    if hit is None:
        start, end = 0, min(n, width)
        keep_from, keep_to = 0, 0
    else:
        keep_from, keep_to = hit
        if keep_to - keep_from >= width:
            start, end = keep_from, keep_to
        else:
            start = max(0, keep_from - (width - (keep_to - keep_from)) // 2)
            end = min(n, start + width)
            start = max(0, end - width)
    slack = 15
    if start > 0:  # begin after a nearby word boundary, not inside the match
        for i in range(start, min(start + slack, keep_from if hit else start + slack)):
            if body[i].isspace():
                start = i + 1
                break
        while start > 0 and body[start] in _STRIPPED_SET:
            start -= 1
    if end < n:
        for i in range(end - 1, max(end - slack, keep_to) - 1, -1):
            if body[i].isspace():
                end = i
                break
        while end < n and body[end] in _STRIPPED_SET:
            end += 1
    text = " ".join(body[start:end].split())
    return ("…" if start > 0 else "") + text + ("…" if end < n else "")


# --- the scan --------------------------------------------------------------------------


@dataclass
class SearchResult:
    entries: list[Entry] = field(default_factory=list)
    scanned: int = 0
    #: False when the deadline cut the scan short.
    complete: bool = True
    #: Where a further scan would continue (None: nothing left).
    next_position: Position | None = None


async def search_entries(pool: Pool, cipher: EntryCipher, user_id: str, terms: list[str], *,
                         limit: int, timeout_s: float, after: Position | None = None,
                         batch_size: int = BATCH_SIZE) -> SearchResult:
    """Scan ``user_id``'s entries newest first (after ``after``) for ``terms`` (from
    :func:`parse_terms`; all must match) until ``limit`` matched, the end, or ``timeout_s``."""
    result = SearchResult()
    found = result.entries
    where, params = "user_id = %s", [user_id]
    if after is not None:
        where += " AND " + AFTER
        params += [after[0], after[1]]
    query = f"SELECT {ROW_COLUMNS} FROM entries WHERE {where} {ORDER}"
    last = None
    exhausted = False
    with trio.move_on_after(timeout_s) as scope:
        dek = await cipher.data_keys.get(user_id)
        open_with = cipher.open_with
        async with pool.connection() as conn:
            cursor = conn.cursor(binary=True)
            async with aclosing(cursor.stream(query, params, size=batch_size)) as rows:
                countdown = batch_size
                async for row in rows:
                    last = row
                    content = open_with(dek, user_id, row[0], row[1])
                    result.scanned += 1
                    title = content.get("title") or ""
                    body = content["body"]
                    tags = content.get("tags") or ()
                    haystack = normalise(f"{title}\n{body}\n" + "\n".join(tags))
                    if all(term in haystack for term in terms):
                        found.append(Entry(id=row[0], title=content.get("title"), body=body,
                                           tags=list(tags), mood=content.get("mood"),
                                           occurred_at=row[2], created_at=row[3],
                                           updated_at=row[4]))
                        if len(found) >= limit:
                            break
                    countdown -= 1
                    if not countdown:
                        countdown = batch_size
                        await trio.lowlevel.checkpoint()
                else:
                    exhausted = True
    result.complete = exhausted or len(found) >= limit or not scope.cancelled_caught
    if not exhausted:
        result.next_position = (last[2], last[0]) if last is not None else (after or START)
    return result
