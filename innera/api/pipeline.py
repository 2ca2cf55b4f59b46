"""The rules every request gets, written once: the request id, the security headers (and
CORS), the request metric, the access log line, the error body, the Sentry scope and the
Sentry transaction.

Three entries serve requests and all of them follow these rules through this module:

- the Quart app (``innera/app.py``): its before/after-request hooks and error handlers;
- the framework-free routes ``/health`` and ``/metrics`` (:mod:`innera.api.plain`);
- the WebSocket endpoint ``/v1/ws`` (:mod:`innera.api.ws`): its handshake (request id, security
  headers, metric and log line; refusals in the error contract) and the
  Sentry scope of each socket.

The rules:

1. a fresh request id (UUID4) per HTTP request, bound to every log line of the request
   (:meth:`Pipeline.begin`) and echoed as ``X-Request-Id``; errors carry it as
   ``requestId`` (:func:`error_json`), a WebSocket handshake's refusal too;
2. the security headers on every HTTP response (:data:`SECURITY_HEADERS`; ``Cache-Control:
   no-store`` under ``/v1/``; HSTS in production, where TLS ends at the load balancer);
   CORS for the origins in ``CORS_ORIGINS`` (:meth:`Pipeline.complete`; a request with an
   ``Origin`` header always goes to the framework);
3. one completion: the route metrics and one access log line (:meth:`Pipeline.finish`);
   successful ``/metrics`` scrapes are not counted, their 401s are;
4. an unexpected error is reported to Sentry from a scope of its own, with the request's
   id, user, URL and method (:func:`report_request_error`); a socket runs in an isolation
   scope tagged with its user (:func:`socket_scope`, :func:`report_socket_error`);
5. with tracing on (:mod:`innera.observability.tracing`), one Sentry transaction per HTTP
   request and one per WebSocket session, started around the whole ASGI call
   (:meth:`Pipeline.transaction`, which :class:`innera.app.Router` enters for every request
   of both HTTP servers) and named by the route template, with the status and the user, at
   the completion (:meth:`Pipeline.finish`). Paths under ``SENTRY_TRACES_SAMPLER``'s
   prefixes (``/health``, ``/metrics``) get none.

Everything that depends only on the settings is computed once, per app (:class:`Pipeline`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from quart import Request, Response

from innera.api.framework import extend_headers
from innera.config import Settings
from innera.errors import AppError, error_body
from innera.guards.client_ip import UntrustedForwardedFor
from innera.guards.ratelimit import Decision
from innera.ids import new_uuid4
from innera.observability import sentry, tracing
from innera.observability.logging import bind_request, log_request_completed
from innera.observability.metrics import Metrics

__all__ = ["CORS_ALLOWED_HEADERS", "CORS_EXPOSED", "SECURITY_HEADERS", "Pipeline",
           "app_error_body", "asgi_json_headers", "error_json", "internal_error_body",
           "report_request_error", "report_socket_error", "security_headers", "socket_scope"]

log = logging.getLogger("innera.app")
log_socket = logging.getLogger("innera.realtime")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
CORS_EXPOSED = ("X-Request-Id, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
                "Retry-After, Idempotent-Replayed")
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Reauth-Token"
CORS_ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_MAX_AGE_S = "600"

#: the route whose successful answers (scrapes) are not counted
METRICS_ROUTE = "/metrics"
#: what an untraced request runs in (reusable: it holds nothing)
_UNTRACED: AbstractContextManager[None] = nullcontext()


def security_headers(production: bool, api: bool) -> list[tuple[str, str]]:
    """The security headers of a response: under ``/v1/`` (``api``) with ``Cache-Control:
    no-store``; in ``production`` with HSTS."""
    headers = list(SECURITY_HEADERS.items())
    if api:
        headers.append(("Cache-Control", "no-store"))
    if production:  # TLS ends at the load balancer in production
        headers.append(HSTS)
    return headers


def error_json(code: str, message: str, request_id: str | None) -> bytes:
    """The error contract's body (:func:`innera.errors.error_body`) as compact JSON."""
    return json.dumps(error_body(code, message, request_id), separators=(",", ":")).encode()


def asgi_json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """``Content-Type`` and ``Content-Length`` of a JSON body, as ASGI headers."""
    return [(b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]


class Pipeline:
    """The rules of :mod:`innera.api.pipeline` for one app: what depends on the settings is
    computed here once."""

    __slots__ = ("_observe", "asgi_api_security", "asgi_security", "cors_origins",
                 "forwarded_for", "security")

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        #: (name, value, lower-case name) per "is this an API path" (under ``/v1/``)
        self.security: dict[bool, list[tuple[str, str, str]]] = {
            api: [(name, value, name.lower())
                  for name, value in security_headers(settings.production, api)]
            for api in (False, True)}
        #: the security headers of a non-API path as ASGI headers (``/health``, ``/metrics``)
        self.asgi_security: list[tuple[bytes, bytes]] = [
            (lower.encode(), value.encode()) for _, value, lower in self.security[False]]
        #: those of an API path (under ``/v1/``) as ASGI headers
        self.asgi_api_security: list[tuple[bytes, bytes]] = [
            (lower.encode(), value.encode()) for _, value, lower in self.security[True]]
        #: one warning when X-Forwarded-For arrives while TRUST_PROXY=0 (it is ignored)
        self.forwarded_for = UntrustedForwardedFor(settings.server.trust_proxy)
        self.cors_origins: tuple[str, ...] = settings.server.cors_origins
        self._observe = metrics.observe_request

    @staticmethod
    def transaction(scope: Mapping[str, Any]) -> AbstractContextManager[None]:
        """The Sentry transaction to serve this ASGI ``scope`` (an HTTP request or a
        WebSocket session) in; when it is not traced (tracing off, a lifespan scope, an
        untraced path) a shared no-op: nothing is made."""
        if not tracing.SWITCH.on or scope["type"] not in ("http", "websocket") \
                or not tracing.traced_path(scope["path"]):
            return _UNTRACED
        return tracing.server_transaction(scope)

    @staticmethod
    def begin() -> str:
        """A new request id, bound to every log line of the current request."""
        request_id = new_uuid4()
        bind_request(request_id)
        return request_id

    def finish(self, method: str, route: str | None, path: str, query_string: bytes,
               request_id: str, user_id: str | None, status: int, started: float) -> None:
        """The route metrics and the access log line of a request answered with ``status``
        (``started``: ``time.perf_counter()`` when it arrived; ``route``: its route
        template, None when none matched). A successful ``/metrics`` scrape is not counted.
        A traced request's transaction gets its name, status and user here."""
        if tracing.SWITCH.on:
            tracing.set_request_outcome(method, route, status, user_id)
        if route == METRICS_ROUTE and status == 200:
            return
        elapsed = time.perf_counter() - started
        self._observe(method, route, status, elapsed)
        log_request_completed(method, path, query_string, request_id, user_id, status, elapsed)

    def complete(self, request: Request, response: Response, request_id: str,
                 rate_limit: Decision | None) -> None:
        """A framework response's headers: ``X-Request-Id`` (replacing the route's own), the
        rate limit's (``rate_limit``: the request's decision, if one was made) and the
        security headers where the route set none of the same name; then CORS."""
        # One pass over the response's headers, then one extend: werkzeug's setdefault
        # scans them all for every header added.
        headers = response.headers
        present = {name.lower() for name in headers.keys()}
        added = []
        if "x-request-id" in present:
            headers["X-Request-Id"] = request_id
        else:
            added.append(("X-Request-Id", request_id))
        if rate_limit is not None:
            added += [(name, value) for name, value in rate_limit.headers().items()
                      if name.lower() not in present]
        added += [(name, value) for name, value, lower
                  in self.security[request.path.startswith("/v1/")] if lower not in present]
        extend_headers(headers, added)  # no per-item check: our names and values
        if self.cors_origins:
            self._add_cors(request, response)

    def _add_cors(self, request: Request, response: Response) -> None:
        """CORS for the origins in CORS_ORIGINS (``*``: any). Preflights are answered by
        Quart's automatic OPTIONS response, completed here."""
        allowed = self.cors_origins
        origin = request.headers.get("origin")
        if not origin:
            return
        headers = response.headers
        if "*" in allowed:
            headers["Access-Control-Allow-Origin"] = "*"
        elif origin.rstrip("/") in allowed:
            headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        else:
            return
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        if request.method == "OPTIONS" and request.headers.get("access-control-request-method"):
            headers["Access-Control-Allow-Methods"] = CORS_ALLOWED_METHODS
            headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
            headers["Access-Control-Max-Age"] = CORS_MAX_AGE_S


def app_error_body(error: AppError, request_id: str) -> dict[str, Any]:
    """The body of an :class:`~innera.errors.AppError`'s answer; a 5xx one is logged as a
    warning (no traceback: it is an expected refusal, e.g. a dependency that timed out)."""
    if error.status >= 500:
        log.warning("request failed: %s %s", error.code, error.message)
    return error.body(request_id)


def internal_error_body(request_id: str) -> dict[str, Any]:
    """The body of an unexpected error's 500: it reveals nothing."""
    return error_body("internal_error", "Internal server error", request_id)


def report_request_error(error: BaseException, *, request_id: str, user_id: str | None,
                         method: str, path: str, url: str, headers: Mapping[str, str]
                         ) -> None:
    """An unexpected error of an HTTP request: logged with its traceback and reported to
    Sentry from a scope of its own (the request's id, user, URL, method and headers)."""
    log.error("unhandled error in %s %s", method, path, exc_info=error)
    sentry.capture_request_exception(error, request_id=request_id, user_id=user_id, url=url,
                                     method=method, headers=dict(headers))


def socket_scope(user_id: str) -> AbstractContextManager[None]:
    """The Sentry isolation scope one WebSocket runs in, tagged with its user."""
    return sentry.task_scope(task="websocket", user_id=user_id)


def report_socket_error(error: BaseException, user_id: str) -> None:
    """An unexpected error of a WebSocket: logged with its traceback, reported to Sentry."""
    log_socket.exception("websocket of user %s failed", user_id, exc_info=error)
    sentry.capture_task_exception(error, task="websocket")
