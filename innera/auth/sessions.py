"""Sessions as the account sees them (``GET /v1/me/sessions``): one per refresh-token family,
that is one per sign-in, with when it began, when it was last used (its newest token's
issue time) and a coarse name of the client that last used it; and ending them all
(:func:`end_all_sessions`).

The client is a User-Agent *family* (``"Innera iOS"``, ``"Firefox"``, ``"curl"``, …), never
the header itself: enough to recognise a device, nothing that fingerprints it. It is derived
from the first :data:`UA_MAX_CHARS` characters with plain substring tests (no pattern that
could backtrack on a hostile header).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from innera.accounts import User, end_sessions
from innera.auth.access_tokens import AccessClaims
from innera.errors import Unauthorized
from innera.realtime.events import close_user_everywhere

if TYPE_CHECKING:
    from innera.services import Services

__all__ = ["SESSION_ENDED", "UA_MAX_CHARS", "Session", "client_family", "end_all_sessions",
           "session_user"]

UA_MAX_CHARS = 256

#: (substring of the lower-cased User-Agent, family), first match wins: specific before
#: generic (Edge and Opera say "chrome" too, Chrome says "safari").
_FAMILIES: tuple[tuple[str, str], ...] = (
    ("innera-ios", "Innera iOS"),
    ("innera-android", "Innera Android"),
    ("innera", "Innera"),
    ("edg/", "Edge"),
    ("opr/", "Opera"),
    ("firefox/", "Firefox"),
    ("chrome/", "Chrome"),
    ("chromium/", "Chrome"),
    ("safari/", "Safari"),
    ("okhttp", "Android app"),
    ("cfnetwork", "iOS app"),
    ("dart:io", "Flutter app"),
    ("curl/", "curl"),
    ("python", "Python"),
    ("node", "Node.js"),
    ("expo", "Expo app"),
)


def client_family(user_agent: str | None) -> str:
    """A coarse client name for a User-Agent header (``"Other"`` when unknown, ``"Unknown"``
    when absent)."""
    if not user_agent:
        return "Unknown"
    ua = user_agent[:UA_MAX_CHARS].lower()
    for needle, family in _FAMILIES:
        if needle in ua:
            return family
    return "Other"


@dataclass(frozen=True, slots=True)
class Session:
    """One refresh-token family of a user."""

    id: str
    created_at: datetime
    last_used_at: datetime
    client: str


#: how the sockets of a user whose sessions ended are closed
SESSION_ENDED = (4001, "Session ended")


async def end_all_sessions(svc: Services, user_id: str, *, generation_raised: bool = False
                           ) -> None:
    """End every session of the user at once: the session generation goes up (unless the
    caller already raised it, as a password change does in the same statement), so every
    earlier access token and re-auth token fails; every refresh-token family is revoked; and
    the user's sockets are closed with 4001 "Session ended" on every instance."""
    if not generation_raised:
        await end_sessions(svc.db, user_id)
    await svc.refresh_tokens.revoke_user(user_id)
    svc.hub.close_user(user_id, *SESSION_ENDED)  # this instance's, even without Redis
    await close_user_everywhere(svc.redis, user_id, *SESSION_ENDED)


async def session_user(svc: Services, claims: AccessClaims) -> User:
    """The active user of a verified access token whose session has not ended, else
    :class:`Unauthorized`. One batched query (:class:`innera.accounts.ActiveUsers`) answers
    both: whether the account is active, and its session generation. Shared by every HTTP
    route and the WebSocket handshake."""
    user = await svc.active_users.get(claims.user_id)
    if user is None:
        raise Unauthorized("This account is no longer active")
    if claims.generation != user.session_generation:
        raise Unauthorized("This session has ended; sign in again")
    return user
