"""innera/compat/coredis.py against the installed coredis: the version is one it was written
for, and every internal it reaches exists with the shape used. A failure here after an
upgrade names what moved; review innera/compat/coredis.py (and run tests/test_redis.py)."""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from typing import Any

from coredis._concurrency import Queue
from coredis._telemetry import get_telemetry_provider
from coredis.connection import Connection
from coredis.pool import ConnectionPool, SentinelConnectionPool

from innera.compat import coredis as compat

MODULE = "innera/compat/coredis.py"

# sha256 of ConnectionPool.get_connection / release as of coredis 6.9.0: the slot-safe pool
# re-implements them. A new digest means coredis changed them: compare with the copy in
# innera/compat/coredis.py, then update the digest.
GET_CONNECTION_SHA256 = "ae2309156daed5865d8ecc082d24ed0347e840af823605e8ed922ed8fc3a4fa6"


def digest(func: Any) -> str:
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()


def test_installed_version_is_supported() -> None:
    compat.SUPPORTED.check()


def test_get_connection_is_still_the_one_re_implemented() -> None:
    assert digest(ConnectionPool.get_connection) == GET_CONNECTION_SHA256, (
        f"coredis' ConnectionPool.get_connection changed: review {MODULE}")
    release = textwrap.dedent(inspect.getsource(ConnectionPool.release))
    assert "connection.usable" in release and "_available_connections.put_nowait" in release, (
        f"coredis' ConnectionPool.release changed: review {MODULE}")


def test_the_sentinel_pool_uses_the_same_get_connection() -> None:
    assert issubclass(SentinelConnectionPool, ConnectionPool), MODULE
    for name in ("get_connection", "release"):
        assert name not in vars(SentinelConnectionPool), (name, MODULE)
    for pool in (compat.SlotSafeConnectionPool, compat.SlotSafeSentinelPool):
        assert pool.get_connection is compat._SlotSafePool.get_connection
        assert pool.release is compat._SlotSafePool.release


def test_telemetry_provider() -> None:
    pool = compat.SlotSafeConnectionPool(host="127.0.0.1", port=1)
    telemetry = get_telemetry_provider()
    for name in ("capture_connection_wait_time", "capture_connection_create_time"):
        with getattr(telemetry, name)(pool):
            pass


def test_pool_private_members() -> None:
    pool = compat.SlotSafeConnectionPool(host="127.0.0.1", port=1, max_connections=3,
                                         timeout=1.5)
    queue = pool._available_connections
    assert isinstance(queue, Queue), MODULE
    assert queue.full(), "the pool starts with one free slot (None) per connection"
    for name in ("get", "append_nowait", "put_nowait", "full", "remove", "__contains__"):
        assert callable(getattr(queue, name)), (name, MODULE)
    assert pool._online_connections == set()
    assert pool.timeout == 1.5
    for name in ("connection_created", "connection_leased", "connection_released"):
        assert callable(getattr(pool.statistics, name)), (name, MODULE)
    assert isinstance(inspect.getattr_static(ConnectionPool, "task_group"), property), MODULE
    assert inspect.iscoroutinefunction(ConnectionPool._construct_connection), MODULE
    assert inspect.iscoroutinefunction(SentinelConnectionPool._construct_connection), MODULE
    wrap = ConnectionPool._ConnectionPool__wrap_connection  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(wrap), MODULE
    names = list(inspect.signature(wrap).parameters)
    assert names == ["self", "connection", "task_status"], MODULE


def test_connection_members() -> None:
    for name in ("reusable", "usable"):
        assert isinstance(inspect.getattr_static(Connection, name), property), (name, MODULE)
    assert callable(Connection.invalidate), MODULE


def test_parse_url_shape() -> None:
    names = list(inspect.signature(ConnectionPool._parse_url).parameters)
    assert names == ["url", "decode_components", "kwargs", "pool_param_class"], MODULE


def test_url_options() -> None:
    assert compat.url_options("redis://:m4ster@host-ignored:1/2") == {"password": "m4ster",
                                                                       "db": 2}
    options = compat.url_options("rediss://u:p%40ss@h:1/3")
    assert options["username"] == "u" and options["password"] == "p@ss"  # decoded
    assert options["db"] == 3 and "ssl_context" in options

