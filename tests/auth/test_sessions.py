"""Sessions end when they should, on every instance: a password change, signing out
everywhere and an account deletion make every earlier access token fail at once (401),
revoke re-auth tokens and refresh families, and close the user's sockets everywhere; and the
account's sessions can be listed and ended one by one (both refresh-token stores)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from innera.accounts import change_password, find_for_login, rehash_password
from innera.config import load_settings
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer, start_server
from tests.fixtures.ws import Closed
from tests.test_accounts import reauth_token
from tests.test_http import assert_error
from tests.test_realtime import connect, receive_close, receive_json

pytestmark = pytest.mark.timeout(60)

SESSION_ENDED = Closed(4001, "Session ended")


async def login(client: httpx.AsyncClient, account: Account, password: str | None = None,
                user_agent: str = "python-httpx") -> dict[str, Any]:
    r = await client.post("/v1/auth/login", headers={"user-agent": user_agent}, json={
        "email": account.email, "password": password or account.password})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def assert_ended(client: httpx.AsyncClient, access: str, refresh: str) -> None:
    body = assert_error(await client.get("/v1/me", headers=bearer(access)), 401,
                        "unauthorized")
    assert body["error"]["message"] == "This session has ended; sign in again"
    assert_error(await client.post("/v1/auth/refresh", json={"refreshToken": refresh}), 401,
                 "unauthorized")


@pytest.fixture
async def second(nursery: trio.Nursery, server_settings: dict[str, str]) -> Any:
    """A second instance on the same PostgreSQL and Redis."""
    other = await start_server(nursery, load_settings(server_settings))
    async with other.client:
        yield other
    await other.stop()


async def test_a_password_change_ends_every_session_on_every_instance(
        server: RunningServer, second: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    laptop = await login(second.client, alice)
    spare_reauth = await reauth_token(server, alice)  # issued before, never used
    on_a = await connect(server.url, alice.access)
    on_b = await connect(second.url, laptop["accessToken"])
    bystander = await connect(second.url, bob.access)

    r = await server.client.post("/v1/me/password", headers={
        **alice.auth, "x-reauth-token": await reauth_token(server, alice)}, json={
        "currentPassword": alice.password, "newPassword": "a brand new password"})
    assert r.status_code == 204, r.text

    assert await receive_close(on_a) == SESSION_ENDED
    assert await receive_close(on_b) == SESSION_ENDED
    for client in (server.client, second.client):  # at once, on both instances
        await assert_ended(client, alice.access, alice.refresh)
        await assert_ended(client, laptop["accessToken"], laptop["refreshToken"])
    # a re-auth token issued before is dead, even with a new session
    fresh = await login(second.client, alice, "a brand new password")
    assert_error(await second.client.delete("/v1/me", headers={
        **bearer(fresh["accessToken"]), "x-reauth-token": spare_reauth}), 403,
        "reauth_required")
    assert (await second.client.get("/v1/me", headers=bearer(fresh["accessToken"]))
            ).status_code == 200
    # other users are untouched
    await bystander.send_text('{"type":"ping"}')
    assert await receive_json(bystander) == {"type": "pong"}
    for ws in (on_a, on_b, bystander):
        await ws.aclose()


async def test_sign_out_everywhere(server: RunningServer, second: RunningServer) -> None:
    alice = await signup(server.client)
    phone = await login(second.client, alice)
    on_b = await connect(second.url, phone["accessToken"])
    # the refresh token of this device names the user
    r = await server.client.post("/v1/auth/logout",
                                 json={"refreshToken": alice.refresh, "all": True})
    assert r.status_code == 204, r.text
    assert await receive_close(on_b) == SESSION_ENDED
    for client in (server.client, second.client):
        await assert_ended(client, alice.access, alice.refresh)
        await assert_ended(client, phone["accessToken"], phone["refreshToken"])
    again = await login(server.client, alice)  # signing in again works
    assert (await server.client.get("/v1/me", headers=bearer(again["accessToken"]))
            ).status_code == 200
    # a plain sign-out ends only its own session; an unknown token changes nothing
    other = await login(server.client, alice)
    r = await server.client.post("/v1/auth/logout", json={"refreshToken": other["refreshToken"]})
    assert r.status_code == 204
    assert (await server.client.post("/v1/auth/refresh", json={
        "refreshToken": again["refreshToken"]})).status_code == 200
    r = await server.client.post("/v1/auth/logout", json={"refreshToken": "x" * 43,
                                                           "all": True})
    assert r.status_code == 204
    await on_b.aclose()


async def test_account_deletion_ends_every_token(server: RunningServer) -> None:
    alice = await signup(server.client)
    spare = await reauth_token(server, alice)
    r = await server.client.delete("/v1/me", headers={
        **alice.auth, "x-reauth-token": await reauth_token(server, alice)})
    assert r.status_code == 202, r.text
    assert_error(await server.client.get("/v1/me", headers=alice.auth), 401, "unauthorized")
    assert_error(await server.client.post("/v1/auth/refresh", json={
        "refreshToken": alice.refresh}), 401, "unauthorized")
    assert_error(await server.client.post("/v1/me/password", headers={
        **alice.auth, "x-reauth-token": spare}, json={
        "currentPassword": alice.password, "newPassword": "whatever it is"}), 401,
        "unauthorized")


async def test_a_login_rehashing_the_old_password_cannot_undo_a_change(
        server: RunningServer) -> None:
    """The race: a login verified the old password and rehashes it while the password is
    changed. Both writes are compare-and-set on the hash they verified: the change wins."""
    alice = await signup(server.client)
    db, passwords = server.services.db, server.services.passwords
    found = await find_for_login(db, alice.email)
    assert found is not None
    user, old_hash = found
    new_hash = await passwords.hash("a brand new password")
    assert await change_password(db, user.id, old_hash, new_hash) == user.session_generation + 1
    # the login in flight now writes its rehash of the old password: refused
    assert not await rehash_password(db, user.id, old_hash, await passwords.hash(alice.password))
    # and a second change from the same stale hash is refused too
    assert await change_password(db, user.id, old_hash, new_hash) is None
    assert_error(await server.client.post("/v1/auth/login", json={
        "email": alice.email, "password": alice.password}), 401, "invalid_credentials")
    await login(server.client, alice, "a brand new password")


@pytest.mark.parametrize("store", ["redis", "postgres"])
async def test_the_accounts_sessions(nursery: trio.Nursery, server_settings: dict[str, str],
                                     store: str) -> None:
    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "REFRESH_TOKEN_STORE": store}))
    async with srv.client as client:
        alice, bob = await signup(client), await signup(client)
        phone = await login(client, alice, user_agent="Innera-iOS/1.2 CFNetwork/1490")
        laptop = await login(client, alice, user_agent=(
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"))
        r = await client.get("/v1/me/sessions", headers=bearer(phone["accessToken"]))
        assert r.status_code == 200, r.text
        sessions = r.json()["items"]
        assert len(sessions) == 3  # sign-up, phone, laptop
        assert [s["client"] for s in sessions[:2]] == ["Firefox", "Innera iOS"]
        assert [s["current"] for s in sessions] == [False, True, False]
        assert all(s["createdAt"].endswith("Z") and s["lastUsedAt"] >= s["createdAt"]
                   for s in sessions)
        phone_id = sessions[1]["id"]

        # a refresh keeps the session (same id, later use) and marks the new token's
        r = await client.post("/v1/auth/refresh", json={"refreshToken": phone["refreshToken"]},
                              headers={"user-agent": "Innera-iOS/1.3"})
        assert r.status_code == 200
        refreshed = r.json()
        items = (await client.get("/v1/me/sessions",
                                  headers=bearer(refreshed["accessToken"]))).json()["items"]
        assert items[0]["id"] == phone_id and items[0]["current"]
        assert items[0]["createdAt"] == sessions[1]["createdAt"]
        assert items[0]["lastUsedAt"] > sessions[1]["lastUsedAt"]

        # ending one: it cannot be refreshed any more; the others stay
        laptop_id = next(s["id"] for s in items if s["client"] == "Firefox")
        r = await client.delete(f"/v1/me/sessions/{laptop_id}",
                                headers=bearer(refreshed["accessToken"]))
        assert r.status_code == 204, r.text
        assert_error(await client.post("/v1/auth/refresh", json={
            "refreshToken": laptop["refreshToken"]}), 401, "unauthorized")
        left = (await client.get("/v1/me/sessions", headers=alice.auth)).json()["items"]
        assert laptop_id not in {s["id"] for s in left} and len(left) == 2
        # another user's session, an unknown and a malformed id: 404 alike
        for session_id in (phone_id, "9b2f6d1e-0000-4000-8000-000000000000", "nope"):
            assert_error(await client.delete(f"/v1/me/sessions/{session_id}",
                                             headers=bob.auth), 404, "not_found")
        assert (await client.get("/v1/me/sessions", headers=bob.auth)).json()["items"][0][
            "current"]
    await srv.stop()
