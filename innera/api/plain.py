"""Operational routes served without the framework: ``GET|HEAD /health`` and ``/metrics``.

Uptime monitors and Prometheus hit these all day; through Quart each cost the framework's
per-request machinery (contexts, routing, Request/Response objects) for a constant answer.
Here they are plain ASGI, with the same contract as the API's responses: ``X-Request-Id``,
the security headers, the request metric and the access log line. A request with an
``Origin`` header (a browser, which needs CORS) or any other method goes to Quart as before.
``/health/ready`` stays in Quart: its dependency checks cost far more than the framework.

With ``METRICS_TOKEN`` set, ``/metrics`` answers only requests carrying
``Authorization: Bearer <METRICS_TOKEN>`` (compared in constant time: both sides are hashed,
so not even the length leaks); any other gets 401 ``unauthorized`` in the error contract
(:func:`metrics_authorized`, shared with the framework's ``/metrics`` route).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from innera.api.health import HEALTH_JSON
from innera.auth.access_tokens import bearer_token
from innera.errors import error_body
from innera.ids import new_uuid4
from innera.observability.logging import bind_request, log_request_completed
from innera.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from innera.services import Services

PATHS = frozenset({"/health", "/metrics"})
_LIVENESS = json.dumps({"status": "pass"}, separators=(",", ":")).encode()

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


def handles(scope: dict[str, Any]) -> bool:
    """Whether :func:`serve` answers this request (else the framework does)."""
    if scope["type"] != "http" or scope["path"] not in PATHS:
        return False
    if scope["method"] not in ("GET", "HEAD"):
        return False
    return not any(name == b"origin" for name, _ in scope["headers"])


async def serve(svc: Services, scope: dict[str, Any], send: Send,
                security_headers: list[tuple[bytes, bytes]]) -> None:
    """Answer a request :func:`handles` accepted (its body, if any, is ignored)."""
    started = time.perf_counter()
    request_id = new_uuid4()
    bind_request(request_id)
    status, extra = 200, []
    if scope["path"] == "/health":
        body, content_type = _LIVENESS, HEALTH_JSON
    elif metrics_authorized(svc.settings.observability.metrics_token,
                            _header(scope, b"authorization")):
        body, content_type = svc.metrics.render(), METRICS_CONTENT_TYPE
    else:
        status, extra = 401, [(b"www-authenticate", b"Bearer")]
        body = json.dumps(error_body("unauthorized", "GET /metrics needs the metrics token "
                                     "(Authorization: Bearer)", request_id),
                          separators=(",", ":")).encode()
        content_type = "application/json"
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode()), *extra, *security_headers]
    if status != 200 or scope["path"] == "/health":  # as the framework: scrapes not counted
        _observe(svc, scope, request_id, status, time.perf_counter() - started)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _observe(svc: Services, scope: dict[str, Any], request_id: str, status: int,
             elapsed: float) -> None:
    """The request metric and the access log line, before the response goes out (as the
    framework's after-request hook does)."""
    svc.metrics.observe_request(scope["method"], scope["path"], status, elapsed)
    log_request_completed(scope["method"], scope["path"], scope["query_string"], request_id,
                          None, status, elapsed)
