"""``GET /openapi.json``: the OpenAPI 3.1 document, built from the declared operations."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Blueprint, Response

from innera import __version__
from innera.api.context import json_response
from innera.api.operation import OPERATIONS, Operation
from innera.api.schemas import ErrorOut

blueprint = Blueprint("openapi", __name__)

_ERROR_TEXT = {
    400: "Malformed request (invalid_json, invalid_idempotency_key, invalid_cursor)",
    401: "Missing, invalid or expired credentials",
    403: "Forbidden (reauth_required)",
    404: "Not found",
    409: "Conflict (email_taken, idempotency_in_progress)",
    413: "Body too large",
    422: "Validation failed (validation_failed, idempotency_key_reused), with per-field details",
    429: "Rate limited (rate_limited; too_many_attempts: the account backs off after failed "
         "sign-ins; see Retry-After)",
    503: "A dependency is unavailable (database_unavailable, redis_unavailable, "
         "idempotency_unavailable, key_service_unavailable: the key service that unwraps "
         "the account's data key, AWS KMS) or the instance is busy (busy: too many password checks "
         "queued; see Retry-After)",
}
_RATE_HEADERS = {
    name: {"description": text, "schema": {"type": "integer"}}
    for name, text in (("RateLimit-Limit", "Requests allowed in the window"),
                       ("RateLimit-Remaining", "Requests left in the window"),
                       ("RateLimit-Reset", "Seconds until the window resets"))
}


_HEALTH_SCHEMA = {"type": "object", "required": ["status"], "properties": {
    "status": {"enum": ["pass", "fail"]},
    "output": {"type": "string"},
    "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {
        "type": "object", "properties": {
            "componentType": {"type": "string"}, "observedValue": {"type": "number"},
            "observedUnit": {"const": "ms"}, "status": {"enum": ["pass", "fail"]},
            "time": {"type": "string"}, "output": {"type": "string"}}}}},
}}


def _plain(summary: str, media: str, schema: dict[str, Any], *, fail: str | None = None
           ) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK",
                                         "content": {media: {"schema": schema}}}}
    if fail:
        responses["503"] = {"description": fail, "content": {media: {"schema": schema}}}
    return {"get": {"operationId": "ops_" + re.sub(r"\W+", "_", summary.lower()).strip("_"),
                    "summary": summary, "tags": ["operations"], "responses": responses}}


# Routes outside /v1 (monitors, Prometheus, this document) are documented here.
_OPERATIONAL_PATHS: dict[str, dict[str, Any]] = {
    "/health": _plain("Liveness", "application/health+json", _HEALTH_SCHEMA),
    "/health/ready": _plain("Readiness", "application/health+json", _HEALTH_SCHEMA,
                            fail="A dependency failed its check, or the server is draining"),
    "/metrics": _plain("Prometheus metrics", "text/plain", {"type": "string"}),
    "/openapi.json": _plain("This document", "application/json", {"type": "object"}),
    "/v1/ws": {"get": {
        "operationId": "realtime_websocket", "tags": ["realtime"],
        "summary": "WebSocket: events for the signed-in user's devices",
        "description": "Authenticate with `Authorization: Bearer` or `?access_token=`. Server "
                       "messages are `{type, data}` (`entry.*`, `notification.created`, "
                       "`job.progress`, `ping`), events with an `id`; `?since=<id>` first "
                       "replays the events after it, or sends `{type: \"resync_required\"}` "
                       "(re-fetch). Send `{type: \"ping\"}` for a pong. Close "
                       "codes: 4000 server restarting, 4001 token expired, 4002 ping timeout, "
                       "1009 message over 64 KiB, 1013 client too slow.",
        "parameters": [{"name": "access_token", "in": "query", "required": False,
                        "schema": {"type": "string"}},
                       {"name": "since", "in": "query", "required": False,
                        "schema": {"type": "string"}}],
        "responses": {"101": {"description": "Switching protocols"},
                      "401": {"description": "Missing or invalid token",
                              "content": {"application/json": {"schema": {
                                  "$ref": "#/components/schemas/ErrorOut"}}}}},
    }},
}


def build_document() -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorOut}
    for op in OPERATIONS:
        models.update(m for m in (op.body, op.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, defs = models_json_schema([(m, "validation") for m in ordered],
                                 ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op)
    paths.update(_OPERATIONAL_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {"title": "innera API", "version": __version__,
                 "description": "The backend of Innera, a journaling app whose entries are "
                                "encrypted at rest. Every error has the shape "
                                "`{error: {code, message, details?}, requestId}`."},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(op: Operation) -> dict[str, Any]:
    slug = re.sub(r"[^a-z0-9]+", "_", op.path.lower()).strip("_")
    out: dict[str, Any] = {
        "operationId": f"{op.tag}_{op.method.lower()}_{slug}",
        "summary": op.summary,
        "tags": [op.tag],
        "responses": {},
    }
    if op.description:
        out["description"] = op.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", op.path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query",
                                     "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            parameters.append(param)
    if op.auth and op.method in ("POST", "PUT", "PATCH", "DELETE"):
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "description": "Replays the stored response for 24 h (1-255 "
                                          "printable characters)",
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
    if op.reauth:
        parameters.append({"name": "x-reauth-token", "in": "header", "required": True,
                           "description": "Single-use token from POST /v1/auth/reauth",
                           "schema": {"type": "string"}})
    if parameters:
        out["parameters"] = parameters
    if op.auth:
        out["security"] = [{"bearer": []}]
    if op.body is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": _ref(op.body)}}}
    success: dict[str, Any] = {"description": "Success", "headers": _RATE_HEADERS}
    if op.response is not None:
        success["content"] = {"application/json": {"schema": _ref(op.response)}}
    out["responses"][str(op.status)] = success
    errors = set(op.errors) | {503} | ({400} if op.body or op.query else set())
    if op.auth:
        errors.add(401)
    for status in sorted(errors):
        out["responses"][str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": _ref(ErrorOut)}},
        }
    return out


@blueprint.get("/openapi.json")
async def openapi_json() -> Response:
    return json_response(build_document())
