"""What runs before an operation's handler: authentication, rate limit, re-authentication,
idempotency. Each reads the request and the services; the mechanisms live in
``innera/auth/`` and ``innera/guards/``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart import Response, g, request

from innera.api.context import services
from innera.api.operation import Operation
from innera.errors import AppError, RateLimited, Unauthorized
from innera.guards.client_ip import client_ip
from innera.guards.idempotency import fingerprint, validate_key
from innera.observability.logging import bind_user


class ReauthRequired(AppError):
    status, code = 403, "reauth_required"
    message = "This operation needs a fresh re-authentication token in x-reauth-token"


async def authenticate() -> None:
    """``Authorization: Bearer <access token>`` → an active user, else 401 ``unauthorized``.
    The user's status is read on every request (concurrent requests share one query), so a
    disabled or deleted user's tokens stop working at once."""
    svc = services()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    user_id = svc.access_tokens.verify(token.strip())
    user = await svc.active_users.get(user_id)
    if user is None:
        raise Unauthorized("This account is no longer active",
                           headers={"WWW-Authenticate": "Bearer"})
    g.user_id = user_id
    g.user = user
    bind_user(user_id)


def request_client_ip() -> str:
    svc = services()
    return client_ip(request.remote_addr, request.headers.getlist("x-forwarded-for"),
                     svc.settings.trust_proxy)


async def limit_rate(op: Operation) -> None:
    svc = services()
    settings = svc.settings
    if isinstance(op.rate, tuple):
        limit, window = op.rate
    else:
        limit, window = {"auth": settings.rate_limit_auth, "user": settings.rate_limit_user,
                         "anon": settings.rate_limit_anon}[op.rate]
    user_id = g.get("user_id")
    client = user_id if user_id and op.rate != "auth" else request_client_ip()
    decision = await svc.rate_limiter.hit(op.path, client, limit, window)
    if decision is None:  # Redis unavailable: fail open (counted and warned by the limiter)
        return
    g.rate_limit = decision
    if not decision.allowed:
        raise RateLimited(f"Too many requests; retry in {decision.reset_s} s",
                          headers=decision.headers())


async def require_reauth() -> None:
    svc = services()
    token = request.headers.get("x-reauth-token", "").strip()
    if not token or not await svc.reauth.consume(g.user_id, token):
        raise ReauthRequired()


async def idempotent(run: Callable[[], Awaitable[Response]]) -> Response:
    """Authenticated writes with ``Idempotency-Key`` run at most once per key (24 h)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return await run()
    svc = services()
    key = validate_key(key)
    body = await request.get_data(as_text=False)
    fp = fingerprint(request.method, request.path, body)
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
