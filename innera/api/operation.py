"""Declaring API operations: one decorator gives a route its request/response schemas,
authentication, rate limit and idempotency, and records it for the OpenAPI document.

    @operation(bp, "POST", "/auth/login", body=LoginIn, response=AuthOut, rate="auth",
               summary="Sign in")
    async def login(body: LoginIn) -> AuthOut: ...

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
from collections.abc import Awaitable, Callable
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


class RequestTimeout(ServiceUnavailable):
    code = "request_timeout"
    message = "The request took too long and was stopped; retry later"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Operation:
    method: str
    path: str  # the full route template, e.g. /v1/auth/login
    summary: str
    tag: str
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: bool
    reauth: bool
    rate: Rate
    errors: tuple[int, ...]
    query: type[BaseModel] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: None: REQUEST_TIMEOUT_S
    timeout_s: float | None = None
    #: the handler streams the body (``innera.api.guards.request_body``) rather than taking
    #: it whole: an Idempotency-Key's fingerprint is then hashed as it streams
    streams_body: bool = False


#: Every declared operation, for the OpenAPI document.
OPERATIONS: list[Operation] = []


def operation(
    bp: Blueprint,
    method: str,
    path: str,
    *,
    summary: str,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    auth: bool = True,
    reauth: bool = False,
    rate: Rate | None = None,
    errors: tuple[int, ...] = (),
    query: type[BaseModel] | None = None,
    description: str = "",
    timeout_s: float | None = None,
    streams_body: bool = False,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Response]]]:
    full_path = (bp.url_prefix or "") + path
    op = Operation(
        method=method, path=full_path, summary=summary, tag=bp.name, body=body,
        response=response, status=status, auth=auth, reauth=reauth,
        rate=rate or ("user" if auth else "anon"), errors=errors, query=query,
        description=description, timeout_s=timeout_s, streams_body=streams_body,
    )
    OPERATIONS.append(op)

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Response]]:
        @wraps(fn)
        async def handler(**path_args: Any) -> Response:
            timeout_s = op.timeout_s or services().settings.server.request_timeout_s
            with trio.move_on_after(timeout_s):
                if op.auth:
                    await require_user()
                await limit_rate(op.path, op.rate)
                if op.method in WRITE_METHODS and op.auth:
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
    if op.body is not None:
        kwargs["body"] = await parse_body(op.body)
    if op.query is not None:
        kwargs["query"] = validate(op.query, request.args.to_dict())
    if op.reauth:  # after validation, so an invalid body does not spend the token
        await require_reauth()
    result = await fn(**kwargs)
    return render(result, op)


async def parse_body(model: type[BaseModel]) -> BaseModel:
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        raise ValidationFailed("A JSON body is required",
                               details=[{"field": "", "message": "body is required"}])
    return validate(model, parse_json(raw))


def parse_json(raw: bytes) -> Any:
    """A request body's JSON (bounded depth, :mod:`innera.json_input`), else 400
    ``invalid_json`` saying why (too deep, or where it stops being JSON)."""
    try:
        return json_input.loads(raw)
    except json_input.JsonTooDeep as exc:
        raise InvalidJson(f"The request body is {exc}") from None
    except json_input.InvalidJsonInput:
        raise InvalidJson() from None


def validate(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
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
    if isinstance(result, BaseModel):
        payload = result.model_dump_json(by_alias=True)
    else:
        payload = json.dumps(result, separators=(",", ":"))
    return Response(payload, status=op.status, content_type="application/json")


def current_user_id() -> str:
    """The authenticated user of the current request (after ``require_user``)."""
    return g.user_id


__all__ = ["OPERATIONS", "Operation", "Rate", "RateLimited", "current_user_id", "operation"]
