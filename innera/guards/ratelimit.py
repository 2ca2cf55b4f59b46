"""Fixed-window rate limiting in Redis, failing open.

One Redis round trip per request: a Lua script INCRs ``rl:{route}:{client}``, gives a new key
(or one without a TTL) the window as PEXPIRE and returns the count and the PTTL::

    decision = await limiter.hit("/v1/auth/login", ip, *settings.rate_limit_auth)
    if decision is not None:          # None: Redis is unavailable, let the request pass
        headers.update(decision.headers())
        if not decision.allowed:
            raise RateLimited(headers=decision.headers())

When Redis is unreachable, errors out or is slower than ``timeout_s``, ``hit`` returns
``None``: rate limiting must never take the API down with it. Every such failure is counted
through the Redis error hook; the log gets one warning per ``warn_interval_s``, not one per
request.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import trio
from coredis.exceptions import RedisError

from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.guards.ratelimit")

#: KEYS[1] = counter, ARGV[1] = window in ms. Returns {count, pttl_ms}.
#: PTTL < 0 after INCR means the key is new (-1: no TTL yet) or lost its TTL: (re)arm it.
HIT_SCRIPT = """\
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  ttl = tonumber(ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {count, ttl}
"""

#: What makes ``hit`` fail open: Redis unreachable, plus any other Redis-side error (OOM,
#: READONLY after a failover, ...): a counter we cannot update is no reason to refuse requests.
_FAIL_OPEN_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, RedisError)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the window resets (always >= 1).
    reset_s: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_s)
        return headers


class RateLimiter:
    def __init__(
        self, redis: Redis, *, warn_interval_s: float = 60.0, timeout_s: float = 0.5
    ) -> None:
        self._redis = redis
        self._script = redis.client.register_script(HIT_SCRIPT)
        self._warn_interval_s = warn_interval_s
        self._timeout_s = timeout_s
        self._unchecked = 0  # requests passed unchecked since the last warning
        self._last_warning: float | None = None  # trio.current_time() of it; None: healthy

    async def hit(self, route: str, client: str, limit: int, window_s: int) -> Decision | None:
        """Count one request of ``client`` on ``route``. ``None`` when Redis is unavailable
        (the caller lets the request pass, without rate limit headers)."""
        if limit < 0 or window_s < 1:
            raise ValueError(f"bad rate limit {limit}/{window_s} s")
        key = f"rl:{route}:{client}"
        reply = None
        try:
            with trio.move_on_after(self._timeout_s) as scope:
                reply = await self._script(keys=[key], args=[window_s * 1000])
        except _FAIL_OPEN_ERRORS as exc:
            # Cancelled by our deadline mid-handshake, coredis raises ConnectionError
            # instead of letting the cancellation through: that is our timeout too.
            error: BaseException = exc
            if scope.cancel_called:
                error = self._timeout_error()
                error.__cause__ = exc
            self._failed(error)
            return None
        if reply is None:
            self._failed(self._timeout_error())
            return None
        if self._last_warning is not None:
            self._recovered()
        count, pttl = int(reply[0]), int(reply[1])
        return Decision(
            allowed=count <= limit,
            limit=limit,
            remaining=max(0, limit - count),
            reset_s=max(1, math.ceil(pttl / 1000)),
        )

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(f"rate limit check got no reply within {self._timeout_s} s")

    def _failed(self, exc: BaseException) -> None:
        self._unchecked += 1
        now = trio.current_time()
        if self._last_warning is None or now - self._last_warning >= self._warn_interval_s:
            # Once per interval the full record_error (its log line names the cause) ...
            self._redis.record_error(exc)
            log.warning(
                "rate limiting disabled: Redis unavailable "
                "(%d requests passed unchecked since last warning)",
                self._unchecked,
            )
            self._unchecked = 0
            self._last_warning = now
        else:
            # ... and in between only the hook (the innera_redis_errors_total metric):
            # record_error would log a warning for every request during an outage.
            self._count_error(exc)

    def _count_error(self, exc: BaseException) -> None:
        hook = self._redis.on_error
        if hook is not None:
            try:
                hook(exc)
            except Exception:
                log.exception("redis on_error hook failed")

    def _recovered(self) -> None:
        log.info(
            "rate limiting restored: Redis is reachable again "
            "(%d requests passed unchecked since last warning)",
            self._unchecked,
        )
        self._unchecked = 0
        self._last_warning = None
