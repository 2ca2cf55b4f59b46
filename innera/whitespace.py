"""What ``str.strip()`` removes, written as a regular-expression character class, for the
JSON Schema ``pattern`` of fields the server trims (entry tags and mood, an entry body that
must not be only whitespace, the email of sign-up and sign-in, an attachment's content type):
the OpenAPI document then states exactly what the server accepts.

The class is spelled out rather than ``\\s``, whose meaning differs between Python (what
``strip()`` removes: ``str.isspace()``), ECMA-262 (JSON Schema's dialect: no U+001C–U+001F
or U+0085, but U+FEFF) and Rust's regex (Unicode ``White_Space``). These are pattern texts for
the document, never compiled by the server, which checks with ``strip()`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: the characters ``str.strip()`` removes (``str.isspace()``), as the inside of a character
#: class (to combine with others: ``[^@{CHARS}]``)
CHARS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: one of them
WHITESPACE = f"[{CHARS}]"
#: any other character
NOT_WHITESPACE = f"[^{CHARS}]"


def trimmed(max_length: int) -> str:
    """A pattern for text that, once stripped, holds 1 to ``max_length`` (≥ 2) characters:
    any whitespace around a core that starts and ends with another character."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    w, c = WHITESPACE, NOT_WHITESPACE
    return f"^{w}*(?:{c}|{c}[\\s\\S]{{0,{max_length - 2}}}{c}){w}*$"


def one_of(values: Iterable[str]) -> str:
    """A pattern for one of ``values`` (ASCII) in any letter case, with any whitespace around:
    what a field checked as ``value.strip().lower() in values`` accepts."""
    alternatives = "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in value)
        for value in sorted(values))
    return f"^{WHITESPACE}*(?:{alternatives}){WHITESPACE}*$"
