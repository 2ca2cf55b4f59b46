"""Accounts end to end over HTTP: sign-up, sign-in, tokens, re-authentication."""

from __future__ import annotations

import hashlib

import jwt
import pytest
import trio

from tests.fixtures.accounts import new_email, signup
from tests.fixtures.server import RunningServer
from tests.test_http import assert_error


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    # generous limits: these tests are about accounts, test_guards_http about limits
    return {**server_settings, "RATE_LIMIT_AUTH": "1000/min"}


async def test_signup_returns_the_user_and_a_token_pair(server: RunningServer) -> None:
    r = await server.client.post("/v1/auth/signup",
                                 json={"email": "  Alice@Example.COM ", "password": "s3cret-pass"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"user", "accessToken", "refreshToken", "expiresIn"}
    assert body["user"]["email"] == "alice@example.com"
    assert set(body["user"]) == {"id", "email", "createdAt"}
    assert body["expiresIn"] == 900
    claims = jwt.decode(body["accessToken"], options={"verify_signature": False})
    assert claims["sub"] == body["user"]["id"] and claims["exp"] - claims["iat"] == 900
    bearer = {"authorization": f"Bearer {body['accessToken']}"}
    me = await server.client.get("/v1/me", headers=bearer)
    assert me.json() == body["user"]


async def test_email_is_unique_after_normalisation(server: RunningServer) -> None:
    await signup(server.client, "bob@example.com")
    r = await server.client.post("/v1/auth/signup",
                                 json={"email": " BOB@example.com", "password": "another-pass"})
    assert_error(r, 409, "email_taken")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "x@example.com", "password": "short"}, "password"),
        ({"email": "x@example.com", "password": "p" * 257}, "password"),
        ({"email": "not-an-email", "password": "long enough"}, "email"),
        ({"password": "long enough"}, "email"),
        ({"email": "x@example.com", "password": "long enough", "admin": True}, "admin"),
        ({"email": 42, "password": "long enough"}, "email"),
    ],
)
async def test_signup_validation_names_the_field(server: RunningServer, payload: dict, field: str
                                                ) -> None:
    body = assert_error(await server.client.post("/v1/auth/signup", json=payload),
                        422, "validation_failed")
    assert field in [d["field"] for d in body["error"]["details"]]


async def test_signup_rejects_malformed_json_and_non_objects(server: RunningServer) -> None:
    r = await server.client.post("/v1/auth/signup", content=b"{nope",
                                 headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_json")
    assert_error(await server.client.post("/v1/auth/signup", json=[1, 2]), 422,
                 "validation_failed")
    assert_error(await server.client.post("/v1/auth/signup"), 422, "validation_failed")


async def test_login_wrong_email_and_wrong_password_look_the_same(server: RunningServer) -> None:
    """Same answer, same work: an unknown e-mail costs one argon2 pass (against a decoy hash
    made with the same parameters), as a wrong password does, so response times cannot tell
    them apart. Counted rather than timed: a timing comparison flakes on a busy machine."""
    account = await signup(server.client)
    ok = await server.client.post(
        "/v1/auth/login", json={"email": account.email.upper(), "password": account.password})
    assert ok.status_code == 200 and ok.json()["user"]["id"] == account.id
    hasher = server.services.passwords

    async def attempt(email: str, password: str) -> int:
        before = hasher.passes
        r = await server.client.post("/v1/auth/login", json={"email": email, "password": password})
        body = assert_error(r, 401, "invalid_credentials")
        assert body["error"]["message"] == "Email or password is wrong"
        return hasher.passes - before

    wrong_password = [await attempt(account.email, "wrong password!") for _ in range(2)]
    wrong_email = [await attempt(new_email(), account.password) for _ in range(2)]
    assert wrong_password == wrong_email == [1, 1]
    # the decoy is the same work as a user's hash: the same argon2id parameters
    assert hasher._dummy_hash is not None and not hasher.needs_rehash(hasher._dummy_hash)


async def test_bad_access_tokens_are_401(server: RunningServer) -> None:
    account = await signup(server.client)
    secret = server.services.access_tokens._secret
    expired = jwt.encode({"sub": account.id, "iat": 1, "exp": 2, "typ": "access"}, secret,
                         algorithm="HS256")
    forged = jwt.encode({"sub": account.id, "exp": 4_000_000_000, "typ": "access"}, "x" * 40,
                        algorithm="HS256")
    for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer garbage"},
                    {"authorization": f"Bearer {expired}"}, {"authorization": f"Bearer {forged}"},
                    {"authorization": f"Bearer {account.refresh}"}):
        assert_error(await server.client.get("/v1/me", headers=headers), 401, "unauthorized")


async def test_refresh_rotates_and_reuse_revokes_the_family(server: RunningServer) -> None:
    account = await signup(server.client)
    r1 = await server.client.post("/v1/auth/refresh", json={"refreshToken": account.refresh})
    assert r1.status_code == 200, r1.text
    second = r1.json()["refreshToken"]
    assert second != account.refresh and r1.json()["user"]["id"] == account.id

    # the first token was consumed: presenting it again is theft
    assert_error(await server.client.post("/v1/auth/refresh",
                                          json={"refreshToken": account.refresh}), 401,
                 "unauthorized")
    # ... and the whole family is revoked, the thief's newest token included
    assert_error(await server.client.post("/v1/auth/refresh", json={"refreshToken": second}),
                 401, "unauthorized")
    # another session (another family) of the same user is untouched
    login = await server.client.post("/v1/auth/login",
                                     json={"email": account.email, "password": account.password})
    r = await server.client.post("/v1/auth/refresh",
                                 json={"refreshToken": login.json()["refreshToken"]})
    assert r.status_code == 200


async def test_refresh_token_is_stored_hashed_with_a_30_day_ttl(server: RunningServer) -> None:
    account = await signup(server.client)
    client = server.services.redis.client
    key = "rt:" + hashlib.sha256(account.refresh.encode()).hexdigest()
    ttl = await client.ttl(key)
    assert 30 * 86400 - 60 <= ttl <= 30 * 86400
    async for k in client.scan_iter(match="*"):
        assert account.refresh not in k
        if await client.type(k) == "string":
            assert account.refresh not in (await client.get(k) or "")


async def test_logout_revokes_the_refresh_token(server: RunningServer) -> None:
    account = await signup(server.client)
    r = await server.client.post("/v1/auth/logout", json={"refreshToken": account.refresh})
    assert r.status_code == 204 and r.content == b""
    assert_error(await server.client.post("/v1/auth/refresh",
                                          json={"refreshToken": account.refresh}), 401,
                 "unauthorized")


async def reauth_token(server: RunningServer, account) -> str:  # type: ignore[no-untyped-def]
    r = await server.client.post("/v1/auth/reauth", json={"password": account.password},
                                 headers=account.auth)
    assert r.status_code == 200, r.text
    assert r.json()["expiresIn"] == 300
    return r.json()["reauthToken"]


async def test_password_change_needs_reauth_and_revokes_every_refresh_token(
    server: RunningServer,
) -> None:
    account = await signup(server.client)
    other_session = (await server.client.post(
        "/v1/auth/login", json={"email": account.email, "password": account.password})).json()
    change = {"currentPassword": account.password, "newPassword": "a brand new password"}

    assert_error(await server.client.post("/v1/me/password", json=change, headers=account.auth),
                 403, "reauth_required")
    assert_error(await server.client.post("/v1/auth/reauth", json={"password": "wrong!"},
                                          headers=account.auth), 401, "invalid_credentials")
    token = await reauth_token(server, account)
    ttl = await server.services.redis.client.ttl(
        "reauth:" + hashlib.sha256(token.encode()).hexdigest())
    assert 290 <= ttl <= 300
    r = await server.client.post("/v1/me/password", json=change,
                                 headers={**account.auth, "x-reauth-token": token})
    assert r.status_code == 204, r.text
    # the session that changed it ended too: its access token fails at once
    assert_error(await server.client.get("/v1/me", headers=account.auth), 401, "unauthorized")
    assert_error(await server.client.post("/v1/me/password", json=change,
                                          headers={**account.auth, "x-reauth-token": token}),
                 401, "unauthorized")
    for refresh in (account.refresh, other_session["refreshToken"]):
        assert_error(await server.client.post("/v1/auth/refresh", json={"refreshToken": refresh}),
                     401, "unauthorized")
    assert_error(await server.client.post("/v1/auth/login", json={
        "email": account.email, "password": account.password}), 401, "invalid_credentials")
    ok = await server.client.post("/v1/auth/login", json={
        "email": account.email, "password": "a brand new password"})
    assert ok.status_code == 200


async def test_invalid_body_does_not_spend_the_reauth_token(server: RunningServer) -> None:
    account = await signup(server.client)
    token = await reauth_token(server, account)
    headers = {**account.auth, "x-reauth-token": token}
    assert_error(await server.client.post("/v1/me/password", json={"newPassword": "x"},
                                          headers=headers), 422, "validation_failed")
    r = await server.client.post("/v1/me/password", headers=headers, json={
        "currentPassword": account.password, "newPassword": "another good one"})
    assert r.status_code == 204


async def test_a_reauth_token_is_bound_to_its_user(server: RunningServer) -> None:
    alice, mallory = await signup(server.client), await signup(server.client)
    token = await reauth_token(server, alice)
    r = await server.client.delete("/v1/me", headers={**mallory.auth, "x-reauth-token": token})
    assert_error(r, 403, "reauth_required")
    # not consumed by the failed attempt: alice can still use it
    r = await server.client.delete("/v1/me", headers={**alice.auth, "x-reauth-token": token})
    assert r.status_code == 202, r.text
    assert (await server.client.get("/v1/me", headers=mallory.auth)).status_code == 200


async def test_deleted_or_disabled_users_tokens_stop_working_at_once(server: RunningServer
                                                                     ) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    token = await reauth_token(server, alice)
    assert (await server.client.delete(
        "/v1/me", headers={**alice.auth, "x-reauth-token": token})).status_code == 202
    assert_error(await server.client.get("/v1/me", headers=alice.auth), 401, "unauthorized")
    assert_error(await server.client.post("/v1/auth/refresh",
                                          json={"refreshToken": alice.refresh}), 401,
                 "unauthorized")
    assert_error(await server.client.post("/v1/auth/login", json={
        "email": alice.email, "password": alice.password}), 401, "invalid_credentials")

    async with server.services.db.connection() as conn:
        await conn.execute("UPDATE users SET status = 'disabled' WHERE id = %s", (bob.id,))
    assert_error(await server.client.get("/v1/me", headers=bob.auth), 401, "unauthorized")


async def test_concurrent_requests_each_check_their_own_user(server: RunningServer) -> None:
    """Concurrent requests share the "still active?" query, yet each is answered for its own
    user from a status read after it arrived: nothing is cached."""
    users = [await signup(server.client) for _ in range(4)]
    async with server.services.db.connection() as conn:
        await conn.execute("UPDATE users SET status = 'disabled' WHERE id = %s", (users[3].id,))
    checks = server.services.active_users.batcher
    items_before = checks.items
    answers: list[tuple[int, int, str | None]] = []

    async def me(i: int) -> None:
        r = await server.client.get("/v1/me", headers=users[i % 4].auth)
        answers.append((i % 4, r.status_code, r.json().get("id")))

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(me, i)
    assert sorted(answers) == sorted(
        (i % 4, 401, None) if i % 4 == 3 else (i % 4, 200, users[i % 4].id) for i in range(40))
    assert checks.items - items_before == 40


async def test_no_user_sees_another_users_account(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    me_a = (await server.client.get("/v1/me", headers=alice.auth)).json()
    me_b = (await server.client.get("/v1/me", headers=bob.auth)).json()
    assert me_a["id"] == alice.id and me_b["id"] == bob.id and me_a != me_b
    # bob's refresh token cannot be rotated into alice's session, nor log her out
    r = await server.client.post("/v1/auth/refresh", json={"refreshToken": bob.refresh})
    assert r.json()["user"]["id"] == bob.id


async def test_hashing_runs_off_the_event_loop(server: RunningServer) -> None:
    ticks = 0
    gaps: list[float] = []

    async def ticker() -> None:
        nonlocal ticks
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            gaps.append(now - last)
            last = now
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with trio.open_nursery() as signups:
            for _ in range(4):
                signups.start_soon(signup, server.client)
        nursery.cancel_scope.cancel()
    assert ticks > 5
    assert max(gaps) < 0.25, f"event loop blocked for {max(gaps):.3f}s"
