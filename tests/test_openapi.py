"""The OpenAPI document (an exact contract: operationIds, every status with its error body,
opaque cursors, links), CORS and security headers.

Two tests hold the document to the server from the outside: Schemathesis (every check but
``positive_data_acceptance``: a reused Idempotency-Key answers 422 by design) runs its
coverage, fuzzing and stateful phases against a live ``innera serve``, and a client generated
by ``openapi-python-client`` drives sign-up to export through its generated methods.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from innera.api.openapi import build_document
from innera.guards.idempotency import InvalidIdempotencyKey, validate_key
from tests.fixtures.accounts import signup
from tests.fixtures.server import HTTP_SERVERS, RunningServer, ServerProcess, server_environ
from tests.test_http import assert_error


async def test_openapi_document_is_valid_3_1_and_covers_every_v1_route(server: RunningServer
                                                                      ) -> None:
    r = await server.client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    from innera.app import create_app

    routes = {
        (method, rule.rule.replace("<", "{").replace(">", "}"))
        for rule in create_app(server.services).url_map.iter_rules()
        if not rule.rule.startswith(("/_test", "/static"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes and routes <= documented, routes - documented
    assert {("GET", "/health"), ("GET", "/health/ready"), ("GET", "/metrics")} <= documented
    signup = doc["paths"]["/v1/auth/signup"]["post"]
    assert "requestBody" in signup and "201" in signup["responses"]
    assert doc["paths"]["/v1/me"]["get"]["security"] == [{"bearer": []}]
    search = {p["name"]: p for p in doc["paths"]["/v1/search"]["get"]["parameters"]}
    assert search["q"]["required"] and search["q"]["in"] == "query"
    assert not search["limit"]["required"]


async def test_security_headers_on_every_response(server: RunningServer) -> None:
    for path in ("/health", "/v1/me", "/nope"):
        r = await server.client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in r.headers["content-security-policy"]
    assert (await server.client.get("/v1/me")).headers["cache-control"] == "no-store"


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "CORS_ORIGINS": "https://app.innera.test"}


async def test_cors_allows_only_the_configured_origins(server: RunningServer) -> None:
    ok = await server.client.options("/v1/auth/login", headers={
        "origin": "https://app.innera.test", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert ok.headers["access-control-allow-origin"] == "https://app.innera.test"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "Idempotency-Key" in ok.headers["access-control-allow-headers"]
    other = await server.client.get("/health", headers={"origin": "https://evil.test"})
    assert "access-control-allow-origin" not in other.headers
    simple = await server.client.get("/health", headers={"origin": "https://app.innera.test"})
    assert simple.headers["access-control-allow-origin"] == "https://app.innera.test"
    assert "X-Request-Id" in simple.headers["access-control-expose-headers"]


# --- the document: operationIds, statuses, cursors, links -----------------------------------

#: operationIds clients rely on (generated methods are named after them)
NAMED_OPERATIONS = {
    ("POST", "/v1/auth/signup"): "signup",
    ("POST", "/v1/auth/login"): "login",
    ("POST", "/v1/auth/refresh"): "refreshToken",
    ("POST", "/v1/auth/logout"): "logout",
    ("POST", "/v1/entries"): "createEntry",
    ("GET", "/v1/entries/{entry_id}"): "getEntry",
    ("GET", "/v1/entries"): "listEntries",
    ("PATCH", "/v1/entries/{entry_id}"): "updateEntry",
    ("DELETE", "/v1/entries/{entry_id}"): "deleteEntry",
    ("GET", "/v1/search"): "searchEntries",
    ("POST", "/v1/exports"): "createExport",
    ("GET", "/v1/exports/{export_id}"): "getExport",
    ("POST", "/v1/imports"): "createImport",
    ("GET", "/v1/imports/{import_id}"): "getImport",
    ("GET", "/health"): "getHealth",
    ("GET", "/health/ready"): "getReadiness",
    ("GET", "/metrics"): "getMetrics",
}
ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    import innera.app  # noqa: F401  (each blueprint declares its operations when imported)

    doc = build_document()
    validate(doc)
    return doc


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def by_id(doc: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {op["operationId"]: (method, path, op) for method, path, op in operations(doc)}


def test_every_operation_has_a_stable_unique_lower_camel_case_operation_id(
        document: dict[str, Any]) -> None:
    ids = [op.get("operationId") for _, _, op in operations(document)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", i or "") for i in ids), ids
    declared = {(method, path): op["operationId"] for method, path, op in operations(document)}
    assert {route: declared.get(route) for route in NAMED_OPERATIONS} == NAMED_OPERATIONS


def test_the_readme_names_every_operation_id(document: dict[str, Any]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.partition("**The contract.**")[2].partition("**Per-account caps.**")[0]
    named = set(re.findall(r"`([a-z][a-zA-Z0-9]*)`", table))
    assert {op["operationId"] for _, _, op in operations(document)} <= named


def test_every_status_is_documented_with_the_error_body(document: dict[str, Any]) -> None:
    """Each error status of each operation has the error contract's body and names its
    codes; the refusals of the machinery every route runs through are all there."""
    error = document["components"]["schemas"]["ErrorOut"]
    assert set(error["required"]) == {"error", "requestId"}
    for method, path, op in operations(document):
        statuses = set(op["responses"])
        where = f"{method} {path}: {sorted(statuses)}"
        for status, response in op["responses"].items():
            if (op["operationId"], status) == ("getReadiness", "503"):
                continue  # the failed checks, in application/health+json
            if int(status) >= 400:
                assert response["content"] == ERROR_CONTENT, where
                assert re.search(r"`[a-z_]+`", response["description"]), where
        assert "431" in statuses, where
        if not path.startswith("/v1/") or op["operationId"] == "connectRealtime":
            continue  # not an API operation (the socket lists its handshake's refusals)
        assert {"429", "503"} <= statuses, where
        if op["security"]:
            assert "401" in statuses, where
        names = {p["name"] for p in op.get("parameters", ())}
        if "Idempotency-Key" in names:  # every authenticated write
            assert {"400", "408", "409", "413", "422", "503"} <= statuses, where
        if "cursor" in names:
            assert {"400", "422"} <= statuses, where
        if "x-reauth-token" in names:
            assert "403" in statuses, where
        if "requestBody" in op:
            assert {"408", "413"} <= statuses, where
    assert set(by_id(document)["registerDevice"][2]["responses"]) >= {"200", "201"}


def test_cursors_are_documented_as_opaque_strings(document: dict[str, Any]) -> None:
    """A cursor is whatever ``nextCursor`` was: a string without a format, a pattern or a
    content the client could build one from."""
    cursors = [p["schema"] for _, _, op in operations(document)
               for p in op.get("parameters", ()) if p["name"] == "cursor"]
    assert len(cursors) >= 5
    for schema in cursors:
        assert schema["type"] == "string"
        assert set(schema) <= {"type", "maxLength", "description"}, schema
        assert "opaque" in schema["description"].lower()
    pages = [s for s in document["components"]["schemas"].values()
             if "nextCursor" in s.get("properties", {})]
    assert len(pages) >= 5
    for page in pages:
        text, null = page["properties"]["nextCursor"]["anyOf"]
        assert text["type"] == "string" and set(text) <= {"type", "maxLength"}, page
        assert null == {"type": "null"}


def test_links_lead_from_a_created_id_to_the_operations_on_it(document: dict[str, Any]
                                                               ) -> None:
    operations_by_id = by_id(document)
    links: dict[str, set[str]] = {}
    for source, (_, _, op) in operations_by_id.items():
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                target = link["operationId"]
                links.setdefault(source, set()).add(target)
                path = operations_by_id[target][1]
                assert set(link["parameters"]) == set(re.findall(r"{(\w+)}", path)), link
                for expression in link["parameters"].values():
                    assert re.fullmatch(r"\$(response\.body#/[\w/]+|request\.path\.\w+)",
                                        expression)
    assert {"getEntry", "updateEntry", "deleteEntry", "createAttachment",
            "listAttachments"} <= links["createEntry"]
    assert {"getAttachment", "completeAttachment", "deleteAttachment"} <= links[
        "createAttachment"]
    assert links["createExport"] == {"getExport"}
    assert links["createImport"] == {"getImport"}
    assert links["registerDevice"] == {"deleteDevice"}
    assert links["deleteEntry"] == {"getEntry"}


# --- refusals a client meets, as documented -------------------------------------------------


@pytest.fixture
def contract_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_AUTH": "1000/min", "MAX_BODY_BYTES": "4096"}


async def test_refusals_answer_a_documented_status_and_code(
        nursery: Any, contract_settings: dict[str, str], document: dict[str, Any]) -> None:
    """Requests the document forbids are refused in the error contract, with a status the
    operation documents and a code its description names: bad ids, types the server used to
    coerce, repeated parameters, Idempotency-Key misuse, text PostgreSQL cannot store."""
    from innera.config import load_settings
    from tests.fixtures.server import start_server

    srv = await start_server(nursery, load_settings(contract_settings))
    async with srv.client as client:
        user = await signup(client)
        auth = user.auth
        entry = await client.post("/v1/entries", json={"body": "x"}, headers=auth)
        assert entry.status_code == 201
        unknown = str(uuid.uuid4())
        cases: list[tuple[str, int, str, httpx.Request]] = [
            ("listEntries", 400, "invalid_cursor",
             client.build_request("GET", "/v1/entries?cursor=abc", headers=auth)),
            ("listEntries", 422, "validation_failed",
             client.build_request("GET", "/v1/entries?limit=1.0", headers=auth)),
            ("listEntries", 422, "validation_failed",
             client.build_request("GET", "/v1/entries?limit=1&limit=2", headers=auth)),
            ("listNotifications", 422, "validation_failed",
             client.build_request("GET", "/v1/notifications?unread=1", headers=auth)),
            ("logout", 422, "validation_failed",
             client.build_request("POST", "/v1/auth/logout",
                                  json={"refreshToken": user.refresh, "all": 0})),
            ("signup", 422, "validation_failed",
             client.build_request("POST", "/v1/auth/signup",
                                  json={"email": "a\u0000b@example.com",
                                        "password": "correct horse battery"})),
            ("createEntry", 400, "invalid_json",
             client.build_request("POST", "/v1/entries", headers=auth,
                                  content=b'{"body": "\\udafe"}')),
            ("createEntry", 413, "payload_too_large",
             client.build_request("POST", "/v1/entries", headers=auth,
                                  json={"body": "x" * 5000})),
            ("getEntry", 404, "not_found",
             client.build_request("GET", "/v1/entries/not-a-uuid", headers=auth)),
            ("deleteEntry", 400, "invalid_idempotency_key",
             client.build_request("DELETE", f"/v1/entries/{unknown}",
                                  headers={**auth, "Idempotency-Key": "k:lock"})),
            ("deleteAccount", 403, "reauth_required",
             client.build_request("DELETE", "/v1/me", headers=auth)),
            ("getMe", 401, "unauthorized", client.build_request("GET", "/v1/me")),
            ("connectRealtime", 426, "upgrade_required", client.build_request("GET", "/v1/ws")),
        ]
        key = {**auth, "Idempotency-Key": "once"}
        assert (await client.post("/v1/entries", json={"body": "a"}, headers=key)
                ).status_code == 201
        cases.append(("createEntry", 422, "idempotency_key_reused",
                      client.build_request("POST", "/v1/entries", json={"body": "b"},
                                           headers=key)))
        operations_by_id = by_id(document)
        for operation_id, status, code, request in cases:
            r = await client.send(request)
            assert_error(r, status, code)
            response = operations_by_id[operation_id][2]["responses"].get(str(status))
            assert response is not None, (operation_id, status)
            assert f"`{code}`" in response["description"], (operation_id, status, code)
        for path, methods in (("/v1/entries", {"GET", "POST"}), ("/v1/ws", {"GET"})):
            r = await client.request("TRACE", path, headers=auth)  # a method the path lacks
            assert_error(r, 405, "method_not_allowed")
            assert methods <= set(r.headers["allow"].replace(" ", "").split(","))
        assert (await client.get("/v1/ws")).headers["upgrade"] == "websocket"
    await srv.stop()


# --- the document against a live server: Schemathesis, a generated client -------------------

#: Schemathesis' seed (fixed, so a run is reproducible; set it to explore other inputs)
SCHEMATHESIS_SEED = int(os.environ.get("INNERA_TEST_SCHEMATHESIS_SEED", "20250518"))
#: test cases per operation in the fuzzing and stateful phases (the coverage phase enumerates
#: its own): about 1,600 requests, 25 s on an idle 2-core machine, 70 s on a busy one
SCHEMATHESIS_EXAMPLES = 15
#: what counts as refusing invalid data: Schemathesis' default list, with 413 (a body over
#: MAX_BODY_BYTES) and 431 (a request head over 64 KiB), which the schema's string lengths
#: allow to build
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
              "429", "431", "5xx"]


def contract_server(spawn_server: Any, database_url: str, redis_url: str, tmp_path: Path
                    ) -> ServerProcess:
    """``innera serve`` with limits out of the way (the limits are documented, not what
    these tests are about) and no job workers (jobs stay pending: the contract is the API's,
    and parsing thousands of generated imports would only cost time). Its output is read
    away as it comes (thousands of requests: a full pipe would stall the server)."""
    sp = spawn_server(server_environ(
        database_url, redis_url, tmp_path / "data", INNERA_WORKERS="0",
        RATE_LIMIT_AUTH="100000/min", RATE_LIMIT_USER="100000/min",
        RATE_LIMIT_ANON="100000/min"))
    assert sp.proc.stdout is not None
    drain = threading.Thread(target=lambda: sp.output.extend(sp.proc.stdout or ()),
                             name="server output", daemon=True)
    drain.start()
    return sp


def fresh_token(url: str) -> str:
    r = httpx.post(f"{url}/v1/auth/signup", timeout=10, json={
        "email": f"contract-{uuid.uuid4().hex}@example.com", "password": "correct horse battery"})
    assert r.status_code == 201, r.text
    return r.json()["accessToken"]


def run_schemathesis(url: str, token: str) -> tuple[dict[str, str], dict[str, str], int]:
    """Schemathesis' engine (what ``st run`` runs) over ``url``'s document, authenticated
    with ``token``: the failures found (one per operation and kind, with the request that
    shows it), the status of each phase, and how many links the stateful phase had."""
    import schemathesis
    from schemathesis.engine import Status, events, from_schema

    config = schemathesis.Config.from_dict({
        "seed": SCHEMATHESIS_SEED,
        "suppress-health-check": ["all"],  # a busy machine must not fail the run
        "headers": {"Authorization": f"Bearer {token}"},
        "request-timeout": 30,
        "generation": {"max-examples": SCHEMATHESIS_EXAMPLES, "database": "none"},
        "checks": {
            # a reused Idempotency-Key answers 422 (idempotency_key_reused) by design
            "positive_data_acceptance": {"enabled": False},
            "negative_data_rejection": {"expected-statuses": REJECTIONS},
        },
        # the stateful phase follows the document's links only (none inferred)
        "phases": {"stateful": {"inference": {"algorithms": []}}},
    })
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)

    @schema.hook
    def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
        """A fresh Idempotency-Key wherever a valid one was generated (an invalid one is kept:
        it is the negative case). Generated keys repeat ("0", "A"), and a repeated key replays
        the first answer: a creation replayed after its entry was deleted hands back the
        deleted id, which the stateful phase reads as a resource missing after its creation.
        That is what the document says a replay is; a reused key is tested on its own
        (``test_refusals_answer_a_documented_status_and_code``)."""
        key = (headers or {}).get("Idempotency-Key")
        if headers is None or not isinstance(key, str):
            return headers
        try:
            validate_key(key)
        except InvalidIdempotencyKey:
            return headers
        return {**headers, "Idempotency-Key": uuid.uuid4().hex}

    failures: dict[str, str] = {}
    phases: dict[str, str] = {}
    links = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    info = check.failure_info
                    if check.status == Status.FAILURE and info is not None:
                        failure = info.failure
                        failures.setdefault(
                            f"{failure.operation}: {failure.code} {failure.title}",
                            f"{failure.message}\n{info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            failures.setdefault(f"{event.label}: error", str(event.info))
        elif isinstance(event, events.FatalError):
            failures.setdefault("fatal error", repr(event.exception))
        elif isinstance(event, events.PhaseStarted) and isinstance(
                event.payload, events.StatefulPhasePayload):
            links = event.payload.transitions_total
        elif isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = event.status.value
        elif isinstance(event, events.EngineFinished):
            for failure in event.failures:
                failures.setdefault(f"{failure.operation}: {failure.title}", failure.message)
    return failures, phases, links


@pytest.mark.timeout(900)
@pytest.mark.parametrize("http_server", HTTP_SERVERS[:1], indirect=True)
def test_schemathesis_finds_no_failure(spawn_server: Any, database_url: str, redis_url: str,
                                       tmp_path: Path) -> None:
    """Every check but positive_data_acceptance, over the coverage, fuzzing and stateful
    phases, as a fresh user: no status the document does not list, no body off its schema, no
    request it forbids accepted, no 5xx, no method answered other than 405, no resource
    missing after its creation or present after its deletion."""
    sp = contract_server(spawn_server, database_url, redis_url, tmp_path)
    failures, phases, links = run_schemathesis(sp.url, fresh_token(sp.url))
    report = "\n\n".join(f"{title}\n{detail}" for title, detail in sorted(failures.items()))
    assert not failures, f"{len(failures)} failures (seed {SCHEMATHESIS_SEED}):\n\n{report}"
    assert {phase: phases.get(phase) for phase in ("coverage", "fuzzing", "stateful")} == {
        "coverage": "success", "fuzzing": "success", "stateful": "success"}, phases
    assert links >= 15
    assert sp.proc.poll() is None, sp.lines()


CLIENT_CONFIG = {
    "package_name_override": "innera_client",
    "post_hooks": [],  # no formatting of the generated code
    # binary bodies: openapi-python-client sends them as application/octet-stream
    "content_type_overrides": {media: "application/octet-stream" for media in (
        "application/zip", "application/pdf", "audio/aac", "audio/mp4", "audio/mpeg",
        "audio/ogg", "audio/wav", "audio/webm", "image/gif", "image/heic", "image/jpeg",
        "image/png", "image/webp")},
}


@pytest.fixture
def generated_client(tmp_path: Path) -> Iterator[Any]:
    """``generate(url)``: the client ``openapi-python-client`` generates from ``url``'s
    document, imported from a directory of this test's (and forgotten afterwards)."""
    packages = tmp_path / "generated"

    def generate(url: str) -> Any:
        config = tmp_path / "client-config.json"
        config.write_text(json.dumps(CLIENT_CONFIG))
        done = subprocess.run(
            [sys.executable, "-m", "openapi_python_client", "generate", "--url",
             f"{url}/openapi.json", "--meta", "none", "--config", str(config),
             "--output-path", str(packages / "innera_client")],
            capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Endpoint will not be generated" not in done.stdout + done.stderr, done.stdout
        sys.path.insert(0, str(packages))
        importlib.invalidate_caches()
        return importlib.import_module("innera_client")

    try:
        yield generate
    finally:
        if str(packages) in sys.path:
            sys.path.remove(str(packages))
        for name in [n for n in sys.modules if n.partition(".")[0] == "innera_client"]:
            del sys.modules[name]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("http_server", HTTP_SERVERS[:1], indirect=True)
def test_a_generated_client_signs_up_writes_reads_searches_and_exports(
        spawn_server: Any, database_url: str, redis_url: str, tmp_path: Path,
        generated_client: Any) -> None:
    sp = contract_server(spawn_server, database_url, redis_url, tmp_path)
    client_package = generated_client(sp.url)
    m = importlib.import_module
    signup_op = m("innera_client.api.auth.signup")
    create_entry = m("innera_client.api.entries.create_entry")
    get_entry = m("innera_client.api.entries.get_entry")
    list_entries = m("innera_client.api.entries.list_entries")
    search_entries = m("innera_client.api.search.search_entries")
    create_export = m("innera_client.api.exports.create_export")
    get_export = m("innera_client.api.exports.get_export")
    models = m("innera_client.models")

    anonymous = client_package.Client(base_url=sp.url, raise_on_unexpected_status=True)
    signed_up = signup_op.sync(client=anonymous, body=models.SignupIn(
        email=f"client-{uuid.uuid4().hex}@example.com", password="correct horse battery"))
    assert isinstance(signed_up, models.AuthOut) and signed_up.expires_in > 0
    client = client_package.AuthenticatedClient(base_url=sp.url, token=signed_up.access_token,
                                                raise_on_unexpected_status=True)

    created = create_entry.sync(client=client, body=models.EntryIn(
        body="Walked to the lighthouse at dawn", title="Morning", tags=["walk"]))
    assert isinstance(created, models.EntryOut) and created.tags == ["walk"]
    read = get_entry.sync(client=client, entry_id=uuid.UUID(created.id))
    assert isinstance(read, models.EntryOut) and read.body == created.body
    missing = get_entry.sync_detailed(client=client, entry_id=uuid.uuid4())
    assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorOut)
    assert missing.parsed.error.code == "not_found"

    page = list_entries.sync(client=client, limit=10)
    assert isinstance(page, models.EntryPage) and [e.id for e in page.items] == [created.id]
    assert page.next_cursor is None
    found = search_entries.sync(client=client, q="lighthouse")
    assert isinstance(found, models.SearchOut) and found.complete
    assert [hit.entry.id for hit in found.items] == [created.id]

    started = create_export.sync_detailed(client=client)
    assert started.status_code == 202 and isinstance(started.parsed, models.JobOut)
    assert started.headers["location"] == f"/v1/exports/{started.parsed.id}"
    export = get_export.sync(client=client, export_id=uuid.UUID(started.parsed.id))
    assert isinstance(export, models.JobOut) and export.id == started.parsed.id
    assert export.status in ("pending", "running", "completed")
