"""What runs before an operation's handler (:mod:`innera.api.operation`): authentication,
rate limit, re-authentication, idempotency. Each reads the request and the services, and is
given what it needs of the operation; the mechanisms live in ``innera/auth/`` and
``innera/guards/``."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Literal

from quart import Response, g, request

from innera.accounts import User
from innera.api.bodies import body_chunks
from innera.api.context import services
from innera.auth.access_tokens import AccessClaims, bearer_token
from innera.auth.authentication import authenticate
from innera.errors import AppError, PayloadTooLarge, RateLimited, Unauthorized
from innera.guards.client_ip import client_ip, rate_limit_client
from innera.guards.idempotency import (
    Fingerprint,
    FingerprintSource,
    fingerprint,
    validate_key,
)
from innera.guards.ratelimit import Decision
from innera.observability.logging import bind_user
from innera.services import Services

#: an operation's rate limit: a named one of the settings, or (requests, window in seconds)
Rate = Literal["auth", "user", "anon"] | tuple[int, int]


class ReauthRequired(AppError):
    status, code = 403, "reauth_required"
    message = "This operation needs a fresh re-authentication token in x-reauth-token"


async def authenticated(svc: Services, authorization: str | None
                        ) -> tuple[AccessClaims, User]:
    """``authorization`` (the request's ``Authorization`` header) → the verified claims of
    its bearer access token and the active user they name
    (:func:`innera.auth.authentication.authenticate`), else 401 ``unauthorized`` with
    ``WWW-Authenticate: Bearer``. Shared by :func:`require_user` and the operations served
    without the framework (:mod:`innera.api.direct`)."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("Missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = svc.access_tokens.verify_claims(token)
        user = await authenticate(svc.active_users, claims, svc.active_user_counter)
    except Unauthorized as exc:
        raise Unauthorized(exc.message, headers={"WWW-Authenticate": "Bearer"}) from None
    return claims, user


async def require_user() -> None:
    """``Authorization: Bearer <access token>`` → an active user (:func:`authenticated`),
    else 401 ``unauthorized``. The user's status and session generation are read on every
    request (concurrent requests share one query), so a disabled or deleted user's tokens,
    and tokens of sessions that ended, stop working at once."""
    claims, user = await authenticated(services(), request.headers.get("authorization"))
    g.user_id = claims.user_id
    g.user = user
    g.session_id = claims.session_id
    bind_user(claims.user_id)


def request_client_ip() -> str:
    svc = services()
    return client_ip(request.remote_addr, request.headers.getlist("x-forwarded-for"),
                     svc.settings.server.trust_proxy)


async def count_request(svc: Services, path: str, rate: Rate, client: str
                        ) -> Decision | None:
    """Count a request of ``client`` against the limit ``rate`` of the operation ``path``
    (its route template): the limiter's decision, None when Redis is unavailable (fail
    open: counted and warned by the limiter). Past the limit, :func:`refuse_past_limit`
    refuses."""
    limits = svc.settings.limits
    if isinstance(rate, tuple):
        limit, window = rate
    else:
        limit, window = {"auth": limits.rate_limit_auth, "user": limits.rate_limit_user,
                         "anon": limits.rate_limit_anon}[rate]
    return await svc.rate_limiter.hit(path, client, limit, window)


def refuse_past_limit(decision: Decision | None) -> None:
    """429 ``rate_limited`` (with the decision's headers) when ``decision`` refuses."""
    if decision is not None and not decision.allowed:
        raise RateLimited(f"Too many requests; retry in {decision.reset_s} s",
                          headers=decision.headers())


async def limit_rate(path: str, rate: Rate) -> None:
    """Count the request against the operation's limit (``path``: its route template) per
    user when authenticated, else per client IP (always per IP for ``"auth"``); past it
    429 ``rate_limited``."""
    user_id = g.get("user_id")
    # a client IP counts as itself, an IPv6 one as its /64 (rate_limit_client)
    client = (user_id if user_id and rate != "auth"
              else rate_limit_client(request_client_ip()))
    decision = await count_request(services(), path, rate, client)
    if decision is not None:
        g.rate_limit = decision
    refuse_past_limit(decision)


async def require_reauth() -> None:
    svc = services()
    token = request.headers.get("x-reauth-token", "").strip()
    if not token or not await svc.reauth.consume(g.user_id, token, g.user.session_generation):
        raise ReauthRequired()


class HashedBody:
    """The body of a request that streams it, under an ``Idempotency-Key``: each chunk read
    goes into the request's :class:`Fingerprint` and is not kept. At most ``max_bytes`` (the
    bound the request class gives this route), else 413 ``payload_too_large``."""

    def __init__(self, body: AsyncIterable[bytes], fp: Fingerprint, max_bytes: int | None
                 ) -> None:
        self._chunks = body.__aiter__()
        self._fp = fp
        self._max_bytes = max_bytes
        self._size = 0

    def __aiter__(self) -> HashedBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        self._size += len(chunk)
        if self._max_bytes is not None and self._size > self._max_bytes:
            raise PayloadTooLarge(f"The body is larger than the limit ({self._max_bytes} bytes)")
        self._fp.update(chunk)
        return chunk

    async def fingerprint(self) -> str:
        """Hash what was not read yet (each chunk awaited at most UPLOAD_IDLE_TIMEOUT_S),
        then the fingerprint of the whole request."""
        async for _ in body_chunks(self):
            pass
        return self._fp.hexdigest()


def request_body() -> AsyncIterable[bytes]:
    """The body of the current request, for an operation that streams it (``streams_body``):
    read it through this, never ``request.body``, so an ``Idempotency-Key`` fingerprints what
    the handler reads."""
    hashed: HashedBody | None = g.get("hashed_body")
    return request.body if hashed is None else hashed


async def idempotent(run: Callable[[], Awaitable[Response]], *, streams_body: bool = False
                     ) -> Response:
    """Authenticated writes with ``Idempotency-Key`` run at most once per key (24 h).
    ``streams_body``: the body is not read up front but hashed as it streams
    (:func:`request_body`), the lock taken before."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return await run()
    svc = services()
    key = validate_key(key)
    fp: FingerprintSource
    if streams_body:
        maximum = request.max_content_length
        if maximum is not None and (request.content_length or 0) > maximum:
            raise PayloadTooLarge(f"The body is larger than the limit ({maximum} bytes)")
        g.hashed_body = hashed = HashedBody(request.body,
                                            Fingerprint(request.method, request.path), maximum)
        fp = hashed.fingerprint
    else:
        fp = fingerprint(request.method, request.path, await request.get_data(as_text=False))
    async with svc.idempotency.guard(g.user_id, key, fp) as guard:
        if guard.replay is not None:
            stored = guard.replay
            headers = {"Idempotent-Replayed": "true"}
            if stored.location is not None:
                headers["Location"] = stored.location
            return Response(stored.body, status=stored.status, content_type=stored.content_type,
                            headers=headers)
        response = await run()
        guard.store(response.status_code, await response.get_data(as_text=False),
                    response.content_type or "application/json", response.headers.get("Location"))
        return response
