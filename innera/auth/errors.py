"""Errors of the auth core (HTTP status and code via :class:`~innera.errors.AppError`)."""

from __future__ import annotations

from innera.errors import AppError, Unauthorized

__all__ = ["InvalidCredentials", "TokenReused"]


class InvalidCredentials(AppError):
    """Sign-in failed: the same answer for an unknown e-mail and a wrong password."""

    status, code, message = 401, "invalid_credentials", "Email or password is wrong"


class TokenReused(Unauthorized):
    """A consumed refresh token was presented again; its family is now revoked."""

    status, code = 401, "unauthorized"
    message = "Refresh token reuse detected; please sign in again"
