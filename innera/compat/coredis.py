"""The coredis internals innera relies on (``innera/redis.py``, its one importer).

- :class:`SlotSafeConnectionPool` / :class:`SlotSafeSentinelPool`: coredis' pools with
  ``get_connection`` and ``release`` re-implemented so that a lost connection gives its slot
  back (see :class:`_SlotSafePool`). They reach ``coredis._telemetry.get_telemetry_provider``
  and the pool's private members ``_available_connections`` (a ``coredis._concurrency.Queue``
  of connections or ``None`` = a free slot: ``get``, ``append_nowait``, ``full``),
  ``_online_connections``, ``_construct_connection`` and the name-mangled
  ``_ConnectionPool__wrap_connection`` task (started in ``task_group``, it reports a
  connection error through ``task_status``), plus ``timeout``, ``statistics`` and the
  connections' ``reusable`` / ``usable`` / ``invalidate()``.
- :func:`url_options`: ``ConnectionPool._parse_url``, the connection options in a
  ``redis://`` URL (password, DB, TLS), for a Sentinel-discovered master.

``tests/compat/test_coredis.py`` checks that each of these exists with the shape used; re-run
it and ``tests/test_redis.py`` before widening :data:`SUPPORTED` (and the pin in
``pyproject.toml``).
"""

from __future__ import annotations

from typing import Any

import anyio
from coredis._telemetry import get_telemetry_provider
from coredis.pool import ConnectionPool, ConnectionPoolParams, SentinelConnectionPool

from innera.compat import Supported

__all__ = ["SUPPORTED", "SlotSafeConnectionPool", "SlotSafeSentinelPool", "url_options"]

SUPPORTED = Supported("coredis", "6.9", "6.10", "innera/compat/coredis.py")


def url_options(url: str) -> dict[str, Any]:
    """The connection options a ``redis://`` / ``rediss://`` URL carries (credentials, DB,
    TLS, query arguments; components percent-decoded), without its host."""
    _, options = SlotSafeConnectionPool._parse_url(
        url, True, ConnectionPoolParams(), ConnectionPoolParams
    )
    return dict(options)


class _SlotSafePool:
    """coredis 6.9's pool keeps ``max_connections`` slots in a queue and loses one for good
    (measured) when (a) a connection dies while leased: a cancelled or timed-out blocking read,
    a pipeline or pub/sub whose connection dropped; or (b) getting a connection is cancelled
    while connecting, or the Sentinel lookup fails. Once all 64 are gone, every command waits
    forever. This mixin gives the slot back in those cases; ``get_connection`` is coredis'
    own with the slot returned on any failure."""

    async def get_connection(self: Any, **_: Any) -> Any:
        telemetry = get_telemetry_provider()
        with telemetry.capture_connection_wait_time(self), anyio.fail_after(self.timeout):
            connection = await self._available_connections.get()
            new = None
            try:
                if connection is None or not connection.reusable:
                    if connection is not None:
                        connection.invalidate()
                    with telemetry.capture_connection_create_time(self):
                        new = await self._construct_connection()
                        wrap = self._ConnectionPool__wrap_connection
                        if err := await self.task_group.start(wrap, new):
                            raise err
                    self.statistics.connection_created(new)
                    self._online_connections.add(new)
                    connection = new
            except BaseException:
                if new is not None:
                    new.invalidate()
                self._available_connections.append_nowait(None)
                raise
            self.statistics.connection_leased(connection)
            return connection

    def release(self: Any, connection: Any) -> None:
        super().release(connection)  # type: ignore[misc]
        if not connection.usable and not self._available_connections.full():
            self._available_connections.append_nowait(None)


class SlotSafeConnectionPool(_SlotSafePool, ConnectionPool):  # type: ignore[misc]
    """``coredis.pool.ConnectionPool`` that never loses a connection slot."""


class SlotSafeSentinelPool(_SlotSafePool, SentinelConnectionPool):  # type: ignore[misc]
    """``coredis.pool.SentinelConnectionPool`` that never loses a connection slot."""
