"""Declaring API operations: one decorator gives a route its request/response schemas,
authentication, rate limit and idempotency, and records it for the OpenAPI document.

    @operation(bp, "POST", "/auth/login", operation_id="login", body=LoginIn,
               response=AuthOut, rate="auth", summary="Sign in",
               errors={401: "`invalid_credentials`: the email or the password is wrong"})
    async def login(body: LoginIn) -> AuthOut: ...

The declaration is the operation's whole contract: its ``operationId`` (stable, lowerCamelCase:
generated clients name their methods after it), the statuses it answers and the ``links`` a
created resource's id follows to the operations that read, change or delete it. The refusals
of the machinery below (authentication, rate limit, idempotency, body and query validation,
re-authentication, timeout) are not listed per route: :func:`refusals` derives them from the
declaration, so the OpenAPI document cannot forget one; ``errors`` adds the route's own.

What runs around the handler, in order:
1. authentication (``auth=True``): the bearer token → an active user, else 401;
2. the rate limit: per user when authenticated, else per client IP;
3. idempotency (authenticated writes carrying ``Idempotency-Key``; for ``streams_body=True``
   the body is fingerprinted as the handler streams it, never buffered whole);
4. the body, parsed and validated before the handler runs (400 ``invalid_json``,
   422 ``validation_failed`` with per-field details);
5. re-authentication (``reauth=True``): a single-use ``x-reauth-token``, else 403;
6. the handler; its return value is serialised with the response model.

All of it runs under REQUEST_TIMEOUT_S (or the operation's own ``timeout_s``, for uploads that
stream a body for minutes): past it the work is cancelled (queries in flight are cancelled
server-side) and the answer is 503 ``request_timeout``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import trio
from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response, g, request

from innera import json_input
from innera.api.context import services
from innera.api.guards import Rate, idempotent, limit_rate, require_reauth, require_user
from innera.errors import InvalidJson, RateLimited, ServiceUnavailable, ValidationFailed
from innera.services import Services


class RequestTimeout(ServiceUnavailable):
    code = "request_timeout"
    message = "The request took too long and was stopped; retry later"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: what an operationId looks like (generated clients turn it into their method names)
OPERATION_ID = re.compile(r"[a-z][a-zA-Z0-9]*")

#: a route's refusals of one status: "`code`: when", or several
Refusal = str | Sequence[str]

#: an operation's links: the target's operationId → {its parameter: a runtime expression}
#: (``$response.body#/id``, ``$request.path.entry_id``), per OpenAPI's Link Object
Links = Mapping[str, Mapping[str, str]]


@dataclass
class Operation:
    method: str
    path: str  # the full route template, e.g. /v1/auth/login
    operation_id: str
    summary: str
    tag: str
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: bool
    reauth: bool
    rate: Rate
    #: the route's own refusals: status → a code and when, or several (the machinery's:
    #: :func:`refusals`)
    errors: Mapping[int, Refusal]
    query: type[BaseModel] | None = None
    description: str = ""
    #: None: REQUEST_TIMEOUT_S
    timeout_s: float | None = None
    #: the handler streams the body (``innera.api.guards.request_body``) rather than taking
    #: it whole: an Idempotency-Key's fingerprint is then hashed as it streams
    streams_body: bool = False
    #: False: the body may be left out (the handler then gets ``body=None``)
    body_required: bool = True
    #: a raw body the handler streams: media type → what it is (no ``body`` model then)
    raw_body: Mapping[str, str] = field(default_factory=dict)
    #: other successful answers with the same response model: status → when
    also: Mapping[int, str] = field(default_factory=dict)
    #: from the successful answers, to the operations the result's ids lead to
    links: Links = field(default_factory=dict)
    #: headers of the successful answers: name → description (always present)
    response_headers: Mapping[str, str] = field(default_factory=dict)
    #: JSON schemas of path parameters that are not resource ids (a UUID, the default)
    path_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: parameters the handler reads itself (OpenAPI Parameter Objects)
    parameters: Sequence[Mapping[str, Any]] = ()
    #: also served without the framework (:mod:`innera.api.direct`); the handler then takes
    #: its :class:`Caller` first
    direct: bool = False
    #: the handler the declaration wraps (set when the route is registered)
    handler: Callable[..., Awaitable[Any]] | None = None

    @property
    def idempotent(self) -> bool:
        """An authenticated write: ``Idempotency-Key`` is honoured."""
        return self.auth and self.method in WRITE_METHODS

    @property
    def reads_body(self) -> bool:
        return self.body is not None or bool(self.raw_body) or self.idempotent


#: Every declared operation, for the OpenAPI document.
OPERATIONS: list[Operation] = []


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a direct operation's handler serves: the app's services and the authenticated
    user, passed in, so the framework's route and :mod:`innera.api.direct` call the same
    handler."""

    svc: Services
    user_id: str


@dataclass(frozen=True)
class PlainOperation:
    """A route that does not run through :func:`operation` (the monitors' and Prometheus'
    routes, the OpenAPI document, the WebSocket handshake), declared beside it for the
    OpenAPI document: ``responses`` are its answers other than errors (status → description,
    media type, JSON schema), ``errors`` its refusals (status → codes and when; the error
    contract's body)."""

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    responses: Mapping[int, tuple[str, str | None, Mapping[str, Any] | None]]
    errors: Mapping[int, Refusal] = field(default_factory=dict)
    description: str = ""
    parameters: Sequence[Mapping[str, Any]] = ()
    bearer: bool = False  # "security": bearer (optional: the route decides when it applies)


#: Every declared plain route, for the OpenAPI document.
PLAIN_OPERATIONS: list[PlainOperation] = []


def declare_plain(plain: PlainOperation) -> PlainOperation:
    """Record ``plain`` for the OpenAPI document (operationIds are unique across both kinds)."""
    _check_operation_id(plain.operation_id)
    PLAIN_OPERATIONS.append(plain)
    return plain


def _check_operation_id(operation_id: str) -> None:
    if not OPERATION_ID.fullmatch(operation_id):
        raise ValueError(f"operationId {operation_id!r} is not lowerCamelCase")
    if operation_id in {op.operation_id for op in (*OPERATIONS, *PLAIN_OPERATIONS)}:
        raise ValueError(f"operationId {operation_id!r} is declared twice")


# --- the machinery's refusals --------------------------------------------------------------

_HEAD_TOO_LARGE = ("`request_header_fields_too_large`: the request line and header fields "
                   "exceed 64 KiB, or there are more than 100 header fields (refused by the "
                   "HTTP server before any route runs; the connection closes)")
_RATE_LIMITED = ("`rate_limited`: past the operation's rate limit (per user when signed in, "
                 "else per client IP); see Retry-After and the RateLimit-* headers")
_TIMEOUT = ("`request_timeout`: the operation ran past REQUEST_TIMEOUT_S and was stopped "
            "(Retry-After: 1)")
_DATABASE = "`database_unavailable`: PostgreSQL did not answer in time"
_UNAUTHORIZED = ("`unauthorized`: no bearer access token, or one that is invalid or expired, "
                 "whose session ended or whose account is no longer active "
                 "(WWW-Authenticate: Bearer)")
_INVALID_JSON = ("`invalid_json`: the body is not JSON, nests deeper than 64 levels, or escapes "
                 "an unpaired surrogate (`\\ud800`)")
_VALIDATION = ("`validation_failed`: a field is missing, of the wrong type or out of range; "
               "`details` lists each problem as `{field, message, type}`")
_BODY_TOO_LARGE = "`payload_too_large`: the body is over MAX_BODY_BYTES"
_BODY_TIMEOUT = "`request_timeout`: the body did not arrive in time"
_CURSOR = ("`invalid_cursor`: the cursor is not one this list returned to this user (pass "
           "`nextCursor` back unchanged)")
_REAUTH = ("`reauth_required`: x-reauth-token is missing, expired or already used (get one "
           "from `POST /v1/auth/reauth`)")
#: for the routes that open or seal entry content (the account's data key)
KEY_SERVICE_UNAVAILABLE = ("`key_service_unavailable`: the key service that unwraps the "
                           "account's data key (AWS KMS) cannot be used right now")
_IDEMPOTENCY = {
    400: "`invalid_idempotency_key`: Idempotency-Key is not 1–255 printable ASCII characters, "
         "or ends in `:lock`",
    409: "`idempotency_in_progress`: a request with this Idempotency-Key is still running",
    422: "`idempotency_key_reused`: this Idempotency-Key was used for a different request "
         "(another method, path or body) in the last 24 h",
    503: "`idempotency_unavailable`: Redis cannot hold the Idempotency-Key right now "
         "(Retry-After)",
}


def refusals(op: Operation) -> dict[int, list[str]]:
    """Every error status ``op`` can answer → the codes behind it, each with when: what the
    machinery around every handler refuses (the HTTP server's head limits, the rate limit,
    the timeout, and per the declaration authentication, idempotency, the body, the query and
    re-authentication), then the route's own ``errors``."""
    out: dict[int, list[str]] = {}

    def add(status: int, text: str) -> None:
        if text not in out.setdefault(status, []):
            out[status].append(text)

    add(431, _HEAD_TOO_LARGE)
    if op.auth:
        add(401, _UNAUTHORIZED)
    add(429, _RATE_LIMITED)
    if op.reads_body and not op.raw_body:  # a streamed body's limits are the route's own
        add(413, _BODY_TOO_LARGE)
        add(408, _BODY_TIMEOUT)
    if op.idempotent:
        for status, text in _IDEMPOTENCY.items():
            add(status, text)
    if op.body is not None:
        add(400, _INVALID_JSON)
        add(422, _VALIDATION)
    if op.query is not None:
        add(422, _VALIDATION)
        if "cursor" in op.query.model_fields:
            add(400, _CURSOR)
    if op.reauth:
        add(403, _REAUTH)
        add(503, "`redis_unavailable`: re-authentication tokens cannot be checked right now")
    for status, texts in op.errors.items():
        for text in (texts,) if isinstance(texts, str) else texts:
            add(status, text)
    add(503, _TIMEOUT)
    add(503, _DATABASE)
    return dict(sorted(out.items()))


def operation(
    bp: Blueprint,
    method: str,
    path: str,
    *,
    operation_id: str,
    summary: str,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    raw_body: Mapping[str, str] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    also: Mapping[int, str] | None = None,
    response_headers: Mapping[str, str] | None = None,
    links: Links | None = None,
    auth: bool = True,
    reauth: bool = False,
    rate: Rate | None = None,
    errors: Mapping[int, Refusal] | None = None,
    query: type[BaseModel] | None = None,
    description: str = "",
    timeout_s: float | None = None,
    streams_body: bool = False,
    path_params: Mapping[str, Mapping[str, Any]] | None = None,
    parameters: Sequence[Mapping[str, Any]] = (),
    direct: bool = False,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Response]]]:
    """Declare the operation ``method path`` (``path`` under the blueprint's prefix) and
    register its route: see the module documentation. ``operation_id`` is lowerCamelCase
    and unique among the operations. ``direct``: also served without the framework
    (:mod:`innera.api.direct`): only an authenticated GET whose handler takes no body and
    no query, and takes its :class:`Caller` first."""
    _check_operation_id(operation_id)
    if direct and (method != "GET" or not auth or reauth or rate == "auth"
                   or body is not None or query is not None or raw_body or status != 200):
        raise ValueError(f"{operation_id}: only an authenticated GET without a body or a "
                         "query, limited per user, can be served directly")
    full_path = (bp.url_prefix or "") + path
    op = Operation(
        method=method, path=full_path, operation_id=operation_id, summary=summary,
        tag=bp.name, body=body, response=response, status=status, auth=auth, reauth=reauth,
        rate=rate or ("user" if auth else "anon"), errors=dict(errors or {}), query=query,
        description=description, timeout_s=timeout_s, streams_body=streams_body,
        body_required=body_required, raw_body=dict(raw_body or {}), also=dict(also or {}),
        links={target: dict(params) for target, params in (links or {}).items()},
        response_headers=dict(response_headers or {}),
        path_params=dict(path_params or {}), parameters=tuple(parameters), direct=direct,
    )
    OPERATIONS.append(op)

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Response]]:
        op.handler = fn
        @wraps(fn)
        async def handler(**path_args: Any) -> Response:
            timeout_s = op.timeout_s or services().settings.server.request_timeout_s
            with trio.move_on_after(timeout_s):
                if op.auth:
                    await require_user()
                await limit_rate(op.path, op.rate)
                if op.idempotent:
                    return await idempotent(lambda: _run(fn, op, path_args),
                                            streams_body=op.streams_body)
                return await _run(fn, op, path_args)
            raise RequestTimeout()

        bp.add_url_rule(path, endpoint=fn.__name__, view_func=handler, methods=[method])
        return handler

    return decorate


async def _run(fn: Callable[..., Awaitable[Any]], op: Operation, path_args: dict[str, Any]
               ) -> Response:
    kwargs = dict(path_args)
    if op.direct:
        kwargs["caller"] = Caller(services(), g.user_id)
    if op.body is not None:
        kwargs["body"] = await parse_body(op.body, required=op.body_required)
    if op.query is not None:
        kwargs["query"] = validate_query(op.query)
    if op.reauth:  # after validation, so an invalid body does not spend the token
        await require_reauth()
    result = await fn(**kwargs)
    return render(result, op)


async def parse_body(model: type[BaseModel], *, required: bool = True) -> BaseModel | None:
    """The request's JSON body as ``model``, validated strictly: JSON types are not coerced
    (``0`` is no boolean, ``"5"`` no integer), as the OpenAPI document states them. No body:
    None when it may be left out, else 422."""
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        if not required:
            return None
        raise ValidationFailed("A JSON body is required",
                               details=[{"field": "", "message": "body is required"}])
    return validate(model, parse_json(raw), strict=True)


def parse_json(raw: bytes) -> Any:
    """A request body's JSON (bounded depth, :mod:`innera.json_input`), else 400
    ``invalid_json`` saying why (too deep, where it stops being JSON, or a string escaping
    half a surrogate pair: no text of the API can hold one)."""
    try:
        doc = json_input.loads(raw)
    except json_input.JsonTooDeep as exc:
        raise InvalidJson(f"The request body is {exc}") from None
    except json_input.InvalidJsonInput:
        raise InvalidJson() from None
    if json_input.lone_surrogate(raw, doc):
        raise InvalidJson("A string of the request body holds an unpaired surrogate escape "
                          "(\\ud800–\\udfff)")
    return doc


def validate_query(model: type[BaseModel]) -> BaseModel:
    """The query string as ``model``. Each parameter once: a repeated one is 422, as is one
    the model does not know (its fields' types say how each is read, see
    :mod:`innera.api.schemas`)."""
    args = request.args
    repeated = [name for name, values in args.lists() if len(values) > 1]
    if repeated:
        raise ValidationFailed(details=[
            {"field": name, "message": "may be given only once", "type": "repeated"}
            for name in repeated])
    return validate(model, args.to_dict())


def validate(model: type[BaseModel], data: Any, *, strict: bool = False) -> BaseModel:
    """``data`` as ``model``, else 422 ``validation_failed`` with a detail per problem.
    ``strict``: no type coercion (JSON bodies; a query string's values are all text)."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"],
             "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailed(details=details) from None


def render(result: Any, op: Operation) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(b"", status=204 if op.status == 200 else op.status)
    return Response(json_payload(result), status=op.status, content_type="application/json")


def json_payload(result: Any) -> bytes:
    """A handler's result as the response body: a model through its serializer (by alias),
    anything else as compact JSON."""
    if isinstance(result, BaseModel):
        return result.__pydantic_serializer__.to_json(result, by_alias=True)
    return json.dumps(result, separators=(",", ":")).encode()


def current_user_id() -> str:
    """The authenticated user of the current request (after ``require_user``)."""
    return g.user_id


__all__ = ["KEY_SERVICE_UNAVAILABLE", "OPERATIONS", "PLAIN_OPERATIONS", "Caller", "Operation",
           "PlainOperation", "Rate", "RateLimited", "current_user_id", "declare_plain",
           "operation", "refusals"]
