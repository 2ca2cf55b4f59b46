"""Attachment file names: sanitising what clients send, and the ``Content-Disposition`` header
that hands a download back under that name."""

from __future__ import annotations

import os
import unicodedata
from urllib.parse import quote

MAX_FILENAME_CHARS = 255
DEFAULT_FILENAME = "attachment"
#: Punctuation kept besides letters, digits and combining marks (any script); everything else
#: (quotes, slashes, shell and header metacharacters, symbols) becomes ``_``.
_SAFE_PUNCTUATION = frozenset(" ._-()[]+,@&=~")


def sanitize_filename(name: str) -> str:
    """A safe display/download name: the last path component (``/`` or ``\\``), without
    control or format characters (incl. bidi overrides), with letters, digits, marks and a
    small punctuation set kept (others → ``_``), runs of spaces collapsed, no leading/trailing
    dots or spaces, at most 255 characters (the extension kept), never empty."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept: list[str] = []
    for ch in name:
        category = unicodedata.category(ch)
        if category.startswith("C"):  # Cc control, Cf format (bidi), Cs, Co, Cn
            continue
        if category.startswith("Z"):  # any space or separator → a plain space
            kept.append(" ")
        elif ch.isalnum() or category.startswith("M") or ch in _SAFE_PUNCTUATION:
            kept.append(ch)
        else:
            kept.append("_")
    name = " ".join("".join(kept).split()).strip(" .")
    if len(name) > MAX_FILENAME_CHARS:
        stem, ext = os.path.splitext(name)
        if not ext or len(ext) > 16:
            stem, ext = name, ""
        name = stem[: MAX_FILENAME_CHARS - len(ext)].rstrip(" .") + ext
    return name or DEFAULT_FILENAME


def content_disposition(filename: str) -> str:
    """``attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>``
    (RFC 6266 / RFC 5987), safe for any sanitised name."""
    name = sanitize_filename(filename)
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_"
                         for ch in name)
    value = f'attachment; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value
