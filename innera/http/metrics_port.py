"""The metrics port (``METRICS_PORT``): a second listener of its own for Prometheus and
probes, answering ``GET|HEAD /metrics`` and ``/health`` only (the app is
:class:`innera.app.MetricsPortRouter`).

``innera worker`` has no other port, so this is how its job, push and key-rotation metrics
are scraped; ``innera serve`` opens it when ``METRICS_PORT`` is set, and /metrics then
leaves the public port.

It is always served by innera's own server (:mod:`innera.http.fast`, whatever
``INNERA_HTTP_SERVER`` says: no HTTP/2 or TLS is needed here), so it has that server's
bounds: request heads up to 64 KiB and 100 fields, the head within 10 s, 5 s keep-alive,
10 s to take a response, unread bodies dropped up to 1 MiB and then the connection closed.
On top, at most :data:`MAX_CONNECTIONS` connections are open at once (Prometheus holds one
per scrape; more are closed as they are accepted). It is not drained on shutdown: leaving
the process' exit stack cancels it, and a scrape in flight then is cut.
"""

from __future__ import annotations

from typing import Any

import trio

from innera.http.fast import serve_http

__all__ = ["MAX_CONNECTIONS", "serve_metrics_port"]

MAX_CONNECTIONS = 16


class _Started:
    """A task status that remembers whether the listener got as far as listening."""

    def __init__(self, task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
        self.task_status = task_status
        self.listening = False

    def started(self, value: list[tuple[str, int]]) -> None:
        self.listening = True
        self.task_status.started(value)


async def serve_metrics_port(
    app: Any, host: str, port: int, *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port``, report the bound addresses and serve ``app`` until
    cancelled. A port that cannot be bound raises :class:`OSError` naming METRICS_PORT."""
    status = _Started(task_status)
    try:
        await serve_http(app, host, port, trio.Event(), max_connections=MAX_CONNECTIONS,
                         task_status=status)  # type: ignore[arg-type]
    except (OSError, BaseExceptionGroup) as exc:
        bind_error = None if status.listening else _os_error(exc)
        if bind_error is None:
            raise
        reason = bind_error.strerror or str(bind_error)
        raise OSError(bind_error.errno,
                      f"METRICS_PORT={port}: cannot listen on {host or '*'}:{port} for /metrics "
                      f"and /health: {reason}") from exc


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError ``exc`` is, or the first one its exception group holds."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None
