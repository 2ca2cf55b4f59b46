"""Access tokens: short-lived HS256 JWTs (claims ``sub``, ``iat``, ``exp``, ``jti``,
``typ="access"``, and ``sg``, the user's session generation when it was issued, and ``sid``,
the session: its refresh-token family), and the secret that signs them.

A token is good only while ``sg`` equals the user's ``session_generation``: the per-request
"still active?" query reads it (``innera/accounts.py``), so a password change, a sign-out
everywhere or an account deletion, which raise the generation, end every earlier token at
once. A token without ``sg`` (issued before sessions had generations) counts as generation 0.

Signing and verifying take microseconds: they run on the event loop. A client sends the same
token with every request for its whole lifetime, so verified tokens are remembered (bounded,
until their ``exp``): checking the signature again (about 50 µs in PyJWT) would find the same.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt
import trio

from innera.errors import Unauthorized
from innera.local_secrets import read_or_create_secret

__all__ = ["ALGORITHM", "LEEWAY_S", "AccessClaims", "AccessTokens", "bearer_token",
           "load_jwt_secret", "load_jwt_secret_async"]

log = logging.getLogger("innera.auth")

ALGORITHM = "HS256"
TOKEN_TYPE = "access"
#: Clock skew tolerated between instances, on ``exp`` and ``iat``.
LEEWAY_S = 5
SECRET_BYTES = 48
_REQUIRED_CLAIMS = ["sub", "iat", "exp", "jti", "typ"]


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header value (the scheme
    case-insensitive, the credential trimmed); None for any other or an empty one."""
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    return credential if scheme.lower() == "bearer" and credential else None


def load_jwt_secret(jwt_secret: str | None, data_dir: Path, production: bool) -> str:
    """``jwt_secret`` (``JWT_SECRET``) when set. Otherwise (development/test only) the secret
    kept in ``<data_dir>/secrets/jwt_secret`` (mode 0600), created on first start: 48 random bytes,
    base64url. Creation is atomic: the complete file is written under a temporary name and
    hard-linked into place, which fails if the file exists; so two processes starting at
    once both end up reading the one file that won, never a half-written one.

    Blocking file I/O: call it before the event loop runs, or use
    :func:`load_jwt_secret_async`.
    """
    if jwt_secret:
        return jwt_secret
    if production:
        raise RuntimeError("JWT_SECRET is required in production")
    return _read_or_create_secret(Path(data_dir) / "secrets" / "jwt_secret")


async def load_jwt_secret_async(jwt_secret: str | None, data_dir: Path, production: bool
                                ) -> str:
    """:func:`load_jwt_secret` on a worker thread."""
    return await trio.to_thread.run_sync(load_jwt_secret, jwt_secret, data_dir, production)


def _read_or_create_secret(path: Path) -> str:
    secret = read_or_create_secret(
        path,
        lambda: base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("="),
        "a JWT secret")
    if len(secret) < 32:
        raise RuntimeError(f"{path} does not hold a usable JWT secret (remove it to "
                           "generate a new one, or set JWT_SECRET)")
    return secret


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says."""

    user_id: str
    exp: int
    #: the user's session generation when the token was issued
    generation: int = 0
    #: the session (refresh-token family) it belongs to, if any
    session_id: str | None = None


class AccessTokens:
    """Issues and verifies access tokens signed with ``secret``."""

    def __init__(self, secret: str, ttl_s: int, *, cache_size: int = 10_000) -> None:
        if not secret:
            raise ValueError("an empty JWT secret")
        if ttl_s < 1:
            raise ValueError("ttl_s must be positive")
        self._secret = secret
        self.ttl_s = ttl_s
        self.cache_size = cache_size
        #: token → its claims, for tokens that verified, least recently used first
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()

    def issue(self, user_id: str, *, generation: int = 0, session_id: str | None = None
              ) -> tuple[str, int]:
        """``(token, expires_in_s)``: a new access token for ``user_id``, valid ``ttl_s``, of
        session generation ``generation`` and session ``session_id``."""
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": str(user_id),
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": uuid.uuid4().hex,
            "typ": TOKEN_TYPE,
            "sg": int(generation),
        }
        if session_id is not None:
            claims["sid"] = str(session_id)
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), self.ttl_s

    def verify(self, token: str | None) -> str:
        """The user id (``sub``) of a valid access token; :class:`Unauthorized` for a
        missing, malformed, expired, wrongly signed or non-access token."""
        return self.verify_claims(token).user_id

    def verify_claims(self, token: str | None) -> AccessClaims:
        """The claims of a valid access token (see :meth:`verify`)."""
        if not token:
            raise Unauthorized("Missing access token")
        known = self._verified.get(token)
        if known is not None:
            if known.exp > time.time() - LEEWAY_S:
                self._verified.move_to_end(token)
                return known
            del self._verified[token]
            raise Unauthorized("Access token expired")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                leeway=LEEWAY_S,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Access token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid access token") from None
        sub, generation, sid = claims.get("sub"), claims.get("sg", 0), claims.get("sid")
        if (claims.get("typ") != TOKEN_TYPE or not isinstance(sub, str) or not sub
                or type(generation) is not int or not isinstance(sid, str | None)
                or not isinstance(claims["exp"], int | float)):
            raise Unauthorized("Invalid access token")
        verified = AccessClaims(sub, int(claims["exp"]), generation, sid)
        self._verified[token] = verified
        if len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return verified
