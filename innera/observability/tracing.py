"""Sentry performance tracing: a transaction per HTTP request, per WebSocket session and per
job, and a span for each piece of work beneath one (PostgreSQL queries, Redis commands, S3
calls, push requests, password hashing).

**Switch.** :func:`innera.observability.sentry.init_sentry` turns tracing on only when
``SENTRY_DSN`` is set and ``SENTRY_TRACES_SAMPLE_RATE`` is above 0 (:func:`configure`).
Off, every hook is a read of :data:`SWITCH` and nothing else: no scope, no transaction, no
span object. On, a request whose path starts with one of ``SENTRY_TRACES_SAMPLER``'s
prefixes (``/health`` and ``/metrics`` by default) is not traced either, so probes and
scrapes never make a transaction; every other request, socket and job gets one and the SDK
samples it at the configured rate. Spans are made for sampled transactions only.

**Where.** Each component has its one hook: the request pipeline
(:mod:`innera.api.pipeline`: :func:`server_transaction`, :func:`set_request_outcome`), the
queue worker (:func:`job_transaction`), the database cursor, the Redis client, the S3 store,
the push sender and the password hasher (:func:`span`). Nothing at call sites.

**Traces across processes.** An incoming ``sentry-trace`` / ``baggage`` pair is continued
(the trace id is kept and the caller's sampling decision followed). A job carries the trace
of the code that enqueued it in its payload (:func:`trace_headers`, under
:data:`PAYLOAD_KEY`); a job without it (enqueued before tracing, or by the reconciler) starts
a trace of its own.

**Trio.** sentry-sdk keeps the current span on a scope object held in contextvars; Trio
copies the context into each child task, which then shares the *same* scope object. So:

- a transaction is only ever made current inside an isolation scope of its own (both the
  current and the isolation scope forked), entered and left in one task;
- spans are leaves: started with ``parent.start_child()`` and never made current, so tasks
  running concurrently under one transaction (a nursery's children) all see the transaction
  as their parent, never a sibling's span.

**Logs.** :func:`current_trace_id` gives the ``traceId`` every log line of a traced request
or job carries (:mod:`innera.observability.logging`), sampled or not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any

import sentry_sdk
import trio
from sentry_sdk.tracing import Span, Transaction, TransactionSource

__all__ = [
    "DEFAULT_UNTRACED",
    "PAYLOAD_KEY",
    "SWITCH",
    "configure",
    "current_trace_id",
    "job_transaction",
    "mark_failed",
    "route_name",
    "server_transaction",
    "set_request_outcome",
    "span",
    "trace_headers",
    "traced_path",
]

#: the paths never traced unless SENTRY_TRACES_SAMPLER says otherwise: probes and scrapes
DEFAULT_UNTRACED = ("/health", "/metrics")
#: the key of a job payload holding the trace headers of the code that enqueued it
PAYLOAD_KEY = "trace"

OP_HTTP = "http.server"
OP_WEBSOCKET = "websocket.server"
OP_JOB = "queue.process"


class _Switch:
    """Whether tracing is on, and the path prefixes never traced (see the module doc)."""

    __slots__ = ("on", "untraced")

    def __init__(self) -> None:
        self.on = False
        self.untraced: tuple[str, ...] = DEFAULT_UNTRACED


#: read by every hook; written by :func:`configure` only
SWITCH = _Switch()


def configure(on: bool, untraced: Iterable[str] = DEFAULT_UNTRACED) -> None:
    """Turn tracing on or off (``init_sentry`` does, once per process; tests again)."""
    SWITCH.untraced = tuple(p.rstrip("/") or "/" for p in untraced)
    SWITCH.on = on


def traced_path(path: str) -> bool:
    """Whether a request for ``path`` may make a transaction: not under an untraced prefix
    (segment-wise: ``/health`` covers ``/health/ready``, not ``/healthz``)."""
    for prefix in SWITCH.untraced:
        if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
            return False
    return True


# --------------------------------------------------------------------------- transactions


class _Served:
    """The transaction of the request or socket being served, and the isolation scope it
    finishes in (the user is set there: a socket runs in a nested scope of its own)."""

    __slots__ = ("scope", "transaction", "websocket")

    def __init__(self, scope: sentry_sdk.Scope, transaction: Transaction, websocket: bool
                 ) -> None:
        self.scope = scope
        self.transaction = transaction
        self.websocket = websocket


_served: ContextVar[_Served | None] = ContextVar("innera_served_transaction", default=None)


def _caller_trace(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The caller's trace to continue: its trace id and parent span from ``sentry-trace``,
    without its sampling decision (``-1``/``-0``) and without its ``baggage`` (which carries
    ``sentry-sample_rand``). Any client can send these headers: following its decision would
    let it trace every request it makes, past ``SENTRY_TRACES_SAMPLE_RATE`` and the quota.
    Jobs continue their own payload's trace whole (:func:`job_transaction`)."""
    for name, value in raw_headers:
        if name == b"sentry-trace":
            trace_id, _, rest = value.decode("latin-1").strip().partition("-")
            span_id = rest.partition("-")[0]
            if trace_id and span_id:
                return {"sentry-trace": f"{trace_id}-{span_id}"}
    return {}


@contextmanager
def server_transaction(asgi_scope: Mapping[str, Any]) -> Iterator[None]:
    """The transaction of one HTTP request (op ``http.server``, named ``METHOD /path`` until
    :func:`set_request_outcome` names it by its route) or of one WebSocket session (op
    ``websocket.server``, ``WS /path``), continuing the trace of an incoming
    ``sentry-trace`` header (:func:`_caller_trace`: sampled at our rate, not the caller's).
    Call only when :data:`SWITCH` is on and the path is traced."""
    websocket = asgi_scope["type"] == "websocket"
    path = asgi_scope["path"]
    headers = _caller_trace(asgi_scope["headers"])
    if websocket:
        op, name, source = OP_WEBSOCKET, f"WS {path}", TransactionSource.ROUTE
    else:
        op, name, source = OP_HTTP, f"{asgi_scope['method']} {path}", TransactionSource.URL
    with sentry_sdk.isolation_scope() as scope:
        transaction = sentry_sdk.continue_trace(headers, op=op, name=name, source=source)
        token = _served.set(_Served(scope, transaction, websocket))
        try:
            with sentry_sdk.start_transaction(transaction):
                yield
        finally:
            _served.reset(token)


def set_request_outcome(method: str, route: str | None, status: int, user_id: str | None
                        ) -> None:
    """Name the request's transaction by its route template (``GET /v1/entries/{id}``;
    ``route`` None: no route matched), and record its status and user. A no-op outside a
    traced request."""
    served = _served.get()
    if served is None:
        return
    transaction = served.transaction
    if not served.websocket:
        transaction.name = f"{method} {route_name(route)}"
        transaction.source = TransactionSource.ROUTE
    transaction.set_http_status(status)
    if user_id is not None:
        served.scope.set_user({"id": user_id})


@cache
def route_name(route: str | None) -> str:
    """A Quart route as Sentry names routes: ``/v1/entries/<id>`` → ``/v1/entries/{id}``
    (converters dropped: ``<uuid:id>`` → ``{id}``); None → ``<unmatched>``."""
    if route is None:
        return "<unmatched>"
    return _VARIABLE.sub(r"{\1}", route)


_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


@contextmanager
def job_transaction(queue: str, job_id: str, payload: Any) -> Iterator[None]:
    """The transaction of one job (op ``queue.process``, named ``job <queue>``, tagged with
    ``queue`` and ``job_id``), continuing the trace its payload carries (:data:`PAYLOAD_KEY`);
    a payload without one (or not an object at all: the handler deals with that) starts a
    new trace. A no-op when tracing is off."""
    if not SWITCH.on:
        yield
        return
    carried = payload.get(PAYLOAD_KEY) if isinstance(payload, dict) else None
    headers = ({k: v for k, v in carried.items() if isinstance(k, str) and isinstance(v, str)}
               if isinstance(carried, dict) else {})
    with sentry_sdk.isolation_scope() as scope:
        scope.set_tag("queue", queue)
        scope.set_tag("job_id", job_id)
        transaction = sentry_sdk.continue_trace(headers, op=OP_JOB, name=f"job {queue}",
                                                source=TransactionSource.TASK)
        with sentry_sdk.start_transaction(transaction):
            yield


def mark_failed() -> None:
    """The current transaction failed (a job whose handler raised): status
    ``internal_error``. A no-op outside a transaction."""
    if not SWITCH.on:
        return
    current = sentry_sdk.get_current_span()
    if current is not None and current.containing_transaction is not None:
        current.containing_transaction.set_status("internal_error")


def trace_headers() -> dict[str, str] | None:
    """``sentry-trace`` and ``baggage`` of the current transaction, for a job it enqueues;
    None outside one (a job enqueued by a background task starts a trace of its own)."""
    if not SWITCH.on:
        return None
    current = sentry_sdk.get_current_span()
    if current is None:
        return None
    return dict(current.iter_headers()) or None


def current_trace_id() -> str | None:
    """The trace id of the current transaction (sampled or not), for log lines."""
    if not SWITCH.on:
        return None
    current = sentry_sdk.get_current_span()
    return None if current is None else current.trace_id


# --------------------------------------------------------------------------- spans


class _NoSpan:
    """What :func:`span` returns when there is nothing to record: shared, allocation-free."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Leaf:
    """A leaf span for the duration of a ``with`` block (never made current)."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None and not issubclass(exc_type, GeneratorExit):  # closed early
            self.span.set_status("cancelled" if issubclass(exc_type, trio.Cancelled)
                                 else "internal_error")
        self.span.finish()


def span(op: str, name: str) -> _Leaf | _NoSpan:
    """``with span("db", "entries.read"):`` records the block as a child of the current
    transaction when it is sampled; otherwise (tracing off, no transaction, not sampled) a
    shared no-op: no object is made."""
    if not SWITCH.on:
        return _NO_SPAN
    parent = sentry_sdk.get_current_span()
    if parent is None or not parent.sampled:
        return _NO_SPAN
    return _Leaf(parent.start_child(op=op, name=name))
