"""The Redis client of innera (coredis 6.9 on Trio, through anyio).

``run_redis`` is a supervised service task::

    redis = await nursery.start(run_redis, settings, on_error)

It builds the coredis client (plain URL or Sentinel), proves it with a PING, hands a
:class:`Redis` wrapper to ``task_status.started`` and keeps the client open until cancelled.
Feature code uses ``redis.client`` (a ``coredis.Redis[str]``: replies are decoded to ``str``;
use ``with redis.client.decoding(False):`` for bytes).

Rules for feature code, learned from coredis 6.9 under Trio:

- coredis 6 clients *must* be entered (``async with client``) before use: entering opens an
  anyio task group in the entering task, and every pooled connection then runs as child tasks
  of it (a reader and a writer per connection). ``run_redis`` owns that task group, so the
  client can be used from any task but not after ``run_redis`` has ended.
- Blocking reads (BLPOP, XREAD BLOCK, ...) must use the server-side timeout, kept below
  ``socket_timeout_s``: the read timeout applies to blocking commands too, and a blocking read
  that is cancelled or times out loses its connection (and whatever item was in flight).
- ``pubsub.get_message()`` returns ``None`` for skipped (subscribe) messages: loop until a
  message or your own deadline.
- Wrap calls with ``redis.unavailable_as_503()`` when the feature cannot work without Redis;
  features that degrade instead catch :data:`UNAVAILABLE_ERRORS` and call ``redis.record_error``.

The pools (which give back the connection slots coredis 6.9 loses) and the URL parsing for a
Sentinel master rely on coredis internals: they live in :mod:`innera.compat.coredis`.

Tracing: the client is a :class:`TracedRedis`, whose ``execute_command`` (every command and
script call goes through it; pub/sub and pipelines do not) records a Sentry span (op
``db.redis``, the command's name) when the calling request or job is traced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import coredis
import trio
from coredis.connection import TCPLocation
from coredis.exceptions import (
    AuthenticationError,
    ConnectionError,
    RedisError,
    SentinelError,
)
from coredis.retry import ConstantRetryPolicy

from innera.compat.coredis import SlotSafeConnectionPool, SlotSafeSentinelPool, url_options
from innera.config import RedisSettings
from innera.errors import RedisUnavailable
from innera.observability import tracing

log = logging.getLogger("innera.redis")

#: Errors meaning "Redis cannot be reached right now" (as opposed to a bad command).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused / lost / handshake failed; includes BusyLoadingError (LOADING)
    TimeoutError,  # no reply within socket_timeout_s, or no free pooled connection in time
    SentinelError,  # no master known to the Sentinels / stale master
    AuthenticationError,  # password rotated under us
)

# Retry once, quickly, on a connection error only: this covers the pooled connection that died
# with a restarted server just before it was reused. coredis' default also retries timeouts
# twice, which turns one 5 s timeout into 15 s (measured) and may re-run a write.
_RETRY_POLICY = ConstantRetryPolicy((ConnectionError,), retries=1, delay=0.05)


class TracedRedis(coredis.Redis[Any]):
    """coredis' client, recording a Sentry span per command (op ``db.redis``, described by
    the command's name: never its keys or arguments) for a traced request or job. With
    tracing off a command costs one attribute read more."""

    def execute_command(self, command: Any) -> Any:  # type: ignore[override]
        # Not a coroutine function: coredis awaits what it returns, so the untraced path
        # adds no frame of its own.
        if not tracing.SWITCH.on:
            return super().execute_command(command)
        return self._traced(command)

    async def _traced(self, command: Any) -> Any:
        name = command.name
        with tracing.span("db.redis", name.decode("ascii", "replace")
                          if isinstance(name, bytes) else str(name)):
            return await super().execute_command(command)


class Redis:
    """What ``run_redis`` hands out: the coredis client plus the error plumbing."""

    def __init__(
        self,
        client: coredis.Redis[str],
        settings: RedisSettings,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.on_error = on_error

    def record_error(self, exc: BaseException) -> None:
        """The single hook for Redis connection errors (metrics, logs)."""
        log.warning("redis error: %s: %s", type(exc).__name__, exc)
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("redis on_error hook failed")

    @contextmanager
    def unavailable_as_503(self) -> Iterator[None]:
        """Turn "Redis is unreachable" errors into :class:`RedisUnavailable` (503)::

        with redis.unavailable_as_503():
            await redis.client.set(key, value)
        """
        try:
            yield
        except UNAVAILABLE_ERRORS as exc:
            self.record_error(exc)
            raise RedisUnavailable() from exc


async def check_redis_health(redis: Redis, timeout_s: float = 1.0) -> bool:
    """PING under a deadline. Never raises (except Trio's own cancellation) and never hangs."""
    try:
        with trio.move_on_after(timeout_s):
            return await redis.client.ping() == "PONG"
        redis.record_error(TimeoutError(f"PING got no reply within {timeout_s} s"))
    except Exception as exc:
        redis.record_error(exc)
    return False


async def run_redis(
    settings: RedisSettings,
    on_error: Callable[[BaseException], None] | None = None,
    *,
    task_status: trio.TaskStatus[Redis] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Service task: open the client, PING it, ``task_status.started(Redis)``, then keep the
    client open until cancelled. An unreachable Redis at start-up raises RedisUnavailable."""
    client, sentinel = _build_client(settings)
    redis = Redis(client, settings, on_error)
    # Entering opens the pools' task groups in this task; they must be left at the same
    # nesting level (Trio refuses a nursery exit inside a newer cancel scope, so the exit
    # cannot be wrapped in a shielded deadline). Leaving cancels every connection task at
    # once and coredis does no shielded I/O then, so closing is prompt (tests measure it).
    async with AsyncExitStack() as stack:
        if sentinel is not None:  # first: the master's pool asks the Sentinels where it is
            await stack.enter_async_context(sentinel)
        await stack.enter_async_context(client)
        error = await _first_ping(redis)
        if error is None:
            task_status.started(redis)
            await trio.sleep_forever()
    # Raised outside the task groups, so nursery.start() gets it bare, not in an ExceptionGroup.
    assert error is not None
    redis.record_error(error)
    reason = f"{type(error).__name__}: {error}"
    if error.__cause__ is not None:  # e.g. the refused connection or the TLS failure
        reason += f" ({type(error.__cause__).__name__}: {error.__cause__})"
    raise RedisUnavailable(f"Redis is unavailable at {_describe(settings)}: {reason}") from error


async def _first_ping(redis: Redis) -> BaseException | None:
    timeout_s = redis.settings.connect_timeout_s
    try:
        # A cancellation during coredis' connection handshake comes out as ConnectionError.
        with trio.move_on_after(timeout_s):
            await redis.client.ping()
            return None
        return TimeoutError(f"no PONG within {timeout_s} s")
    except (RedisError, TimeoutError, OSError) as exc:
        return exc


def _build_client(
    settings: RedisSettings,
) -> tuple[coredis.Redis[str], coredis.Sentinel[str] | None]:
    timeouts: dict[str, Any] = {
        "stream_timeout": settings.socket_timeout_s,
        "connect_timeout": settings.connect_timeout_s,
    }
    pool_options: dict[str, Any] = {
        **timeouts,
        "decode_responses": True,
        "client_name": "innera",
        # Waiting for a pooled connection is bounded too (coredis' default waits forever).
        "timeout": settings.socket_timeout_s,
    }
    if not settings.sentinels:
        if not settings.url:
            raise ValueError("RedisSettings needs a url or sentinels")
        pool = SlotSafeConnectionPool.from_url(
            _normalise_url(settings.url), decode_components=True, **pool_options
        )
        return TracedRedis(connection_pool=pool, retry_policy=_RETRY_POLICY), None

    if not settings.sentinel_master:
        raise ValueError("RedisSettings.sentinel_master is required with sentinels")
    if settings.url:  # password, DB and TLS of the master come from the URL
        pool_options = {**url_options(_normalise_url(settings.url)), **pool_options}
    sentinel = coredis.Sentinel(
        [TCPLocation(host, port) for host, port in settings.sentinels],
        # coredis copies connect_timeout and "socket_timeout" (a 5.x name), not stream_timeout.
        sentinel_kwargs={**timeouts, "connection_pool_cls": SlotSafeConnectionPool},
        decode_responses=True,
        retry_policy=_RETRY_POLICY,
        **{k: v for k, v in pool_options.items() if k != "decode_responses"},
    )
    client = sentinel.primary_for(
        settings.sentinel_master, redis_class=TracedRedis,
        connection_pool_class=SlotSafeSentinelPool
    )
    return client, sentinel


def _normalise_url(url: str) -> str:
    """coredis knows redis:// and rediss://; innera's config also accepts valkey(s)://."""
    scheme, rest = url.split("://", 1) if "://" in url else ("redis", url)
    return {"valkey": "redis", "valkeys": "rediss"}.get(scheme, scheme) + "://" + rest


def _describe(settings: RedisSettings) -> str:
    """Where we connect, without the password."""
    if settings.sentinels:
        hosts = ",".join(f"{h}:{p}" for h, p in settings.sentinels)
        return f"sentinel master {settings.sentinel_master!r} via {hosts}"
    parts = urlsplit(settings.url or "")
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
