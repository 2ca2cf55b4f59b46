"""Sessions as the account sees them (``GET /v1/me/sessions``): one per refresh-token family,
that is one per sign-in, with when it began, when it was last used (its newest token's
issue time) and a coarse name of the client that last used it; and ending them all
(:func:`end_all_sessions`).

The client is a User-Agent *family* (``"Innera iOS"``, ``"Firefox"``, ``"curl"``, …), never
the header itself: enough to recognise a device, nothing that fingerprints it. It is derived
from the first :data:`UA_MAX_CHARS` characters with plain substring tests (no pattern that
could backtrack on a hostile header).

Whether a token's session is still live, on every request, is :mod:`innera.auth.authentication`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from innera.accounts import end_sessions
from innera.db.pool import Pool
from innera.realtime.events import close_user_everywhere
from innera.realtime.hub import Hub
from innera.redis import Redis

__all__ = ["SESSION_ENDED", "UA_MAX_CHARS", "Session", "SessionOwners", "client_family",
           "end_all_sessions"]

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


class _RefreshFamilies(Protocol):
    async def revoke_user(self, user_id: str) -> None: ...


class SessionOwners(Protocol):
    """Where a user's sessions live, which :func:`end_all_sessions` ends them in: the users
    table (``db``), the refresh-token families (``refresh_tokens``), this instance's sockets
    (``hub``) and every instance's (through ``redis``). ``innera.services.Services`` is one."""

    @property
    def db(self) -> Pool: ...

    @property
    def redis(self) -> Redis: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def refresh_tokens(self) -> _RefreshFamilies: ...


async def end_all_sessions(svc: SessionOwners, user_id: str, *,
                           generation_raised: bool = False) -> None:
    """End every session of the user at once: the session generation goes up (unless the
    caller already raised it, as a password change does in the same statement), so every
    earlier access token and re-auth token fails; every refresh-token family is revoked; and
    the user's sockets are closed with 4001 "Session ended" on every instance."""
    if not generation_raised:
        await end_sessions(svc.db, user_id)
    await svc.refresh_tokens.revoke_user(user_id)
    svc.hub.close_user(user_id, *SESSION_ENDED)  # this instance's, even without Redis
    await close_user_everywhere(svc.redis, user_id, *SESSION_ENDED)
