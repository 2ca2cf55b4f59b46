"""``/v1/me``: the signed-in user's own account."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint, g

from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model, UserOut
from innera.auth.errors import InvalidCredentials
from innera.users import password_hash_of, set_password_hash, set_status

blueprint = Blueprint("me", __name__, url_prefix="/v1/me")


class PasswordChangeIn(Model):
    currentPassword: str = Field(min_length=1, max_length=256)
    newPassword: str = Field(min_length=8, max_length=256)



@operation(blueprint, "GET", "", summary="The signed-in user", response=UserOut,
           errors=(401, 429))
async def get_me() -> UserOut:
    return UserOut(**g.user.public())


@operation(blueprint, "POST", "/password", summary="Change the password",
           description="Needs x-reauth-token. Every refresh token of the user is revoked.",
           body=PasswordChangeIn, status=204, reauth=True, errors=(401, 403, 422, 429))
async def change_password(body: PasswordChangeIn) -> None:
    svc = services()
    stored = await password_hash_of(svc.db, g.user_id)
    if stored is None or not await svc.passwords.verify(stored, body.currentPassword):
        raise InvalidCredentials("The current password is wrong")
    await set_password_hash(svc.db, g.user_id, await svc.passwords.hash(body.newPassword))
    await svc.refresh_tokens.revoke_user(g.user_id)


@operation(blueprint, "DELETE", "", summary="Delete the account",
           description="Needs x-reauth-token. Sign-in stops at once and every token is "
                       "revoked; the data is purged by the account-deletion job.",
           status=204, reauth=True, errors=(401, 403, 429))
async def delete_me() -> None:
    svc = services()
    await set_status(svc.db, g.user_id, "deleted")
    await svc.refresh_tokens.revoke_user(g.user_id)
    svc.hub.close_user(g.user_id, 4003, "Account deleted")  # this instance's sockets
