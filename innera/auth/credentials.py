"""What a user does with their credentials: sign up, sign in, refresh, sign out, confirm the
password for a sensitive operation, change it. The ``/v1/auth`` and ``/v1/me`` blueprints
parse and render; the rules are here.

- **Sessions.** Every sign-in starts a session: a refresh-token family whose access tokens
  carry the session (``sid``) and the user's session generation (``sg``). Signing out
  everywhere, a password change and an account deletion end every earlier token at once
  (:func:`innera.auth.sessions.end_all_sessions`).
- **Wrong passwords** are counted per account, sign-in and re-authentication together
  (:class:`innera.guards.login_attempts.LoginAttempts`): past the threshold the account backs
  off. An unknown email costs the same hashing time as a wrong password and counts alike.
- **Hashes** are verified and re-hashed with compare-and-set on the hash just verified, so a
  concurrent password change cannot be overwritten.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from innera.accounts import (
    User,
    create_user,
    find_for_login,
    get_active_user,
    password_hash_of,
    rehash_password,
)
from innera.accounts import change_password as store_new_password
from innera.auth.access_tokens import AccessTokens
from innera.auth.errors import InvalidCredentials
from innera.auth.passwords import PasswordHasher
from innera.auth.reauth import ReauthTokens
from innera.auth.refresh_tokens import RefreshTokenStore
from innera.auth.sessions import SessionOwners, end_all_sessions
from innera.crypto.data_keys import DataKeys
from innera.errors import Unauthorized
from innera.guards.login_attempts import LoginAttempts
from innera.ids import new_uuid4


class CredentialServices(SessionOwners, Protocol):
    """What the credential flows use; ``innera.services.Services`` is one."""

    @property
    def passwords(self) -> PasswordHasher: ...

    @property
    def access_tokens(self) -> AccessTokens: ...

    @property
    def refresh_tokens(self) -> RefreshTokenStore: ...

    @property
    def reauth(self) -> ReauthTokens: ...

    @property
    def login_attempts(self) -> LoginAttempts: ...

    @property
    def data_keys(self) -> DataKeys: ...


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A session's tokens, for ``user``."""

    user: User
    access_token: str
    refresh_token: str
    expires_in: int


async def _session(svc: CredentialServices, user: User, client: str, *,
                   family_id: str | None = None, refresh_token: str | None = None
                   ) -> SignedIn:
    """Tokens for ``user``: a new session, or (``refresh_token`` and its ``family_id``) the
    session a refresh continues."""
    if refresh_token is None:
        family_id = str(uuid.uuid4())
        refresh_token = await svc.refresh_tokens.issue(user.id, family_id, client=client)
    access, expires_in = svc.access_tokens.issue(
        user.id, generation=user.session_generation, session_id=family_id)
    return SignedIn(user, access, refresh_token, expires_in)


async def sign_up(svc: CredentialServices, email: str, password: str, client: str
                  ) -> SignedIn:
    """A new account (with its data key, wrapped by the master key) and its first session;
    :class:`~innera.errors.Conflict` ``email_taken`` when the email is in use."""
    password_hash = await svc.passwords.hash(password)
    user_id = new_uuid4()
    # wrapped before the transaction: a slow key service (KMS) holds no pooled connection
    new_key = await svc.data_keys.wrap_new(user_id)
    async with svc.db.connection() as conn, conn.transaction():
        user = await create_user(conn, email, password_hash, user_id)
        await svc.data_keys.store(conn, user_id, new_key)
    return await _session(svc, user, client)


async def sign_in(svc: CredentialServices, email: str, password: str, client: str
                  ) -> SignedIn:
    """A new session for the account with these credentials; :class:`InvalidCredentials`
    otherwise (429 ``too_many_attempts`` while the account backs off, before any hashing)."""
    await svc.login_attempts.admit(email)
    found = await find_for_login(svc.db, email)
    if found is None:
        await svc.passwords.burn()  # the same time as a wrong password
        await svc.login_attempts.failed(email)  # unknown emails count alike
        raise InvalidCredentials()
    user, stored = found
    if not await svc.passwords.verify(stored, password):
        await svc.login_attempts.failed(email)
        raise InvalidCredentials()
    await svc.login_attempts.succeeded(email)
    if svc.passwords.needs_rehash(stored):  # compare-and-set: never over a changed password
        await rehash_password(svc.db, user.id, stored, await svc.passwords.hash(password))
    return await _session(svc, user, client)


async def refresh(svc: CredentialServices, refresh_token: str, client: str) -> SignedIn:
    """Rotate a refresh token (a token rotated before revokes its whole family); 401 when it
    is not valid or its account is no longer active."""
    user_id, new_token, family_id = await svc.refresh_tokens.rotate(refresh_token,
                                                                    client=client)
    user = await get_active_user(svc.db, user_id)
    if user is None:
        await svc.refresh_tokens.revoke(new_token)
        raise Unauthorized("This account is no longer active")
    return await _session(svc, user, client, family_id=family_id, refresh_token=new_token)


async def sign_out(svc: CredentialServices, refresh_token: str, *, everywhere: bool) -> None:
    """End the refresh token's session, or (``everywhere``) every session of its user. An
    unknown or expired token changes nothing."""
    if everywhere:
        user_id = await svc.refresh_tokens.owner(refresh_token)
        if user_id is not None:
            await end_all_sessions(svc, user_id)
            return
    await svc.refresh_tokens.revoke(refresh_token)


async def confirm_password(svc: CredentialServices, user: User, password: str
                           ) -> tuple[str, int]:
    """A single-use re-auth token for ``user`` and its lifetime in seconds, when ``password``
    is theirs; :class:`InvalidCredentials` otherwise (counted like a failed sign-in)."""
    await svc.login_attempts.admit(user.email)
    stored = await password_hash_of(svc.db, user.id)
    if stored is None or not await svc.passwords.verify(stored, password):
        await svc.login_attempts.failed(user.email)
        raise InvalidCredentials("The password is wrong")
    await svc.login_attempts.succeeded(user.email)
    return await svc.reauth.issue(user.id, user.session_generation), svc.reauth.ttl_s


async def change_password(svc: CredentialServices, user_id: str, current: str, new: str
                          ) -> None:
    """Replace the password when ``current`` is right, then end every session of the user
    (this one included)."""
    stored = await password_hash_of(svc.db, user_id)
    if stored is None or not await svc.passwords.verify(stored, current):
        raise InvalidCredentials("The current password is wrong")
    new_hash = await svc.passwords.hash(new)
    # compare-and-set on the hash just verified: a concurrent change (or a login rehashing
    # the old password) cannot interleave
    if await store_new_password(svc.db, user_id, stored, new_hash) is None:
        raise InvalidCredentials("The password was changed meanwhile; sign in again")
    await end_all_sessions(svc, user_id, generation_raised=True)
