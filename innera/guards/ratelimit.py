"""Fixed-window rate limiting in Redis, failing open.

A Lua script INCRs ``rl:{route}:{client}``, gives a new key (or one without a TTL) the window
as PEXPIRE and returns the count and the PTTL. Concurrent requests share one script call
(:class:`innera.batching.Batcher`: the script takes any number of keys), so under load a
request costs a fraction of a Redis round trip instead of a whole one::

    decision = await limiter.hit("/v1/auth/login", ip, *settings.limits.rate_limit_auth)
    if decision is not None:          # None: Redis is unavailable, let the request pass
        headers.update(decision.headers())
        if not decision.allowed:
            raise RateLimited(headers=decision.headers())

When Redis is unreachable, errors out or is slower than ``timeout_s``, ``hit`` returns
``None``: rate limiting must never take the API down with it. (A batch has ``timeout_s``; a
request may wait for the batch in flight before its own, so at most twice that.) Every such
failure is counted through the Redis error hook; the log gets one warning per
``warn_interval_s``, not one per request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from coredis.exceptions import RedisError, ResponseError

from innera.batching import Batcher
from innera.guards.fail_open import FailOpen
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.guards.ratelimit")

#: KEYS[i] = a counter, ARGV[i] = its window in ms. Returns {count_1, pttl_1, count_2, ...}.
#: PTTL < 0 after INCR means the key is new (-1: no TTL yet) or lost its TTL: (re)arm it.
#: A key may come twice (two requests of one client in the batch): each INCR counts. A key
#: Redis refuses to count (WRONGTYPE, ...) gets its error text instead of a count, so it fails
#: open alone, not the batch.
HIT_SCRIPT = """\
local out = {}
for i, key in ipairs(KEYS) do
  local count = redis.pcall('INCR', key)
  local ttl = 0
  if type(count) == 'table' then
    count = count['err']
  else
    ttl = redis.call('PTTL', key)
    if ttl < 0 then
      ttl = tonumber(ARGV[i])
      redis.call('PEXPIRE', key, ttl)
    end
  end
  out[2 * i - 1] = count
  out[2 * i] = ttl
end
return out
"""

#: What makes ``hit`` fail open: Redis unreachable, plus any other Redis-side error (OOM,
#: READONLY after a failover, ...): a counter we cannot update is no reason to refuse requests.
_FAIL_OPEN_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, TimeoutError,
                                                      RedisError)


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
        self.batcher: Batcher[tuple[str, int], tuple[int | str, int]] = Batcher(self._hit_many)
        self._outage = FailOpen(redis, "rate limiting", "requests", interval_s=warn_interval_s,
                                logger=log)
        self._timeout_s = timeout_s

    async def hit(self, route: str, client: str, limit: int, window_s: int) -> Decision | None:
        """Count one request of ``client`` on ``route``. ``None`` when Redis is unavailable
        (the caller lets the request pass, without rate limit headers)."""
        if limit < 0 or window_s < 1:
            raise ValueError(f"bad rate limit {limit}/{window_s} s")
        try:
            count, pttl = await self.batcher((f"rl:{route}:{client}", window_s * 1000))
            if isinstance(count, str):
                raise ResponseError(count)
        except _FAIL_OPEN_ERRORS as exc:
            self._outage.failed(exc)
            return None
        if self._outage.failing:
            self._outage.recovered()
        return Decision(
            allowed=count <= limit,
            limit=limit,
            remaining=max(0, limit - count),
            reset_s=max(1, math.ceil(pttl / 1000)),
        )

    async def _hit_many(self, hits: Sequence[tuple[str, int]]) -> list[tuple[int | str, int]]:
        """One script call for a batch of (key, window in ms): their (count, PTTL), or
        (Redis's error text, 0) for a key it refused to count."""
        reply = None
        try:
            with trio.move_on_after(self._timeout_s) as scope:
                reply = await self._script(keys=[key for key, _ in hits],
                                           args=[window for _, window in hits])
        except _FAIL_OPEN_ERRORS as exc:
            # Cancelled by our deadline mid-handshake, coredis raises ConnectionError
            # instead of letting the cancellation through: that is our timeout too.
            if scope.cancel_called:
                raise self._timeout_error() from exc
            raise
        if reply is None:
            raise self._timeout_error()
        return [(reply[i] if isinstance(reply[i], str) else int(reply[i]), int(reply[i + 1]))
                for i in range(0, 2 * len(hits), 2)]

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(f"rate limit check got no reply within {self._timeout_s} s")

