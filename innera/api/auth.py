"""``/v1/auth``: sign-up, sign-in, refresh-token rotation, sign-out, re-authentication."""

from __future__ import annotations

from pydantic import Field, field_validator
from quart import Blueprint, g

from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model, UserOut
from innera.auth.errors import InvalidCredentials
from innera.errors import Unauthorized
from innera.users import (
    User,
    create_user,
    find_for_login,
    get_active_user,
    is_valid_email,
    normalise_email,
    password_hash_of,
    set_password_hash,
)

blueprint = Blueprint("auth", __name__, url_prefix="/v1/auth")


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


class PasswordIn(Model):
    password: str = Field(min_length=1, max_length=256)


class ReauthOut(Model):
    reauthToken: str
    expiresIn: int



async def issue_session(user: User, family_id: str | None = None,
                        refresh_token: str | None = None) -> AuthOut:
    svc = services()
    access, expires_in = svc.access_tokens.issue(user.id)
    if refresh_token is None:
        refresh_token = await svc.refresh_tokens.issue(user.id, family_id)
    return AuthOut(user=UserOut(**user.public()), accessToken=access,
                   refreshToken=refresh_token, expiresIn=expires_in)


@operation(blueprint, "POST", "/signup", summary="Create an account", body=SignupIn,
           response=AuthOut, status=201, auth=False, rate="auth", errors=(409, 422, 429))
async def signup(body: SignupIn) -> AuthOut:
    svc = services()
    password_hash = await svc.passwords.hash(body.password)
    async with svc.db.connection() as conn, conn.transaction():
        user = await create_user(conn, body.email, password_hash)
        await svc.data_keys.create(conn, user.id)  # the user's DEK, wrapped by the MEK
    return await issue_session(user)


@operation(blueprint, "POST", "/login", summary="Sign in with email and password",
           body=Credentials, response=AuthOut, auth=False, rate="auth", errors=(401, 422, 429))
async def login(body: Credentials) -> AuthOut:
    svc = services()
    found = await find_for_login(svc.db, body.email)
    if found is None:
        await svc.passwords.burn()  # the same time as a wrong password
        raise InvalidCredentials()
    user, stored = found
    if not await svc.passwords.verify(stored, body.password):
        raise InvalidCredentials()
    if svc.passwords.needs_rehash(stored):
        await set_password_hash(svc.db, user.id, await svc.passwords.hash(body.password))
    return await issue_session(user)


@operation(blueprint, "POST", "/refresh",
           summary="Exchange a refresh token for a new pair (the old one is consumed)",
           description="Presenting a refresh token that was already rotated revokes its "
                       "whole family (theft detection).",
           body=RefreshIn, response=AuthOut, auth=False, rate="auth", errors=(401, 422, 429))
async def refresh(body: RefreshIn) -> AuthOut:
    svc = services()
    user_id, new_token = await svc.refresh_tokens.rotate(body.refreshToken)
    user = await get_active_user(svc.db, user_id)
    if user is None:
        await svc.refresh_tokens.revoke(new_token)
        raise Unauthorized("This account is no longer active")
    return await issue_session(user, refresh_token=new_token)


@operation(blueprint, "POST", "/logout", summary="Revoke a refresh token (and its family)",
           body=RefreshIn, status=204, auth=False, rate="auth", errors=(422, 429))
async def logout(body: RefreshIn) -> None:
    await services().refresh_tokens.revoke(body.refreshToken)


@operation(blueprint, "POST", "/reauth",
           summary="Confirm the password again for a sensitive operation",
           description="Returns a single-use token for the x-reauth-token header, valid 300 s.",
           body=PasswordIn, response=ReauthOut, rate="auth", errors=(401, 422, 429))
async def reauth(body: PasswordIn) -> ReauthOut:
    svc = services()
    stored = await password_hash_of(svc.db, g.user_id)
    if stored is None or not await svc.passwords.verify(stored, body.password):
        raise InvalidCredentials("The password is wrong")
    token = await svc.reauth.issue(g.user_id)
    return ReauthOut(reauthToken=token, expiresIn=svc.reauth.ttl_s)
