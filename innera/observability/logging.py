"""Logging: JSON lines on stdout through one structlog pipeline.

innera's own loggers and every library logger (hypercorn, psycopg, coredis, trio, …) end in
the same processors: context variables bound for the current request (``requestId``,
``userId``), level, logger name, time, exception text (never local variables), then
redaction, then JSON.

Redaction (censor ``[REDACTED]``) follows the spec's pino paths: exact paths such as
``req.headers.authorization``, and wildcard names (``*.password`` …) which match a key of
that name at any depth. It runs on every line, exceptions included.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

CENSOR = "[REDACTED]"

#: The spec's redact paths (pino syntax) as key tuples.
REDACT_PATHS: tuple[tuple[str, ...], ...] = (
    ("req", "headers", "authorization"),
    ("req", "headers", "cookie"),
    ("req", "headers", "x-reauth-token"),
    ("req", "headers", "idempotency-key"),
    ("req", "body", "code"),
    ("req", "body", "codeVerifier"),
    ("req", "body", "identityToken"),
    ("req", "body", "refreshToken"),
    ("res", "headers", "set-cookie"),
    # innera's own: journal content is encrypted at rest, so it stays out of the logs too
    ("req", "body", "title"),
    ("req", "body", "body"),
    ("req", "body", "tags"),
    ("req", "body", "mood"),
)
#: query parameters whose values never reach a log line (search terms are journal content)
HIDDEN_QUERY_PARAMS = frozenset({"q", "access_token"})
#: ``*.email``, ``*.password``, … : a key of that name at any depth.
REDACT_ANYWHERE = frozenset({"email", "password", "token", "accessToken", "refreshToken"})

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}


def loggable_url(path: str, query_string: bytes) -> str:
    """``path?query`` with the values of :data:`HIDDEN_QUERY_PARAMS` censored."""
    if not query_string:
        return path
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    shown = [(k, CENSOR if k in HIDDEN_QUERY_PARAMS else v) for k, v in pairs]
    return f"{path}?{urlencode(shown, safe='[]')}"


def redact(value: Any) -> Any:
    """A copy of ``value`` with every redact path and wildcard name censored."""
    value = _redact_anywhere(value)
    if isinstance(value, MutableMapping):
        for path in REDACT_PATHS:
            _censor_path(value, path)
    return value


def _redact_anywhere(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: CENSOR if k in REDACT_ANYWHERE and v is not None else _redact_anywhere(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_anywhere(v) for v in value]
    return value


def _censor_path(obj: MutableMapping[str, Any], path: tuple[str, ...]) -> None:
    head, *rest = path
    if not isinstance(obj, MutableMapping) or head not in obj:
        return
    if not rest:
        obj[head] = CENSOR
        return
    child = obj[head]
    if isinstance(child, MutableMapping):
        if len(rest) == 1:  # the last key (a header name): matched case-insensitively
            for key in list(child):
                if isinstance(key, str) and key.lower() == rest[0].lower():
                    child[key] = CENSOR
        else:
            _censor_path(child, tuple(rest))


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return redact(event)


def _level_name(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    level = event.get("level")
    if level == "warning":
        event["level"] = "warn"
    elif level == "critical":
        event["level"] = "fatal"
    return event


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger (ours and the libraries') to JSON lines on ``stream`` (stdout)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _level_name,
            # plain traceback text: never local variables
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            _redact_processor,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Libraries log through the same root handler; keep their chatter at the chosen level,
    # except per-request access noise that innera logs itself.
    for noisy in ("hpack", "h11", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


#: the per-request lines (the spec's pino-http logger)
access_log = logging.getLogger("innera.request")


def log_request_completed(method: str, path: str, query_string: bytes, request_id: str,
                          user_id: str | None, status: int, elapsed_s: float) -> None:
    """The one completion line per request (the framework's after-request hook and the
    framework-free routes both write it); nothing is formatted when it is not logged."""
    if access_log.isEnabledFor(logging.INFO):
        url = loggable_url(path, query_string)
        access_log.info("request completed", extra={
            "req": {"method": method, "url": url, "requestId": request_id, "userId": user_id},
            "res": {"statusCode": status},
            "responseTime": round(elapsed_s * 1000, 2),
        })


def bind_request(request_id: str) -> None:
    """Bind ``requestId`` to every line logged while serving the current request, and forget
    the previous request's ``userId`` (a keep-alive connection's requests can share a task).
    These two are all innera binds, so this is ``clear_contextvars()`` without its walk over
    every context variable of the task (an ``Ellipsis`` value is structlog's "unbound")."""
    structlog.contextvars.bind_contextvars(requestId=request_id, userId=...)


def bind_user(user_id: str) -> None:
    """Authenticated requests carry ``userId`` on every line (the spec's child logger)."""
    structlog.contextvars.bind_contextvars(userId=user_id)
