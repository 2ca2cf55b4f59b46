"""JSON that comes from outside (request bodies, WebSocket messages, imported files), parsed
with bounds: every caller gets the same rules and the same two failures.

- The document must be UTF-8 JSON (``ValueError``/``UnicodeDecodeError`` of the decoder →
  :class:`InvalidJsonInput`).
- It nests at most :data:`MAX_DEPTH` arrays and objects deep (→ :class:`JsonTooDeep`, a
  subclass). The check costs nothing for the usual body: a document with fewer than
  ``max_depth`` brackets in all (two C-speed ``count`` calls) cannot be deeper. Otherwise the
  document is parsed, and the parsed containers are walked without recursion, stopping at
  the first one too deep. A document so deep that the decoder itself gives up (its C
  recursion limit, about 1,000 levels) is :class:`JsonTooDeep` too: ``RecursionError`` never
  escapes.

Sizes are the caller's to bound before calling (MAX_BODY_BYTES for request bodies, the
WebSocket message limit, the import limits): parsing is linear in the input.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "InvalidJsonInput", "JsonTooDeep", "depth_exceeds", "loads",
           "lone_surrogate"]

#: arrays and objects nested deeper than this are refused (innera's own documents nest 4)
MAX_DEPTH = 64


class InvalidJsonInput(ValueError):
    """Not JSON (or not UTF-8); the message says where, without quoting the input, in a form
    that follows "not valid JSON": ``(line 3, column 12): Expecting ':' delimiter``."""


class JsonTooDeep(InvalidJsonInput):
    """Nested deeper than the limit."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"nested more than {max_depth} levels deep")
        self.max_depth = max_depth


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``data`` parsed, or :class:`InvalidJsonInput` / :class:`JsonTooDeep`."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        brackets = raw.count(b"[") + raw.count(b"{")
    else:
        raw = data
        brackets = raw.count("[") + raw.count("{")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise JsonTooDeep(max_depth) from None
    except json.JSONDecodeError as exc:
        raise InvalidJsonInput(f"(line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise InvalidJsonInput(f"(not UTF-8 text: byte {exc.start})") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise InvalidJsonInput(f"({str(exc)[:200]})") from None
    if brackets > max_depth and depth_exceeds(doc, max_depth):
        raise JsonTooDeep(max_depth)
    return doc


def depth_exceeds(doc: Any, max_depth: int) -> bool:
    """Whether ``doc`` nests more than ``max_depth`` lists and dicts deep (iterative: the
    walk visits containers only and stops at the first one too deep)."""
    if not isinstance(doc, list | dict):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        values = node.values() if type(node) is dict else node
        for value in values:
            if type(value) is list or type(value) is dict:
                stack.append((value, depth + 1))
    return False


def lone_surrogate(raw: bytes, doc: Any) -> bool:
    """Whether a string of ``doc`` (parsed from ``raw``; a key or a value, at any depth) holds
    a surrogate that is not half of a pair, which UTF-8 (and so PostgreSQL and the entry
    cipher) cannot take. JSON allows the escape (``"\\ud800"``); raw UTF-8 cannot hold one,
    so only a document holding such an escape is walked (iteratively)."""
    if b"\\ud" not in raw and b"\\uD" not in raw:
        return False
    stack = [doc]
    while stack:
        node = stack.pop()
        if type(node) is str:
            if not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif type(node) is dict:
            stack.extend(node.keys())
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return False
