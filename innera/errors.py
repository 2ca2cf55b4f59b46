"""The error contract: every error response is

    {"error": {"code": "snake_case_code", "message": "human text", "details": ...},
     "requestId": "<uuid>"}

Raise an :class:`AppError` subclass anywhere below a route; the app's error handler
turns it into that body with the right status. Anything else becomes a 500
``internal_error`` whose body reveals nothing about the failure.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An error with an HTTP status and a stable, machine-readable code."""

    status: int = 500
    code: str = "internal_error"
    message: str = "Internal server error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or type(self).message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self, request_id: str | None) -> dict[str, Any]:
        return error_body(self.code, self.message, request_id, self.details)


def error_body(
    code: str, message: str, request_id: str | None, details: Any = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error, "requestId": request_id}


class BadRequest(AppError):
    status, code, message = 400, "bad_request", "Bad request"


class InvalidJson(AppError):
    status, code, message = 400, "invalid_json", "The request body is not valid JSON"


class ValidationFailed(AppError):
    status, code, message = 422, "validation_failed", "The request is not valid"


class Unauthorized(AppError):
    status, code, message = 401, "unauthorized", "Authentication required"


class Forbidden(AppError):
    status, code, message = 403, "forbidden", "Not allowed"


class NotFound(AppError):
    status, code, message = 404, "not_found", "Not found"


class MethodNotAllowed(AppError):
    status, code, message = 405, "method_not_allowed", "Method not allowed"


class Conflict(AppError):
    status, code, message = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    status, code, message = 413, "payload_too_large", "The request body is too large"


class UnsupportedMediaType(AppError):
    status, code, message = 415, "unsupported_media_type", "Unsupported content type"


class RateLimited(AppError):
    status, code, message = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(AppError):
    status, code, message = 503, "service_unavailable", "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached (or no pooled connection came in time)."""

    code, message = "database_unavailable", "The database is unavailable"


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached and the feature cannot work without it."""

    code, message = "redis_unavailable", "Redis is unavailable"


class StorageUnavailable(ServiceUnavailable):
    code, message = "storage_unavailable", "Attachment storage is unavailable"


class ShuttingDown(ServiceUnavailable):
    code, message = "shutting_down", "The server is restarting"
