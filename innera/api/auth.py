"""``/v1/auth``: sign-up, sign-in, refresh-token rotation, sign-out, re-authentication.

Every sign-in starts a session (a refresh-token family, ``GET /v1/me/sessions``). Its access
tokens carry the session (``sid``) and the user's session generation (``sg``): signing out
everywhere (``POST /v1/auth/logout`` with ``{"all": true}``), a password change and an account
deletion end every earlier token at once. The rules are in ``innera/auth/credentials.py``."""

from __future__ import annotations

from pydantic import Field, field_validator
from quart import Blueprint, g, request

from innera.accounts import EMAIL_PATTERN, is_valid_email, normalise_email
from innera.api.context import services
from innera.api.operation import KEY_SERVICE_UNAVAILABLE, operation
from innera.api.schemas import Model, UserOut
from innera.auth import credentials
from innera.auth.sessions import client_family

blueprint = Blueprint("auth", __name__, url_prefix="/v1/auth")

#: refusals of the routes that check a password or keep refresh tokens
BUSY = "`busy`: too many password checks are queued on this instance (Retry-After: 1)"
WRONG_PASSWORD = "`invalid_credentials`: the email or the password is wrong"
THROTTLED = ("`too_many_attempts`: this account had too many wrong passwords and backs off "
             "(see Retry-After)")
TOKENS_UNAVAILABLE = ("`redis_unavailable`: the refresh-token store cannot be reached "
                      "(REFRESH_TOKEN_STORE=redis)")

THROTTLE_DESCRIPTION = (
    "Wrong passwords are counted per account (sign-in and re-authentication together, from "
    "any address): after 10 failures the account backs off, 30 s doubling with every further "
    "failure up to 15 min, and attempts meanwhile answer 429 `too_many_attempts` with "
    "Retry-After; a success resets the count. 503 `busy` (Retry-After: 1) when too many "
    "password checks are already queued on the instance.")


class Credentials(Model):
    email: str = Field(max_length=254, description="Trimmed and lower-cased by the server",
                       json_schema_extra={"pattern": EMAIL_PATTERN})
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


def _out(signed_in: credentials.SignedIn) -> AuthOut:
    return AuthOut(user=UserOut(**signed_in.user.public()), accessToken=signed_in.access_token,
                   refreshToken=signed_in.refresh_token, expiresIn=signed_in.expires_in)


@operation(blueprint, "POST", "/signup", operation_id="signup", summary="Create an account",
           body=SignupIn, response=AuthOut, status=201, auth=False, rate="auth",
           errors={409: "`email_taken`: an account with this email exists",
                   503: (BUSY, TOKENS_UNAVAILABLE, KEY_SERVICE_UNAVAILABLE)})
async def signup(body: SignupIn) -> AuthOut:
    return _out(await credentials.sign_up(services(), body.email, body.password, _client()))


@operation(blueprint, "POST", "/login", operation_id="login",
           summary="Sign in with email and password", description=THROTTLE_DESCRIPTION,
           body=Credentials, response=AuthOut, auth=False, rate="auth",
           errors={401: WRONG_PASSWORD, 429: THROTTLED, 503: (BUSY, TOKENS_UNAVAILABLE)})
async def login(body: Credentials) -> AuthOut:
    return _out(await credentials.sign_in(services(), body.email, body.password, _client()))


@operation(blueprint, "POST", "/refresh", operation_id="refreshToken",
           summary="Exchange a refresh token for a new pair (the old one is consumed)",
           description="Presenting a refresh token that was already rotated revokes its "
                       "whole family (theft detection).",
           body=RefreshIn, response=AuthOut, auth=False, rate="auth",
           errors={401: "`unauthorized`: the refresh token is unknown, expired or revoked, "
                        "or its account is no longer active; a token that was already "
                        "rotated also revokes its whole family",
                   503: TOKENS_UNAVAILABLE})
async def refresh(body: RefreshIn) -> AuthOut:
    return _out(await credentials.refresh(services(), body.refreshToken, _client()))


@operation(blueprint, "POST", "/logout", operation_id="logout",
           summary="Sign out: end this session, or every one",
           description="Revokes the refresh token's session (its family). With "
                       "`{\"all\": true}`, every session of the token's user ends at once: "
                       "every access, refresh and re-auth token issued before fails (401), "
                       "and the user's sockets close with 4001 on every instance. An unknown "
                       "or expired token changes nothing (204 all the same).",
           body=LogoutIn, status=204, auth=False, rate="auth",
           errors={503: TOKENS_UNAVAILABLE})
async def logout(body: LogoutIn) -> None:
    await credentials.sign_out(services(), body.refreshToken, everywhere=body.all)


@operation(blueprint, "POST", "/reauth", operation_id="reauthenticate",
           summary="Confirm the password again for a sensitive operation",
           description="Returns a single-use token for the x-reauth-token header, valid 300 s. "
                       + THROTTLE_DESCRIPTION,
           body=PasswordIn, response=ReauthOut, rate="auth",
           errors={401: "`invalid_credentials`: the password is wrong", 429: THROTTLED,
                   503: (BUSY, "`redis_unavailable`: re-authentication tokens cannot be "
                               "issued right now")})
async def reauth(body: PasswordIn) -> ReauthOut:
    token, ttl_s = await credentials.confirm_password(services(), g.user, body.password)
    return ReauthOut(reauthToken=token, expiresIn=ttl_s)
