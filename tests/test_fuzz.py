"""Fuzzing the hostile-input surfaces with Hypothesis (issue "Hostile input"): the import
parsers, cursor decoding, request-body parsing and WebSocket messages. Every property is one
a user would notice: a clear error code for anything refused, never a crash (a 5xx, a dead
parser child, a closed socket), and nothing accepted that the entries API would refuse.

In the suite every property runs a bounded number of examples, derandomized (the same
examples on every run). ``scripts/fuzz`` runs the same properties with many more random
examples: ``INNERA_FUZZ_EXAMPLES`` set means "fuzz mode" (that many examples per property,
random seeds).

Two live tests post generated bodies to a real server and send generated messages over a
real ``/v1/ws`` socket, once per HTTP server implementation.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import string
import uuid
import zipfile
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from wsproto.events import BytesMessage

from innera import json_input
from innera.api import ws
from innera.api.entries import LIST_PURPOSE
from innera.api.operation import parse_json
from innera.api.search import SEARCH_PURPOSE
from innera.errors import AppError, InvalidJson
from innera.exports import CURSOR_PURPOSE as EXPORTS_PURPOSE
from innera.journal.rules import ALLOWED_CONTENT_TYPES, BODY_MAX, TITLE_MAX, EntryIn
from innera.notifications.inbox import CURSOR_PURPOSE as NOTIFICATIONS_PURPOSE
from innera.pagination import CursorCodec, InvalidCursor
from tests.fixtures.accounts import signup
from tests.fixtures.server import RunningServer
from tests.fixtures.ws import WsClient
from tests.test_http import assert_error
from tests.test_realtime import connect, receive_json
from workers.dayone import TEXT_MAX, heading, parse_dayone, split_title
from workers.import_format import (
    FILENAME_MAX,
    INNERA_JSON,
    SOURCE_ID_MAX,
    BadImportFile,
    ImportEntry,
    Limits,
    parse_innera_export,
)
from workers.import_parse import Parsed, _encode, _write, parse_upload

T = TypeVar("T")

#: set: fuzz mode (``scripts/fuzz``), that many examples per property, random seeds
FUZZ_EXAMPLES = int(os.environ.get("INNERA_FUZZ_EXAMPLES", "0") or 0)
FUZZ = FUZZ_EXAMPLES > 0

pytestmark = pytest.mark.timeout(0 if FUZZ else 120)


def fuzz(examples: int) -> settings:
    """A property's settings: ``examples`` derandomized in the suite, else
    INNERA_FUZZ_EXAMPLES with random seeds."""
    return settings(max_examples=FUZZ_EXAMPLES or examples, deadline=None,
                    derandomize=not FUZZ, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example,
                                           HealthCheck.filter_too_much])


def collect(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` values of ``strategy`` (fewer if it has fewer), for the live tests: a
    ``@given`` test cannot be async, so the values are drawn up front."""
    values: list[T] = []

    @settings(fuzz(count), max_examples=count, phases=[Phase.generate])
    @given(strategy)
    def draw(value: T) -> None:
        values.append(value)

    draw()
    return values


# --- generic strategies ----------------------------------------------------------------

#: any text, some with lone surrogates (JSON's "\ud800" escapes make them)
texts = st.text(max_size=20) | st.tuples(
    st.text(max_size=3), st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
    st.text(max_size=3)).map("".join)
json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | texts)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children,
                                                                      max_size=4),
    max_leaves=20)


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> bytes:
    """A JSON value as a document's bytes: ASCII or not, sometimes with a BOM."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    return bom + text.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8


def documents(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return values.flatmap(encoded)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base``'s bytes with a few random edits (flipped, inserted, deleted bytes, a cut)."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
                [b"[", b"{", b"]", b"}", b'"', b",", b":", b"\\", b"\\u", b"\xff"]))
        elif not data:
            continue
        elif op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


def json_depth(value: Any) -> int:
    """How many lists and dicts deep ``value`` nests (a scalar: 0; iterative)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list | dict):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1)
                         for child in (node.values() if isinstance(node, dict) else node))
    return deepest


@st.composite
def nested(draw: st.DrawFn) -> Any:
    """A JSON value wrapped in 0..90 more lists and objects: around the depth limit."""
    value = draw(json_values)
    for kind in draw(st.integers(0, 90).flatmap(
            lambda n: st.lists(st.sampled_from("[{"), min_size=n, max_size=n))):
        value = [value] if kind == "[" else {draw(st.sampled_from(["", "a", "type"])): value}
    return value


json_like_bytes = st.text(alphabet='[]{}",:0123456789.eE+- \\utrfalsnNIy\n', max_size=60
                          ).map(str.encode)
any_bytes = (st.binary(max_size=300) | json_like_bytes
             | mutated(documents(json_values | nested()))
             | st.tuples(st.sampled_from([b"", b"{", b"[", b"\xef\xbb\xbf", b"\xff\xfe",
                                          b"\x00\x00\xfe\xff", b'"']),
                         st.binary(max_size=100)).map(b"".join))


# --- 1. the import parsers ---------------------------------------------------------------

LIMITS = Limits(max_bytes=200_000, attachment_max_bytes=50_000, max_entries=50,
                max_attachments=20)
IMPORT_CODES = {"invalid_import_file", "import_too_large", "too_many_entries",
                "too_many_attachments", "entry_too_large", "too_deep"}

dates = (st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                      timezones=st.just(UTC)).map(lambda d: d.isoformat())
         | st.sampled_from(["2024-01-02T03:04:05Z", "2024-01-02T03:04:05.123456789+02:00",
                            "2024-01-02T03:04Z", "2024-02-30T00:00:00Z",
                            "2024-01-01T24:00:00Z", "0001-01-01T00:00:00+01:00",
                            "9999-12-31T23:59:59-01:00", "2024-01-01T00:00:00+24:00",
                            "2024-01-02", "2024-01-02T03:04:05", ""])
         | json_scalars)
heading_lines = st.text(alphabet="# \t\\.*_a\r\xa0", max_size=30)
entry_texts = (texts
               | st.tuples(heading_lines, st.sampled_from(["\n", "\r\n", "\n\n"]), texts
                           ).map("".join)
               | st.sampled_from([BODY_MAX, BODY_MAX + 1, TEXT_MAX, TEXT_MAX + 1]).map(
                   lambda n: "# A title\n" + "x" * (n - len("# A title\n")))
               | st.sampled_from([BODY_MAX, BODY_MAX + 1]).map(lambda n: "x" * n))
tag_lists = (st.lists(st.text(max_size=55) | st.sampled_from([" a ", "a", "A", ""]),
                      max_size=22) | json_values)
ids = (texts | st.sampled_from(["abc", " padded ", "   ", ""])
       | st.sampled_from([SOURCE_ID_MAX, SOURCE_ID_MAX + 1]).map(lambda n: "i" * n))


def field_or_any(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value of a field, sometimes any JSON value."""
    return strategy | strategy | json_values


def near_valid(valid: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]
               ) -> st.SearchStrategy[dict[str, Any]]:
    """``valid`` with one or two of ``fields`` drawn (or dropped): deep into the accepting
    paths, where a value that slips through matters."""
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        value = dict(valid)
        for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2,
                                  unique=True)):
            if draw(st.integers(0, 9)) == 0:
                value.pop(name, None)
            else:
                value[name] = draw(fields[name])
        return value
    return build()


DAYONE_ENTRY = {"uuid": "0F1E2D3C", "text": "# A walk\nBy the river",
                "creationDate": "2024-01-02T03:04:05Z", "tags": ["outside"]}
dayone_fields = {"uuid": ids, "text": entry_texts, "creationDate": dates, "tags": tag_lists}
dayone_entries = (st.fixed_dictionaries(
    {name: field_or_any(strategy) for name, strategy in dayone_fields.items()
     if name != "tags"},
    optional={"tags": field_or_any(tag_lists), "starred": st.booleans(), "richText": texts})
    | near_valid(DAYONE_ENTRY, dayone_fields) | json_values)
dayone_docs = st.fixed_dictionaries(
    {"entries": st.lists(dayone_entries, max_size=6)
     | st.integers(LIMITS.max_entries - 1, LIMITS.max_entries + 1).map(
         lambda n: [{**DAYONE_ENTRY, "uuid": str(i)} for i in range(n)])},
    optional={"metadata": json_values})

ATTACHMENT_NAMES = ["attachments/a.jpg", "attachments/b.png", "c.pdf"]


def innera_docs(sizes: dict[str, int]) -> st.SearchStrategy[Any]:
    """Docs shaped like ``innera-export.json``, their attachments referring to the members
    ``sizes`` names (and to others), with right and wrong sizes."""
    path = next(iter(sizes), "attachments/a.jpg")
    valid_attachment = {"filename": "a.jpg", "contentType": "image/jpeg",
                        "size": sizes.get(path, 1), "path": path}
    attachment_fields = {
        "filename": st.sampled_from(["a.jpg", " "]) | texts
        | st.just(FILENAME_MAX + 1).map(lambda n: "f" * n),
        "contentType": st.sampled_from(sorted(ALLOWED_CONTENT_TYPES))
        | st.sampled_from([" IMAGE/PNG ", "text/html"]),
        "size": st.sampled_from([*sizes.values(), 0, 1, LIMITS.attachment_max_bytes + 1])
        | st.integers(),
        "path": st.sampled_from([*sizes, "missing.jpg"])}
    attachment = (st.fixed_dictionaries({name: field_or_any(strategy)
                                         for name, strategy in attachment_fields.items()})
                  | near_valid(valid_attachment, attachment_fields))
    fields = {
        "id": ids, "body": entry_texts, "occurredAt": dates,
        "title": texts | st.just(TITLE_MAX + 1).map(lambda n: "t" * n),
        "tags": tag_lists, "mood": texts | st.sampled_from([" calm ", "m" * 33]),
        "attachments": st.lists(attachment, max_size=3)
        | st.integers(1, 25).map(lambda n: [valid_attachment] * n),
        "extra": json_values}
    required = ("id", "body", "occurredAt")
    entry = (st.fixed_dictionaries(
        {name: field_or_any(fields[name]) for name in required},
        optional={name: field_or_any(strategy) for name, strategy in fields.items()
                  if name not in required})
        | near_valid({"id": "e1", "title": None, "body": "Text", "tags": [], "mood": None,
                      "occurredAt": "2024-01-02T03:04:05Z",
                      "attachments": [valid_attachment] if sizes else []}, fields)
        | json_values)
    return st.fixed_dictionaries(
        {"format": field_or_any(st.just("innera-export")),
         "version": field_or_any(st.just(1)),
         "entries": field_or_any(st.lists(entry, max_size=5))},
        optional={"exportedAt": dates})


SIZES = {"attachments/a.jpg": 10, "attachments/b.png": 20_000, "c.pdf": 1}
METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
member_names = (st.sampled_from([INNERA_JSON, "Journal.json", "Other.JSON", "dir/",
                                 "sub/Journal.json", *ATTACHMENT_NAMES])
                | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                          max_size=12))


@st.composite
def zips(draw: st.DrawFn) -> bytes:
    """A zip of random members (attachment blobs, an innera export or Day One journals,
    other JSON, junk), each compressed its own way, then perhaps damaged."""
    members: dict[str, bytes] = dict(draw(st.dictionaries(
        st.sampled_from(ATTACHMENT_NAMES) | member_names, st.binary(max_size=300),
        max_size=3)))
    kind = draw(st.sampled_from(["innera", "dayone", "json", "junk"]))
    if kind == "innera":
        sizes = {name: len(data) for name, data in members.items()}
        members[INNERA_JSON] = draw(documents(innera_docs(sizes)))
    elif kind == "dayone":
        for name in draw(st.lists(st.sampled_from(["Journal.json", "Travel.json", "b.JSON"]),
                                  min_size=1, max_size=3, unique=True)):
            members[name] = draw(documents(dayone_docs))
    else:
        name = draw(st.sampled_from([INNERA_JSON, "Journal.json"]) | member_names)
        members[name] = draw(documents(json_values | nested()) if kind == "json"
                             else st.binary(max_size=200))
    buffer = io.BytesIO()
    buffer.write(draw(st.sampled_from([b"", b"", b"#!/bin/sh\nexit 0\n"])))
    with zipfile.ZipFile(buffer, "a" if buffer.tell() else "w") as archive:
        for name, data in members.items():
            archive.writestr(name, b"" if name.endswith("/") else data,
                             compress_type=draw(st.sampled_from(METHODS)))
    data = bytearray(buffer.getvalue())
    for position, mask in draw(st.lists(st.tuples(st.integers(0, len(data) - 1),
                                                   st.integers(1, 255)), max_size=3)):
        data[position] ^= mask
    if draw(st.integers(0, 9)) == 0:
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


uploads = (any_bytes | documents(json_values | nested()) | documents(dayone_docs)
           | documents(innera_docs({})) | zips())


def check_writable(entry: ImportEntry) -> None:
    """The parsing child can write the entry out (its output is UTF-8 JSON lines: a lone
    surrogate, which JSON's "\\ud800" escapes give, would crash it)."""
    _write(io.BytesIO(), _encode(entry))


def check_entries(entries: list[ImportEntry], source: str,
                  members: dict[str, int] | None) -> None:
    """Every entry is one the entries API would store, and the whole is within the limits."""
    assert len(entries) <= LIMITS.max_entries
    references = [a for entry in entries for a in entry.attachments]
    assert len(references) <= LIMITS.max_attachments
    assert sum(a.size for a in references) <= LIMITS.max_expanded
    for entry in entries:
        assert entry.source == source
        assert entry.source_id == entry.source_id.strip()
        assert 0 < len(entry.source_id) <= SOURCE_ID_MAX
        assert entry.occurred_at.utcoffset() is not None
        fields = {"title": entry.title, "body": entry.body, "tags": entry.tags,
                  "mood": entry.mood, "occurredAt": entry.occurred_at.isoformat()}
        valid = EntryIn.model_validate(fields)  # the API's own rules
        assert (valid.title, valid.body, valid.tags, valid.mood, valid.occurredAt) == (
            entry.title, entry.body, entry.tags, entry.mood, entry.occurred_at)
        assert len(entry.body) <= BODY_MAX
        if source == "dayone":
            assert entry.mood is None and not entry.attachments
        for attachment in entry.attachments:
            assert members is not None and members[attachment.member] == attachment.size
            assert attachment.content_type in ALLOWED_CONTENT_TYPES
            assert 1 <= attachment.size <= LIMITS.attachment_max_bytes
            assert attachment.filename.strip() and len(attachment.filename) <= FILENAME_MAX
        check_writable(entry)


def refused_clearly(exc: BadImportFile) -> None:
    assert exc.code in IMPORT_CODES, exc.code
    assert str(exc)


def zip_members(data: bytes) -> dict[str, int] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {i.filename: i.file_size for i in archive.infolist()}
    except Exception:  # not a zip: no attachments can be accepted
        return None


def check_upload(data: bytes) -> None:
    try:
        parsed = parse_upload(io.BytesIO(data), LIMITS)
    except BadImportFile as exc:
        refused_clearly(exc)
        return
    assert isinstance(parsed, Parsed)
    assert parsed.format in ("innera", "dayone")
    check_entries(parsed.entries, parsed.format, zip_members(data))


@fuzz(400)
@given(uploads)
def test_any_upload_gives_valid_entries_or_a_clear_import_error(data: bytes) -> None:
    check_upload(data)


@fuzz(150)
@given(zips())
def test_any_zip_gives_valid_entries_or_a_clear_import_error(data: bytes) -> None:
    check_upload(data)


@fuzz(150)
@given(dayone_docs | json_values)
def test_day_one_journals_give_valid_entries_or_name_the_problem(doc: Any) -> None:
    try:
        entries = parse_dayone(doc, prefix="Journal.json", max_entries=LIMITS.max_entries)
    except BadImportFile as exc:
        refused_clearly(exc)
        assert str(exc).startswith("Journal.json: ")
        return
    check_entries(entries, "dayone", None)


@fuzz(150)
@given(innera_docs(SIZES) | json_values, st.sampled_from([SIZES, None]))
def test_innera_exports_give_valid_entries_or_name_the_problem(
        doc: Any, members: dict[str, int] | None) -> None:
    try:
        entries = parse_innera_export(doc, members, prefix=INNERA_JSON, limits=LIMITS)
    except BadImportFile as exc:
        refused_clearly(exc)
        assert str(exc).startswith(f"{INNERA_JSON}: ")
        return
    check_entries(entries, "innera", members)


_OLD_HEADING = re.compile(r"#[ \t]+(?P<title>\S.*?)(?:[ \t]+#+)?[ \t]*")


@fuzz(300)
@given(st.text(alphabet="# \ta#b\r", max_size=30)
       | st.text(alphabet="# \t\\a\xa0\x0b\u2003", max_size=30))
def test_heading_agrees_with_the_pattern_it_replaced(line: str) -> None:
    match = _OLD_HEADING.fullmatch(line)  # quadratic, but the lines are short
    assert heading(line) == (match["title"] if match else None)


@fuzz(200)
@given(entry_texts | st.text(alphabet="# \t\\.a\r\n", max_size=40))
def test_split_title_keeps_the_text(text: str) -> None:
    title, body = split_title(text)
    if title is None:
        assert body == text
        return
    assert text.endswith(body) and body.strip()
    assert title == title.strip() and 0 < len(title) <= TITLE_MAX
    assert "\n" not in title and text.startswith("#")


def test_a_lone_surrogate_in_an_id_fails_the_file() -> None:
    """What the fuzzing found: an id holding a lone surrogate passed the parser, and the
    parsing child crashed writing the entry out."""
    journal = (b'{"entries": [{"uuid": "\\ud800", "text": "Hello",'
               b' "creationDate": "2024-01-02T03:04:05Z"}]}')
    with pytest.raises(BadImportFile) as caught:
        parse_upload(io.BytesIO(journal), LIMITS)
    assert caught.value.code == "invalid_import_file"
    assert "entries[0]" in str(caught.value)


# --- 2. cursors --------------------------------------------------------------------------

CODEC = CursorCodec(bytes(range(32)))
PURPOSES = [LIST_PURPOSE, SEARCH_PURPOSE, NOTIFICATIONS_PURPOSE, EXPORTS_PURPOSE]
USERS = [str(uuid.UUID(int=i)) for i in (1, 2)]
positions = st.tuples(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(UTC)),
    st.uuids().map(str))
_B64URL = string.ascii_letters + string.digits + "-_"


def refused_cursor(purpose: str, user_id: str, cursor: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        CODEC.decode(purpose, user_id, cursor)
    assert isinstance(caught.value, AppError)
    assert (caught.value.status, caught.value.code) == (400, "invalid_cursor")


@fuzz(200)
@given(st.sampled_from(PURPOSES), st.sampled_from(USERS), positions)
def test_a_cursor_round_trips(purpose: str, user_id: str, position: tuple[datetime, str]
                              ) -> None:
    cursor = CODEC.encode(purpose, user_id, position)
    assert set(cursor) <= set(_B64URL) and len(cursor) == 54  # 40 bytes, no padding
    assert CODEC.decode(purpose, user_id, cursor) == position


@fuzz(300)
@given(st.sampled_from(PURPOSES), st.sampled_from(USERS),
       st.text(max_size=80) | st.text(alphabet=_B64URL + "+/=", min_size=60, max_size=68))
def test_any_text_is_not_a_cursor(purpose: str, user_id: str, text: str) -> None:
    refused_cursor(purpose, user_id, text)


@st.composite
def mutation(draw: st.DrawFn, cursor: str) -> str:
    chars = list(cursor)
    other = st.sampled_from(list(_B64URL + "+/=. \n\xe9\x00"))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "cut", "append", "swap",
                                   "case"]))
        i = draw(st.integers(0, max(len(chars) - 1, 0)))
        if op == "insert" or not chars:
            chars.insert(i, draw(other))
        elif op == "replace":
            chars[i] = draw(other)
        elif op == "delete":
            del chars[i]
        elif op == "cut":
            del chars[i:]
        elif op == "append":
            chars.extend(draw(st.lists(other, min_size=1, max_size=4)))
        elif op == "swap":
            j = draw(st.integers(0, len(chars) - 1))
            chars[i], chars[j] = chars[j], chars[i]
        else:
            chars[i] = chars[i].swapcase()
    return "".join(chars)


@fuzz(400)
@given(st.data(), st.sampled_from(PURPOSES), st.sampled_from(USERS), positions)
def test_a_cursor_opens_only_as_issued(data: st.DataObject, purpose: str, user_id: str,
                                       position: tuple[datetime, str]) -> None:
    cursor = CODEC.encode(purpose, user_id, position)
    for other_purpose in PURPOSES:  # another list's cursor, another user's
        for other_user in USERS:
            if (other_purpose, other_user) != (purpose, user_id):
                refused_cursor(other_purpose, other_user, cursor)
    changed = data.draw(mutation(cursor))
    try:
        decoded = CODEC.decode(purpose, user_id, changed)
    except InvalidCursor as exc:
        assert (exc.status, exc.code) == (400, "invalid_cursor")
        assert changed != cursor
        return
    # only the cursor as issued: not its standard base64 spelling ("+/"), nor with "="
    # padding, other unused trailing bits or junk after the padding
    assert (changed, decoded) == (cursor, position)


@fuzz(200)
@given(st.sampled_from(PURPOSES), st.binary(min_size=24, max_size=24))
def test_a_signed_but_impossible_position_is_refused(purpose: str, payload: bytes) -> None:
    """Only the server can sign, but an out-of-range timestamp is still a 400, not a 500."""
    token = payload + CODEC._tag(purpose, USERS[0], payload)
    cursor = base64.urlsafe_b64encode(token).rstrip(b"=").decode()
    try:
        timestamp, item_id = CODEC.decode(purpose, USERS[0], cursor)
    except InvalidCursor:
        return
    assert timestamp.tzinfo is not None and uuid.UUID(item_id).bytes == payload[8:]


# --- 3. request bodies -------------------------------------------------------------------


def same_json(a: Any, b: Any) -> bool:
    return json.dumps(a) == json.dumps(b)  # NaN == NaN here


@fuzz(400)
@given(any_bytes | documents(nested()))
def test_any_body_parses_within_the_depth_limit_or_is_invalid_json(data: bytes) -> None:
    try:
        value = json_input.loads(data)
    except json_input.InvalidJsonInput as exc:
        assert str(exc)
        with pytest.raises(InvalidJson) as caught:
            parse_json(data)
        assert (caught.value.status, caught.value.code) == (400, "invalid_json")
        if isinstance(exc, json_input.JsonTooDeep):
            assert "64 levels deep" in caught.value.message
        return
    assert json_depth(value) <= json_input.MAX_DEPTH
    if json_input.lone_surrogate(data, value):  # JSON, but no text of the API
        with pytest.raises(InvalidJson, match="unpaired surrogate"):
            parse_json(data)
        return
    assert same_json(parse_json(data), value)


@fuzz(200)
@given(st.text(st.characters(codec="utf-8")), st.integers(0xD800, 0xDFFF), st.booleans())
def test_a_body_escaping_half_a_surrogate_pair_is_invalid_json(
        text: str, surrogate: int, as_key: bool) -> None:
    """Such a string reached the entry cipher (UTF-8) and PostgreSQL, and failed there (500)."""
    escaped = json.dumps(text)[1:-1] + f"\\u{surrogate:04x}"
    string = f'"{escaped}"'
    raw = (f"{{{string}: 1}}" if as_key else f'{{"body": {string}}}').encode()
    with pytest.raises(InvalidJson, match="unpaired surrogate") as caught:
        parse_json(raw)
    assert (caught.value.status, caught.value.code) == (400, "invalid_json")
    pair = json.dumps("\U0001F600")  # an escaped pair is one character, and fine
    assert parse_json(b'{"body": %s}' % pair.encode()) == {"body": "\U0001F600"}


@fuzz(300)
@given(nested() | json_values, st.booleans())
def test_a_document_parses_as_json_does_up_to_64_deep(value: Any, as_bytes: bool) -> None:
    text = json.dumps(value)
    data: str | bytes = text.encode() if as_bytes else text
    if json_depth(value) <= json_input.MAX_DEPTH:
        assert json_input.loads(data) == json.loads(text)
    else:
        with pytest.raises(json_input.JsonTooDeep):
            json_input.loads(data)
        with pytest.raises(InvalidJson):
            parse_json(text.encode())


@pytest.mark.parametrize("depth", [1, 30, 32, 33, 60, 63, 64, 65, 66, 70, 500, 999, 1000,
                                   3000, 200_000])
@pytest.mark.parametrize("open_, close, inner", [("[", "]", ""), ('{"a":', "}", "1"),
                                                 ('[{"":', "}]", "[]")])
def test_deep_documents(depth: int, open_: str, close: str, inner: str) -> None:
    """Built, not drawn: the depths right around the limit, and far past it."""
    text = open_ * depth + inner + close * depth
    levels = (open_.count("[") + open_.count("{")) * depth + inner.count("[")
    if levels <= json_input.MAX_DEPTH:
        assert json_input.loads(text) == json.loads(text)
        return
    with pytest.raises(json_input.JsonTooDeep):
        json_input.loads(text)
    with pytest.raises(json_input.JsonTooDeep):  # unclosed: too deep before it is invalid
        json_input.loads(open_ * max(depth, 5000))
    with pytest.raises(InvalidJson):
        parse_json(text.encode())


# --- 4. WebSocket messages ---------------------------------------------------------------

ws_documents = documents(nested() | json_values | st.fixed_dictionaries(
    {"type": st.sampled_from(["ping", "pong", "Ping", "", "dance"]) | json_values},
    optional={"data": json_values}))
#: text frames (always UTF-8), binary frames (anything)
ws_texts = st.text(max_size=80) | ws_documents.map(lambda b: b.decode("utf-8", "replace"))
ws_messages = ws_texts | ws_documents | any_bytes


def expected_reply(message: str | bytes) -> tuple[str, str] | None:
    """What ``message`` must get: ("pong"/"error", code), or None for no reply."""
    try:
        parsed = json_input.loads(message)
    except json_input.InvalidJsonInput:
        return ("error", "invalid_json")
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if kind == "ping":
        return ("pong", "")
    if kind == "pong":
        return None
    return ("error", "unknown_type")


def reply_kind(reply: str | None) -> tuple[str, str] | None:
    if reply is None:
        return None
    assert reply.isascii()  # always sendable as a text frame
    return classify(json.loads(reply))


def classify(message: Any) -> tuple[str, str]:
    """("pong", "") or ("error", code) for a reply in the documented shape."""
    if message == {"type": "pong"}:
        return ("pong", "")
    assert set(message) == {"type", "data"} and message["type"] == "error"
    assert set(message["data"]) == {"code", "message"}
    assert isinstance(message["data"]["message"], str) and message["data"]["message"]
    return ("error", message["data"]["code"])


@fuzz(400)
@given(ws_messages | ws_texts.map(str.encode))
def test_any_websocket_message_gets_a_clear_answer(message: str | bytes) -> None:
    assert reply_kind(ws._answer(message)) == expected_reply(message)


# --- the live server ---------------------------------------------------------------------


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_AUTH": "100000/min"}


# 429: the per-IP limit (rate_limited) or, for an email guessed more than 10 times, the
# per-account throttle (too_many_attempts)
LOGIN_ERRORS = {400: {"invalid_json"}, 401: {"invalid_credentials"}, 422: {"validation_failed"},
                429: {"rate_limited", "too_many_attempts"}}
credentials = st.fixed_dictionaries(
    {"email": field_or_any(st.sampled_from(["a@example.com", " A@Example.COM ", "no-at",
                                            "x" * 300 + "@example.com"]) | texts),
     "password": field_or_any(st.sampled_from(["", "pw", "p" * 257]) | texts)},
    optional={"extra": json_values})
login_bodies = (any_bytes | documents(json_values) | documents(nested())
                | documents(credentials)
                | mutated(documents(credentials)))


@functools.cache
def bodies(count: int) -> list[bytes]:
    return collect(login_bodies, count)


async def test_no_request_body_makes_the_server_fail(server: RunningServer) -> None:
    statuses: set[int] = set()
    for body in bodies(min(FUZZ_EXAMPLES, 5000) if FUZZ else 250):
        r = await server.client.post("/v1/auth/login", content=body,
                                     headers={"content-type": "application/json"})
        assert r.status_code in LOGIN_ERRORS, (body, r.status_code, r.text)
        code = r.json()["error"]["code"]
        assert code in LOGIN_ERRORS[r.status_code], (body, r.text)
        assert_error(r, r.status_code, code)
        statuses.add(r.status_code)
    assert {400, 422} <= statuses  # the bodies reached both the parser and the validation
    assert (await server.client.get("/health")).status_code == 200


@functools.cache
def socket_messages(count: int) -> list[str | bytes]:
    return collect(ws_messages.filter(lambda m: len(m) < 60_000), count)


async def receive_reply(client: WsClient) -> tuple[str, str]:
    """The next reply, skipping the server's own pings."""
    while True:
        message = await receive_json(client)
        if message != {"type": "ping"}:
            return classify(message)


async def test_no_message_closes_the_socket(server: RunningServer) -> None:
    account = await signup(server.client)
    client = await connect(server.url, account.access)
    deep: list[str | bytes] = ["[" * 30_000, '{"a":' * 12_000]
    for message in deep:
        assert expected_reply(message) == ("error", "invalid_json")
    messages = [*deep, '{"type":"pong"}', b'{"type":"ping","data":[]}', b'{"type":"dance"}',
                *socket_messages(min(FUZZ_EXAMPLES, 2000) if FUZZ else 40)]
    for message in messages:
        if isinstance(message, str):
            await client.send_text(message)
        else:
            await client._send(BytesMessage(data=message))
        await client.send_text('{"type":"ping"}')  # then the socket still answers
        expected = expected_reply(message)
        if expected is not None:
            assert await receive_reply(client) == expected, message
        assert await receive_reply(client) == ("pong", ""), message
    await client.aclose()
