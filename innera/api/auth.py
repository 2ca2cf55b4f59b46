"""``/v1/auth``: sign-up, sign-in, refresh-token rotation, sign-out, re-authentication.

Every sign-in starts a session (a refresh-token family, ``GET /v1/me/sessions``). Its access
tokens carry the session (``sid``) and the user's session generation (``sg``): signing out
everywhere (``POST /v1/auth/logout`` with ``{"all": true}``), a password change and an account
deletion end every earlier token at once (see ``innera/auth/sessions.py``)."""

from __future__ import annotations

import uuid

from pydantic import Field, field_validator
from quart import Blueprint, g, request

from innera.accounts import (
    User,
    create_user,
    find_for_login,
    get_active_user,
    is_valid_email,
    normalise_email,
    password_hash_of,
    rehash_password,
)
from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model, UserOut
from innera.auth.errors import InvalidCredentials
from innera.auth.sessions import client_family, end_all_sessions
from innera.errors import Unauthorized

blueprint = Blueprint("auth", __name__, url_prefix="/v1/auth")

THROTTLE_DESCRIPTION = (
    "Wrong passwords are counted per account (sign-in and re-authentication together, from "
    "any address): after 10 failures the account backs off, 30 s doubling with every further "
    "failure up to 15 min, and attempts meanwhile answer 429 `too_many_attempts` with "
    "Retry-After; a success resets the count. 503 `busy` (Retry-After: 1) when too many "
    "password checks are already queued on the instance.")


class Credentials(Model):
    email: str = Field(max_length=254, description="Trimmed and lower-cased by the server")
    password: str = Field(min_length=1, max_length=256)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = normalise_email(value)
        if not is_valid_email(value):
            raise ValueError("not a valid email address")
        return value


class SignupIn(Credentials):
    password: str = Field(min_length=8, max_length=256)


class AuthOut(Model):
    user: UserOut
    accessToken: str
    refreshToken: str
    expiresIn: int = Field(description="Access token lifetime in seconds")


class RefreshIn(Model):
    refreshToken: str = Field(min_length=1, max_length=512)


class LogoutIn(RefreshIn):
    all: bool = Field(False, description="Sign out everywhere: every session of the user "
                                         "ends at once (access tokens, refresh tokens, "
                                         "re-auth tokens and open sockets)")


class PasswordIn(Model):
    password: str = Field(min_length=1, max_length=256)


class ReauthOut(Model):
    reauthToken: str
    expiresIn: int



def _client() -> str:
    return client_family(request.headers.get("user-agent"))


async def issue_session(user: User, *, family_id: str | None = None,
                        refresh_token: str | None = None) -> AuthOut:
    """Tokens for ``user``: a new session, or (``refresh_token`` and its ``family_id``) the
    session a refresh continues."""
    svc = services()
    if refresh_token is None:
        family_id = str(uuid.uuid4())
        refresh_token = await svc.refresh_tokens.issue(user.id, family_id, client=_client())
    access, expires_in = svc.access_tokens.issue(
        user.id, generation=user.session_generation, session_id=family_id)
    return AuthOut(user=UserOut(**user.public()), accessToken=access,
                   refreshToken=refresh_token, expiresIn=expires_in)


@operation(blueprint, "POST", "/signup", summary="Create an account", body=SignupIn,
           response=AuthOut, status=201, auth=False, rate="auth",
           errors=(409, 422, 429, 503))
async def signup(body: SignupIn) -> AuthOut:
    svc = services()
    password_hash = await svc.passwords.hash(body.password)
    async with svc.db.connection() as conn, conn.transaction():
        user = await create_user(conn, body.email, password_hash)
        await svc.data_keys.create(conn, user.id)  # the user's DEK, wrapped by the MEK
    return await issue_session(user)


@operation(blueprint, "POST", "/login", summary="Sign in with email and password",
           description=THROTTLE_DESCRIPTION,
           body=Credentials, response=AuthOut, auth=False, rate="auth",
           errors=(401, 422, 429, 503))
async def login(body: Credentials) -> AuthOut:
    svc = services()
    await svc.login_attempts.admit(body.email)  # 429 while the account backs off: no hash
    found = await find_for_login(svc.db, body.email)
    if found is None:
        await svc.passwords.burn()  # the same time as a wrong password
        await svc.login_attempts.failed(body.email)  # unknown emails count alike
        raise InvalidCredentials()
    user, stored = found
    if not await svc.passwords.verify(stored, body.password):
        await svc.login_attempts.failed(body.email)
        raise InvalidCredentials()
    await svc.login_attempts.succeeded(body.email)
    if svc.passwords.needs_rehash(stored):  # compare-and-set: never over a changed password
        await rehash_password(svc.db, user.id, stored, await svc.passwords.hash(body.password))
    return await issue_session(user)


@operation(blueprint, "POST", "/refresh",
           summary="Exchange a refresh token for a new pair (the old one is consumed)",
           description="Presenting a refresh token that was already rotated revokes its "
                       "whole family (theft detection).",
           body=RefreshIn, response=AuthOut, auth=False, rate="auth", errors=(401, 422, 429))
async def refresh(body: RefreshIn) -> AuthOut:
    svc = services()
    user_id, new_token, family_id = await svc.refresh_tokens.rotate(body.refreshToken,
                                                                    client=_client())
    user = await get_active_user(svc.db, user_id)
    if user is None:
        await svc.refresh_tokens.revoke(new_token)
        raise Unauthorized("This account is no longer active")
    return await issue_session(user, family_id=family_id, refresh_token=new_token)


@operation(blueprint, "POST", "/logout", summary="Sign out: end this session, or every one",
           description="Revokes the refresh token's session (its family). With "
                       "`{\"all\": true}`, every session of the token's user ends at once: "
                       "every access, refresh and re-auth token issued before fails (401), "
                       "and the user's sockets close with 4001 on every instance. An unknown "
                       "or expired token changes nothing (204 all the same).",
           body=LogoutIn, status=204, auth=False, rate="auth", errors=(422, 429))
async def logout(body: LogoutIn) -> None:
    svc = services()
    if body.all:
        user_id = await svc.refresh_tokens.owner(body.refreshToken)
        if user_id is not None:
            await end_all_sessions(svc, user_id)
            return
    await svc.refresh_tokens.revoke(body.refreshToken)


@operation(blueprint, "POST", "/reauth",
           summary="Confirm the password again for a sensitive operation",
           description="Returns a single-use token for the x-reauth-token header, valid 300 s. "
                       + THROTTLE_DESCRIPTION,
           body=PasswordIn, response=ReauthOut, rate="auth", errors=(401, 422, 429, 503))
async def reauth(body: PasswordIn) -> ReauthOut:
    svc = services()
    await svc.login_attempts.admit(g.user.email)  # the account's counter, shared with login
    stored = await password_hash_of(svc.db, g.user_id)
    if stored is None or not await svc.passwords.verify(stored, body.password):
        await svc.login_attempts.failed(g.user.email)
        raise InvalidCredentials("The password is wrong")
    await svc.login_attempts.succeeded(g.user.email)
    token = await svc.reauth.issue(g.user_id, g.user.session_generation)
    return ReauthOut(reauthToken=token, expiresIn=svc.reauth.ttl_s)
