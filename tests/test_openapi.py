"""The OpenAPI document, CORS and security headers."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from tests.fixtures.server import RunningServer


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
