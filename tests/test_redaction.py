"""Redaction by name pattern, proven against every secret-like field the API accepts.

The fields are not listed here: they are derived from the OpenAPI document (request
bodies, header and query parameters), so a field added to a request model is covered — or
this test fails — without anyone remembering to update a list.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from innera.observability.logging import (
    CENSOR,
    SPEC_WILDCARDS,
    is_redacted_key,
    loggable_url,
    redact,
)
from innera.observability.sentry import REDACTED, scrub_event
from tests.fixtures.server import server_environ

#: secret-like fields the API is known to accept; the derived set must contain them all
KNOWN_BODY_SECRETS = {"password", "currentPassword", "newPassword", "refreshToken", "pushToken"}


# --- the name rule ------------------------------------------------------------------------

REDACTED_NAMES = [
    # *password* / *token* / *secret* (+ passwd, passphrase), any case and separator
    "password", "Password", "PASSWORD", "newPassword", "currentPassword", "new_password",
    "old-password", "passwd", "passphrase", "token", "pushToken", "push_token",
    "refreshToken", "refresh_token", "accessToken", "identityToken", "reauthToken",
    "x-reauth-token", "X-Reauth-Token", "access_token", "secret", "clientSecret",
    "client_secret", "JWT_SECRET", "webhookSecret",
    # whole names
    "authorization", "Authorization", "proxy-authorization", "cookie", "Cookie", "cookies",
    "set-cookie", "Set-Cookie", "codeVerifier", "code_verifier",
    # credential keys
    "apiKey", "api_key", "API-KEY", "x-api-key", "X-Api-Key", "accessKey", "access_key",
    "S3_ACCESS_KEY_ID", "aws_secret_access_key", "privateKey", "private_key", "secretKey",
    "signingKey", "signing_key", "encryptionKey", "masterKey", "master_key", "sessionKey",
    # key material
    "mek", "MEK", "INNERA_MEK", "dek", "wrapped_dek", "wrappedDek", "kek",
    # personal data (the spec's *.email)
    "email", "Email", "EMAIL",
]
KEPT_NAMES = [
    "key", "Key", "keyVersion", "key_version", "sourceKey", "source_key", "cache_key",
    "objectKey", "idempotency-key", "Idempotency-Key", "publicKey", "valkey", "monkey",
    "timekeeper", "keyboard", "title", "body", "tags", "mood", "platform", "filename",
    "contentType", "size", "occurredAt", "limit", "cursor", "unread", "q", "id", "user",
    "emailVerified", "code", "url", "accept", "user-agent", "x-request-id", "expiresIn",
]


@pytest.mark.parametrize("name", REDACTED_NAMES)
def test_the_rule_matches_secret_names(name: str) -> None:
    assert is_redacted_key(name)


@pytest.mark.parametrize("name", KEPT_NAMES)
def test_the_rule_keeps_harmless_names(name: str) -> None:
    assert not is_redacted_key(name)


def test_the_rule_covers_the_spec_wildcards() -> None:
    assert all(is_redacted_key(name) for name in SPEC_WILDCARDS)


# --- the fields, from the OpenAPI document --------------------------------------------------


def _resolve(doc: dict[str, Any], schema: Any, seen: frozenset[str]) -> Iterator[
        tuple[str, dict[str, Any]]]:
    """Every (property name, property schema) of ``schema`` at any depth."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[1]
        if name not in seen:
            yield from _resolve(doc, doc["components"]["schemas"][name], seen | {name})
        return
    for prop, sub in schema.get("properties", {}).items():
        yield prop, sub
        yield from _resolve(doc, sub, seen)
    for key in ("items", "additionalProperties", "not"):
        yield from _resolve(doc, schema.get(key), seen)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in schema.get(key, ()):
            yield from _resolve(doc, sub, seen)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def body_fields(doc: dict[str, Any], op: dict[str, Any]) -> set[str]:
    """Every property name of the operation's JSON request body, at any depth."""
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    return {name for name, _ in _resolve(doc, body.get("schema"), frozenset())}


def secret_fields(doc: dict[str, Any]) -> dict[str, set[str]]:
    """``{"body" | "header" | "query": secret-like names}`` over every operation."""
    found: dict[str, set[str]] = {"body": set(), "header": set(), "query": set()}
    for _, _, op in operations(doc):
        found["body"] |= {name for name in body_fields(doc, op) if is_redacted_key(name)}
        for param in op.get("parameters", ()):
            if param["in"] in ("header", "query") and is_redacted_key(param["name"]):
                found[param["in"]].add(param["name"])
    return found


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    import innera.app  # noqa: F401 - registers every operation
    from innera.api.openapi import build_document

    return build_document()


def test_the_secret_fields_of_the_api_are_found(openapi: dict[str, Any]) -> None:
    found = secret_fields(openapi)
    assert KNOWN_BODY_SECRETS <= found["body"], KNOWN_BODY_SECRETS - found["body"]
    assert "x-reauth-token" in found["header"]
    assert "access_token" in found["query"]
    # journal content and other fields of the same bodies are not mistaken for secrets
    every_field = set().union(*(body_fields(openapi, op) for _, _, op in operations(openapi)))
    assert {"title", "body", "platform", "filename"} <= every_field - found["body"]


def test_every_secret_field_is_redacted_at_any_depth(openapi: dict[str, Any]) -> None:
    found = secret_fields(openapi)
    names = sorted(set().union(*found.values()))
    assert names
    for name in names:
        value = f"s3cr3t-{name}"
        shapes: list[Any] = [
            {name: value},
            {"req": {"body": {name: value}}},
            {"req": {"headers": {name: value, name.upper(): value}}},
            {"a": [{"b": {name: value}}, [{name: value}]]},
            [{name: value}],
            {"items": ({name: value},)},
        ]
        for shape in shapes:
            logged = json.dumps(redact(shape))
            assert value not in logged, (name, shape)
            assert CENSOR in logged
            event = scrub_event({"extra": {"x": shape}, "contexts": {"c": shape},
                                 "request": {"data": json.dumps(shape)},
                                 "breadcrumbs": {"values": [{"data": {"d": shape}}]}}, {})
            assert event is not None
            sent = json.dumps(event)
            assert value not in sent, (name, shape)
            assert REDACTED in sent
        # in a query string: censored in a log line, dropped by Sentry
        assert value not in loggable_url("/p", f"{name}={value}".encode())
        assert value not in json.dumps(scrub_event(
            {"request": {"url": f"https://h/p?{name}={value}",
                         "query_string": f"{name}={value}"}}, {}))
    # harmless neighbours survive
    kept = redact({"req": {"body": {"platform": "ios", "keyVersion": 2, "password": "x"}}})
    assert kept["req"]["body"] == {"platform": "ios", "keyVersion": 2, "password": CENSOR}


def test_logged_urls_censor_search_terms_signatures_and_secret_names() -> None:
    url = loggable_url("/v1/search", b"q=term-1&limit=5&access_token=at-2&sig=sg-3&Api-Key=k-4")
    assert url == ("/v1/search?q=[REDACTED]&limit=5&access_token=[REDACTED]&sig=[REDACTED]"
                   "&Api-Key=[REDACTED]")
    line = redact({"req": {"headers": {"Referer": "https://app.test/search?q=term-5&limit=5#x",
                                       "Accept": "text/html?"}}})
    assert line["req"]["headers"] == {"Referer": "https://app.test/search?q=[REDACTED]&limit=5",
                                      "Accept": "text/html?"}


# --- end to end: a server logging bodies at LOG_LEVEL=debug --------------------------------

_counter = itertools.count()


def _secret(label: str) -> str:
    return f"SECRET-{label}-{next(_counter)}-{uuid.uuid4().hex[:10]}"


def _body_for(doc: dict[str, Any], schema: Any, values: dict[str, str],
              seen: frozenset[str] = frozenset()) -> Any:
    """A JSON body with a fresh secret in every secret-like property (objects followed
    through ``$ref``; other properties left out)."""
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[1]
        if name in seen:
            return None
        return _body_for(doc, doc["components"]["schemas"][name], values, seen | {name})
    out: dict[str, Any] = {}
    for prop, sub in schema.get("properties", {}).items():
        if is_redacted_key(prop):
            out[prop] = values[f"{prop}#{len(values)}"] = _secret(prop)
        else:
            nested = _body_for(doc, sub, values, seen)
            if nested:
                out[prop] = nested
    return out


def _keys(value: Any, censored_only: bool = False) -> set[str]:
    """Every key of ``value`` at any depth (only those whose value is ``[REDACTED]``)."""
    if isinstance(value, dict):
        return {k for k, v in value.items() if not censored_only or v == CENSOR} | set(
            ).union(*(_keys(v, censored_only) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v, censored_only) for v in value))
    return set()


def test_no_secret_field_reaches_the_debug_log(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path, LOG_LEVEL="debug",
                                     RATE_LIMIT_AUTH="1000/min"))
    secrets: list[str] = []  # every value that must appear nowhere in the output
    with httpx.Client(base_url=sp.url, timeout=10) as client:
        doc = client.get("/openapi.json").json()
        found = secret_fields(doc)
        assert KNOWN_BODY_SECRETS <= found["body"]

        def post(path: str, body: dict[str, Any], status: int, **headers: str) -> Any:
            r = client.post(path, json=body, headers=headers)
            assert r.status_code == status, (path, r.status_code, r.text)
            return r.json() if r.content else None

        # The real flows, so the success paths (which might log) run as well.
        email = f"redaction-{uuid.uuid4().hex[:8]}@example.com"
        first, second, push = _secret("pw"), _secret("newpw"), _secret("push")
        secrets += [email, first, second, push]
        signup = post("/v1/auth/signup", {"email": email, "password": first}, 201)
        session = post("/v1/auth/login", {"email": email, "password": first}, 200)
        bearer = {"authorization": f"Bearer {session['accessToken']}"}
        reauth = post("/v1/auth/reauth", {"password": first}, 200, **bearer)
        post("/v1/me/password", {"currentPassword": first, "newPassword": second}, 204,
             **bearer, **{"x-reauth-token": reauth["reauthToken"]})
        again = post("/v1/auth/login", {"email": email, "password": second}, 200)
        bearer = {"authorization": f"Bearer {again['accessToken']}"}
        post("/v1/devices", {"platform": "ios", "pushToken": push}, 201, **bearer)
        rotated = post("/v1/auth/refresh", {"refreshToken": again["refreshToken"]}, 200)
        post("/v1/auth/logout", {"refreshToken": rotated["refreshToken"]}, 204)
        for issued in (signup, session, again, rotated):
            secrets += [issued["accessToken"], issued["refreshToken"]]
        secrets.append(reauth["reauthToken"])

        # Then every operation with a secret-like field, whatever it answers: the body is
        # logged when the request arrives, before authentication and validation.
        swept: set[str] = set()
        for method, path, op in operations(doc):
            params = op.get("parameters", ())
            headers = {p["name"]: _secret(p["name"]) for p in params
                       if p["in"] == "header" and is_redacted_key(p["name"])}
            query = {p["name"]: _secret(p["name"]) for p in params
                     if p["in"] == "query" and is_redacted_key(p["name"])}
            values: dict[str, str] = {}
            schema = op.get("requestBody", {}).get("content", {}).get(
                "application/json", {}).get("schema")
            body = _body_for(doc, schema, values)
            if not (headers or query or body):
                continue
            secrets += [*headers.values(), *query.values(), *values.values()]
            swept |= _keys(body) | set(headers) | set(query)
            url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            client.request(method, url, params=query, json=body if body else None,
                           headers={**bearer, **headers})
        assert set().union(*found.values()) <= swept

    sp.proc.send_signal(signal.SIGTERM)
    sp.proc.wait(15)
    output = sp.lines() + "\n" + sp.read_rest()

    leaked = [value for value in secrets if value in output]
    assert not leaked, f"leaked into the logs: {leaked}"
    lines = [json.loads(line) for line in output.splitlines() if line.strip().startswith("{")]
    received = [line["req"] for line in lines if line.get("msg") == "request received"]
    # each secret-like body field was logged — as [REDACTED]
    censored = set().union(*(_keys(req.get("body"), censored_only=True) for req in received))
    assert found["body"] <= censored, found["body"] - censored
    assert all(any(value == CENSOR for name, value in req["headers"].items()
                   if name.lower() == "x-reauth-token")
               for req in received if any(n.lower() == "x-reauth-token" for n in req["headers"]))
