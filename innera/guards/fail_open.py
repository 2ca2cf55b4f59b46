"""Failing open without flooding the log: a guard that lets requests through while Redis is
unavailable (the rate limiter, the login throttle) says so once per interval, with the cause
and how many requests passed unchecked, counts every failure in
``innera_redis_errors_total``, and says when Redis is back."""

from __future__ import annotations

import logging

import trio

from innera.redis import Redis

__all__ = ["FailOpen"]

log = logging.getLogger("innera.guards")


class FailOpen:
    """The outage record of one guard (``what``: e.g. "rate limiting"; ``unit``: what
    passes unchecked, e.g. "requests")."""

    def __init__(self, redis: Redis, what: str, unit: str, *, interval_s: float = 60.0,
                 logger: logging.Logger = log) -> None:
        self._redis = redis
        self._log = logger
        self.what, self.unit = what, unit
        self.interval_s = interval_s
        self.unchecked = 0  # passed unchecked since the last warning
        self.last_warning: float | None = None  # trio.current_time() of it; None: healthy

    @property
    def failing(self) -> bool:
        return self.last_warning is not None

    def failed(self, exc: BaseException) -> None:
        """One check that could not be made: once per interval the full ``record_error``
        (its log line names the cause) and a warning; in between only the metric."""
        self.unchecked += 1
        now = trio.current_time()
        if self.last_warning is None or now - self.last_warning >= self.interval_s:
            self._redis.record_error(exc)
            self._log.warning("%s disabled: Redis unavailable (%d %s passed unchecked since last "
                        "warning)", self.what, self.unchecked, self.unit)
            self.unchecked = 0
            self.last_warning = now
            return
        hook = self._redis.on_error
        if hook is not None:
            try:
                hook(exc)
            except Exception:
                self._log.exception("redis on_error hook failed")

    def recovered(self) -> None:
        """A check went through again (call it only while :attr:`failing`)."""
        self._log.info("%s restored: Redis is reachable again (%d %s passed unchecked since last "
                 "warning)", self.what, self.unchecked, self.unit)
        self.unchecked = 0
        self.last_warning = None
