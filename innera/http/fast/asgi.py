"""The ASGI interface of innera's fast server (:mod:`innera.http.fast`): the app's type, its
messages and the ASGI version every scope states."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Message]],
     Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
