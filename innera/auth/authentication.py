"""Authentication: a verified access token → the active user of a session that has not
ended, else :class:`~innera.errors.Unauthorized`.

Verifying the token (:meth:`innera.auth.access_tokens.AccessTokens.verify_claims`) needs no
I/O; :func:`authenticate` then asks PostgreSQL, through the batched
:class:`innera.accounts.ActiveUsers` (concurrent requests share one query), whether the
account is active and what its session generation is. Every HTTP route (the operation's
guard) and the WebSocket handshake authenticate through it, so a disabled or deleted user's
tokens, and tokens of sessions that ended, stop working at once everywhere. Every user it
lets in is counted as active (:class:`innera.auth.active_user_counter.ActiveUserCounter`: an
in-memory set, written to Redis in batches), for ``innera_active_users``.
"""

from __future__ import annotations

from innera.accounts import ActiveUsers, User
from innera.auth.access_tokens import AccessClaims
from innera.auth.active_user_counter import ActiveUserCounter
from innera.errors import Unauthorized

__all__ = ["ACCOUNT_INACTIVE", "SESSION_OVER", "authenticate"]

ACCOUNT_INACTIVE = "This account is no longer active"
SESSION_OVER = "This session has ended; sign in again"


async def authenticate(active_users: ActiveUsers, claims: AccessClaims,
                       counter: ActiveUserCounter) -> User:
    """The active user of the verified access token ``claims`` whose session has not ended,
    else :class:`Unauthorized`. One batched query (``active_users``) answers both: whether
    the account is active, and its session generation. The user is then recorded in
    ``counter`` (no I/O)."""
    user = await active_users.get(claims.user_id)
    if user is None:
        raise Unauthorized(ACCOUNT_INACTIVE)
    if claims.generation != user.session_generation:
        raise Unauthorized(SESSION_OVER)
    counter.record(user.id)
    return user
