"""``GET /openapi.json``: the OpenAPI 3.1 document, built from the declared operations.

Everything in it comes from a declaration (:mod:`innera.api.operation`): each operation's
``operationId``, parameters, bodies, links, and every status it can answer, with the error
codes behind each (:func:`~innera.api.operation.refusals`). It is meant to be exact, so that
clients can be generated from it and tested against the server (``tests/test_openapi.py`` runs
Schemathesis and a generated client against a live server): a status the server answers but
the document does not list, or a request the document forbids but the server accepts, is a
bug of one or the other.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Blueprint, Response

from innera import __version__
from innera.api.context import json_response
from innera.api.operation import (
    OPERATIONS,
    PLAIN_OPERATIONS,
    Operation,
    PlainOperation,
    declare_plain,
    refusals,
)
from innera.api.schemas import ErrorOut
from innera.guards.idempotency import KEY_PATTERN

blueprint = Blueprint("openapi", __name__)

PATH = "/openapi.json"
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}

_STATUS_TEXT = {
    400: "Bad request", 401: "Not authenticated", 403: "Forbidden", 404: "Not found",
    408: "Request timeout", 409: "Conflict", 413: "Body too large",
    415: "Unsupported content type", 422: "Validation failed", 426: "Upgrade required",
    429: "Too many requests", 431: "Request header fields too large",
    503: "Unavailable, try again later",
}
_INT = {"type": "integer"}
_RATE_HEADERS = {
    "RateLimit-Limit": {"description": "Requests allowed in the window", "schema": _INT},
    "RateLimit-Remaining": {"description": "Requests left in the window", "schema": _INT},
    "RateLimit-Reset": {"description": "Seconds until the window resets", "schema": _INT},
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait before retrying", "schema": _INT},
          **_RATE_HEADERS},
    503: {"Retry-After": {"description": "Seconds to wait before retrying (when known)",
                          "schema": _INT}},
}
_UUID = {"type": "string", "format": "uuid",
         "description": "A resource id (UUID). A malformed id answers 404 like an unknown one."}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Makes the write safe to retry: the first answer is stored for 24 h and "
                   "replayed (with `Idempotent-Replayed: true`) to a request with the same key, "
                   "method, path and body, as it was, even if the resource changed or was "
                   "deleted since; the same key with another request is 422 "
                   "`idempotency_key_reused`. Use a fresh key (a UUID) per write. 1–255 "
                   "printable ASCII characters, not ending in `:lock`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": KEY_PATTERN},
}
_REAUTH_TOKEN = {
    "name": "x-reauth-token", "in": "header", "required": True,
    "description": "Single-use token from `POST /v1/auth/reauth` (valid 300 s)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 512},
}

_DESCRIPTION = """\
The backend of Innera, a journaling app whose entries are encrypted at rest.

**Errors.** Every error is `{"error": {"code", "message", "details"?}, "requestId"}` (schema
`ErrorOut`) with the same id in `X-Request-Id`; `code` is stable and each operation lists the
codes of each status it answers. A request the HTTP server cannot parse is refused before any
route: 400 `bad_request` (malformed request line, headers or framing), 431 (head over 64 KiB),
501 (a transfer coding other than chunked), 505 (not HTTP/1.x); the connection then closes.
(With `INNERA_HTTP_SERVER=hypercorn` these refusals are Hypercorn's own, without a body.)
An unknown path is 404 `not_found`, a method the path does not have 405 `method_not_allowed`
with `Allow`.

**Lists** answer `{items, nextCursor}`: `nextCursor` is opaque; pass it back unchanged as
`?cursor=` for the next page (null on the last page). Anything else is 400 `invalid_cursor`.

**URLs in answers** (`uploadUrl`, `downloadUrl`, `Location`) are absolute with S3 storage and
when `PUBLIC_URL` is set; otherwise (the local store) they are relative and resolve against
the API's base URL. Upload and download URLs need no Authorization header.

**Retries.** Authenticated writes take `Idempotency-Key`. Past a rate limit the answer is 429
with `Retry-After`; a 503 is temporary (`Retry-After` when the server knows how long).
"""


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared operation."""
    models: set[type[BaseModel]] = {ErrorOut}
    for op in OPERATIONS:
        models.update(m for m in (op.body, op.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, defs = models_json_schema([(m, "validation") for m in ordered],
                                 ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = _operation(op)
    for plain in PLAIN_OPERATIONS:
        paths.setdefault(plain.path, {})[plain.method.lower()] = _plain(plain)
    return {
        "openapi": "3.1.0",
        "info": {"title": "innera API", "version": __version__, "description": _DESCRIPTION},
        "servers": [{"url": "/"}],
        "tags": [{"name": tag} for tag in sorted(
            {op.tag for op in OPERATIONS} | {p.tag for p in PLAIN_OPERATIONS})],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": _without_null_defaults(defs.get("$defs", {})),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
    }


def _without_null_defaults(node: Any) -> Any:
    """``node`` without ``"default": null`` where null is not allowed: pydantic writes it for
    fields that may be left out but not sent as null (``EntryPatch.body``)."""
    if isinstance(node, list):
        return [_without_null_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _without_null_defaults(value) for key, value in node.items()}
    if "default" in out and out["default"] is None and not _allows_null(out):
        del out["default"]
    return out


def _allows_null(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "null" or "null" in (schema.get("type") or []):
        return True
    return any(_allows_null(v) for v in schema.get("anyOf", ()) if isinstance(v, dict))


def openapi_path(rule: str) -> str:
    """A route template (``/v1/entries/<entry_id>``) in OpenAPI's form (``{entry_id}``)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema from its model field's: a parameter is absent or a string,
    never JSON null, so ``anyOf [X, null]`` becomes X (with the field's default and
    description)."""
    schema = dict(prop)
    schema.pop("title", None)
    variants = schema.pop("anyOf", None)
    if variants is not None:
        kept = [v for v in variants if v.get("type") != "null"]
        if len(kept) == 1:
            schema = {**kept[0], **schema}
        else:
            schema["anyOf"] = kept
    if schema.get("default", ...) is None:
        del schema["default"]
    return schema


def _errors(statuses: dict[int, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, codes in statuses.items():
        lines = "\n".join(f"- {text}" for text in codes)
        response: dict[str, Any] = {
            "description": f"{_STATUS_TEXT.get(status, 'Error')}:\n\n{lines}",
            "content": {"application/json": {"schema": ERROR_REF}},
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        out[str(status)] = response
    return out


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        out["description"] = op.description
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": dict(op.path_params.get(name, _UUID))}
        for name in re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", op.path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query",
                                     "required": name in required,
                                     "schema": _query_schema(prop)}
            if "description" in prop:
                param["description"] = prop["description"]
            parameters.append(param)
    parameters += [dict(p) for p in op.parameters]
    if op.idempotent:
        parameters.append(_IDEMPOTENCY_KEY)
    if op.reauth:
        parameters.append(_REAUTH_TOKEN)
    if parameters:
        out["parameters"] = parameters
    out["security"] = [{"bearer": []}] if op.auth else []
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required,
                              "content": {"application/json": {"schema": _ref(op.body)}}}
    elif op.raw_body:
        out["requestBody"] = {"required": True, "content": {
            media: {"schema": {"type": "string", "format": "binary", "description": text}}
            for media, text in op.raw_body.items()}}
    responses: dict[str, Any] = {}
    for status, text in {op.status: "Success", **op.also}.items():
        responses[str(status)] = _success(op, status, text)
    responses.update(_errors(refusals(op)))
    out["responses"] = dict(sorted(responses.items()))
    return out


def _success(op: Operation, status: int, text: str) -> dict[str, Any]:
    headers = {name: {"description": description, "required": True,
                      "schema": {"type": "string"}}
               for name, description in op.response_headers.items()}
    success: dict[str, Any] = {"description": text, "headers": {**_RATE_HEADERS, **headers}}
    if op.response is not None and status != 204:
        success["content"] = {"application/json": {"schema": _ref(op.response)}}
    if op.links:
        success["links"] = {
            target[0].upper() + target[1:]: {"operationId": target,
                                             "parameters": dict(params)}
            for target, params in op.links.items()}
    return success


def _plain(plain: PlainOperation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": plain.operation_id, "summary": plain.summary,
                           "tags": [plain.tag]}
    if plain.description:
        out["description"] = plain.description
    if plain.parameters:
        out["parameters"] = [dict(p) for p in plain.parameters]
    out["security"] = [{"bearer": []}, {}] if plain.bearer else []
    responses: dict[str, Any] = {}
    for status, (text, media, schema) in plain.responses.items():
        response: dict[str, Any] = {"description": text}
        if media is not None:
            response["content"] = {media: {"schema": dict(schema or {})}}
        responses[str(status)] = response
    errors = {431: ["`request_header_fields_too_large`: the request line and header fields "
                    "exceed 64 KiB (refused by the HTTP server)"]}
    for status, texts in plain.errors.items():
        errors.setdefault(status, []).extend((texts,) if isinstance(texts, str) else texts)
    responses.update(_errors(dict(sorted(errors.items()))))
    out["responses"] = dict(sorted(responses.items()))
    return out


declare_plain(PlainOperation(
    "GET", PATH, operation_id="getOpenApi", tag="operations",
    summary="This document (OpenAPI 3.1)",
    responses={200: ("The OpenAPI document", "application/json", {"type": "object"})}))


@blueprint.get(PATH)
async def openapi_json() -> Response:
    return json_response(build_document())
