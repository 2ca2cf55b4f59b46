"""The hot reads served without the framework (:mod:`innera.api.direct`) answer exactly as the
framework's routes do.

Each question is asked twice on a real socket: once as a client asks it (served directly on
the fast server) and once with an ``Origin`` header, which always goes to the framework
(``CORS_ORIGINS`` is unset here, so it adds no CORS header). The two answers must be alike:
status, body, every header (the request id and the rate limit's count aside, which differ per
request by design), the metric and the access log line. On Hypercorn both go to the framework.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
import trio

from innera.api.direct import DirectRoutes
from innera.api.operation import OPERATIONS
from innera.api.pipeline import Pipeline
from innera.app import create_app
from innera.auth.access_tokens import ALGORITHM, TOKEN_TYPE
from innera.config import load_settings
from innera.db.connection import TrioConnection
from innera.http.fast import HANGUP_EXTENSION
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer, start_server
from tests.test_access_log import json_logging, sentry_on, written

#: sends a request to the framework (no CORS_ORIGINS: no CORS header is added)
ORIGIN = {"origin": "https://app.example"}
#: requests per user and operation per minute: enough for each test's reads
USER_LIMIT = 40
JWT_SECRET = "direct-test-secret-" + "x" * 32
#: per request by design: compared apart
_PER_REQUEST = {"date", "x-request-id", "ratelimit-remaining", "ratelimit-reset", "retry-after"}


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_AUTH": "1000/min",
            "RATE_LIMIT_USER": f"{USER_LIMIT}/min", "JWT_SECRET": JWT_SECRET}


async def ask_both(server: RunningServer, path: str, headers: dict[str, str] | None = None
                   ) -> tuple[httpx.Response, httpx.Response]:
    """(the direct answer, the framework's) to ``GET path``."""
    headers = headers or {}
    direct = await server.client.get(path, headers=headers)
    framework = await server.client.get(path, headers={**headers, **ORIGIN})
    return direct, framework


def _header_shape(r: httpx.Response) -> list[tuple[str, str]]:
    """Every header of an answer, the values that differ per request blanked."""
    return sorted((name, "" if name in _PER_REQUEST else value)
                  for name, value in r.headers.multi_items())


def assert_alike(direct: httpx.Response, framework: httpx.Response) -> dict[str, Any]:
    """The two answers are the same but for what differs per request; the direct one's
    body is returned."""
    assert direct.status_code == framework.status_code, (direct.text, framework.text)
    # byte for byte, but for the request id (the error contract's is the header's)
    assert direct.content.replace(direct.headers["x-request-id"].encode(), b"") == \
        framework.content.replace(framework.headers["x-request-id"].encode(), b"")
    body = direct.json()
    if "error" in body:
        assert body["requestId"] == direct.headers["x-request-id"]
        body["requestId"] = None
    assert _header_shape(direct) == _header_shape(framework)
    assert direct.headers["x-request-id"] != framework.headers["x-request-id"]
    uuid.UUID(direct.headers["x-request-id"])
    if "ratelimit-remaining" in direct.headers:  # the same count, one request later
        assert int(framework.headers["ratelimit-remaining"]) == \
            int(direct.headers["ratelimit-remaining"]) - 1
        assert abs(int(framework.headers["ratelimit-reset"])
                   - int(direct.headers["ratelimit-reset"])) <= 1
    return body


async def create_entry(server: RunningServer, account: Account, body: str = "went walking"
                       ) -> dict[str, Any]:
    r = await server.client.post("/v1/entries", json={"body": body, "tags": ["a", "é"],
                                                       "mood": "😊", "title": "Ünïcode"},
                                 headers=account.auth)
    assert r.status_code == 201, r.text
    return r.json()


async def requests_counted(server: RunningServer, route: str, status: int) -> float:
    text = (await server.client.get("/metrics")).text
    wanted = (f'http_requests_total{{method="GET",route="{route}",'
              f'status_code="{status}"}} ')
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- answers -----------------------------------------------------------------------------


async def test_an_entry_reads_alike(server: RunningServer) -> None:
    alice = await signup(server.client)
    entry = await create_entry(server, alice)
    before = await requests_counted(server, "/v1/entries/<entry_id>", 200)
    for path in (f"/v1/entries/{entry['id']}", f"/v1/entries/{entry['id'].upper()}",
                 f"/v1/entries/{entry['id']}?ignored=1&access_token=x"):
        body = assert_alike(*await ask_both(server, path, alice.auth))
        assert body == entry
    # every answer is counted under the route's template, the direct ones too
    assert await requests_counted(server, "/v1/entries/<entry_id>", 200) == before + 6


async def test_not_found_reads_alike(server: RunningServer) -> None:
    """Another user's entry, a missing one and malformed ids are the same 404."""
    alice, bob = await signup(server.client), await signup(server.client)
    bobs = await create_entry(server, bob)
    for entry_id in (bobs["id"], str(uuid.uuid4()), "nope", "%27%20OR%201%3D1", "%C3%A9",
                     "a" * 300):
        direct, framework = await ask_both(server, f"/v1/entries/{entry_id}", alice.auth)
        body = assert_alike(direct, framework)
        assert direct.status_code == 404 and body["error"]["code"] == "not_found"


async def test_refused_tokens_read_alike(server: RunningServer) -> None:
    """No token, a malformed or forged one, an expired one and one whose session ended:
    the same 401 with ``WWW-Authenticate: Bearer``."""
    alice = await signup(server.client)
    entry = await create_entry(server, alice)
    path = f"/v1/entries/{entry['id']}"
    now = int(time.time())
    expired = jwt.encode({"sub": alice.id, "iat": now - 7200, "exp": now - 3600, "jti": "x",
                          "typ": TOKEN_TYPE, "sg": 0}, JWT_SECRET, algorithm=ALGORITHM)
    forged = jwt.encode({"sub": alice.id, "iat": now, "exp": now + 600, "jti": "y",
                         "typ": TOKEN_TYPE, "sg": 0}, "not the secret" * 3, algorithm=ALGORITHM)
    for headers in ({}, {"authorization": "Bearer"}, {"authorization": "Basic eDp5"},
                    {"authorization": "Bearer not.a.jwt"}, {"authorization": f"Bearer {forged}"},
                    {"authorization": f"Bearer {expired}"}):
        direct, framework = await ask_both(server, path, headers)
        body = assert_alike(direct, framework)
        assert direct.status_code == 401 and body["error"]["code"] == "unauthorized"
        assert direct.headers["www-authenticate"] == "Bearer"
    r = await server.client.post("/v1/auth/logout", json={"refreshToken": alice.refresh,
                                                           "all": True})
    assert r.status_code == 204
    for ended in (path, "/v1/notifications/unread-count"):  # ended at once, on both paths
        direct, framework = await ask_both(server, ended, alice.auth)
        assert_alike(direct, framework)
        assert direct.status_code == 401


async def test_the_access_lines_are_alike(server: RunningServer) -> None:
    """One access line per answer on both paths, alike but for the request's own id, time
    and duration: the URL as the log censors it, the user, the status."""
    alice = await signup(server.client)
    entry = await create_entry(server, alice)
    asked = [(f"/v1/entries/{entry['id']}?access_token=secret-q", alice.auth),
             (f"/v1/entries/{uuid.uuid4()}", alice.auth), (f"/v1/entries/{entry['id']}", {}),
             ("/v1/notifications/unread-count", alice.auth)]
    with json_logging() as stream:
        answers = [await ask_both(server, path, headers) for path, headers in asked]
    lines = [line for text in written(stream.getvalue())
             if (line := json.loads(text))["logger"] == "innera.request"]
    assert len(lines) == 2 * len(asked)
    assert "secret-q" not in json.dumps(lines)
    for (direct, framework), (direct_line, framework_line) in zip(
            answers, zip(lines[::2], lines[1::2], strict=True), strict=True):
        for r, line in ((direct, direct_line), (framework, framework_line)):
            assert line["requestId"] == line["req"]["requestId"] == r.headers["x-request-id"]
            assert line["res"]["statusCode"] == r.status_code
        assert list(direct_line) == list(framework_line)
        assert _same_but_per_request(direct_line) == _same_but_per_request(framework_line)


def _same_but_per_request(line: dict[str, Any]) -> dict[str, Any]:
    return {**line, "time": None, "requestId": None, "responseTime": None,
            "req": {**line["req"], "requestId": None}}


async def test_the_unread_count_reads_alike(server: RunningServer) -> None:
    alice = await signup(server.client)
    body = assert_alike(*await ask_both(server, "/v1/notifications/unread-count", alice.auth))
    assert body == {"count": 0}


async def test_the_rate_limit_is_one_count_and_its_429_alike(
        server: RunningServer, redis_url: str) -> None:
    """Both paths count against the same per-user limit; past it, the same 429."""
    alice = await signup(server.client)
    entry = await create_entry(server, alice)
    path = f"/v1/entries/{entry['id']}"
    limit = USER_LIMIT
    first = await server.client.get(path, headers=alice.auth)
    remaining = int(first.headers["ratelimit-remaining"])
    assert first.headers["ratelimit-limit"] == str(limit)
    async def get(headers: dict[str, str]) -> None:
        assert (await server.client.get(path, headers=headers)).status_code == 200

    async with trio.open_nursery() as nursery:  # spend the rest, half on each path
        for i in range(remaining):
            nursery.start_soon(get, {**alice.auth, **(ORIGIN if i % 2 else {})})
    direct, framework = await ask_both(server, path, alice.auth)
    for r in (direct, framework):
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert r.headers["ratelimit-remaining"] == "0"
        assert r.headers["retry-after"] == r.headers["ratelimit-reset"]
    assert_alike_refusal(direct, framework)
    # another user is not limited
    bob = await signup(server.client)
    r = await server.client.get(f"/v1/entries/{uuid.uuid4()}", headers=bob.auth)
    assert r.status_code == 404


def assert_alike_refusal(direct: httpx.Response, framework: httpx.Response) -> None:
    """Two refusals past the limit (their remaining count is 0 on both)."""
    assert direct.json()["error"]["message"].split(";")[0] == \
        framework.json()["error"]["message"].split(";")[0]
    assert _header_shape(direct) == _header_shape(framework)


async def test_a_read_stuck_on_the_database_is_503_alike(
        server: RunningServer, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from innera.journal import entries as entries_module

    alice = await signup(server.client)
    entry = await create_entry(server, alice)
    monkeypatch.setattr(entries_module, "OPERATION_TIMEOUT_S", 0.3)
    async with await TrioConnection.connect(database_url) as locker:
        async with locker.transaction():
            await locker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
            with trio.fail_after(10):
                direct, framework = await ask_both(server, f"/v1/entries/{entry['id']}",
                                                   alice.auth)
    body = assert_alike(direct, framework)
    assert direct.status_code == 503 and body["error"]["code"] == "database_unavailable"


async def test_a_read_past_the_request_timeout_is_503_alike(
        nursery: trio.Nursery, server_settings: dict[str, str], database_url: str) -> None:
    """Past REQUEST_TIMEOUT_S the read is stopped: 503 ``request_timeout``, Retry-After: 1;
    the next read works."""
    server = await start_server(nursery, load_settings({**server_settings,
                                                        "REQUEST_TIMEOUT_S": "0.3"}))
    async with server.client:
        alice = await signup(server.client)
        entry = await create_entry(server, alice)
        path = f"/v1/entries/{entry['id']}"
        async with await TrioConnection.connect(database_url) as locker:
            async with locker.transaction():
                await locker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
                with trio.fail_after(10):
                    direct, framework = await ask_both(server, path, alice.auth)
        body = assert_alike(direct, framework)
        assert direct.status_code == 503 and body["error"]["code"] == "request_timeout"
        assert direct.headers["retry-after"] == "1"
        assert (await server.client.get(path, headers=alice.auth)).json() == entry
    await server.stop()


async def test_a_damaged_entry_is_a_500_alike(server: RunningServer, database_url: str
                                             ) -> None:
    """A row whose sealed content no longer opens: ``crypto_error``. A row that opens but
    is not an entry (no ``body``; as if written by a broken release): the contract's 500
    ``internal_error``, revealing nothing."""
    alice = await signup(server.client)
    damaged, foreign = [await create_entry(server, alice) for _ in range(2)]
    svc = server.services
    dek = await svc.entry_cipher.data_keys.get(alice.id)
    not_an_entry = svc.entry_cipher.seal_with(dek, alice.id, foreign["id"], {"title": "x"})
    async with await TrioConnection.connect(database_url) as conn:
        await conn.execute("UPDATE entries SET content = content || '\\x00'::bytea "
                           "WHERE id = %s", (damaged["id"],))
        await conn.execute("UPDATE entries SET content = %s WHERE id = %s",
                           (not_an_entry, foreign["id"]))
    for entry, code, message, reported in (
            (damaged, "crypto_error", "The data could not be encrypted or decrypted", False),
            (foreign, "internal_error", "Internal server error", True)):
        path = f"/v1/entries/{entry['id']}"
        with sentry_on() as sentry:
            direct, framework = await ask_both(server, path, alice.auth)
        body = assert_alike(direct, framework)
        assert direct.status_code == 500
        assert body == {"error": {"code": code, "message": message}, "requestId": None}
        if not reported:  # (the cipher reports its failure itself)
            continue
        # the unexpected one reaches Sentry once per answer, alike, without the token
        events = sentry.events
        assert len(events) == 2
        for event, r in zip(events, (direct, framework), strict=True):
            extra = event["extra"]
            assert extra["requestId"] == r.headers["x-request-id"]
            assert extra["method"] == "GET" and extra["url"].endswith(path), extra["url"]
            assert extra["userId"] == alice.id
            assert alice.access not in json.dumps(event)
        assert sorted(events[0]["extra"]) == sorted(events[1]["extra"])
        assert events[0]["extra"]["url"] == events[1]["extra"]["url"]


# --- which requests are served directly ---------------------------------------------------


def _scope(path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
           hangups: bool = True) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "query_string": b"",
            "headers": headers or [], "scheme": "http", "client": ("127.0.0.1", 1),
            "extensions": {HANGUP_EXTENSION: {}} if hangups else {}}


async def test_only_what_needs_nothing_else_is_served_directly(server: RunningServer) -> None:
    svc = server.services
    pipeline = Pipeline(svc.settings, svc.metrics)
    direct = DirectRoutes(svc, pipeline, OPERATIONS, create_app(svc, pipeline).url_map)
    entry = f"/v1/entries/{uuid.uuid4()}"
    auth = (b"authorization", b"Bearer x")
    served = direct.route(_scope(entry, headers=[auth]))
    assert served is not None and served[1] == {"entry_id": entry.rsplit("/", 1)[1]}
    assert served[2] == "Bearer x"
    assert direct.route(_scope("/v1/notifications/unread-count")) is not None
    assert direct.route(_scope(entry, headers=[(b"content-length", b"0")])) is not None
    for scope in (
        _scope(entry, hangups=False),  # Hypercorn: Quart-trio watches the disconnect
        _scope(entry, "HEAD"), _scope(entry, "OPTIONS"), _scope(entry, "DELETE"),
        _scope(entry, headers=[(b"origin", b"https://app.example")]),
        _scope(entry, headers=[(b"content-length", b"2")]),
        _scope(entry, headers=[(b"transfer-encoding", b"chunked")]),
        _scope(entry, headers=[(b"x-forwarded-for", b"10.0.0.1")]),  # its warning is due
        _scope(entry + "/"), _scope("/v1/entries/"), _scope("/v1/entries"),
        _scope(entry + "/attachments"), _scope("/v1/notifications/unread-count/"),
        _scope("/v1//entries/x"),
    ):
        assert direct.route(scope) is None, scope
    pipeline.forwarded_for.seen()  # warned once: the header changes nothing any more
    assert direct.route(_scope(entry, headers=[(b"x-forwarded-for", b"10.0.0.1")])) \
        is not None


async def test_a_static_sibling_stays_with_its_route(server: RunningServer) -> None:
    """A path the framework routes elsewhere (werkzeug prefers a static segment to a
    parameter) is not taken for the direct route."""
    from quart import Blueprint

    svc = server.services
    pipeline = Pipeline(svc.settings, svc.metrics)
    app = create_app(svc, pipeline)
    extra = Blueprint("sibling", __name__)
    extra.add_url_rule("/v1/entries/latest", "latest", lambda: "", methods=["GET"])
    app.register_blueprint(extra)
    direct = DirectRoutes(svc, pipeline, OPERATIONS, app.url_map)
    assert direct.route(_scope("/v1/entries/latest")) is None
    assert direct.route(_scope("/v1/entries/earliest")) is not None
    overlapping = Blueprint("overlapping", __name__)
    overlapping.add_url_rule("/v1/<kind>/<item>", "item", lambda: "", methods=["GET"])
    app.register_blueprint(overlapping)
    with pytest.raises(ValueError, match="overlap"):
        DirectRoutes(svc, pipeline, OPERATIONS, app.url_map)


@pytest.mark.parametrize("declaration", [
    {"method": "POST"}, {"auth": False}, {"reauth": True}, {"rate": "auth"},
    {"query": "model"}, {"status": 201},
])
def test_only_a_per_user_authenticated_get_can_be_declared_direct(
        declaration: dict[str, Any]) -> None:
    """What the direct path does not do (a body, a query, re-auth, a per-IP limit, another
    status) cannot be declared for it: the declaration fails when the module loads."""
    from pydantic import BaseModel
    from quart import Blueprint

    from innera.api.operation import operation

    class Query(BaseModel):
        q: str | None = None

    kwargs: dict[str, Any] = {"method": "GET", **declaration}
    if kwargs.get("query") == "model":
        kwargs["query"] = Query
    method = kwargs.pop("method")
    before = len(OPERATIONS)
    with pytest.raises(ValueError, match="served directly"):
        operation(Blueprint("declared", __name__), method, "/x", operation_id="declaredDirect",
                  summary="x", direct=True, **kwargs)
    assert len(OPERATIONS) == before
