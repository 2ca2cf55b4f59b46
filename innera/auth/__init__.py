"""Authentication core: password hashing (:mod:`.passwords`), access tokens
(:mod:`.access_tokens`), a verified token → its active user (:mod:`.authentication`),
sessions (:mod:`.sessions`), rotating refresh tokens (:mod:`.refresh_tokens`) and
re-authentication tokens (:mod:`.reauth`)."""

from innera.auth.access_tokens import AccessTokens, load_jwt_secret, load_jwt_secret_async
from innera.auth.errors import InvalidCredentials, TokenReused
from innera.auth.passwords import PasswordHasher
from innera.auth.reauth import ReauthTokens
from innera.auth.refresh_tokens import (
    PostgresRefreshTokenStore,
    RedisRefreshTokenStore,
    RefreshTokenStore,
    open_refresh_store,
)

__all__ = [
    "AccessTokens",
    "InvalidCredentials",
    "PasswordHasher",
    "PostgresRefreshTokenStore",
    "ReauthTokens",
    "RedisRefreshTokenStore",
    "RefreshTokenStore",
    "TokenReused",
    "load_jwt_secret",
    "load_jwt_secret_async",
    "open_refresh_store",
]
