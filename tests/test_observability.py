"""Logs, metrics and error reporting of a running server."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from innera.observability.logging import CENSOR, redact
from innera.observability.metrics import QUEUES
from tests.fixtures.server import RunningServer, server_environ
from tests.test_monitoring_config import innera_metric_names_used

CONTRACT = {
    "http_request_duration_seconds", "http_requests_total",
    "innera_entries_created_total", "innera_search_duration_seconds",
    "innera_db_pool_active", "innera_db_pool_idle", "innera_db_pool_waiting",
    "innera_db_pool_max", "innera_ws_connections_active", "innera_redis_errors_total",
    "innera_push_notifications_sent_total", "innera_push_notifications_failed_total",
    "innera_crypto_errors_total", "innera_account_deletion_jobs_failed_total",
    "innera_key_rotation_progress", "innera_jobs_processed_total",
    "innera_job_duration_seconds", "innera_jobs_waiting", "innera_active_users",
    "process_resident_memory_bytes", "python_gc_objects_collected_total", "python_info",
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


async def test_metrics_expose_the_contract_initialised_at_zero(server: RunningServer) -> None:
    await server.client.get("/health")  # route metrics get their first labelled sample
    r = await server.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    names = sample_names(r.text)
    missing = CONTRACT - names
    assert not missing, missing
    values = samples(r.text)
    for op in ("encrypt", "decrypt"):
        assert values[("innera_crypto_errors_total", frozenset({("operation", op)}))] == 0
    for queue in QUEUES:
        key = ("innera_jobs_processed_total", frozenset({("queue", queue), ("outcome", "failed")}))
        assert values[key] == 0
    assert values[("innera_db_pool_max", frozenset())] == 5  # DB_POOL_MAX of the test env


async def test_every_metric_of_the_dashboard_and_alerts_is_exposed(server: RunningServer
                                                                   ) -> None:
    await server.client.get("/health")  # so the route metrics have a sample
    names = sample_names((await server.client.get("/metrics")).text)
    used = innera_metric_names_used()
    assert used, "no metric names found in conf/"
    assert used <= names, used - names


async def test_route_metrics_use_the_template_never_the_raw_path(server: RunningServer
                                                                ) -> None:
    await server.client.get("/health")
    await server.client.get("/health")
    await server.client.get("/no/such/path/8f3a1c")
    await server.client.get("/metrics")
    text = (await server.client.get("/metrics")).text
    values = samples(text)
    ok = frozenset({("method", "GET"), ("route", "/health"), ("status_code", "200")})
    unknown = frozenset({("method", "GET"), ("route", "__unknown__"), ("status_code", "404")})
    assert values[("http_requests_total", ok)] == 2
    assert values[("http_requests_total", unknown)] == 1
    assert values[("http_request_duration_seconds_count", ok)] == 2
    assert "8f3a1c" not in text
    assert 'route="/metrics"' not in text  # /metrics itself is not counted
    buckets = {dict(labels).get("le") for name, labels in values
               if name == "http_request_duration_seconds_bucket"}
    assert {"0.1", "0.5", "1.0", "2.0", "2.5", "5.0", "10.0", "30.0"} <= buckets


async def test_statements_show_by_name_in_the_query_metrics(server: RunningServer) -> None:
    """After a sign-up, a login and the entry routes, /metrics names their statements in
    ``innera_db_query_duration_seconds``; every name shown is one the code holds as a
    literal (tests/db/test_query_names.py), so the label set is bounded."""
    from tests.db.test_query_names import query_names
    from tests.fixtures.accounts import signup

    client = server.client
    alice = await signup(client)
    r = await client.post("/v1/auth/login", json={"email": alice.email,
                                                  "password": alice.password})
    assert r.status_code == 200, r.text
    r = await client.post("/v1/entries", headers=alice.auth, json={"body": "counted"})
    assert r.status_code == 201, r.text
    entry = r.json()["id"]
    assert (await client.get(f"/v1/entries/{entry}", headers=alice.auth)).status_code == 200
    assert (await client.get("/v1/entries", headers=alice.auth)).status_code == 200
    assert (await client.patch(f"/v1/entries/{entry}", headers=alice.auth,
                               json={"body": "changed"})).status_code == 200
    assert (await client.delete(f"/v1/entries/{entry}", headers=alice.auth)).status_code == 204
    # a sign-up with a taken address fails its INSERT: an error of that statement
    assert (await client.post("/v1/auth/signup", json={
        "email": alice.email, "password": alice.password})).status_code == 409
    values = samples((await client.get("/metrics")).text)

    counts = {dict(labels)["name"]: value for (metric, labels), value in values.items()
              if metric == "innera_db_query_duration_seconds_count"}
    errors = {dict(labels)["name"]: value for (metric, labels), value in values.items()
              if metric == "innera_db_query_errors_total"}
    for name in ("accounts.create", "data_keys.insert", "auth.user_by_email",
                 "accounts.active_batch", "entries.insert", "entries.read", "entries.list",
                 "entries.lock_for_update", "entries.update", "entries.delete"):
        assert counts.get(name, 0) >= 1, (name, sorted(counts))
    assert counts["accounts.create"] == 2 and errors["accounts.create"] == 1
    assert errors["entries.read"] == 0  # a statement's error series starts at 0
    assert set(counts) <= query_names(), set(counts) - query_names()
    assert set(errors) == set(counts)


async def test_pool_gauges_are_read_at_scrape_time(server: RunningServer) -> None:
    pool = server.services.db
    async with pool.connection():
        values = samples((await server.client.get("/metrics")).text)
        assert values[("innera_db_pool_active", frozenset())] >= 1
    values = samples((await server.client.get("/metrics")).text)
    assert values[("innera_db_pool_waiting", frozenset())] == 0


def test_redaction_covers_every_spec_path_and_wildcard() -> None:
    line = {
        "req": {"headers": {"Authorization": "Bearer a", "cookie": "c", "x-reauth-token": "r",
                            "idempotency-key": "i", "accept": "keep"},
                "body": {"code": "1", "codeVerifier": "2", "identityToken": "3",
                         "refreshToken": "4", "title": "t1", "body": "b1", "mood": "m1",
                         "other": "keep"}},
        "res": {"headers": {"set-cookie": "s"}},
        "user": {"profile": {"email": "e@x", "password": "p"}},
        "items": [{"token": "t", "accessToken": "at"}],
    }
    out = redact(line)
    flat = json.dumps(out)
    for secret in ("Bearer a", '"c"', '"r"', '"i"', '"1"', '"2"', '"3"', '"4"', '"s"', "e@x",
                   '"p"', '"t"', '"at"'):
        assert secret not in flat, secret
    assert out["req"]["headers"]["accept"] == "keep" and out["req"]["body"]["other"] == "keep"
    # journal content is encrypted at rest: it stays out of the logs as well
    assert [out["req"]["body"][k] for k in ("title", "body", "mood")] == [CENSOR] * 3
    assert out["req"]["headers"]["Authorization"] == CENSOR
    assert line["req"]["headers"]["Authorization"] == "Bearer a"  # the input is not modified


def test_logs_are_json_with_request_ids_and_redacted_secrets(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path, LOG_LEVEL="debug"))
    secrets = {
        "authorization": "Bearer SECRET-AUTH-1", "cookie": "sid=SECRET-COOKIE-2",
        "x-reauth-token": "SECRET-REAUTH-3", "idempotency-key": "SECRET-IDEM-4",
    }
    body = {"code": "SECRET-CODE-5", "codeVerifier": "SECRET-VERIFIER-6",
            "identityToken": "SECRET-IDTOKEN-7", "refreshToken": "SECRET-REFRESH-8",
            "email": "secret-email-9@example.com", "password": "SECRET-PASSWORD-10",
            "nested": {"token": "SECRET-TOKEN-11", "accessToken": "SECRET-ACCESS-12"}}
    req = urllib.request.Request(sp.url + "/_test/echo", data=json.dumps(body).encode(),
                                 headers={**secrets, "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        request_id = resp.headers["x-request-id"]
    signup = urllib.request.Request(
        sp.url + "/v1/auth/signup", headers={"content-type": "application/json"},
        data=json.dumps({"email": "logged@example.com", "password": "long enough"}).encode())
    with urllib.request.urlopen(signup, timeout=10) as resp:
        session = json.loads(resp.read())
    me = urllib.request.Request(sp.url + "/v1/me",
                                headers={"authorization": f"Bearer {session['accessToken']}"})
    with urllib.request.urlopen(me, timeout=10) as resp:
        me_request_id = resp.headers["x-request-id"]
    bearer = {"authorization": f"Bearer {session['accessToken']}",
              "content-type": "application/json"}
    entry = urllib.request.Request(sp.url + "/v1/entries", headers=bearer, data=json.dumps(
        {"title": "SECRET-TITLE-13", "body": "SECRET-BODY-14", "mood": "SECRET-MOOD-15"}
    ).encode())
    with urllib.request.urlopen(entry, timeout=10) as resp:
        assert resp.status == 201
    search = urllib.request.Request(sp.url + "/v1/search?q=SECRET-QUERY-16&limit=5",
                                    headers=bearer)
    with urllib.request.urlopen(search, timeout=10) as resp:
        assert resp.status == 200
    sp.proc.send_signal(signal.SIGTERM)
    sp.proc.wait(15)
    output = sp.lines() + "\n" + sp.read_rest()

    journal = ["SECRET-TITLE-13", "SECRET-BODY-14", "SECRET-MOOD-15", "SECRET-QUERY-16"]
    for value in re.findall(r"SECRET-[A-Z]+-\d+|secret-email-9@example.com",
                            json.dumps([secrets, body, journal])):
        assert value not in output, f"{value} leaked into the logs"
    assert CENSOR in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert all({"level", "time", "msg"} <= set(line) for line in lines)
    mine = [line for line in lines if line.get("requestId") == request_id]
    done = [line for line in mine if line["msg"] == "request completed"]
    assert len(done) == 1
    assert done[0]["req"] == {"method": "POST", "url": "/_test/echo", "requestId": request_id,
                              "userId": None}
    assert done[0]["res"] == {"statusCode": 200}
    assert done[0]["responseTime"] >= 0
    assert any(line["msg"] == "request received" for line in mine)
    # authenticated requests carry userId on every line logged while serving them
    user_id = session["user"]["id"]
    me_lines = [line for line in lines if line.get("requestId") == me_request_id]
    assert me_lines and all(line.get("userId") == user_id for line in me_lines
                            if line["msg"] != "request received")
    me_done = next(line for line in me_lines if line["msg"] == "request completed")
    assert me_done["req"]["userId"] == user_id
    assert session["accessToken"] not in output and session["refreshToken"] not in output
    # library loggers go through the same pipeline (psycopg/hypercorn/innera all JSON above)
    assert {line["logger"] for line in lines} >= {"innera.process", "innera.request"}


async def test_websocket_gauge_follows_open_sockets(server: RunningServer) -> None:
    from tests.fixtures.ws import WsClient

    host, port = server.started.addresses[0]
    gauge = ("innera_ws_connections_active", frozenset())
    client = await WsClient.connect(host, port, "/_test/ws")
    await client.send_text("x")
    assert await client.receive() == "x"
    assert samples((await server.client.get("/metrics")).text)[gauge] == 1
    await client.aclose()
    for _ in range(50):
        if samples((await server.client.get("/metrics")).text)[gauge] == 0:
            break
        await trio.sleep(0.05)
    assert samples((await server.client.get("/metrics")).text)[gauge] == 0
