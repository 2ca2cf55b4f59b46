"""Error tracking with Sentry (spec: infrastructure.md, "Error Tracking — Sentry").

Initialised only when ``SENTRY_DSN`` is set. Every event goes through :func:`scrub_event`
(the ``before_send``) which deletes credential headers, redacts secret fields at any depth
and drops expected errors (:class:`innera.errors.AppError`), so nothing secret or
user-identifying leaves the process. Frames never carry local variables.

Trio: sentry-sdk has no Trio integration and needs none. Its scopes live in contextvars
and Trio gives every task a *copy* of its parent's context at spawn — but a copy of the
*references*: sibling tasks see the same ``Scope`` object until one of them forks it.
Hence :func:`task_scope` / :func:`capture_task_exception`, which fork an isolation scope
so tags set in one task never show up in another. Sending happens on the SDK's own
background thread (plain ``threading``); nothing here touches asyncio.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sentry_sdk
import trio
from sentry_sdk.integrations.atexit import AtexitIntegration
from sentry_sdk.integrations.dedupe import DedupeIntegration
from sentry_sdk.integrations.excepthook import ExcepthookIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from innera.errors import AppError

REDACTED = "[REDACTED]"


def _norm(key: str) -> str:
    """``refreshToken``, ``refresh_token`` and ``Refresh-Token`` are the same key."""
    return key.lower().replace("_", "").replace("-", "")


# Request headers that are deleted outright.
_SECRET_HEADERS = frozenset(
    _norm(h)
    for h in (
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-reauth-token",
        "idempotency-key",
    )
)
# Keys whose values become "[REDACTED]" at any depth of request data, extra, contexts,
# tags and breadcrumb data (header names included: headers copied into `extra` count too).
_SECRET_KEYS = (
    frozenset(
        _norm(k)
        for k in (
            "code",
            "codeVerifier",
            "identityToken",
            "refreshToken",
            "accessToken",
            "token",
            "password",
            "email",
        )
    )
    | _SECRET_HEADERS
)


def init_sentry(
    dsn: str | None,
    *,
    environment: str,
    release: str,
    traces_sample_rate: float = 0.1,
    transport: Any = None,
) -> bool:
    """Initialise the SDK; ``False`` (and nothing initialised) when there is no DSN.

    ``transport`` is a ``sentry_sdk.transport.Transport`` instance (tests pass a capturing
    one); ``None`` means the SDK's HTTP transport.
    """
    if not dsn:
        return False
    if not 0.0 <= traces_sample_rate <= 1.0:
        raise ValueError(f"traces_sample_rate must be within [0, 1], got {traces_sample_rate}")
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        traces_sample_rate=traces_sample_rate,
        # send_default_pii stays at its default, off: sentry-sdk >= 2.7x deprecates passing
        # it at all (DeprecationWarning) in favour of `data_collection`, which 2.20 lacks.
        include_local_variables=False,  # tracebacks never carry locals
        max_request_body_size="never",  # we never attach bodies ourselves
        before_send=scrub_event,
        ignore_errors=[AppError],  # the before_send drops them too
        in_app_include=["innera", "workers"],
        # No request sessions without a web-framework integration; no SessionFlusher thread.
        auto_session_tracking=False,
        # Never talk to a Spotlight sidecar, whatever SENTRY_SPOTLIGHT says.
        spotlight=False,
        transport=transport,
        # `default_integrations=False` also disables every auto-enabling integration
        # (Quart, Boto3, Redis, httpx, ...). Deliberately left out:
        # - Quart / ASGI: the app reports non-AppErrors itself via
        #   capture_request_exception; QuartIntegration would report them a second time
        #   from Quart's got_request_exception signal, wrap every request in its ASGI
        #   middleware and attach request data we would rather choose ourselves.
        # - Asyncio: not a default, never enabled: Trio runs the loop here.
        # - Stdlib: patches http.client (boto3/urllib3) and subprocess.Popen; with tracing
        #   on it injects sentry-trace/baggage headers into every outgoing request (S3 too)
        #   and SENTRY_* variables into child processes.
        # - Threading: patches Thread.start globally; trio.to_thread already runs the
        #   function in a copy of the caller's context, so scopes follow without it.
        # - Argv: would send sys.argv (command lines can carry secrets) as extra.
        # - Modules: scans every installed distribution on the first event, blocking
        #   the Trio thread; the release already identifies the build.
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            # Drop a second report of the very same exception object.
            DedupeIntegration(),
            # Report a crash of the main thread (trio.run raising) ...
            ExcepthookIntegration(),
            # ... and still deliver it: flushes the queue when the interpreter exits.
            AtexitIntegration(),
            # Log records become breadcrumbs only, never events of their own.
            LoggingIntegration(level=logging.INFO, event_level=None, sentry_logs_level=None),
        ],
    )
    return True


def capture_request_exception(
    exc: BaseException,
    *,
    request_id: str,
    user_id: str | None,
    url: str,
    method: str,
    headers: Mapping[str, str] | None = None,
) -> str | None:
    """Report an unexpected exception of an HTTP request; the event id, or ``None``."""
    request: dict[str, Any] = {"url": url, "method": method}
    if headers is not None:
        request["headers"] = _headers_dict(headers)

    def add_request(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        event["request"] = {**event.get("request", {}), **request}
        return event

    # A scope of our own: the extras and the processor end with this call.
    with sentry_sdk.new_scope() as scope:
        scope.set_extra("requestId", request_id)
        scope.set_extra("userId", user_id)
        scope.set_extra("url", url)
        scope.set_extra("method", method)
        scope.add_event_processor(add_request)
        return sentry_sdk.capture_exception(exc)


@contextmanager
def task_scope(**tags: str) -> Iterator[None]:
    """An isolation scope for one Trio task (a job, a websocket): tags set inside only.

    Enter and leave it in the same task. Tasks spawned inside it share its scope object
    (a contextvar copy holds the same reference): give each its own ``task_scope``.
    """
    if not sentry_sdk.is_initialized():  # no reporting: no scope (~4 KiB per WebSocket)
        yield
        return
    with sentry_sdk.isolation_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        yield


def capture_task_exception(exc: BaseException, **tags: str) -> str | None:
    """Report ``exc`` from its own isolation scope tagged with ``tags`` (queue, job_id, ...).

    Tags of an enclosing :func:`task_scope` are kept; nothing leaks out of the call.
    """
    with sentry_sdk.isolation_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        return sentry_sdk.capture_exception(exc)


def flush(timeout_s: float = 2.0) -> None:
    """Wait up to ``timeout_s`` for queued events to be sent. Blocks: run it in a thread."""
    sentry_sdk.flush(timeout=timeout_s)


# --------------------------------------------------------------------------- before_send


def scrub_event(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """The ``before_send``: drop expected errors, remove secrets. Never raises by design;
    should it, the SDK drops the event (fails closed)."""
    exc_info = hint.get("exc_info") if hint else None
    if exc_info and exc_info[1] is not None and _is_expected(exc_info[1]):
        return None

    request = event.get("request")
    if isinstance(request, dict):
        if "headers" in request:
            request["headers"] = _scrub_headers(request["headers"])
        request.pop("cookies", None)
        if "data" in request:
            request["data"] = _scrub_body(request["data"])
        if isinstance(request.get("url"), str):
            request["url"] = _scrub_url(request["url"])
        if isinstance(request.get("query_string"), str):
            request["query_string"] = _scrub_query(request["query_string"])

    for key in ("extra", "contexts", "tags"):
        if key in event:
            event[key] = _scrub(event[key])
    extra = event.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("url"), str):
        extra["url"] = _scrub_url(extra["url"])

    breadcrumbs = event.get("breadcrumbs")
    values = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    if isinstance(values, list):
        for crumb in values:
            if isinstance(crumb, dict) and "data" in crumb:
                crumb["data"] = _scrub(crumb["data"])
    return event


def _is_expected(exc: BaseException) -> bool:
    """AppErrors are answers, not bugs. KeyboardInterrupt (seen by the excepthook on
    Ctrl-C) and a stray trio.Cancelled are not bugs of ours either. A group is expected
    only when every exception in it is."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_expected(e) for e in exc.exceptions)
    return isinstance(exc, AppError | KeyboardInterrupt | trio.Cancelled)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _norm(k) in _SECRET_KEYS else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _scrub_headers(headers: Any) -> Any:
    if isinstance(headers, dict):
        return {k: v for k, v in headers.items() if _norm(str(k)) not in _SECRET_HEADERS}
    if isinstance(headers, list):  # [[name, value], ...]
        return [
            h
            for h in headers
            if not (isinstance(h, list | tuple) and h and _norm(str(h[0])) in _SECRET_HEADERS)
        ]
    return REDACTED


def _scrub_body(data: Any) -> Any:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return REDACTED  # a raw body we cannot inspect is not sent
    return _scrub(data)


def _scrub_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_norm(k) in _SECRET_KEYS for k, _ in pairs):
        return query
    return urlencode([(k, REDACTED if _norm(k) in _SECRET_KEYS else v) for k, v in pairs])


def _scrub_url(url: str) -> str:
    """``wss://host/ws?token=...`` → ``wss://host/ws?token=%5BREDACTED%5D``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.query:
        return url
    return urlunsplit(parts._replace(query=_scrub_query(parts.query)))


def _headers_dict(headers: Mapping[str, str]) -> dict[str, str]:
    """Repeated headers (a werkzeug ``Headers``) are joined, as HTTP allows."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        out[name] = f"{out[name]}, {value}" if name in out else str(value)
    return out
