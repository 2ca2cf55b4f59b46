"""The Quart (Trio) application: blueprints, error handlers and per-request middleware.

Order of what wraps a request (the rules themselves, shared with the framework-free routes
and the WebSocket endpoint, are :mod:`innera.api.pipeline`'s):
1. a fresh request id (UUID4), bound to every log line of the request and echoed as
   ``X-Request-Id``; the start time for the route metrics;
2. the route (blueprints under ``innera/api/``);
3. errors → the contract in ``innera/errors.py``: AppError subclasses keep their status and
   code, werkzeug's HTTP errors are mapped to codes, anything else is a 500
   ``internal_error`` that reveals nothing (and goes to Sentry);
4. the security headers (and CORS), one completion log line and the route metrics
   (``/metrics`` scrapes themselves are not counted; its 401s are).

``/metrics`` is served here unless ``METRICS_PORT`` is set; then only on that port, whose
app is :class:`MetricsPortRouter`.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, NoReturn

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from innera import json_input
from innera.api import (
    attachments,
    auth,
    devices,
    entries,
    exports,
    health,
    imports,
    me,
    notifications,
    openapi,
    plain,
    search,
    ws,
)
from innera.api.bodies import StreamingUploadRequest
from innera.api.context import json_response, services
from innera.api.direct import DirectRoutes
from innera.api.framework import TrimmedQuart, current_g, current_request
from innera.api.operation import OPERATIONS, PlainOperation, declare_plain
from innera.api.pipeline import (
    Pipeline,
    app_error_body,
    internal_error_body,
    report_request_error,
)
from innera.errors import AppError, InvalidJson, Unauthorized, error_body
from innera.ids import new_uuid4
from innera.observability.logging import access_log, loggable_url
from innera.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from innera.services import Services

__all__ = ["MetricsPortRouter", "Router", "create_app", "create_asgi", "json_response",
           "services"]

log = logging.getLogger("innera.app")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "rate_limited",
}
_HTTP_MESSAGES = {
    404: "No route matches this URL",
    405: "This method is not allowed on this URL",
    413: "The request body is too large",
}


class UpgradeRequired(AppError):
    """``/v1/ws`` asked for without the WebSocket handshake."""

    status, code = 426, "upgrade_required"
    message = "GET /v1/ws is a WebSocket: send the upgrade handshake (Upgrade: websocket)"

    def __init__(self) -> None:
        super().__init__(headers={"Upgrade": "websocket"})


# The WebSocket endpoint (innera/api/ws.py), as the OpenAPI document describes it.
declare_plain(PlainOperation(
    "GET", ws.PATH, operation_id="connectRealtime", tag="realtime",
    summary="WebSocket: events for the signed-in user's devices",
    description="Authenticate with `Authorization: Bearer` or `?access_token=`. Server "
                "messages are `{id, type, data}` events (`entry.*`, `notification.created`, "
                "`job.progress`) and `{type: \"ping\"}`; `?since=<id>` first replays the "
                "events after that id, or sends `{type: \"resync_required\"}` (re-fetch over "
                "REST). Send `{\"type\": \"ping\"}` for a pong. Close "
                "codes: 4000 server restarting, 4001 token expired or session ended, 4002 "
                "ping timeout, 4003 account deleted, 4008 too many connections (the oldest "
                "socket closes), 1009 message over 64 KiB, 1013 client too slow. Refusals "
                "happen during the handshake, as HTTP answers in the error contract.",
    parameters=[{"name": "access_token", "in": "query", "required": False,
                 "description": "The access token, for clients that cannot set headers",
                 "schema": {"type": "string"}},
                {"name": "since", "in": "query", "required": False,
                 "description": "Opaque: the `id` of the last event the client got (a "
                                "malformed or unknown one gets `resync_required`, not a "
                                "refusal)",
                 "schema": {"type": "string"}}],
    responses={101: ("Switching protocols: the socket is open", None, None)},
    errors={400: "`bad_request`: an invalid WebSocket handshake (not an HTTP/1.1 GET, or a "
                 "bad Sec-WebSocket-Key)",
            401: "`unauthorized`: no access token, or an invalid or expired one, or the "
                 "session ended",
            426: "`upgrade_required`: a plain HTTP request, without the WebSocket handshake",
            429: "`rate_limited`: more than RATE_LIMIT_WS handshakes of this user, or of this "
                 "client IP (Retry-After)"},
    bearer=True))


class InneraRequest(StreamingUploadRequest):
    """Quart's request, with the error contract for bad JSON and streamed uploads (local
    attachment PUTs; import files, whose body — and ``max_content_length`` — is bounded by
    IMPORT_MAX_BYTES instead of MAX_BODY_BYTES: ``create_app`` sets :attr:`import_max_bytes`
    on a per-app subclass)."""

    import_max_bytes: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if imports.is_import_upload(self.method, self.path):
            self.body = self.body_class(None, self.import_max_bytes)
            self.max_content_length = self.import_max_bytes

    def on_json_loading_failed(self, error: Exception | None) -> NoReturn:
        raise InvalidJson()

    @property
    def blueprints(self) -> list[str]:
        """Quart's, cached per endpoint: Quart asks for it three times per request and
        imports and splits each time."""
        return _blueprints_of(self.endpoint)


@functools.cache
def _blueprints_of(endpoint: str | None) -> list[str]:
    if endpoint is None or "." not in endpoint:
        return []
    name = endpoint.rsplit(".", 1)[0]
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


#: at LOG_LEVEL=debug, JSON bodies up to this size are logged (redacted)
DEBUG_BODY_MAX_BYTES = 64 * 1024


def _url() -> str:
    return loggable_url(request.path, request.query_string)


class Router:
    """The ASGI application innera serves: ``/v1/ws`` sockets go straight to the realtime
    endpoint (:mod:`innera.api.ws`, no framework per long-lived socket), the hot reads
    declared ``direct`` to :mod:`innera.api.direct`, ``/health`` and ``/metrics`` to plain
    handlers (:mod:`innera.api.plain`); everything else to the Quart app. Each request or
    socket runs in the pipeline's Sentry transaction, if traced."""

    def __init__(self, svc: Services, app: QuartTrio, pipeline: Pipeline) -> None:
        self.svc = svc
        self.app = app
        self.pipeline = pipeline
        #: ``/metrics`` is served here, not on METRICS_PORT
        self.metrics = svc.settings.observability.metrics_port is None
        self.direct = DirectRoutes(svc, pipeline, OPERATIONS, app.url_map)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with self.pipeline.transaction(scope):
            if scope["type"] == "http":
                direct = self.direct.route(scope)
                if direct is not None:
                    await self.direct.serve(*direct, scope, send)
                elif plain.handles(scope, metrics=self.metrics):
                    await plain.serve(self.svc, self.pipeline, scope, send)
                else:
                    await self.app(scope, receive, send)
            elif scope["type"] == "websocket" and scope["path"] == ws.PATH:
                await ws.serve(self.svc, self.pipeline, scope, receive, send)
            else:
                await self.app(scope, receive, send)


def create_asgi(svc: Services) -> Router:
    """What the HTTP server runs: :class:`Router` over :func:`create_app`, both following
    one :class:`~innera.api.pipeline.Pipeline`."""
    pipeline = Pipeline(svc.settings, svc.metrics)
    return Router(svc, create_app(svc, pipeline), pipeline)


class MetricsPortRouter:
    """The ASGI application of the metrics port (:mod:`innera.http.metrics_port`):
    ``/metrics`` and ``/health`` only (:func:`innera.api.plain.serve_metrics_port`), no
    framework; a WebSocket handshake is refused (403)."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.pipeline = Pipeline(svc.settings, svc.metrics)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await plain.serve_metrics_port(self.svc, self.pipeline, scope, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})


def create_app(svc: Services, pipeline: Pipeline | None = None) -> QuartTrio:
    """innera's Quart app; its hooks follow ``pipeline`` (a new one for ``svc`` if None)."""
    if pipeline is None:
        pipeline = Pipeline(svc.settings, svc.metrics)
    app = TrimmedQuart("innera")
    app.request_class = type("InneraRequest", (InneraRequest,),
                             {"import_max_bytes": svc.settings.jobs.import_max_bytes})
    app.extensions["innera"] = svc
    app.config.update(
        MAX_CONTENT_LENGTH=svc.settings.server.max_body_bytes,
        PROVIDE_AUTOMATIC_OPTIONS=True,
        # The request/response timeouts are the server's business (and the shutdown deadline's).
        BODY_TIMEOUT=60,
        RESPONSE_TIMEOUT=None,
    )
    app.url_map.strict_slashes = False

    begin, complete, finish = pipeline.begin, pipeline.complete, pipeline.finish
    forwarded_for = pipeline.forwarded_for

    @app.before_request
    async def start_request() -> None:
        ctx = current_g()
        ctx.started = time.perf_counter()
        ctx.request_id = begin()
        if forwarded_for.pending and "x-forwarded-for" in request.headers:
            forwarded_for.seen()
        if access_log.isEnabledFor(logging.DEBUG):
            small = (request.content_length or 0) <= DEBUG_BODY_MAX_BYTES
            loggable = request.is_json and small and not imports.is_import_upload(
                request.method, request.path)
            body = None
            if loggable:
                try:
                    body = json_input.loads(await request.get_data(as_text=False))
                except json_input.InvalidJsonInput:
                    body = "<not JSON>"  # the operation answers 400 invalid_json
            access_log.debug("request received", extra={"req": {
                "method": request.method, "url": _url(),
                "requestId": ctx.request_id, "headers": dict(request.headers), "body": body}})

    @app.after_request
    async def finish_request(response: Response) -> Response:
        ctx, req = current_g(), current_request()
        request_id = _request_id()
        complete(req, response, request_id, getattr(ctx, "rate_limit", None))
        url_rule = req.url_rule
        finish(req.method, url_rule.rule if url_rule is not None else None, req.path,
               req.query_string, request_id, getattr(ctx, "user_id", None),
               response.status_code, getattr(ctx, "started", None) or time.perf_counter())
        return response

    async def metrics() -> Response:
        if not plain.metrics_authorized(svc.settings.observability.metrics_token,
                                        request.headers.get("authorization")):
            raise Unauthorized(plain.METRICS_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
        return Response(svc.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    if svc.settings.observability.metrics_port is None:  # else on METRICS_PORT only
        app.get(plain.METRICS_PATH)(metrics)

    @app.get(ws.PATH)
    async def websocket_without_upgrade() -> Response:
        """``/v1/ws`` as a plain HTTP request (a WebSocket handshake never gets here)."""
        raise UpgradeRequired()

    @app.errorhandler(AppError)
    async def app_error(error: AppError) -> Response:
        return _error_response(error.status, app_error_body(error, _request_id()),
                               error.headers)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = _HTTP_MESSAGES.get(status) or error.description or error.name
        headers = {}
        if status == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(error.valid_methods))  # type: ignore[attr-defined]
        return _error_response(status, error_body(code, message, _request_id()), headers)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        report_request_error(error, request_id=_request_id(), user_id=g.get("user_id"),
                             method=request.method, path=request.path, url=request.url,
                             headers=request.headers)
        return _error_response(500, internal_error_body(_request_id()))

    app.register_blueprint(health.blueprint)
    app.register_blueprint(openapi.blueprint)
    for resource in (auth, me, entries, search, attachments, notifications, devices, exports,
                     imports):
        app.register_blueprint(resource.blueprint)
    if svc.settings.server.env == "test":
        from innera.api import debug

        app.register_blueprint(debug.blueprint)
    return app


def _request_id() -> str:
    try:
        ctx = current_g()
    except RuntimeError:  # outside a request: nothing to bind it to
        return new_uuid4()
    rid = getattr(ctx, "request_id", None)
    if rid is None:
        rid = ctx.request_id = new_uuid4()
    return rid


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
                    ) -> Response:
    response = json_response(body, status, headers=headers)
    response.headers["X-Request-Id"] = body["requestId"]
    return response
