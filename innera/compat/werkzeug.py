"""The Werkzeug internals innera relies on (imported by ``innera/api/framework.py`` and, for
:data:`quart`'s proxies, :mod:`innera.compat.quart`).

- ``Headers._list``: the ``(name, value)`` list behind werkzeug's ``Headers``.
  :class:`RequestHeaders` reads it directly (``get`` and ``in`` without raising and catching a
  ``BadRequestKeyError`` per miss) and is filled in one step (:meth:`RequestHeaders.from_pairs`,
  no per-item CR/LF check: the servers have refused such values already);
  :func:`extend_headers` appends a response's headers the same way.
- ``LocalProxy._get_current_object``: the function behind a context-local proxy (Quart's
  ``g`` and ``request``); :func:`proxy_target` hands it out once, so a hot path reaches the
  object in one call instead of through the proxy per attribute.

``tests/compat/test_werkzeug.py`` checks that each exists with the shape used; re-run it
before widening :data:`SUPPORTED` (and the pin in ``pyproject.toml``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Self

from werkzeug.datastructures import Headers
from werkzeug.local import LocalProxy

from innera.compat import Supported

__all__ = ["SUPPORTED", "RequestHeaders", "extend_headers", "proxy_target"]

SUPPORTED = Supported("werkzeug", "3.0", "3.2", "innera/compat/werkzeug.py")


class RequestHeaders(Headers):
    """werkzeug's Headers, whose ``get`` and ``in`` answer a missing name without raising
    and catching a BadRequestKeyError (werkzeug builds one per miss, and every GET misses
    Content-Length and Transfer-Encoding while its request object is made)."""

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]]) -> Self:
        """Headers holding ``pairs`` (the list itself, not a copy), unchecked: for values
        the server has already refused CR and LF in."""
        headers = cls()
        headers._list = pairs
        return headers

    def get(self, key: str, default: Any = None, type: Any = None) -> Any:
        wanted = key.lower()
        for name, value in self._list:
            if name.lower() == wanted:
                if type is None:
                    return value
                try:
                    return type(value)
                except ValueError:
                    return default
        return default

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        wanted = key.lower()
        return any(name.lower() == wanted for name, _ in self._list)


def extend_headers(headers: Headers, pairs: Iterable[tuple[str, str]]) -> None:
    """Append ``pairs`` to ``headers`` in one step, without werkzeug's per-item checks: for
    names and values innera writes itself."""
    headers._list.extend(pairs)


def proxy_target(proxy: Any) -> Callable[[], Any]:
    """The function returning the object ``proxy`` (a werkzeug ``LocalProxy``) stands for in
    the current context; it raises ``RuntimeError`` outside one."""
    if not isinstance(proxy, LocalProxy):
        raise TypeError(f"not a werkzeug LocalProxy: {proxy!r}")
    return proxy._get_current_object
