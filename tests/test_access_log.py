"""The access line ("request completed", one per request) in ``json``: written straight to the
configured handler (no ``LogRecord``, no structlog chain), it is the line the chain writes for
the same request: the same keys in the same order, the same values, the same redaction; only
the time differs (both ISO 8601 UTC), and the spacing (orjson writes compact JSON).

The chain's line is what logging writes with a filter on ``innera.request``: a record a filter
may look at always takes the ordinary path, so the two are compared in one process, for the
same request: called directly (every case, traced and untraced, and arbitrary URLs) and
through a real server (the framework's routes, the framework-free ``/health`` and the
WebSocket handshake).
"""

from __future__ import annotations

import contextvars
import datetime
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import sentry_sdk
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from innera.api.pipeline import Pipeline
from innera.observability import tracing
from innera.observability.logging import (
    access_log,
    bind_request,
    bind_user,
    configure_logging,
    fast_access_handler,
    log_request_completed,
    redact,
)
from innera.observability.sentry import init_sentry
from tests.fixtures.accounts import signup
from tests.fixtures.sentry_transport import CapturingTransport
from tests.fixtures.server import RunningServer
from tests.fixtures.ws import WsClient

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
USER = "7d1f6c2e-4b1a-4c55-9a53-5c3f2d1e0b9a"


@contextmanager
def json_logging(level: str = "info", log_format: str = "json") -> Iterator[io.StringIO]:
    """configure_logging to a fresh stream; pytest's handlers (and the rest) put back after."""
    root, coredis = logging.getLogger(), logging.getLogger("coredis")
    handlers, root_level, filters = root.handlers[:], root.level, coredis.filters[:]
    stream = io.StringIO()
    try:
        configure_logging(level, stream, log_format=log_format)
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        coredis.filters[:] = filters


@contextmanager
def through_the_chain() -> Iterator[None]:
    """Access lines go through logging and the structlog chain while in the block: a filter
    on ``innera.request`` (a record a filter may look at is never written directly)."""
    keep_all = logging.Filter()
    access_log.addFilter(keep_all)
    try:
        assert fast_access_handler() is None
        yield
    finally:
        access_log.removeFilter(keep_all)


def assert_same_line(direct_text: str, chain_text: str) -> dict[str, Any]:
    """The direct line is the chain's, key for key and in the same order, its time aside
    (each an ISO 8601 UTC timestamp); each written by its own writer; nothing in it left for
    redaction to censor. Returns the direct line, parsed."""
    direct, chain = json.loads(direct_text), json.loads(chain_text)
    assert direct_text == orjson.dumps(direct).decode()  # written directly, compact
    assert chain_text == json.dumps(chain, ensure_ascii=False)  # the chain's JSONRenderer
    for line in (direct, chain):
        assert ISO_UTC.fullmatch(line["time"]), line["time"]
        stamp = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == datetime.timedelta(0)
    assert list(direct) == list(chain)
    assert {**direct, "time": None} == {**chain, "time": None}
    assert redact(direct) == direct
    return direct


def written(text: str) -> list[str]:
    """The lines of ``text`` (split at ``\\n`` only: a line may hold U+0085 or U+2028)."""
    return text.split("\n")[:-1]


def both_lines(stream: io.StringIO, log: Callable[[], None]) -> tuple[str, str]:
    """``log()`` once written directly, once through the chain: the two lines it wrote."""
    start = stream.tell()
    assert fast_access_handler() is not None
    log()
    with through_the_chain():
        log()
    lines = written(stream.getvalue()[start:])
    assert len(lines) == 2, lines
    return lines[0], lines[1]


@contextmanager
def sentry_on(traces_sample_rate: float = 1.0) -> Iterator[CapturingTransport]:
    """Sentry initialised as ``innera serve`` does (at rate 1: every request traced), with a
    transport that keeps what it would send; reset afterwards."""
    transport = CapturingTransport()
    assert init_sentry("http://public@127.0.0.1:9/1", environment="test",
                       release="innera@0.0.0-test", traces_sample_rate=traces_sample_rate,
                       transport=transport)
    try:
        yield transport
    finally:
        client = sentry_sdk.get_client()
        if client.is_active():
            client.close()
        sentry_sdk.get_global_scope().set_client(None)
        tracing.configure(False)


# --- called directly --------------------------------------------------------------------

URLS = [
    pytest.param("GET", "/v1/entries/0b9e8c1a-2d3f-4e5a-8b7c-6d5e4f3a2b1c", b"", id="plain"),
    pytest.param("GET", "/v1/search",
                 b"q=journal+term&limit=5&access_token=at-1&sig=sg-2&Api-Key=k-3&cursor=c%2B4",
                 id="censored-query"),
    pytest.param("PATCH", "/v1/entries/été/日本語 ✓", "cursor=é&q=naïve".encode(),
                 id="unicode"),
    pytest.param("GET", "/v1/ws", b"access_token=secret-5&since=1733390000000-0", id="ws"),
    pytest.param("GET", "/nowhere?token=secret-6", b"", id="question-mark-in-path"),
    pytest.param("GET", "/x?password=p&b", b"q=1&&blank=&=v#frag", id="both-with-marks"),
]


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
@pytest.mark.parametrize("user", [None, USER], ids=["anonymous", "user"])
@pytest.mark.parametrize(("method", "path", "query"), URLS)
async def test_the_direct_line_is_the_chains(method: str, path: str, query: bytes,
                                             user: str | None, traced: bool) -> None:
    request_id = Pipeline.begin()  # what every request gets first
    if user is not None:
        bind_user(user)  # what authentication does

    def log() -> None:
        log_request_completed(method, path, query, request_id, user, 404, 0.0123456)

    with json_logging() as stream:
        if traced:
            with sentry_on(), tracing.server_transaction(
                    {"type": "http", "method": method, "path": path, "headers": []}):
                trace_id = tracing.current_trace_id()
                direct, chain = both_lines(stream, log)
        else:
            trace_id = None
            direct, chain = both_lines(stream, log)
    line = assert_same_line(direct, chain)
    context = {"requestId": request_id} if user is None else {"requestId": request_id,
                                                              "userId": user}
    assert {k: line[k] for k in ("requestId", "userId") if k in line} == context
    assert line.get("traceId") == trace_id and (trace_id is not None) == traced
    assert (line["level"], line["logger"], line["msg"]) == ("info", "innera.request",
                                                            "request completed")
    assert line["req"] == {"method": method, "url": line["req"]["url"],
                           "requestId": request_id, "userId": user}
    assert (line["res"], line["responseTime"]) == ({"statusCode": 404}, 12.35)
    for secret in ("journal", "at-1", "sg-2", "k-3", "naïve", "secret-5", "secret-6", "=p&"):
        assert secret not in line["req"]["url"], line["req"]["url"]


_marked = st.text(alphabet="aq?#&=%+;[] é日/_-~.", max_size=24)
paths = st.builds(lambda rest: "/" + rest,
                  _marked | st.text(st.characters(exclude_categories=("Cs",)), max_size=24))
queries = st.binary(max_size=32) | _marked.map(str.encode) | st.sampled_from(
    [b"", b"&", b"=", b"q", b"%", b"%zz", b"a=%2B+b", b"sig=1#x", b"password&token="])


@settings(max_examples=300, deadline=None)
@given(path=paths, query=queries)
def test_any_url_is_censored_as_the_chain_censors_it(path: str, query: bytes) -> None:
    """The chain's redaction passes the line's ``url`` through the query censoring once more
    (it is a ``url`` key); the direct line must come out the same for any path and query."""
    context = contextvars.copy_context()  # the bound ids stay in this example
    request_id = str(uuid.uuid4())
    context.run(bind_request, request_id)
    with json_logging() as stream:
        direct, chain = both_lines(stream, lambda: context.run(
            log_request_completed, "GET", path, query, request_id, None, 200, 0.001))
    assert_same_line(direct, chain)


async def test_a_callers_own_context_goes_through_the_chain_and_is_redacted() -> None:
    """Anything bound besides requestId and userId is on the line as the chain writes it,
    redaction included."""
    request_id = Pipeline.begin()
    structlog.contextvars.bind_contextvars(tenant="acme", apiKey="ak-secret-7",
                                           nested={"password": "pw-secret-8", "n": [1.5]})
    with json_logging() as stream:
        log_request_completed("GET", "/v1/me", b"", request_id, None, 200, 0.002)
        with through_the_chain():
            log_request_completed("GET", "/v1/me", b"", request_id, None, 200, 0.002)
    first, second = (json.loads(text) for text in written(stream.getvalue()))
    assert {**first, "time": None} == {**second, "time": None}
    assert first["tenant"] == "acme" and first["apiKey"] == "[REDACTED]"
    assert first["nested"] == {"password": "[REDACTED]", "n": [1.5]}
    assert "secret" not in stream.getvalue()


@pytest.mark.parametrize(("path", "query"), [("/v1/search", b"q=term-13&limit=5"),
                                           ("/nowhere?token=t-14", b"sig=s-15")])
async def test_the_sentry_breadcrumb_is_the_integrations(path: str, query: bytes) -> None:
    """Sentry's logging integration makes every info record a breadcrumb: the line written
    directly leaves the same one, which the next event of the scope carries."""
    request_id = Pipeline.begin()
    bind_user(USER)
    with json_logging(), sentry_on(traces_sample_rate=0.0) as transport, \
            sentry_sdk.isolation_scope():
        log_request_completed("GET", path, query, request_id, USER, 200, 0.0042)
        with through_the_chain():
            log_request_completed("GET", path, query, request_id, USER, 200, 0.0042)
        sentry_sdk.capture_exception(RuntimeError("after the request"))
    [event] = transport.events
    direct, chain = (crumb for crumb in event["breadcrumbs"]["values"]
                     if crumb.get("category") == "innera.request")
    assert ISO_UTC.fullmatch(direct["timestamp"]) and ISO_UTC.fullmatch(chain["timestamp"])
    assert {**direct, "timestamp": None} == {**chain, "timestamp": None}
    assert (direct["type"], direct["level"], direct["message"]) == ("log", "info",
                                                                   "request completed")
    assert direct["data"]["req"]["requestId"] == request_id
    assert direct["data"]["res"] == {"statusCode": 200} and direct["data"]["responseTime"] == 4.2
    assert not re.search(r"term-13|t-14|s-15", json.dumps(event["breadcrumbs"]))


# --- what the direct line follows: configuration, level, format, handlers ----------------


async def test_the_line_follows_each_configuration_and_stream() -> None:
    """A second configure_logging (a new handler, a new stream) and a handler's new stream
    (setStream) both take the next line: it never goes to a stream no longer configured."""
    request_id = Pipeline.begin()

    def log() -> None:
        log_request_completed("GET", "/health", b"", request_id, None, 200, 0.001)

    with json_logging() as first:
        log()
        with json_logging() as second:
            handler = fast_access_handler()
            assert handler is logging.getLogger().handlers[0]
            log()
            third = io.StringIO()
            handler.setStream(third)
            log()
    assert [len(written(s.getvalue())) for s in (first, second, third)] == [1, 1, 1]
    assert all(json.loads(s.getvalue())["requestId"] == request_id
               for s in (first, second, third))


async def test_below_the_level_nothing_is_written() -> None:
    request_id = Pipeline.begin()
    with json_logging("warn") as stream:
        log_request_completed("GET", "/health", b"", request_id, None, 200, 0.001)
        logging.getLogger("innera.test").warning("shown")
    assert [json.loads(line)["msg"] for line in written(stream.getvalue())] == ["shown"]


async def test_console_lines_keep_the_chain() -> None:
    request_id = Pipeline.begin()
    with json_logging(log_format="console") as stream:
        assert fast_access_handler() is None
        log_request_completed("GET", "/v1/search", b"q=secret-9", request_id, None, 200, 0.001)
    text = stream.getvalue()
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[info\s*\] request completed\s+"
                    r"\[innera\.request\]", text), text
    assert "secret-9" not in text and "[REDACTED]" in text and request_id in text


async def test_another_handler_gets_the_line_too() -> None:
    """A handler added next to the configured one (a test's, a library's) sees every access
    line, as it sees every other line."""
    request_id = Pipeline.begin()
    extra = io.StringIO()
    with json_logging() as stream:
        root = logging.getLogger()
        added = logging.StreamHandler(extra)
        added.setFormatter(root.handlers[0].formatter)
        root.addHandler(added)
        assert fast_access_handler() is None
        log_request_completed("GET", "/health", b"", request_id, None, 200, 0.001)
    line, seen = json.loads(stream.getvalue()), json.loads(extra.getvalue())
    assert {**line, "time": None} == {**seen, "time": None}  # each formats its own time
    assert line["requestId"] == request_id


# --- through a real server ---------------------------------------------------------------


async def test_a_servers_direct_lines_are_the_chains(server: RunningServer) -> None:
    """The same requests twice, written directly then through the chain: the framework's
    routes (anonymous and signed in, censored queries, a unicode path, a ``%3F``), the
    framework-free ``/health`` and the WebSocket handshake. Tracing is on: ``/health`` is
    untraced, the rest carry their trace id."""
    client = server.client
    alice = await signup(client)
    host, port = server.started.addresses[0]

    async def http(path: str, **headers: str) -> str:
        r = await client.get(path, headers=headers)
        return r.headers["x-request-id"]

    async def websocket() -> None:
        ws = await WsClient.connect(host, port, f"/v1/ws?access_token={alice.access}")
        await ws.aclose()

    # (the url the line shows, its userId, the request)
    requests: list[tuple[str, str | None, Callable[[], Any]]] = [
        ("/health", None, lambda: http("/health")),
        ("/v1/entries?limit=5&access_token=[REDACTED]", None,
         lambda: http("/v1/entries?limit=5&access_token=secret-10")),
        ("/v1/search?q=[REDACTED]&limit=5", alice.id,
         lambda: http("/v1/search?q=secret-11&limit=5", **alice.auth)),
        ("/v1/entries/été 日本", alice.id,
         lambda: http("/v1/entries/%C3%A9t%C3%A9%20%E6%97%A5%E6%9C%AC", **alice.auth)),
        ("/nowhere?token=[REDACTED]", None, lambda: http("/nowhere%3Ftoken=secret-12")),
        ("/v1/ws?access_token=[REDACTED]", alice.id, websocket),
    ]
    with json_logging() as stream, sentry_on():
        for url, user_id, send in requests:
            lines = []
            for direct in (True, False):
                start = stream.tell()
                if direct:
                    assert fast_access_handler() is not None
                    await send()
                else:
                    with through_the_chain():
                        await send()
                access = [text for text in written(stream.getvalue()[start:])
                          if json.loads(text)["logger"] == "innera.request"]
                assert len(access) == 1, access
                lines.append(access[0])
            direct_line, chain_line = (json.loads(text) for text in lines)
            for line in (direct_line, chain_line):
                assert line["req"]["url"] == url
                assert line["req"]["userId"] == user_id
                assert line["req"]["requestId"] == line["requestId"]
                assert ("traceId" in line) == (url != "/health")  # /health is never traced
                assert line["responseTime"] >= 0
                # two requests: their own ids, durations and traces
                line["requestId"] = line["req"]["requestId"] = line["responseTime"] = None
                if "traceId" in line:
                    line["traceId"] = None
            assert lines[0] == orjson.dumps(json.loads(lines[0])).decode()  # written directly
            assert_same_line(orjson.dumps(direct_line).decode(),
                             json.dumps(chain_line, ensure_ascii=False))
    server_lines = [text for text in written(stream.getvalue())
                    if json.loads(text)["logger"] != "httpx"]  # the test's client logs URLs
    assert not re.search(r"secret-1[0-2]", "\n".join(server_lines))
