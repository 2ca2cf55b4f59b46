"""Serving the ASGI app. Everything HTTP-server specific lives in this package, behind one
function; ``INNERA_HTTP_SERVER`` picks the implementation (``fast``: innera's Trio-native
HTTP/1.1 + WebSocket server, the package ``fast/``; ``hypercorn``: ``hypercorn.py``)::

    addresses = await nursery.start(serve_http, asgi_app, host, port, stop_accepting, server)

``serve_http`` listens, calls ``task_status.started(addresses)``, and serves until
``stop_accepting`` is set. Then it closes its listeners at once (the connections the kernel
had already completed are accepted and served first; new ones are refused), lets in-flight
requests finish, answers requests that still arrive on open keep-alive connections with
``Connection: close`` (only once the listeners are closed: see ``listeners.py``), and returns
when the last connection has ended. The caller bounds that drain with its shutdown deadline
(and decides when to set ``stop_accepting``: after SHUTDOWN_DRAIN_DELAY_S).
"""

from __future__ import annotations

import importlib
from typing import Any

import trio

__all__ = ["SERVERS", "serve_http"]

#: ``INNERA_HTTP_SERVER`` → the module implementing ``serve_http``
SERVERS = {"fast": "innera.http.fast", "hypercorn": "innera.http.hypercorn"}


async def serve_http(
    app: Any, host: str, port: int, stop_accepting: trio.Event, server: str = "fast", *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with the implementation named ``server`` (see the module doc)."""
    module = importlib.import_module(SERVERS[server])
    await module.serve_http(app, host, port, stop_accepting, task_status=task_status)
