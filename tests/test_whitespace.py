"""The JSON Schema patterns of trimmed fields state exactly what the server accepts: the
whitespace class is what ``str.strip()`` removes, and each pattern agrees with the server's
own check (run with Python's ``re``, as Schemathesis generates from it)."""

from __future__ import annotations

import re
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from innera.accounts import EMAIL_PATTERN, is_valid_email, normalise_email
from innera.journal.rules import ALLOWED_CONTENT_TYPES, MOOD_MAX, TAG_MAX
from innera.whitespace import NOT_WHITESPACE, WHITESPACE, one_of, trimmed

SPACES = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
#: text made mostly of what the patterns are about: whitespace, "@", ".", controls, letters
texts = st.text(st.sampled_from(SPACES + "@.\x00\x1f\x7fab\u00e9\U0001f600") | st.characters(),
                max_size=80)


def test_the_class_is_what_strip_removes() -> None:
    whitespace, other = re.compile(WHITESPACE), re.compile(NOT_WHITESPACE)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(whitespace.fullmatch(char)) == char.isspace() != bool(other.fullmatch(char))
        assert char.strip() == ("" if char.isspace() else char)


@settings(max_examples=500, deadline=None)
@given(texts, st.sampled_from([2, 5, TAG_MAX, MOOD_MAX]))
def test_trimmed_matches_what_strip_leaves(text: str, max_length: int) -> None:
    assert bool(re.search(trimmed(max_length), text)) == (1 <= len(text.strip()) <= max_length)


@settings(max_examples=500, deadline=None)
@given(texts | st.builds(lambda a, b, c, d, e: f"{a}{b}@{c}.{d}{e}", texts, texts, texts,
                         texts, texts))
def test_the_email_pattern_is_the_server_check(text: str) -> None:
    """What the pattern refuses, the server refuses (the other way round as well, but for
    characters whose lower case is longer, such as "İ": the server counts after lowering)."""
    server = is_valid_email(normalise_email(text))
    pattern = bool(re.search(EMAIL_PATTERN, text))
    if not pattern:
        assert not server
    elif len(normalise_email(text)) == len(text.strip()):
        assert server


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(ALLOWED_CONTENT_TYPES)), st.lists(st.booleans(), min_size=20),
       texts, texts, texts)
def test_one_of_matches_any_letter_case_of_a_value(value: str, upper: list[bool], before: str,
                                                   after: str, other: str) -> None:
    """What the content type of an attachment is checked as: ``strip().lower()`` in the set."""
    pattern = re.compile(one_of(ALLOWED_CONTENT_TYPES))
    cased = "".join(c.upper() if up else c for c, up in zip(value, upper + [False] * 40,
                                                            strict=False))
    for text in (cased, before + cased + after, other, value + other, "\u212a" + other):
        assert bool(pattern.search(text)) == (text.strip().lower() in ALLOWED_CONTENT_TYPES)
