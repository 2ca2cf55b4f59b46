"""Error tracking with Sentry (spec: infrastructure.md, "Error Tracking — Sentry").

Initialised only when ``SENTRY_DSN`` is set. Every event goes through :func:`scrub_event`
(the ``before_send``; transactions through :func:`scrub_transaction`) which drops expected
errors (:class:`innera.errors.AppError`) and removes what is secret or user-identifying
before it leaves the process:

- keys: the name rule of the logs, :func:`innera.observability.logging.is_redacted_key`
  (``*password*``, ``*token*``, ``*secret*``, ``authorization``, ``cookie``, credential
  ``*key*`` names, ``email`` … case-insensitively, at any depth), plus ``code`` (an OAuth
  authorization code) and ``Idempotency-Key``: their values become ``[REDACTED]`` in request
  data, extra, contexts, tags, breadcrumb and span data; such request headers are deleted;
- URLs: a query string keeps only the parameters of :data:`QUERY_ALLOW_LIST`; every other
  parameter is dropped, name and value (a search term ``q`` is journal content and a bare
  name can carry data as well), as are fragments and ``user:password@``. This applies to
  ``request.url``, ``request.query_string``, every value under a URL-like key (``url``,
  ``Referer`` …) and every path or URL with a query inside text: the transaction name (also
  in the envelope's trace header), breadcrumb messages, log messages, exception messages,
  span descriptions and any string of extra, contexts, tags, breadcrumb and span data;
- a request body that is not JSON is not sent at all.

Frames never carry local variables.

Performance tracing (transactions and spans, ``SENTRY_TRACES_SAMPLE_RATE``) is
:mod:`innera.observability.tracing`'s; :func:`init_sentry` switches it on.

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
import re
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
from innera.observability import tracing
from innera.observability.logging import is_redacted_key, is_url_key, normalise_key

REDACTED = "[REDACTED]"


#: The query parameters whose values may reach Sentry: the harmless ones of the API's query
#: models (page size, opaque keyset cursor, unread filter). Every other parameter is dropped.
QUERY_ALLOW_LIST = frozenset({"limit", "cursor", "unread"})

#: Sentry's additions to the shared name rule (normalised): an OAuth authorization code at
#: any depth, and the idempotency key (the spec redacts it from the logs).
_SENTRY_SECRET_KEYS = frozenset({"code", "idempotencykey"})


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and (
        is_redacted_key(key) or normalise_key(key) in _SENTRY_SECRET_KEYS)


def init_sentry(
    dsn: str | None,
    *,
    environment: str,
    release: str,
    traces_sample_rate: float = 0.1,
    untraced_paths: tuple[str, ...] = tracing.DEFAULT_UNTRACED,
    transport: Any = None,
) -> bool:
    """Initialise the SDK; ``False`` (and nothing initialised) when there is no DSN.

    Tracing (:mod:`innera.observability.tracing`) is switched on when there is a DSN and
    ``traces_sample_rate`` is above 0, with requests under ``untraced_paths``
    (``SENTRY_TRACES_SAMPLER``) never traced; off otherwise. ``transport`` is a
    ``sentry_sdk.transport.Transport`` instance (tests pass a capturing one); ``None``
    means the SDK's HTTP transport.
    """
    tracing.configure(False)
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
        before_send_transaction=scrub_transaction,
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
    # The SDK's own logger sits at DEBUG and drops every record in a filter unless `debug`
    # is on: each transaction built two LogRecords (a stack walk each, ~20 µs) for nothing.
    logging.getLogger("sentry_sdk.errors").setLevel(logging.WARNING)
    tracing.configure(traces_sample_rate > 0, untraced_paths)
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
    _scrub_payload(event)
    exception = event.get("exception")
    values = exception.get("values") if isinstance(exception, dict) else None
    for value in values if isinstance(values, list) else ():
        if isinstance(value, dict) and isinstance(value.get("value"), str):
            value["value"] = _scrub_text(value["value"])
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        for key in ("message", "formatted"):
            if isinstance(logentry.get(key), str):
                logentry[key] = _scrub_text(logentry[key])
        if "params" in logentry:
            logentry["params"] = _scrub(logentry["params"])
    if isinstance(event.get("message"), str):
        event["message"] = _scrub_text(event["message"])
    return event


def scrub_transaction(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """The ``before_send_transaction``: the same removals as :func:`scrub_event`, and span
    descriptions and data."""
    _scrub_payload(event)
    spans = event.get("spans")
    for span in spans if isinstance(spans, list) else ():
        if not isinstance(span, dict):
            continue
        if isinstance(span.get("description"), str):
            span["description"] = _scrub_text(span["description"])
        if "data" in span:
            span["data"] = _scrub(span["data"])
    return event


def _scrub_payload(event: dict[str, Any]) -> None:
    """What errors and transactions share: request, extra, contexts, tags, breadcrumbs and
    the transaction name."""
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
        elif request.get("query_string") is not None:  # a dict or pairs: not expected
            request["query_string"] = ""
        if "env" in request:
            request["env"] = _scrub(request["env"])

    for key in ("extra", "contexts", "tags"):
        if key in event:
            event[key] = _scrub(event[key])
    if isinstance(event.get("transaction"), str):
        event["transaction"] = _scrub_text(event["transaction"])

    breadcrumbs = event.get("breadcrumbs")
    values = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    if isinstance(values, list):
        for crumb in values:
            if not isinstance(crumb, dict):
                continue
            if "data" in crumb:
                crumb["data"] = _scrub(crumb["data"])
            if isinstance(crumb.get("message"), str):
                crumb["message"] = _scrub_text(crumb["message"])


def _is_expected(exc: BaseException) -> bool:
    """AppErrors are answers, not bugs. KeyboardInterrupt (seen by the excepthook on
    Ctrl-C) and a stray trio.Cancelled are not bugs of ours either. A group is expected
    only when every exception in it is."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_expected(e) for e in exc.exceptions)
    return isinstance(exc, AppError | KeyboardInterrupt | trio.Cancelled)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str):  # a path or URL with a query inside any text
        return _scrub_text(value)
    return value


def _scrub_item(key: Any, value: Any) -> Any:
    if _is_secret_key(key):
        return REDACTED
    if isinstance(key, str) and isinstance(value, str):
        if is_url_key(key):
            return _scrub_url(value)
        if normalise_key(key) == "querystring":
            return _scrub_query(value)
    return _scrub(value)


def _scrub_headers(headers: Any) -> Any:
    """Secret headers are deleted; URL-valued ones (``Referer`` …) and URLs inside other
    values lose their query."""
    if isinstance(headers, dict):
        return {k: _scrub_header_value(k, v) for k, v in headers.items()
                if not _is_secret_key(str(k))}
    if isinstance(headers, list):  # [[name, value], ...]
        return [
            [h[0], _scrub_header_value(h[0], h[1])] if isinstance(h, list | tuple)
            and len(h) == 2 else h
            for h in headers
            if not (isinstance(h, list | tuple) and h and _is_secret_key(str(h[0])))
        ]
    return REDACTED


def _scrub_header_value(name: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return _scrub_url(value) if is_url_key(str(name)) else _scrub_text(value)


def _scrub_body(data: Any) -> Any:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return REDACTED  # a raw body we cannot inspect is not sent
    return _scrub(data)


def _scrub_query(query: str) -> str:
    """Only the parameters of :data:`QUERY_ALLOW_LIST`, in their order."""
    pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k in QUERY_ALLOW_LIST])


def _scrub_url(url: str) -> str:
    """``https://host/v1/search?q=term&limit=5#x`` → ``https://host/v1/search?limit=5``;
    a ``user:password@`` is dropped as well."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return REDACTED
    query = _scrub_query(parts.query) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))


#: what separates URLs in free text (one character class: linear)
_TEXT_GAPS = re.compile(r"""([\s"'<>]+)""")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def _scrub_text(text: str) -> str:
    """Free text (a transaction name, a message) with the query of every URL or path in it
    reduced to :data:`QUERY_ALLOW_LIST` (its fragment dropped). In each whitespace- or
    quote-separated word, a URL starts at its first ``/`` (or at the scheme of a ``://``
    there) and its query at the first ``?`` after that. String steps only, linear in the
    text: the text may hold anything a client sent."""
    if "?" not in text:
        return text
    parts = _TEXT_GAPS.split(text)
    for i in range(0, len(parts), 2):  # even: words; odd: the gaps between them
        word = parts[i]
        slash = word.find("/")
        if slash < 0:
            continue
        mark = word.find("?", slash)
        if mark < 0:
            continue
        query = word[mark + 1:].split("#", 1)[0]
        if not query:  # "a/b? yes": a question, not a query
            continue
        start = slash
        if word.startswith("//", slash) and slash > 0 and word[slash - 1] == ":":
            scheme = slash - 1
            while scheme > 0 and word[scheme - 1] in _SCHEME_CHARS:
                scheme -= 1
            if scheme < slash - 1 and word[scheme].isalpha():
                start = scheme
        kept = _scrub_query(query)
        parts[i] = (word[:start] + _scrub_url(word[start:mark])
                    + (f"?{kept}" if kept else ""))
    return "".join(parts)


def _headers_dict(headers: Mapping[str, str]) -> dict[str, str]:
    """Repeated headers (a werkzeug ``Headers``) are joined, as HTTP allows."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        out[name] = f"{out[name]}, {value}" if name in out else str(value)
    return out
