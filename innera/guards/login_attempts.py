"""Password guessing, throttled per account: failure counters and exponential backoff in Redis.

The per-IP limit (``RATE_LIMIT_AUTH``) does not stop a guesser with many addresses; this
counts failed password checks per *account*, whatever address they come from. An account is
``HMAC-SHA256(secret, normalised email)`` (the secret derived from the JWT secret, so that
someone reading Redis cannot confirm a guessed address by hashing it): for a sign-in the
email as given, whether or not such an account exists (unknown emails behave exactly like
known ones), for a re-authentication the signed-in user's email. Sign-in and
re-authentication share the counter: both guess the same password.

One Redis hash per account, ``rl:login-failures:<HMAC hex>``, fields ``n`` (failures) and
``until`` (Redis server time in ms before which no attempt is admitted)::

    await attempts.admit(email)       # 429 too_many_attempts while backing off: before argon2
    ok = await passwords.verify(...)
    await (attempts.succeeded(email) if ok else attempts.failed(email))

- Failures 1–9 only count. The count is forgotten once ``window_s`` (15 min) passes without
  a failure (plus the backoff in force), so "10 failures within 15 minutes" trips it (as do
  10 failures each less than 15 minutes after the previous one).
- From the 10th failure on, the account backs off for ``30 s × 2^(failures − 10)``, at most
  ``backoff_max_s`` (15 min): 30 s, 60 s, 2 min, 4 min, 8 min, then 15 min per failure. During
  the backoff every attempt answers 429 ``too_many_attempts`` with ``Retry-After``, costs no
  hash and does not count.
- Past the threshold, admitting an attempt already sets the backoff it would get by failing,
  so concurrent guesses cannot slip through together when a backoff ends: one attempt per
  backoff. A success clears everything (the counter and the backoff).

It delays, it never locks: ``Retry-After`` is at most ``backoff_max_s``. The throttle applies
to the account, not to the guesser, so someone who knows an email can keep its sign-in at one
attempt per 15 minutes; the owner's existing sessions (access and refresh tokens) are
unaffected. That is the trade-off against letting a botnet guess at full speed.

When Redis is unavailable, errors out or is slower than ``timeout_s``, the throttle fails
open like the rate limiter (:mod:`innera.guards.ratelimit`): attempts are admitted and not
counted, every failure goes through the Redis error hook (``innera_redis_errors_total``), and
the log gets one warning per ``warn_interval_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from typing import Any

import trio
from coredis.exceptions import RedisError

from innera.accounts import normalise_email
from innera.errors import RateLimited
from innera.guards.fail_open import FailOpen
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.guards.login_attempts")

KEY_PREFIX = "rl:login-failures:"

#: What makes the throttle fail open (as for the rate limiter): Redis unreachable, slow or
#: refusing the command.
_FAIL_OPEN_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, TimeoutError,
                                                      RedisError)

#: ``now_ms`` from Redis's clock (one clock for every instance) and the backoff (ms) after
#: ``n`` failures: 0 below the threshold, base × 2^(n − threshold), capped.
_COMMON = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local threshold, base, cap, window =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function backoff(n)
  if n < threshold then return 0 end
  return math.min(cap, base * 2 ^ math.min(n - threshold, 40))
end
"""

#: KEYS[1] = the account's hash. Returns {1, 0} (admitted) or {0, ms to wait}.
ADMIT_SCRIPT = _COMMON + """\
local state = redis.call('HMGET', KEYS[1], 'n', 'until')
local n, wait = tonumber(state[1]) or 0, (tonumber(state[2]) or 0) - now
if wait > 0 then return {0, wait} end
local reserve = backoff(n + 1)
if n >= threshold then
  redis.call('HSET', KEYS[1], 'until', now + reserve)
  redis.call('PEXPIRE', KEYS[1], window + reserve)
end
return {1, 0}
"""

#: KEYS[1] = the account's hash. Returns {failures, backoff in ms}.
FAILED_SCRIPT = _COMMON + """\
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local wait = backoff(n)
if wait > 0 then redis.call('HSET', KEYS[1], 'until', now + wait) end
redis.call('PEXPIRE', KEYS[1], window + wait)
return {n, wait}
"""


class TooManyAttempts(RateLimited):
    code = "too_many_attempts"
    message = "Too many failed sign-in attempts for this account"


def account_key(email: str, secret: bytes = b"") -> str:
    """``rl:login-failures:<HMAC-SHA256 hex of the normalised email>``: no address in
    Redis, and none that hashing a guess could confirm without ``secret``."""
    digest = hmac.new(secret, normalise_email(email).encode(), hashlib.sha256).hexdigest()
    return KEY_PREFIX + digest


class LoginAttempts:
    """Per-account failure counters and backoff; see the module documentation."""

    def __init__(
        self,
        redis: Redis,
        *,
        secret: bytes = b"",
        threshold: int = 10,
        window_s: int = 900,
        backoff_base_s: int = 30,
        backoff_max_s: int = 900,
        timeout_s: float = 0.5,
        warn_interval_s: float = 60.0,
    ) -> None:
        if threshold < 1 or window_s < 1 or not 1 <= backoff_base_s <= backoff_max_s:
            raise ValueError("bad login throttle parameters")
        self._redis = redis
        self._secret = secret
        self._admit = redis.client.register_script(ADMIT_SCRIPT)
        self._failed = redis.client.register_script(FAILED_SCRIPT)
        self.threshold = threshold
        self.window_s = window_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._timeout_s = timeout_s
        self._outage = FailOpen(redis, "per-account login throttle", "attempts",
                                interval_s=warn_interval_s, logger=log)

    def key(self, email: str) -> str:
        """The Redis key of the account of ``email``."""
        return account_key(email, self._secret)

    def backoff_s(self, failures: int) -> int:
        """The backoff after ``failures`` failures (0 below the threshold)."""
        if failures < self.threshold:
            return 0
        return min(self.backoff_max_s,
                   self.backoff_base_s * 2 ** min(failures - self.threshold, 40))

    async def admit(self, email: str) -> None:
        """Before the password is checked: raise :class:`TooManyAttempts` (429, with
        ``Retry-After``) while the account backs off. Admits when Redis is unavailable."""
        reply = await self._call(self._admit, email)
        if reply is not None and not int(reply[0]):
            retry_after = max(1, math.ceil(int(reply[1]) / 1000))
            raise TooManyAttempts(
                f"Too many failed sign-in attempts for this account; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)})

    async def failed(self, email: str) -> None:
        """The password was wrong (or the account unknown): count it, start or extend the
        backoff."""
        await self._call(self._failed, email)

    async def succeeded(self, email: str) -> None:
        """The password was right: forget the account's failures."""
        await self._call(None, email)

    async def _call(self, script: Any, email: str) -> list[int] | None:
        """Run ``script`` (``None``: DEL) on the account's key: its reply, ``None`` when Redis
        is unavailable (counted and warned)."""
        key = self.key(email)
        args = [self.threshold, self.backoff_base_s * 1000, self.backoff_max_s * 1000,
                self.window_s * 1000]
        reply: Any = None
        try:
            with trio.move_on_after(self._timeout_s) as scope:
                if script is None:
                    reply = [await self._redis.client.delete([key])]
                else:
                    reply = await script(keys=[key], args=args)
        except _FAIL_OPEN_ERRORS as exc:
            # Cancelled by our deadline mid-handshake, coredis raises ConnectionError instead
            # of letting the cancellation through: that is our timeout too.
            self._outage.failed(self._timeout_error() if scope.cancel_called else exc)
            return None
        if reply is None:
            self._outage.failed(self._timeout_error())
            return None
        if self._outage.failing:
            self._outage.recovered()
        return [int(value) for value in reply]

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(f"login throttle got no reply within {self._timeout_s} s")

