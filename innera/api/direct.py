"""The hot read operations served without the framework: the operations declared
``direct=True`` (``getEntry``, ``countUnreadNotifications``).

Through Quart each of these paid more for the framework (request and response objects,
contexts, werkzeug routing, hooks) than for its own work: a py-spy profile of the peers'
entry read put Quart and quart-trio at 28 % of the server's samples, the operation itself at
about 10 % (``bench/results/2026-12-05-issue-19.md``). Here such a request is plain ASGI, and
follows the same rules as the framework's route, through the same functions:

- the request id, the security headers of an API path, the metric and the access log line,
  the Sentry transaction's outcome (:mod:`innera.api.pipeline`);
- authentication (:func:`innera.api.guards.authenticated`), the rate limit per user
  (:func:`~innera.api.guards.count_request`, its headers on every answer), REQUEST_TIMEOUT_S
  (503 ``request_timeout``);
- the error contract: an :class:`~innera.errors.AppError` keeps its status, code and headers;
  anything else is a 500 ``internal_error`` reported to Sentry;
- the handler itself, which takes its :class:`~innera.api.operation.Caller`, and its result
  serialised as the framework's route serialises it.

Only what is certain to need nothing else comes here; the framework serves the rest as
before: any method but GET (HEAD, OPTIONS), a request with a body, an ``Origin`` header (CORS),
an ``X-Forwarded-For`` while its once-per-process warning is pending, ``LOG_LEVEL=debug``
(the "request received" line with the headers), and any server that does not cancel a
request whose client hung up (Hypercorn: Quart-trio watches for the disconnect itself).
``tests/test_direct.py`` asks both paths the same questions and compares the answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from werkzeug.routing import Map
from werkzeug.sansio.utils import get_current_url

from innera.api.framework import header_pairs
from innera.api.guards import authenticated, count_request, refuse_past_limit
from innera.api.operation import Caller, Operation, RequestTimeout, json_payload
from innera.api.pipeline import (
    Pipeline,
    app_error_body,
    asgi_json_headers,
    internal_error_body,
    report_request_error,
)
from innera.errors import AppError
from innera.guards.ratelimit import Decision
from innera.http.fast import HANGUP_EXTENSION
from innera.observability.logging import access_log, bind_user
from innera.services import Services

__all__ = ["DirectRoutes"]

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Route:
    op: Operation
    #: the template's segments after the first ``/``: text, or None for a parameter
    segments: tuple[str | None, ...]
    #: the parameters' names, in the order of their segments
    params: tuple[str, ...]
    #: paths of the template's shape that another route answers (werkzeug prefers a static
    #: segment to a parameter)
    taken: frozenset[str]


def _segments(template: str) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
    """``/v1/entries/<entry_id>`` → (("v1", "entries", None), ("entry_id",)). Only whole
    segments with werkzeug's default converter (``[^/]+``) are parameters here."""
    segments: list[str | None] = []
    params = []
    for part in template.split("/")[1:]:
        if part.startswith("<") and part.endswith(">"):
            name = part[1:-1]
            if ":" in name or not name.isidentifier():
                raise ValueError(f"{template}: only <name> parameters can be served directly")
            segments.append(None)
            params.append(name)
        elif "<" in part or not part:
            raise ValueError(f"{template}: only whole-segment parameters are served directly")
        else:
            segments.append(part)
    return tuple(segments), tuple(params)


def _fits(segments: tuple[str | None, ...], parts: list[str]) -> bool:
    """Whether a path's ``parts`` (its segments after the first ``/``) fit a template's."""
    if len(parts) != len(segments):
        return False
    return all((part != "") if want is None else (part == want)
               for want, part in zip(segments, parts, strict=True))


def _may_overlap(segments: tuple[str | None, ...], template: str) -> bool:
    """Whether a path could fit both ``segments`` and the werkzeug rule ``template`` (which
    has parameters; a ``path`` one spans segments, so only what precedes it counts)."""
    others = template.split("/")[1:]
    for i, other in enumerate(others):
        if "<path:" in other:
            return len(segments) > i and all(
                want is None or "<" in part or part == want
                for want, part in zip(segments[:i], others[:i], strict=True))
    if len(others) != len(segments):
        return False
    return all(want is None or "<" in part or part == want
               for want, part in zip(segments, others, strict=True))


class DirectRoutes:
    """The ``direct`` operations among ``operations``, for one app: :meth:`route` says
    whether a request is one of them (and nothing else can answer it), :meth:`serve`
    answers it. ``url_map``: the framework's routes, checked so that a path the framework
    would route elsewhere (a static sibling such as ``/v1/entries/export``) stays there."""

    def __init__(self, svc: Services, pipeline: Pipeline, operations: Iterable[Operation],
                 url_map: Map) -> None:
        self.svc = svc
        self.pipeline = pipeline
        self.timeout_s = svc.settings.server.request_timeout_s
        self.routes: list[_Route] = []
        served = {rule.rule for rule in url_map.iter_rules() if "GET" in (rule.methods or ())}
        for op in operations:
            if not op.direct or op.path not in served:  # not a route of this app
                continue
            segments, params = _segments(op.path)
            taken = set()
            for rule in url_map.iter_rules():
                if rule.rule == op.path or "GET" not in (rule.methods or ()):
                    continue
                if rule.arguments:
                    if _may_overlap(segments, rule.rule):
                        raise ValueError(f"{rule.rule} and the direct {op.path} overlap")
                elif _fits(segments, rule.rule.split("/")[1:]):
                    taken.add(rule.rule)
            self.routes.append(_Route(op, segments, params, frozenset(taken)))

    def route(self, scope: Mapping[str, Any]) -> tuple[_Route, dict[str, str], str | None
                                                      ] | None:
        """(the route, its path arguments, the ``Authorization`` header) when ``scope`` is a
        request :meth:`serve` answers, else None (the framework answers it)."""
        if scope["method"] != "GET" or HANGUP_EXTENSION not in scope.get("extensions", ()):
            return None
        path = scope["path"]
        parts = path.split("/")[1:]
        for candidate in self.routes:
            if _fits(candidate.segments, parts) and path not in candidate.taken:
                found = candidate
                break
        else:
            return None
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"origin" or name == b"transfer-encoding" \
                    or (name == b"content-length" and value != b"0") \
                    or (name == b"x-forwarded-for" and self.pipeline.forwarded_for.pending):
                return None
        if access_log.isEnabledFor(logging.DEBUG):
            return None
        values = [part for want, part in zip(found.segments, parts, strict=True) if want is None]
        args = dict(zip(found.params, values, strict=True))
        return found, args, authorization

    async def serve(self, route: _Route, args: dict[str, str], authorization: str | None,
                    scope: Mapping[str, Any], send: Send) -> None:
        """Answer a request :meth:`route` accepted, as the framework's route would."""
        started = time.perf_counter()
        pipeline, op = self.pipeline, route.op
        request_id = pipeline.begin()
        user_id: str | None = None
        decision: Decision | None = None
        extra: Mapping[str, str] = {}
        try:
            with trio.move_on_after(op.timeout_s or self.timeout_s) as deadline:
                claims, _ = await authenticated(self.svc, authorization)
                user_id = claims.user_id
                bind_user(user_id)
                decision = await count_request(self.svc, op.path, op.rate, user_id)
                refuse_past_limit(decision)
                result = await op.handler(Caller(self.svc, user_id), **args)  # type: ignore[misc]
                status, body = op.status, json_payload(result)
            if deadline.cancelled_caught:
                raise RequestTimeout()
        except AppError as error:
            status, extra = error.status, error.headers or {}
            body = json_payload(app_error_body(error, request_id))
        except Exception as error:  # the contract's 500, as the framework's handler answers
            report_request_error(error, request_id=request_id, user_id=user_id, method="GET",
                                 path=scope["path"], url=_url(scope),
                                 headers=_reported_headers(scope))
            status, body = 500, json_payload(internal_error_body(request_id))
        headers = asgi_json_headers(body)
        present = {b"content-type", b"content-length", b"x-request-id"}
        for name, value in extra.items():
            headers.append((name.lower().encode(), value.encode("latin-1")))
            present.add(name.lower().encode())
        headers.append((b"x-request-id", request_id.encode()))
        if decision is not None:
            headers += [(lower, value.encode()) for name, value in decision.headers().items()
                        if (lower := name.lower().encode()) not in present]
        headers += [pair for pair in pipeline.asgi_api_security if pair[0] not in present]
        pipeline.finish("GET", op.path, scope["path"], scope["query_string"], request_id,
                        user_id, status, started)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _url(scope: Mapping[str, Any]) -> str:
    host = next((value.decode("latin-1") for name, value in scope["headers"]
                 if name == b"host"), "")
    return get_current_url(scope["scheme"], host, "", scope["path"],
                           scope["query_string"] or None)


def _reported_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers as the framework reports them to Sentry (:func:`header_pairs`,
    the first value of a repeated one; the report scrubs what is secret)."""
    headers: dict[str, str] = {}
    for name, value in header_pairs(scope):
        headers.setdefault(name, value)
    return headers
