"""Sentry performance tracing, seen from outside: a real ``innera serve`` subprocess whose SDK
sends to a loopback Sentry endpoint (``tests/fixtures/sentry_collector.py``) through its DSN,
with PostgreSQL, Redis, S3 (moto) and a push webhook (the push-provider double) all real.

What an operator relies on: a transaction per request named by its route, per WebSocket
session and per job; spans naming the database, Redis, S3, push and hashing work; a job in
the trace of the request that submitted it; incoming traces continued; the trace id in the
log lines; nothing at rate 0; no transaction for probes and scrapes.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from tests.fixtures.accounts import Account, signup
from tests.fixtures.push_provider import PushProviderDouble
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.sentry_collector import SentryCollector
from tests.fixtures.server import ServerProcess, server_environ
from tests.fixtures.ws import Closed, WsClient

#: a trace an upstream service started (32 and 16 hex digits), sampled
UPSTREAM_TRACE = "771a43a4192642f0b136d5159a501700"
UPSTREAM_SPAN = "b0e6f15b45c36b12"


async def _spawn(spawn_server: Callable[..., ServerProcess], environ: dict[str, str]
                 ) -> ServerProcess:
    # in a thread: the collector and the push double answer from this test's event loop
    return await trio.to_thread.run_sync(spawn_server, environ)


async def _stop(sp: ServerProcess) -> list[dict[str, Any]]:
    """SIGTERM, wait for the exit (its Sentry flush included); every JSON log line."""
    sp.proc.send_signal(signal.SIGTERM)
    code = await trio.to_thread.run_sync(sp.proc.wait, 20)
    assert code == 0, sp.lines()
    output = sp.lines() + "\n" + await trio.to_thread.run_sync(sp.read_rest)
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _spans(transaction: dict[str, Any], op: str) -> list[str]:
    """The descriptions of the transaction's spans of ``op``."""
    return [s.get("description") for s in transaction.get("spans", []) if s.get("op") == op]


def _trace(transaction: dict[str, Any]) -> dict[str, Any]:
    return transaction["contexts"]["trace"]


def _one(collector: SentryCollector, name: str) -> dict[str, Any]:
    found = collector.named(name)
    assert len(found) == 1, (name, sorted(t["transaction"] for t in collector.transactions))
    return found[0]


async def _wait_export(client: httpx.AsyncClient, account: Account, job_id: str) -> None:
    with trio.fail_after(30):
        while True:  # polled from outside, as a client does
            r = await client.get(f"/v1/exports/{job_id}", headers=account.auth)
            assert r.status_code == 200 and r.json()["status"] != "failed", r.text
            if r.json()["status"] == "completed":
                return
            await trio.sleep(0.05)


async def test_requests_sockets_and_jobs_are_traced_end_to_end(
    spawn_server: Callable[..., ServerProcess], database_url: str, redis_url: str,
    tmp_path: Any, sentry_collector: SentryCollector, s3_bucket: S3Bucket,
    push_provider: PushProviderDouble,
) -> None:
    sp = await _spawn(spawn_server, server_environ(
        database_url, redis_url, tmp_path, SENTRY_DSN=sentry_collector.dsn,
        SENTRY_TRACES_SAMPLE_RATE="1.0", PUSH_PROVIDER="webhook",
        PUSH_URL=f"{push_provider.url}/push", **s3_bucket.env))
    try:
        async with httpx.AsyncClient(base_url=sp.url, timeout=10) as client:
            alice = await signup(client)
            r = await client.post("/v1/auth/login",
                                  json={"email": alice.email, "password": alice.password})
            assert r.status_code == 200, r.text
            r = await client.post("/v1/devices", headers=alice.auth,
                                  json={"platform": "ios", "pushToken": "tok-traced"})
            assert r.status_code in (200, 201), r.text
            r = await client.post("/v1/entries", headers=alice.auth, json={"body": "traced"})
            assert r.status_code == 201, r.text
            entry_id = r.json()["id"]
            # a request an upstream service traced: its trace goes on
            read = await client.get(f"/v1/entries/{entry_id}", headers={
                **alice.auth, "sentry-trace": f"{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-1"})
            assert read.status_code == 200, read.text
            # probes and scrapes
            for path in ("/health", "/health/ready", "/metrics"):
                assert (await client.get(path)).status_code == 200, path
            # a job: the export, which pushes export.ready (a job of its own) when done
            r = await client.post("/v1/exports", headers=alice.auth)
            assert r.status_code == 202, r.text
            await _wait_export(client, alice, r.json()["id"])
            await push_provider.wait_for(lambda _: bool(push_provider.to_token("tok-traced")))
            # a WebSocket session with a few messages
            url = urlsplit(sp.url)
            assert url.hostname is not None and url.port is not None
            ws = await WsClient.connect(url.hostname, url.port, "/v1/ws",
                                        [("authorization", f"Bearer {alice.access}")])
            for _ in range(3):
                await ws.send_text('{"type":"ping"}')
                assert not isinstance(await ws.receive(), Closed)
            await ws.aclose()
        await sentry_collector.wait_for(lambda c: any(
            _spans(t, "http.client") for t in c.named("job push-notifications"))
            and bool(c.named("WS /v1/ws")))
    finally:
        logs = await _stop(sp)

    names = {t["transaction"] for t in sentry_collector.transactions}
    # one transaction per request, named by its route template
    assert {"POST /v1/auth/signup", "POST /v1/auth/login", "POST /v1/devices",
            "POST /v1/entries", "GET /v1/entries/{entry_id}", "POST /v1/exports",
            "GET /v1/exports/{export_id}", "job export-jobs", "job push-notifications",
            "WS /v1/ws"} <= names, names
    # probes and scrapes never make one
    assert not [n for n in names if "/health" in n or "/metrics" in n], names

    # status and user
    signup_tx = _one(sentry_collector, "POST /v1/auth/signup")
    assert _trace(signup_tx)["op"] == "http.server"
    assert _trace(signup_tx)["status"] == "ok"
    assert signup_tx["transaction_info"]["source"] == "route"
    # the spans of a sign-up, by op: the named queries, Redis, the password hash
    assert "accounts.create" in _spans(signup_tx, "db")
    assert "argon2id hash" in _spans(signup_tx, "auth.hash")
    assert _spans(signup_tx, "db.redis")  # the sign-up rate limit
    login_tx = _one(sentry_collector, "POST /v1/auth/login")
    assert "auth.user_by_email" in _spans(login_tx, "db")
    assert "argon2id verify" in _spans(login_tx, "auth.hash")
    spans = [s for t in sentry_collector.transactions for s in t.get("spans", [])]
    assert not [s for s in spans if s["op"] == "db" and s["description"] == "unnamed"]
    # spans are leaves of their own transaction, whichever task (lease keeper, batch) ran them
    for t in sentry_collector.transactions:
        assert {(s["trace_id"], s["parent_span_id"]) for s in t.get("spans", [])} <= {
            (_trace(t)["trace_id"], _trace(t)["span_id"])}, t["transaction"]

    # an incoming trace is continued
    read_tx = _one(sentry_collector, "GET /v1/entries/{entry_id}")
    assert _trace(read_tx)["trace_id"] == UPSTREAM_TRACE
    assert _trace(read_tx)["parent_span_id"] == UPSTREAM_SPAN
    assert "entries.read" in _spans(read_tx, "db")
    assert read_tx["tags"]["http.status_code"] == "200"
    assert read_tx["user"] == {"id": alice.id}  # an authenticated request: its user

    # the export job runs in the trace of the request that submitted it, and so do the push
    # jobs its notification enqueued (the notification's, then the device's)
    submit_tx = _one(sentry_collector, "POST /v1/exports")
    export_tx = _one(sentry_collector, "job export-jobs")
    push_txs = sentry_collector.named("job push-notifications")
    assert _trace(export_tx)["trace_id"] == _trace(submit_tx)["trace_id"]
    assert _trace(export_tx)["parent_span_id"] == _trace(submit_tx)["span_id"]
    assert {_trace(t)["trace_id"] for t in push_txs} == {_trace(submit_tx)["trace_id"]}
    assert _trace(export_tx)["op"] == "queue.process"
    assert export_tx["tags"]["queue"] == "export-jobs"
    assert export_tx["tags"]["job_id"].startswith("export_jobs:")
    assert "jobs.mark_running" in _spans(export_tx, "db")
    assert "S3 put_object" in _spans(export_tx, "http.client")
    assert [d for t in push_txs for d in _spans(t, "http.client")] == ["POST webhook"]

    # one transaction for the whole WebSocket session, not one per message
    ws_tx = _one(sentry_collector, "WS /v1/ws")
    assert _trace(ws_tx)["op"] == "websocket.server"
    assert ws_tx["user"] == {"id": alice.id}

    # the log lines of a traced request carry its trace id
    request_id = read.headers["x-request-id"]
    read_lines = [line for line in logs if line.get("requestId") == request_id]
    assert read_lines and all(line.get("traceId") == UPSTREAM_TRACE for line in read_lines)
    signup_lines = [line for line in logs if line.get("msg") == "request completed"
                    and line["req"]["url"] == "/v1/auth/signup"]
    assert [line["traceId"] for line in signup_lines] == [_trace(signup_tx)["trace_id"]]


async def test_rate_0_sends_no_transaction_and_probes_never_make_one(
    spawn_server: Callable[..., ServerProcess], database_url: str, redis_url: str,
    tmp_path: Any, sentry_collector: SentryCollector,
) -> None:
    """At rate 0 tracing is off: no transaction, no trace id in the logs. Errors are still
    reported, and the one captured last is the barrier: the SDK sends in capture order."""
    sp = await _spawn(spawn_server, server_environ(
        database_url, redis_url, tmp_path, SENTRY_DSN=sentry_collector.dsn,
        SENTRY_TRACES_SAMPLE_RATE="0"))
    try:
        async with httpx.AsyncClient(base_url=sp.url, timeout=10) as client:
            alice = await signup(client)
            r = await client.post("/v1/entries", headers=alice.auth, json={"body": "quiet"})
            assert r.status_code == 201, r.text
            assert (await client.get(f"/v1/entries/{r.json()['id']}", headers={
                **alice.auth, "sentry-trace": f"{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-1"}
            )).status_code == 200
            assert (await client.get("/_test/boom")).status_code == 500
        await sentry_collector.wait_for(lambda c: bool(c.events))
    finally:
        logs = await _stop(sp)
    assert len(sentry_collector.events) == 1
    assert sentry_collector.transactions == []
    assert logs and not [line for line in logs if "traceId" in line]


async def test_untraced_paths_make_no_transaction_at_rate_1(
    spawn_server: Callable[..., ServerProcess], database_url: str, redis_url: str,
    tmp_path: Any, sentry_collector: SentryCollector,
) -> None:
    """``/health`` (with ``/health/ready``) and ``/metrics`` by default, and whatever
    SENTRY_TRACES_SAMPLER adds; the transactions sent after them are the barrier. An error
    joins the trace of the request it happened in."""
    sp = await _spawn(spawn_server, server_environ(
        database_url, redis_url, tmp_path, SENTRY_DSN=sentry_collector.dsn,
        SENTRY_TRACES_SAMPLE_RATE="1", SENTRY_TRACES_SAMPLER="/health,/metrics,/openapi.json"))
    try:
        async with httpx.AsyncClient(base_url=sp.url, timeout=10) as client:
            for path in ("/health", "/health/ready", "/metrics", "/openapi.json"):
                for _ in range(3):
                    assert (await client.get(path)).status_code == 200, path
            assert (await client.get("/v1/entries")).status_code == 401
            assert (await client.get("/_test/boom")).status_code == 500
        await sentry_collector.wait_for(lambda c: len(c.transactions) == 2 and bool(c.events))
    finally:
        await _stop(sp)
    assert sorted(t["transaction"] for t in sentry_collector.transactions) == [
        "GET /_test/boom", "GET /v1/entries"]
    denied = _one(sentry_collector, "GET /v1/entries")
    assert _trace(denied)["status"] == "unauthenticated"
    boom = _one(sentry_collector, "GET /_test/boom")
    assert _trace(boom)["status"] == "internal_error"
    [event] = sentry_collector.events
    assert event["contexts"]["trace"]["trace_id"] == _trace(boom)["trace_id"]
