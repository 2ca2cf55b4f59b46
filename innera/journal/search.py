"""Search: a scan of one user's entries, newest first, decrypted and matched in the
application (the database holds only ciphertext).

Matching
    The query and each entry's title, body and tags are compared in the form
    :func:`normalise_reference` defines: Unicode NFKC, then case folding, then NFD with every
    combining mark (canonical combining class ≠ 0) and the emoji variation selectors U+FE0E /
    U+FE0F removed. So ``cafe`` finds ``Café`` and ``CAFÉ`` finds ``cafe``, ``STRASSE`` finds
    ``Straße``, ``ﬁ`` finds ``fi``, and an emoji finds itself (with or without VS16). The
    normalised query is split on whitespace into terms; an entry matches when EVERY term
    (AND) is a substring of its title, its body or one of its tags (different terms may
    match in different fields; a term never spans two fields; ``run`` finds ``running``).

Speed
    :func:`normalise` computes that form fast: ASCII text needs only ``str.lower()``; text a
    single-byte code page can encode (Western/Central European, Cyrillic, Greek, Turkish,
    Baltic), with up to 16 characters outside it such as emoji, is folded by one
    ``bytes.translate`` with a table built from the reference at import (~7 µs per KB
    instead of ~35); anything else (CJK, mixed scripts) takes the reference path. Tests check
    the two agree on every code point.

Scan
    Newest first over ``(user_id, occurred_at DESC, id DESC)``, binary results: the first
    ``BATCH_SIZE`` rows with a plain ``LIMIT`` query (a search answered by recent entries
    costs one short query and no cancellation), then the rest as one ``cursor.stream()``
    (libpq chunked mode, ``BATCH_SIZE`` rows per chunk). The data key is fetched once; rows
    are opened with the synchronous ``open_with``; timestamps are decoded only for the rows
    returned.

    The per-row work (decrypt, normalise, match) runs off the event loop, in a worker thread
    (``trio.to_thread``), in time slices of ~``SLICE_S`` (10 ms): the thread returns after
    the row that used up its slice, the task checkpoints (so the deadline is checked and
    other tasks run), then hands over the rest. Rows are handed over in buffers: the first
    batch whole (loaded with a checkpoint every ``BUFFER_BYTES``; when it is the last, its
    connection goes back to the pool before the rows are examined), then the stream's rows
    by ``BATCH_SIZE`` rows or ``BUFFER_BYTES`` of ciphertext. The threads are those of one
    process-wide :class:`trio.CapacityLimiter` (:func:`scan_limiter`: ``SCAN_THREADS``,
    created lazily per Trio run), shared by every search: concurrent scans take turns slice
    by slice. Rows of at most ``INLINE_BYTES`` of ciphertext in all (a few short entries)
    are examined on the loop instead: no thread hop (~75 µs), no wait behind other scans.

    The loop still shares the GIL with the scan thread: it gets it back within
    ``sys.getswitchinterval()`` (5 ms) or when the C call in progress ends. Long non-ASCII
    text is normalised in pieces of ``PIECE_CHARS`` characters so that no C call is long
    (whole, 100,000 × U+FDFA — 18 characters each after NFKC — hold it ~180 ms; in pieces,
    each call takes ~2.5 ms at most). One thread, not more: under the GIL a second one adds no
    throughput, and the loop then competes with both for the GIL (longer stalls).

    It stops when ``limit`` entries matched, at the end, or at the deadline (``timeout_s``,
    which also bounds getting the key, the connection and the queries), which can pass it by
    at most one slice plus one entry. Then ``complete`` is False and what was found so far is
    returned, with the position to continue from: the last row examined (rows fetched but
    not examined yet are read again by the next scan). A row that does not decrypt fails
    the search (500 ``crypto_error``, counted), as it fails a read of the entry.

    At most one search per account runs at a time in a process (``innera/api/search.py``
    answers another one 429 ``search_in_progress``).

Snippet
    Up to ~``SNIPPET_CHARS`` characters of the ORIGINAL body around the first (leftmost)
    match of any term in the body (or its start when only the title or tags matched), cut at
    word boundaries when one is near, never inside a combining sequence, whitespace runs
    collapsed to one space, ``…`` where text was cut. The match position in the normalised
    text is mapped back to the original by normalising character by character.
    :func:`snippets` computes those of a result off the loop, as the scan examines rows.
"""

from __future__ import annotations

import codecs
import re
import threading
import time
import unicodedata
from collections.abc import AsyncIterable, Callable, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import trio
from psycopg import AsyncConnection, AsyncCursor, pq
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from innera.crypto.entry_cipher import EntryCipher
from innera.db.pool import Pool
from innera.journal.entries import AFTER, ORDER, ROW_COLUMNS, START, Entry, Position

__all__ = [
    "BATCH_SIZE",
    "SCAN_THREADS",
    "SLICE_S",
    "SNIPPET_CHARS",
    "SearchResult",
    "normalise",
    "normalise_reference",
    "parse_terms",
    "scan_limiter",
    "search_entries",
    "snippet",
    "snippets",
]

T = TypeVar("T")

BATCH_SIZE = 500
SNIPPET_CHARS = 120
#: Worker threads examining rows, for all the searches of the process together.
SCAN_THREADS = 1
#: How long a worker thread examines rows before handing back to the task (which
#: checkpoints and checks the deadline); a single entry is never split.
SLICE_S = 0.010
#: Rows are handed to the thread when this much ciphertext is buffered (or BATCH_SIZE rows).
BUFFER_BYTES = 4 * 1024 * 1024
#: Rows of at most this much ciphertext in all (a few short entries) are examined on the
#: loop, not in a thread: ~0.1 ms for most text, ~1.5 ms at worst (U+FDFA, whose NFKC is 18
#: characters), less than the thread hop and the wait behind other scans' slices.
INLINE_BYTES = 2048
#: Longer non-ASCII text is normalised in pieces of this many characters, so that no single
#: C call holds the GIL (so the loop) for long: 100,000 × U+FDFA take ~180 ms in one piece.
PIECE_CHARS = 2048
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
    """The normal form (see the module docs), plainly; :func:`normalise` computes the same
    faster."""
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
        table = bytearray(range(256))
        self.longer: list[tuple[bytes, str, str]] = []
        for byte in range(256):
            try:
                char = bytes([byte]).decode(encoding)
            except UnicodeDecodeError:
                continue  # unassigned: encode() never produces it
            folded = normalise_reference(char)
            # normalise() passes characters outside the page as "&#N;": only "&" and "#"
            # themselves may give those characters.
            assert char == folded or not {"&", "#"} & set(folded), char
            try:
                encoded = folded.encode(encoding)
            except UnicodeEncodeError:
                encoded = b""
            if len(encoded) == 1:
                table[byte] = encoded[0]
            else:
                self.longer.append((bytes([byte]), char, folded))
        self.table = bytes(table)

    def fold(self, raw: bytes) -> str:
        text = raw.translate(self.table).decode(self.encoding)
        for byte, char, folded in self.longer:
            if byte in raw:
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
del _page, _char
_CHAR_REF = re.compile(r"&#(\d+);")
#: At most this many characters outside the code page go through as references.
_MAX_REFS = 16
_refs_left = threading.local()


def _refs_or_fail(exc: UnicodeError) -> tuple[str, int]:
    """Encoding error handler: a few characters no code page has (emoji, say) become
    ``&#N;``; a character another page has, or too many, fail the encoding."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    run = exc.object[exc.start:exc.end]
    left = getattr(_refs_left, "n", 0) - len(run)
    if left < 0 or run[0] in _PAGES_WITH:
        raise exc
    _refs_left.n = left  # normalise() counts the references made from it
    return "".join([f"&#{ord(c)};" for c in run]), exc.end


codecs.register_error("innera.search-refs", _refs_or_fail)


def normalise(text: str) -> str:
    """The form both the query and the entries are compared in (see the module docs):
    :func:`normalise_reference`, computed fast. ASCII text only needs ``lower()``; text of
    one code page is translated as bytes (a few characters outside every page, such as
    emoji, go through as ``&#N;`` references, normalised one by one); anything else (CJK,
    mixed scripts) takes the reference path."""
    if text.isascii():
        return text.lower()
    _refs_left.n = _MAX_REFS
    try:
        raw = text.encode("cp1252", "innera.search-refs")
    except UnicodeEncodeError as exc:
        for page in _PAGES_WITH.get(text[exc.start], ()):
            _refs_left.n = _MAX_REFS
            try:
                raw = text.encode(page.encoding, "innera.search-refs")
            except UnicodeEncodeError:
                continue
            return _fold(page, raw, text)
        return normalise_reference(text)
    return _fold(_CP1252, raw, text)


def _normalise_pieces(text: str, piece: int = PIECE_CHARS) -> str:
    """:func:`normalise`, piece by piece for long non-ASCII text (the normal form of a text is
    the concatenation of its characters', as tests check), so that each C call is short."""
    if len(text) <= piece or text.isascii():
        return normalise(text)
    return "".join([normalise(text[i:i + piece]) for i in range(0, len(text), piece)])


def _fold(page: _CodePage, raw: bytes, text: str) -> str:
    if len(raw) == len(text):
        return page.fold(raw)
    if raw.count(b"&#") != _MAX_REFS - _refs_left.n:  # the text has "&#" of its own
        return normalise_reference(text)
    return _CHAR_REF.sub(_fold_ref, page.fold(raw))


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


_WALK_CHUNK = 1024


def _covering(body: str, offset: int, i: int = 0, pos: int = 0) -> tuple[int, int]:
    """``(index, its offset)``: the character of ``body`` whose normal form covers
    ``offset`` in ``normalise(body)``, and where its normal form starts; walking from
    ``body[i]``, whose normal form starts at ``pos``. The normal form of a text is the
    concatenation of its characters' (case folding and decomposition work per character and
    every combining mark is dropped), so whole chunks are skipped by their length."""
    n = len(body)
    while i < n:
        j = min(n, i + _WALK_CHUNK)
        width = len(normalise(body[i:j]))
        if pos + width > offset:
            break
        pos, i = pos + width, j
    while i < n:
        width = len(_normalise_char(body[i]))
        if pos + width > offset:
            return i, pos
        pos, i = pos + width, i + 1
    raise ValueError("offset beyond the text")


def _locate(body: str, terms: list[str]) -> tuple[int, int] | None:
    """``[start, end)`` in ``body`` of the leftmost match of any term, or None."""
    if body.isascii():  # lower() keeps every offset
        return _first_hit(body.lower(), terms)
    hit = _first_hit(_normalise_pieces(body), terms)
    if hit is None:
        return None
    try:
        start, pos = _covering(body, hit[0])
        last, _ = _covering(body, hit[1] - 1, start, pos)
    except ValueError:  # cannot happen if the normal form is per character, as tested
        return None
    end = last + 1
    while end < len(body) and body[end] in _STRIPPED_SET:  # the last character's marks
        end += 1
    return start, end


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


class _RawTimestamptz(Loader):
    """Leaves binary ``timestamptz`` values undecoded: the scan decodes the few it returns."""

    format = pq.Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _timestamp(raw: bytes) -> datetime:
    """A binary ``timestamptz``: microseconds since 2000-01-01 UTC (big-endian int64)."""
    return _PG_EPOCH + timedelta(microseconds=int.from_bytes(raw, "big", signed=True))


class _Scan:
    """The per-row work of a search (synchronous: run in a worker thread, see
    :func:`_examine`)."""

    def __init__(self, cipher: EntryCipher, dek: bytes, user_id: str, terms: list[str],
                 limit: int) -> None:
        self.open = cipher.open_with
        self.dek, self.user_id, self.terms, self.limit = dek, user_id, terms, limit
        self.found: list[Entry] = []
        self.scanned = 0
        self.last: Any = None  # the last row examined

    def take(self, row: Any) -> bool:
        """Examine one row; True when ``limit`` entries matched."""
        self.last = row
        content = self.open(self.dek, self.user_id, row[0], row[1])
        self.scanned += 1
        text = content["body"]
        title = content.get("title")
        tags = content.get("tags")
        if title:
            text = f"{title}\n{text}"
        if tags:
            text = text + "\n" + "\n".join(tags)
        haystack = _normalise_pieces(text)
        for term in self.terms:
            if term not in haystack:
                return False
        self.found.append(Entry(
            id=row[0], title=title, body=content["body"], tags=list(tags or ()),
            mood=content.get("mood"), occurred_at=_timestamp(row[2]),
            created_at=_timestamp(row[3]), updated_at=_timestamp(row[4])))
        return len(self.found) >= self.limit

    def position(self) -> Position | None:
        return None if self.last is None else (_timestamp(self.last[2]), self.last[0])


_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "innera.search.scan_limiter")


def scan_limiter() -> trio.CapacityLimiter:
    """The worker threads of every scan of this Trio run (``SCAN_THREADS``), made on first
    use."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(SCAN_THREADS)
        _LIMITER.set(limiter)
        return limiter


def _run_for(step: Callable[[T], bool], items: Sequence[T], start: int, budget_s: float
             ) -> tuple[int, bool]:
    """``step`` over ``items[start:]`` until it returns True or ``budget_s`` passed (wall
    clock: the item that crosses it is finished). Returns where to continue and whether
    ``step`` returned True."""
    stop_at = time.perf_counter() + budget_s
    for i in range(start, len(items)):
        if step(items[i]):
            return i + 1, True
        if time.perf_counter() >= stop_at:
            return i + 1, False
    return len(items), False


async def _off_loop(step: Callable[[T], bool], items: Sequence[T], *, inline: bool,
                    limiter: trio.CapacityLimiter) -> bool:
    """``step`` over ``items`` until it returns True (then True): in slices of ``SLICE_S`` in
    a worker thread of ``limiter``, checkpointing between them (a cancellation takes effect
    after the slice, so ``step`` has seen exactly the items before it); on the loop when
    ``inline``."""
    if inline:
        for item in items:
            if step(item):
                return True
        await trio.lowlevel.checkpoint()
        return False
    i = 0
    while i < len(items):
        # Not abandoned on cancel: the slice finishes, then the checkpoint raises.
        i, done = await trio.to_thread.run_sync(_run_for, step, items, i, SLICE_S,
                                                limiter=limiter)
        if done:
            return True
        await trio.lowlevel.checkpoint()
    return False


async def _examine(scan: _Scan, rows: Sequence[Any], limiter: trio.CapacityLimiter) -> bool:
    """Examine ``rows`` in order (see :func:`_off_loop`); True when ``limit`` matched."""
    inline = sum(len(row[1]) for row in rows) <= INLINE_BYTES
    return await _off_loop(scan.take, rows, inline=inline, limiter=limiter)


async def snippets(bodies: Sequence[str], terms: list[str],
                   limiter: trio.CapacityLimiter | None = None) -> list[str]:
    """:func:`snippet` of each body, off the loop as the scan (see the module docs)."""
    out: list[str] = []

    def one(body: str) -> bool:
        out.append(snippet(body, terms))
        return False

    # a character is at most 4 bytes
    inline = 4 * sum(len(body) for body in bodies) <= INLINE_BYTES
    await _off_loop(one, bodies, inline=inline, limiter=limiter or scan_limiter())
    return out


async def _load(cursor: AsyncCursor[Any]) -> list[Any]:
    """The rows of the result, loaded (copied) with a checkpoint every ``BUFFER_BYTES``."""
    rows: list[Any] = []
    size = 0
    async for row in cursor:
        rows.append(row)
        size += len(row[1])
        if size >= BUFFER_BYTES:
            size = 0
            await trio.lowlevel.checkpoint()
    return rows


async def _examine_stream(scan: _Scan, rows: AsyncIterable[Any], batch_size: int,
                          limiter: trio.CapacityLimiter) -> bool:
    """Read ``rows`` to the end, examining them in buffers of up to ``batch_size`` rows or
    ``BUFFER_BYTES``; True when ``limit`` matched."""
    buffer: list[Any] = []
    size = 0
    async for row in rows:
        buffer.append(row)
        size += len(row[1])
        if len(buffer) >= batch_size or size >= BUFFER_BYTES:
            if await _examine(scan, buffer, limiter):
                return True
            buffer, size = [], 0
    return bool(buffer) and await _examine(scan, buffer, limiter)


async def search_entries(pool: Pool, cipher: EntryCipher, user_id: str, terms: list[str], *,
                         limit: int, timeout_s: float, after: Position | None = None,
                         batch_size: int = BATCH_SIZE,
                         limiter: trio.CapacityLimiter | None = None) -> SearchResult:
    """Scan ``user_id``'s entries newest first (after ``after``) for ``terms`` (from
    :func:`parse_terms`; all must match) until ``limit`` matched, the end, or ``timeout_s``.

    The first batch is a plain ``LIMIT`` query, so that a search answered by the newest
    entries costs one short query; the rest is one ``stream()`` in chunks of ``batch_size``
    (stopping it early costs a server-side cancel, a few ms). Rows are examined in worker
    threads of ``limiter`` (default: :func:`scan_limiter`) in time slices (see the module
    docs).
    """
    limiter = limiter or scan_limiter()
    scan = _Scan(cipher, b"", user_id, terms, limit)
    exhausted = False
    with trio.move_on_after(timeout_s) as deadline:
        scan.dek = await cipher.data_keys.get(user_id)
        async with AsyncExitStack() as lease:
            conn = await lease.enter_async_context(pool.connection())
            async with _cursor(conn) as cursor:
                await cursor.execute(_query(after, limit=True),
                                     _params(user_id, after, batch_size), name="search.first_batch")
                rows = await _load(cursor)
            more = len(rows) == batch_size
            if not more:  # the connection goes back to the pool while the rows are examined
                await lease.aclose()
            done = await _examine(scan, rows, limiter)
            if more and not done:
                del rows
                after = scan.position()
                async with _cursor(conn) as cursor:
                    stream = cursor.stream(_query(after), _params(user_id, after),
                                           size=batch_size, name="search.scan")
                    async with aclosing(stream) as rows_left:
                        done = await _examine_stream(scan, rows_left, batch_size, limiter)
        exhausted = not done
    result = SearchResult(entries=scan.found, scanned=scan.scanned)
    result.complete = exhausted or len(scan.found) >= limit or not deadline.cancelled_caught
    if not exhausted:
        result.next_position = scan.position() or after or START
    return result


def _cursor(conn: AsyncConnection[Any]) -> AsyncCursor[Any]:
    cursor = conn.cursor(binary=True)
    cursor.adapters.register_loader("timestamptz", _RawTimestamptz)
    return cursor


def _query(after: Position | None, *, limit: bool = False) -> str:
    where = "user_id = %s" + (" AND " + AFTER if after is not None else "")
    return (f"SELECT {ROW_COLUMNS} FROM entries WHERE {where} {ORDER}"
            + (" LIMIT %s" if limit else ""))


def _params(user_id: str, after: Position | None, limit: int | None = None) -> list[Any]:
    params: list[Any] = [user_id]
    if after is not None:
        params += [after[0], after[1]]
    if limit is not None:
        params.append(limit)
    return params
