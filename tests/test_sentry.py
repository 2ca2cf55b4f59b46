"""Sentry integration: scrubbing, AppError filtering, per-task scopes under Trio.

Nothing is ever sent: events land in a capturing transport. Secrets are defined far from
the code that raises, because Sentry sends ±5 lines of source around every frame and a
literal in those lines would make the "appears nowhere" assertions meaningless.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sentry_sdk
import trio
import trio.lowlevel
from werkzeug.datastructures import Headers

from innera.errors import AppError, NotFound
from innera.observability import tracing
from innera.observability.sentry import (
    REDACTED,
    capture_request_exception,
    capture_task_exception,
    flush,
    init_sentry,
    scrub_event,
    task_scope,
)
from tests.fixtures.sentry_transport import CapturingTransport as KeptTransport


def _caught(make: Callable[[], BaseException] = lambda: RuntimeError("boom")) -> BaseException:
    """An exception with a traceback whose only frames are this function and `_raise`."""
    try:
        _raise(make())
    except BaseException as exc:
        return exc
    raise AssertionError("unreachable")


def _raise(exc: BaseException) -> None:
    raise exc


def _raise_with_local() -> None:
    secret = _LOCAL_SECRET  # noqa: F841 - the local under test
    raise ValueError("failure with a local")


DSN = "https://public@sentry.invalid/1"


class CapturingTransport(KeptTransport):
    """Keeps envelopes in memory; the SDK never opens a socket."""

    def serialized(self) -> str:
        return b"".join(env.serialize() for env in self.envelopes).decode()


def _reset_sdk() -> None:
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close()
    sentry_sdk.get_global_scope().set_client(None)
    tracing.configure(False)


@pytest.fixture
def sentry_init() -> Iterator[Callable[..., CapturingTransport]]:
    """Initialise Sentry with a capturing transport; the SDK is reset afterwards."""

    def init(**kwargs: Any) -> CapturingTransport:
        transport = CapturingTransport()
        kwargs.setdefault("environment", "test")
        kwargs.setdefault("release", "innera@0.0.0-test")
        assert init_sentry(DSN, transport=transport, **kwargs) is True
        return transport

    _reset_sdk()
    yield init
    _reset_sdk()


@pytest.fixture
def sentry(sentry_init: Callable[..., CapturingTransport]) -> CapturingTransport:
    return sentry_init()


# Distinctive values: none of them may appear anywhere in what would be sent.
_LOCAL_SECRET = "hunter2" + "-local"
_HEADER_SECRETS = {
    "Authorization": "Bearer auth-secret-0001",
    "Cookie": "sid=cookie-secret-0002",
    "X-Reauth-Token": "reauth-secret-0003",
    "Idempotency-Key": "idem-secret-0004",
}
_URL = "https://api.innera.test/v1/ws?page=2&limit=7&token=url-secret-0005"
_BODY_SECRETS = {
    "password": "pw-secret-0006",
    "refreshToken": "refresh-secret-0007",
    "email": "someone-0008@example.com",
    "codeVerifier": "verifier-secret-0009",
    "identityToken": "identity-secret-0010",
    "accessToken": "access-secret-0011",
    "code": "oauth-code-0012",
}


@pytest.mark.parametrize("headers_type", [dict, Headers])
async def test_request_exception_has_extras_and_scrubbed_headers(
    sentry: CapturingTransport, headers_type: type
) -> None:
    headers = headers_type(
        {**_HEADER_SECRETS, "User-Agent": "innera-tests/1", "X-Request-Id": "req-1"}
    )
    exc = _caught()

    event_id = capture_request_exception(
        exc, request_id="req-1", user_id="user-42", url=_URL, method="POST", headers=headers
    )

    [event] = sentry.events
    assert event_id == event["event_id"]
    assert event["extra"] == {
        "requestId": "req-1",
        "userId": "user-42",
        "url": "https://api.innera.test/v1/ws?limit=7",  # only allow-listed parameters
        "method": "POST",
    }
    assert event["request"]["method"] == "POST"
    assert event["request"]["headers"] == {"User-Agent": "innera-tests/1", "X-Request-Id": "req-1"}
    assert event["environment"] == "test"
    assert event["release"] == "innera@0.0.0-test"
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    payload = sentry.serialized()
    for secret in [*_HEADER_SECRETS.values(), "url-secret-0005"]:
        assert secret not in payload


async def test_secret_fields_are_redacted_at_any_depth(sentry: CapturingTransport) -> None:
    body = {"profile": {"settings": [dict(_BODY_SECRETS)]}, "title": "kept"}
    with sentry_sdk.new_scope() as scope:
        scope.set_extra("body", body)
        scope.set_extra("password", _BODY_SECRETS["password"])
        capture_task_exception(_caught())

    [event] = sentry.events
    assert event["extra"]["password"] == REDACTED
    extra_body = event["extra"]["body"]
    assert extra_body["title"] == "kept"
    assert extra_body["profile"]["settings"] == [dict.fromkeys(_BODY_SECRETS, REDACTED)]
    payload = sentry.serialized()
    for secret in _BODY_SECRETS.values():
        assert secret not in payload


def test_scrub_event_request_data_headers_and_breadcrumbs() -> None:
    event: dict[str, Any] = {
        "request": {
            "headers": {**{k.lower(): v for k, v in _HEADER_SECRETS.items()}, "accept": "*/*"},
            "cookies": {"sid": "cookie-secret-0002"},
            "data": json.dumps({"auth": {"refreshToken": "refresh-secret-0007"}, "n": 1}),
            "query_string": "code=oauth-code-0012&state=s",
            "url": "/auth/callback?code=oauth-code-0012",
        },
        "extra": {"nested": [{"headers": {"Set-Cookie": "x=1"}}, {"refresh_token": "rt"}]},
        "breadcrumbs": {"values": [{"message": "login", "data": {"email": "a@b.test"}}]},
    }

    out = scrub_event(event, {})

    assert out is not None
    assert out["request"] == {
        "headers": {"accept": "*/*"},
        "data": {"auth": {"refreshToken": REDACTED}, "n": 1},
        "query_string": "",  # neither is allow-listed
        "url": "/auth/callback",
    }
    assert out["extra"] == {
        "nested": [{"headers": {"Set-Cookie": REDACTED}}, {"refresh_token": REDACTED}]
    }
    assert out["breadcrumbs"]["values"][0]["data"] == {"email": REDACTED}
    # A raw body that is not JSON is not sent at all.
    raw = scrub_event({"request": {"data": "password=pw-secret-0006"}}, {})
    assert raw == {"request": {"data": REDACTED}}


async def test_app_error_is_never_sent(sentry: CapturingTransport) -> None:
    assert capture_task_exception(_caught(NotFound)) is None
    assert (
        capture_request_exception(
            _caught(lambda: AppError("teapot", status=418)),
            request_id="r",
            user_id=None,
            url="/x",
            method="GET",
        )
        is None
    )
    assert sentry.events == []


@pytest.mark.parametrize(
    ("exc", "dropped"),
    [
        (NotFound(), True),
        (ExceptionGroup("g", [NotFound(), AppError("x")]), True),
        (ExceptionGroup("g", [NotFound(), RuntimeError("bug")]), False),
        (RuntimeError("bug"), False),
    ],
)
def test_before_send_drops_app_errors(exc: BaseException, dropped: bool) -> None:
    """The safety net on its own, without the client's ignore_errors."""
    hint = {"exc_info": (type(exc), exc, None)}
    assert (scrub_event({"exception": {}}, hint) is None) is dropped


async def test_concurrent_trio_tasks_never_mix_tags(sentry: CapturingTransport) -> None:
    tagged = 0
    all_tagged = trio.Event()

    async def job(name: str) -> None:
        nonlocal tagged
        with task_scope(queue=f"queue-{name}", job_id=f"job-{name}"):
            sentry_sdk.set_tag("step", f"step-{name}")  # the SDK's own API, inside the scope
            tagged += 1
            if tagged == 2:
                all_tagged.set()
            await all_tagged.wait()  # both tasks have tagged before either captures
            await trio.lowlevel.checkpoint()
            capture_task_exception(_caught(lambda: RuntimeError(name)), attempt=f"try-{name}")

    # The parent's isolation scope exists and is shared by reference with the children:
    # without a scope of their own, they would write their tags into it.
    with task_scope(service="worker"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job, "a")
            nursery.start_soon(job, "b")
        capture_task_exception(_caught(lambda: RuntimeError("parent")))

    tags = {e["exception"]["values"][-1]["value"]: e["tags"] for e in sentry.events}
    assert tags == {
        name: {
            "service": "worker",
            "queue": f"queue-{name}",
            "job_id": f"job-{name}",
            "step": f"step-{name}",
            "attempt": f"try-{name}",
        }
        for name in ("a", "b")
    } | {"parent": {"service": "worker"}}


async def test_frames_carry_no_local_variables(sentry: CapturingTransport) -> None:
    exc = _caught()
    try:
        _raise_with_local()
    except ValueError as e:
        exc = e
    capture_task_exception(exc)

    [event] = sentry.events
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    assert [f["function"] for f in frames][-1] == "_raise_with_local"
    assert all("vars" not in f for f in frames)
    assert _LOCAL_SECRET not in sentry.serialized()


async def test_no_dsn_initialises_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _reset_sdk()
    # The SDK itself would fall back to SENTRY_DSN: init_sentry(None) must not.
    monkeypatch.setenv("SENTRY_DSN", "http://public@127.0.0.1:9/1")
    assert init_sentry(None, environment="test", release="x") is False
    assert init_sentry("", environment="test", release="x") is False
    assert not sentry_sdk.get_client().is_active()
    assert capture_task_exception(_caught()) is None
    assert (
        capture_request_exception(_caught(), request_id="r", user_id=None, url="/", method="GET")
        is None
    )
    await trio.to_thread.run_sync(flush, 0.1)  # a no-op, not an error


@pytest.mark.parametrize(("rate", "sent"), [(1.0, 1), (0.0, 0)])
async def test_traces_sample_rate_is_honoured(
    sentry_init: Callable[..., CapturingTransport], rate: float, sent: int
) -> None:
    transport = sentry_init(traces_sample_rate=rate)
    assert sentry_sdk.get_client().options["traces_sample_rate"] == rate
    with task_scope(), sentry_sdk.start_transaction(op="test", name="sampled?"):
        pass
    assert len(transport.transactions) == sent


def test_default_traces_sample_rate_and_validation(
    sentry_init: Callable[..., CapturingTransport],
) -> None:
    sentry_init()
    assert sentry_sdk.get_client().options["traces_sample_rate"] == 0.1
    with pytest.raises(ValueError, match="traces_sample_rate"):
        init_sentry(DSN, environment="test", release="x", traces_sample_rate=1.5)


async def test_only_safe_integrations_and_logs_are_breadcrumbs_only(
    sentry: CapturingTransport,
) -> None:
    client = sentry_sdk.get_client()
    assert sorted(client.integrations) == ["atexit", "dedupe", "excepthook", "logging"]
    # the SDK's own debug records (dropped by its filter anyway) are never built
    assert not logging.getLogger("sentry_sdk.errors").isEnabledFor(logging.INFO)
    assert client.should_send_default_pii() is False
    assert client.options["include_local_variables"] is False

    with task_scope():
        logging.getLogger("innera.test").error("an error log line")
        assert sentry.events == []  # logs never become events
        capture_task_exception(_caught())
    [event] = sentry.events
    messages = [b.get("message") for b in event["breadcrumbs"]["values"]]
    assert "an error log line" in messages


async def test_flush_runs_in_a_thread(sentry: CapturingTransport) -> None:
    capture_task_exception(_caught())
    await trio.to_thread.run_sync(flush, 0.5)
    assert len(sentry.events) == 1


async def test_an_unexpected_route_error_reaches_sentry_once_with_request_extras(
    sentry: CapturingTransport, server  # type: ignore[no-untyped-def]
) -> None:
    r = await server.client.get("/_test/boom", headers={"authorization": "Bearer e2e-SECRET-A",
                                                         "cookie": "sid=e2e-SECRET-C"})
    assert r.status_code == 500
    events = sentry.events
    assert len(events) == 1
    extra = events[0]["extra"]
    assert extra["requestId"] == r.headers["x-request-id"]
    assert extra["method"] == "GET" and extra["url"].endswith("/_test/boom")
    assert "userId" in extra
    assert "e2e-SECRET" not in sentry.serialized()

    # AppErrors (here a 422 and a 404) are not sent
    await server.client.get("/_test/sleep", params={"seconds": "x"})
    await server.client.get("/nope")
    assert len(sentry.events) == 1


# --- query strings: an allow-list -----------------------------------------------------------

_TERM = "secretterm" + "-0013"  # a search term: journal content


def test_query_strings_keep_only_the_allow_list_everywhere() -> None:
    query = f"q={_TERM}&limit=5&{_TERM}&cursor=c1&unread=true&access_token=at-0014&page=2"
    event: dict[str, Any] = {
        "transaction": f"GET /v1/search?{query}",
        "message": f"failed: https://api.innera.test/v1/search?{query}#frag",
        "logentry": {"message": f"GET /v1/search?{query}", "params": [{"url": f"/s?{query}"}]},
        "request": {
            "url": f"https://user:pw-0015@api.innera.test/v1/search?{query}",
            "query_string": query,
            "headers": {"Referer": f"https://app.innera.test/search?{query}",
                        "X-Api-Key": "api-key-0016", "Accept": "*/*"},
        },
        "extra": {"url": f"/v1/search?{query}", "req": {"url": f"/v1/search?{query}"}},
        "exception": {"values": [{"type": "HTTPError", "value": f"500 for /v1/search?{query}"}]},
        "breadcrumbs": {"values": [
            {"message": f"request completed /v1/search?{query}",
             "data": {"req": {"url": f"/v1/search?{query}", "query_string": query}}},
            {"type": "http", "data": {"url": f"https://s3.test/b/o?{query}"}},
        ]},
    }

    out = scrub_event(event, {})

    assert out is not None
    sent = json.dumps(out)
    for secret in (_TERM, "at-0014", "pw-0015", "api-key-0016", "page", "frag", "q="):
        assert secret not in sent, secret
    kept = "limit=5&cursor=c1&unread=true"
    assert out["transaction"] == f"GET /v1/search?{kept}"
    assert out["request"]["url"] == f"https://api.innera.test/v1/search?{kept}"
    assert out["request"]["query_string"] == kept
    assert out["request"]["headers"] == {
        "Referer": f"https://app.innera.test/search?{kept}", "Accept": "*/*"}
    assert out["extra"] == {"url": f"/v1/search?{kept}", "req": {"url": f"/v1/search?{kept}"}}
    assert out["breadcrumbs"]["values"][0] == {
        "message": f"request completed /v1/search?{kept}",
        "data": {"req": {"url": f"/v1/search?{kept}", "query_string": kept}}}
    assert out["breadcrumbs"]["values"][1]["data"] == {"url": f"https://s3.test/b/o?{kept}"}
    assert out["exception"]["values"][0]["value"] == f"500 for /v1/search?{kept}"
    # nothing allowed: no "?" at all; a question mark in prose is left alone
    only = scrub_event({"request": {"url": f"/v1/search?q={_TERM}"},
                        "message": "what? a/b? yes"}, {})
    assert only == {"request": {"url": "/v1/search"}, "message": "what? a/b? yes"}


def test_the_allow_list_names_harmless_query_parameters_of_the_api() -> None:
    import innera.app  # noqa: F401 - registers every operation
    from innera.api.openapi import build_document
    from innera.observability.logging import is_redacted_key
    from innera.observability.sentry import QUERY_ALLOW_LIST

    doc = build_document()
    names = {p["name"] for ops in doc["paths"].values() for op in ops.values()
             for p in op.get("parameters", ()) if p["in"] == "query"}
    assert {"q", "access_token"} <= names  # what must never be sent exists ...
    assert QUERY_ALLOW_LIST <= names  # ... and the allow-list names real parameters only
    assert "q" not in QUERY_ALLOW_LIST
    assert not any(is_redacted_key(name) for name in QUERY_ALLOW_LIST)


async def test_transactions_are_scrubbed_too(
    sentry_init: Callable[..., CapturingTransport],
) -> None:
    transport = sentry_init(traces_sample_rate=1.0)
    with task_scope(), sentry_sdk.start_transaction(
            op="http.server", name=f"GET /v1/search?q={_TERM}&limit=5") as transaction:
        transaction.set_data("url", f"/v1/search?q={_TERM}&limit=5")
        with sentry_sdk.start_span(op="http.client",
                                   name=f"GET https://s3.test/o?X-Amz-Signature={_TERM}") as span:
            span.set_data("password", _TERM)
    [sent] = transport.transactions
    assert sent["transaction"] == "GET /v1/search?limit=5"
    assert sent["spans"][0]["description"] == "GET https://s3.test/o"
    assert _TERM not in transport.serialized()


async def test_a_500_on_a_search_url_sends_no_search_term(
    sentry: CapturingTransport, server  # type: ignore[no-untyped-def]
) -> None:
    r = await server.client.get(
        "/_test/boom", params={"q": _TERM, "limit": "5"},
        headers={"referer": f"https://app.innera.test/search?q={_TERM}",
                 "x-api-key": "e2e-api-key-0017", "x-reauth-token": "e2e-reauth-0018"})
    assert r.status_code == 500
    [event] = sentry.events
    payload = sentry.serialized()
    for secret in (_TERM, "e2e-api-key-0017", "e2e-reauth-0018"):
        assert secret not in payload, secret
    assert event["extra"]["url"].endswith("/_test/boom?limit=5")
    assert event["request"]["url"].endswith("/_test/boom?limit=5")
    headers = {k.lower(): v for k, v in event["request"]["headers"].items()}
    assert headers["referer"] == "https://app.innera.test/search"
    assert "x-api-key" not in headers and "x-reauth-token" not in headers


# --- tracing (innera/observability/tracing.py) -------------------------------------------------


async def test_concurrent_jobs_and_their_nurseries_never_mix_spans(
    sentry_init: Callable[..., CapturingTransport],
) -> None:
    """Two jobs run side by side, each spawning tasks that record spans while the other's
    do: every span lands in its own job's transaction, as a child of it, in its trace."""
    transport = sentry_init(traces_sample_rate=1.0)
    both_started = trio.Event()
    started = 0

    async def work(job: str, task: int) -> None:
        nonlocal started
        started += 1
        if started == 4:
            both_started.set()
        await both_started.wait()  # every task of both jobs is running before any records
        for step in range(3):
            with tracing.span("db", f"{job}.task{task}.step{step}"):
                await trio.lowlevel.checkpoint()

    async def job(name: str) -> None:
        with tracing.job_transaction(f"queue-{name}", f"id-{name}", {}):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(work, name, 1)
                nursery.start_soon(work, name, 2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job, "a")
        nursery.start_soon(job, "b")

    sent = {t["transaction"]: t for t in transport.transactions}
    assert set(sent) == {"job queue-a", "job queue-b"}
    traces = set()
    for name in ("a", "b"):
        transaction = sent[f"job queue-{name}"]
        context = transaction["contexts"]["trace"]
        traces.add(context["trace_id"])
        assert transaction["tags"] == {"queue": f"queue-{name}", "job_id": f"id-{name}"}
        assert sorted(s["description"] for s in transaction["spans"]) == sorted(
            f"{name}.task{t}.step{i}" for t in (1, 2) for i in range(3))
        assert {(s["trace_id"], s["parent_span_id"]) for s in transaction["spans"]} == {
            (context["trace_id"], context["span_id"])}
    assert len(traces) == 2


async def test_a_job_continues_the_trace_its_payload_carries(
    sentry_init: Callable[..., CapturingTransport],
) -> None:
    transport = sentry_init(traces_sample_rate=1.0)
    with tracing.job_transaction("export-jobs", "export_jobs:1", {}):
        carried = tracing.trace_headers()
    assert carried is not None and set(carried) == {"sentry-trace", "baggage"}
    with tracing.job_transaction("push-notifications", "push:1", {tracing.PAYLOAD_KEY: carried}):
        pass
    # a payload of an older innera (or the reconciler's) has no trace, or a broken one
    for payload in ({}, {tracing.PAYLOAD_KEY: "nonsense"}, {tracing.PAYLOAD_KEY: {"x": 1}},
                    ["not", "an", "object"]):
        with tracing.job_transaction("push-notifications", "push:2", payload):
            pass
    first, second, *fresh = (t["contexts"]["trace"] for t in transport.transactions)
    assert second["trace_id"] == first["trace_id"]
    assert second["parent_span_id"] == first["span_id"]
    assert len({t["trace_id"] for t in fresh} | {first["trace_id"]}) == 5
    assert tracing.trace_headers() is None  # outside a transaction: nothing to carry


async def test_a_callers_trace_is_continued_but_not_its_sampling_decision(
    sentry_init: Callable[..., CapturingTransport],
) -> None:
    """A client sending ``sentry-trace: …-1`` (and ``sentry-sample_rand=0`` in its baggage)
    on every request must not get every request traced: the rate decides, not the caller."""
    trace_id, span_id = "a" * 32, "b" * 16
    headers = [(b"sentry-trace", f"{trace_id}-{span_id}-1".encode()),
               (b"baggage", b"sentry-trace_id=" + trace_id.encode()
                + b",sentry-sampled=true,sentry-sample_rand=0.000001,sentry-sample_rate=1")]
    scope = {"type": "http", "method": "GET", "path": "/v1/entries/x", "headers": headers}
    transport = sentry_init(traces_sample_rate=1e-9)
    for _ in range(20):
        with tracing.server_transaction(scope):
            assert tracing.current_trace_id() == trace_id  # logs still join the caller's
    sentry_sdk.flush()
    assert transport.transactions == []
    transport = sentry_init(traces_sample_rate=1.0)
    with tracing.server_transaction(scope):
        pass
    sentry_sdk.flush()
    [sent] = transport.transactions
    assert sent["contexts"]["trace"]["trace_id"] == trace_id
    assert sent["contexts"]["trace"]["parent_span_id"] == span_id


async def test_tracing_off_makes_nothing(sentry_init: Callable[..., CapturingTransport]
                                         ) -> None:
    """Rate 0 (or no DSN): no transaction, no span object, no trace id, no headers."""
    transport = sentry_init(traces_sample_rate=0.0)
    assert tracing.SWITCH.on is False
    with tracing.job_transaction("export-jobs", "export_jobs:1", {}):
        assert sentry_sdk.get_current_span() is None
        first, second = tracing.span("db", "a.b"), tracing.span("db", "c.d")
        assert first is second  # the shared no-op
        assert tracing.current_trace_id() is None and tracing.trace_headers() is None
    assert transport.envelopes == []
    assert init_sentry(None, environment="test", release="x") is False
    assert tracing.SWITCH.on is False


@pytest.mark.parametrize(("path", "traced"), [
    ("/health", False), ("/health/ready", False), ("/metrics", False), ("/v1/entries", True),
    ("/healthz", True), ("/v1/ws", True),
])
def test_default_untraced_paths(path: str, traced: bool) -> None:
    tracing.configure(True)
    try:
        assert tracing.traced_path(path) is traced
    finally:
        tracing.configure(False)


def test_route_names_are_sentry_style_templates() -> None:
    assert tracing.route_name("/v1/entries/<entry_id>") == "/v1/entries/{entry_id}"
    assert tracing.route_name("/v1/x/<uuid:id>/y/<int:n>") == "/v1/x/{id}/y/{n}"
    assert tracing.route_name(None) == "<unmatched>"
