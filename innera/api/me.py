"""``/v1/me``: the signed-in user's own account."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint, g

from innera.account_deletion import delete_account
from innera.api.auth import BUSY, TOKENS_UNAVAILABLE
from innera.api.context import services
from innera.api.jobs import JobOut, job_out
from innera.api.operation import operation
from innera.api.schemas import Model, UserOut
from innera.auth import credentials
from innera.errors import NotFound, Unauthorized
from innera.ids import canonical_uuid
from innera.timestamps import iso_utc

blueprint = Blueprint("me", __name__, url_prefix="/v1/me")


class PasswordChangeIn(Model):
    currentPassword: str = Field(min_length=1, max_length=256)
    newPassword: str = Field(min_length=8, max_length=256)


class SessionOut(Model):
    id: str = Field(description="The session's id (one per sign-in)")
    createdAt: str = Field(description="When the sign-in happened")
    lastUsedAt: str = Field(description="When the session last got tokens (sign-in or "
                                        "refresh)")
    client: str = Field(description="A coarse client name from the User-Agent, e.g. "
                                    "\"Innera iOS\", \"Firefox\"")
    current: bool = Field(description="The session of the access token of this request")


class SessionList(Model):
    items: list[SessionOut]


@operation(blueprint, "GET", "", operation_id="getMe", summary="The signed-in user",
           response=UserOut)
async def get_me() -> UserOut:
    return UserOut(**g.user.public())


@operation(blueprint, "POST", "/password", operation_id="changePassword",
           summary="Change the password",
           description="Needs x-reauth-token. Every session of the user ends at once, this "
                       "one included: every access, refresh and re-auth token issued before "
                       "fails (401), and the user's sockets close with 4001 \"Session ended\" "
                       "on every instance. Sign in again with the new password.",
           body=PasswordChangeIn, status=204, reauth=True,
           errors={401: ("`invalid_credentials`: the current password is wrong, or was changed "
                         "meanwhile"),
                   503: (BUSY, TOKENS_UNAVAILABLE)})
async def change_password(body: PasswordChangeIn) -> None:
    await credentials.change_password(services(), g.user_id, body.currentPassword,
                                      body.newPassword)


@operation(blueprint, "GET", "/sessions", operation_id="listSessions",
           summary="The account's sessions",
           description="One per sign-in (a refresh-token family) that can still be "
                       "refreshed, most recently used first, at most the 100 used last. "
                       "`current` marks the session of this request's access token.",
           response=SessionList, errors={503: TOKENS_UNAVAILABLE},
           links={"deleteSession": {"session_id": "$response.body#/items/0/id"}})
async def list_sessions() -> SessionList:
    svc = services()
    current = g.get("session_id")
    return SessionList(items=[
        SessionOut(id=s.id, createdAt=iso_utc(s.created_at), lastUsedAt=iso_utc(s.last_used_at),
                   client=s.client, current=s.id == current)
        for s in await svc.refresh_tokens.sessions(g.user_id)])


@operation(blueprint, "DELETE", "/sessions/<session_id>", operation_id="deleteSession",
           summary="End one session",
           description="Revokes the session's refresh tokens: it cannot be refreshed again. "
                       "Its current access token stays valid until it expires (at most "
                       "ACCESS_TOKEN_TTL_S); to end every token at once, use "
                       "`POST /v1/auth/logout` with `{\"all\": true}`. Another user's, an "
                       "unknown or a malformed id: 404.",
           status=204, errors={404: "`not_found`: no such session of this user",
                               503: TOKENS_UNAVAILABLE})
async def delete_session(session_id: str) -> None:
    svc = services()
    family = canonical_uuid(session_id)
    if family is None or not await svc.refresh_tokens.revoke_session(g.user_id, family):
        raise NotFound("No such session")


@operation(blueprint, "DELETE", "", operation_id="deleteAccount",
           summary="Delete the account",
           description="Needs x-reauth-token. At once: sign-in and every token of the user "
                       "stop working, and the user's sockets are closed with 4003 \"Account "
                       "deleted\" on every instance. The account-deletion job returned (202) "
                       "then purges the user's entries, attachments (and their files), "
                       "notifications, devices, tokens and keys, and finally the account. A "
                       "request racing one that started the deletion returns the same job.",
           response=JobOut, status=202, reauth=True,
           errors={503: TOKENS_UNAVAILABLE})
async def delete_me() -> JobOut:
    svc = services()
    row = await delete_account(svc.db, svc.redis, svc.refresh_tokens, svc.hub, g.user_id)
    if row is None:  # the account's deletion finished while this request was on its way
        raise Unauthorized("This account is no longer active",
                           headers={"WWW-Authenticate": "Bearer"})
    return job_out(row)
