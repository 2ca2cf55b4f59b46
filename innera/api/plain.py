"""Operational routes served without the framework: ``GET|HEAD /health`` and ``/metrics``.

Uptime monitors and Prometheus hit these all day; through Quart each cost the framework's
per-request machinery (contexts, routing, Request/Response objects) for a constant answer.
Here they are plain ASGI, following the same rules as the API's responses
(:mod:`innera.api.pipeline`): ``X-Request-Id``, the security headers, the request metric
and the access log line. A request with an
``Origin`` header (a browser, which needs CORS) or any other method goes to Quart as before.
``/health/ready`` stays in Quart: its dependency checks cost far more than the framework.

With ``METRICS_TOKEN`` set, ``/metrics`` answers only requests carrying
``Authorization: Bearer <METRICS_TOKEN>`` (compared in constant time: both sides are hashed,
so not even the length leaks); any other gets 401 ``unauthorized`` in the error contract
(:func:`metrics_authorized`, shared with the framework's ``/metrics`` route).

With ``METRICS_PORT`` set, ``/metrics`` is served on that port only
(:func:`serve_metrics_port`, the app of :mod:`innera.http.metrics_port`; the token applies
there too) and the public port answers it 404 like any unknown path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from innera.api.health import HEALTH_JSON
from innera.api.operation import PlainOperation, declare_plain
from innera.api.pipeline import Pipeline, error_json
from innera.auth.access_tokens import bearer_token
from innera.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from innera.services import Services

PATHS = frozenset({"/health", "/metrics"})
METRICS_PATH = "/metrics"
#: the 401's message, here and on the framework's ``/metrics`` route
METRICS_UNAUTHORIZED = "GET /metrics needs the metrics token (Authorization: Bearer)"
_LIVENESS = json.dumps({"status": "pass"}, separators=(",", ":")).encode()

declare_plain(PlainOperation(
    "GET", METRICS_PATH, operation_id="getMetrics", tag="operations",
    summary="Prometheus metrics",
    description="Open unless METRICS_TOKEN is set; then it needs `Authorization: Bearer "
                "<METRICS_TOKEN>`. With METRICS_PORT set it is served on that port only "
                "(here: 404).",
    responses={200: ("The metrics, in Prometheus' text format", "text/plain",
                     {"type": "string"})},
    errors={401: "`unauthorized`: METRICS_TOKEN is set and the request does not carry it",
            404: "`not_found`: METRICS_PORT is set: the metrics are served on that port"},
    bearer=True))

Send = Callable[[dict[str, Any]], Awaitable[None]]


def metrics_authorized(token: str | None, authorization: str | None) -> bool:
    """Whether a request with this ``Authorization`` header may read ``/metrics``: always
    when ``token`` (``METRICS_TOKEN``) is unset, else only with ``Bearer <token>``."""
    if token is None:
        return True
    given = bearer_token(authorization)
    if given is None:
        return False
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(token.encode()).digest())


def handles(scope: dict[str, Any], *, metrics: bool = True) -> bool:
    """Whether :func:`serve` answers this request (else the framework does);
    ``metrics=False``: not ``/metrics`` (it is served on METRICS_PORT)."""
    if scope["type"] != "http" or scope["path"] not in PATHS:
        return False
    if not metrics and scope["path"] == METRICS_PATH:
        return False
    if scope["method"] not in ("GET", "HEAD"):
        return False
    return not any(name == b"origin" for name, _ in scope["headers"])


async def serve(svc: Services, pipeline: Pipeline, scope: dict[str, Any], send: Send
                ) -> None:
    """Answer a request :func:`handles` accepted (its body, if any, is ignored). The metric
    and the log line are written before the response goes out, as the framework's
    after-request hook does."""
    started = time.perf_counter()
    request_id = pipeline.begin()
    status, extra = 200, []
    if scope["path"] == "/health":
        body, content_type = _LIVENESS, HEALTH_JSON
    elif metrics_authorized(svc.settings.observability.metrics_token,
                            _header(scope, b"authorization")):
        body, content_type = svc.metrics.render(), METRICS_CONTENT_TYPE
    else:
        status, extra = 401, [(b"www-authenticate", b"Bearer")]
        body = error_json("unauthorized", METRICS_UNAUTHORIZED, request_id)
        content_type = "application/json"
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode()), *extra, *pipeline.asgi_security]
    path = scope["path"]  # the route: only the two paths above come here
    pipeline.finish(scope["method"], path, path, scope["query_string"], request_id, None,
                    status, started)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body})


async def serve_metrics_port(svc: Services, pipeline: Pipeline, scope: dict[str, Any],
                             send: Send) -> None:
    """A request on the metrics port: ``GET|HEAD /metrics`` and ``/health`` as on the public
    port (:func:`serve`; an ``Origin`` header changes nothing, no CORS here); any other path
    404 ``not_found``, any other method 405 ``method_not_allowed``, in the error contract."""
    if scope["path"] in PATHS and scope["method"] in ("GET", "HEAD"):
        await serve(svc, pipeline, scope, send)
        return
    started = time.perf_counter()
    request_id = pipeline.begin()
    if scope["path"] in PATHS:
        status, code = 405, "method_not_allowed"
        message = "This method is not allowed on this URL"
        extra = [(b"allow", b"GET, HEAD")]
        route: str | None = scope["path"]
    else:
        status, code = 404, "not_found"
        message = "The metrics port serves /metrics and /health only"
        extra, route = [], None
    body = error_json(code, message, request_id)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode()), *extra, *pipeline.asgi_security]
    pipeline.finish(scope["method"], route, scope["path"], scope["query_string"], request_id,
                    None, status, started)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
