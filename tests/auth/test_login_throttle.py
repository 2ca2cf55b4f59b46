"""Password guessing is throttled per account (innera/guards/login_attempts.py), per-IP limits
count an IPv6 client by its /64, the argon2 queue is bounded (innera/auth/passwords.py), and
an X-Forwarded-For we do not trust is reported once. Real Redis, real servers, no mocks."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from innera.auth.passwords import HasherBusy, PasswordHasher
from innera.config import RedisSettings, load_settings
from innera.guards.login_attempts import LoginAttempts, TooManyAttempts, account_key
from innera.redis import Redis, run_redis
from tests.fixtures.accounts import new_email, signup
from tests.fixtures.redis import PrivateRedisServer
from tests.fixtures.server import RunningServer, start_server
from tests.test_http import assert_error

pytestmark = pytest.mark.timeout(60)

StartServer = Callable[..., PrivateRedisServer]


def retry_after(exc: TooManyAttempts) -> int:
    return int(exc.headers["Retry-After"])


async def end_backoff(redis: Redis, email: str, attempts: LoginAttempts | None = None) -> None:
    """As if the account's backoff had run out (its failures stay counted)."""
    key = attempts.key(email) if attempts is not None else account_key(email)
    await redis.client.hset(key, {"until": "0"})


# --- the mechanism: LoginAttempts against the test Redis ---


async def test_backoff_is_30_s_doubling_from_the_10th_failure_capped_at_15_min(
        redis: Redis) -> None:
    attempts = LoginAttempts(redis)
    assert [attempts.backoff_s(n) for n in range(1, 17)] == [0] * 9 + [
        30, 60, 120, 240, 480, 900, 900]
    assert attempts.backoff_s(10_000) == 900


async def test_ten_failures_back_off_and_a_success_resets(redis: Redis) -> None:
    attempts = LoginAttempts(redis)
    email = "victim@example.com"
    for _ in range(9):
        await attempts.admit(email)
        await attempts.failed(email)
    await attempts.admit(email)  # failures 1..9 only count
    await attempts.failed(email)  # the 10th
    with pytest.raises(TooManyAttempts) as caught:
        await attempts.admit(email)
    assert caught.value.status == 429 and caught.value.code == "too_many_attempts"
    assert 1 <= retry_after(caught.value) <= 30
    # one key per account, in the rl: family, named by a keyed hash of the normalised email
    key = "rl:login-failures:" + hmac.new(b"", email.encode(), hashlib.sha256).hexdigest()
    assert account_key("  Victim@Example.COM ") == key
    assert account_key(email, b"another secret") != key
    assert (await redis.client.hgetall(key))["n"] == "10"
    assert 900_000 < await redis.client.pttl(key) <= 930_000  # 15 min after the backoff
    with pytest.raises(TooManyAttempts):
        await attempts.admit(" VICTIM@example.com")  # the same account

    # The backoff runs out: one attempt is admitted, and it already holds the next backoff,
    # so guesses sent together cannot slip through together.
    await end_backoff(redis, email)
    await attempts.admit(email)
    with pytest.raises(TooManyAttempts) as caught:
        await attempts.admit(email)
    assert 30 < retry_after(caught.value) <= 60
    await attempts.failed(email)  # the 11th failure: 60 s
    with pytest.raises(TooManyAttempts) as caught:
        await attempts.admit(email)
    assert 30 < retry_after(caught.value) <= 60

    await end_backoff(redis, email)
    await attempts.admit(email)
    await attempts.succeeded(email)
    assert await redis.client.exists([key]) == 0
    await attempts.admit(email)
    await attempts.failed(email)  # counting starts over
    await attempts.admit(email)


async def test_retry_after_stops_growing_at_the_cap(redis: Redis) -> None:
    attempts = LoginAttempts(redis)
    email = new_email()
    for _ in range(30):
        await attempts.failed(email)
    with pytest.raises(TooManyAttempts) as caught:
        await attempts.admit(email)
    assert 890 <= retry_after(caught.value) <= 900
    assert await redis.client.pttl(account_key(email)) <= 1_800_000


async def test_accounts_are_throttled_independently(redis: Redis) -> None:
    attempts = LoginAttempts(redis)
    victim, other = new_email(), new_email()
    for _ in range(10):
        await attempts.failed(victim)
    with pytest.raises(TooManyAttempts):
        await attempts.admit(victim)
    await attempts.admit(other)


async def test_fails_open_when_redis_is_down(
    private_redis_server: StartServer, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="innera.guards.login_attempts")
    server = private_redis_server()
    errors: list[BaseException] = []
    redis = await nursery.start(run_redis, RedisSettings(url=server.url), errors.append)
    attempts = LoginAttempts(redis, timeout_s=0.5)
    email = new_email()
    for _ in range(10):
        await attempts.failed(email)
    with pytest.raises(TooManyAttempts):
        await attempts.admit(email)

    server.stop()
    for _ in range(5):
        await attempts.admit(email)  # admitted: the throttle must not take sign-in down
        await attempts.failed(email)
    await attempts.succeeded(email)
    assert len(errors) == 11  # every call counted (innera_redis_errors_total)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "innera.guards.login_attempts" and r.levelno == logging.WARNING]
    assert warnings == ["per-account login throttle disabled: Redis unavailable "
                        "(1 attempts passed unchecked since last warning)"]

    server.start()  # an empty Redis on the same port: no counter, no cached script (NOSCRIPT)
    with trio.fail_after(10):
        while not any("login throttle restored" in r.getMessage() for r in caplog.records):
            await attempts.failed(email)
            await trio.sleep(0.05)
    await attempts.admit(email)  # counting again, from zero
    assert (await redis.client.hgetall(account_key(email)))["n"] != "0"


# --- the argon2 queue ---


async def test_a_full_hasher_queue_refuses_at_once_and_the_queued_still_run() -> None:
    hasher = PasswordHasher(max_concurrency=1, max_waiting=2)
    stored = await hasher.hash("pw")
    slots = await every_slot_held(hasher)  # the one slot is busy
    results: list[object] = []

    async def verify(password: str) -> None:
        try:
            results.append(await hasher.verify(stored, password))
        except HasherBusy as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(verify, "pw")
        nursery.start_soon(verify, "wrong")
        await wait_for_queue(hasher, 2)
        with pytest.raises(HasherBusy) as caught:
            await hasher.verify(stored, "pw")
        assert caught.value.status == 503 and caught.value.code == "busy"
        assert caught.value.headers == {"Retry-After": "1"}
        with pytest.raises(HasherBusy):
            await hasher.burn()  # the unknown-email path goes through the same bound
        slots.release()
    assert sorted(map(repr, results)) == ["False", "True"]  # the queued ones ran


class HeldSlots:
    """Every hashing slot of a hasher, taken by the test (a borrower per slot) until
    :meth:`release` or the end of the ``with`` block: what a burst of slow hashes would do."""

    def __init__(self, hasher: PasswordHasher) -> None:
        self.limiter = hasher.limiter
        self.borrowers = [object() for _ in range(int(self.limiter.total_tokens))]

    def release(self) -> None:
        while self.borrowers:
            self.limiter.release_on_behalf_of(self.borrowers.pop())

    def __enter__(self) -> HeldSlots:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


async def every_slot_held(hasher: PasswordHasher) -> HeldSlots:
    slots = HeldSlots(hasher)
    for borrower in slots.borrowers:
        await slots.limiter.acquire_on_behalf_of(borrower)
    return slots


async def wait_for_queue(hasher: PasswordHasher, waiting: int) -> None:
    with trio.fail_after(15):
        while hasher.limiter.statistics().tasks_waiting < waiting:
            await trio.sleep(0.01)


# --- over HTTP ---


async def start(nursery: trio.Nursery, server_settings: dict[str, str], **extra: str
                ) -> RunningServer:
    return await start_server(nursery, load_settings({**server_settings, **extra}))


def login(client: httpx.AsyncClient, email: str, password: str, ip: str | None = None
          ) -> Any:
    headers = {"x-forwarded-for": ip} if ip else {}
    return client.post("/v1/auth/login", json={"email": email, "password": password},
                       headers=headers)


async def test_guessing_from_many_addresses_is_throttled_per_account(
    nursery: trio.Nursery, server_settings: dict[str, str]
) -> None:
    srv = await start(nursery, server_settings, TRUST_PROXY="1")
    async with srv.client:
        account = await signup(srv.client)
        unknown = new_email()
        for n, email in enumerate((account.email, unknown)):
            # 10 wrong passwords, each from another address: the per-IP limit never trips
            for i in range(10):
                r = await login(srv.client, email, f"guess {i}", f"198.51.{100 + n}.{i + 1}")
                assert_error(r, 401, "invalid_credentials")
                assert r.headers["ratelimit-remaining"] == "9"
        # Throttled, the right password does not help, and the attempt costs no hash: with
        # every hashing slot held, an attempt that reached argon2 would wait for one.
        with await every_slot_held(srv.services.passwords):
            for email, password in ((account.email, account.password), (unknown, "x")):
                r = await login(srv.client, email, password, "203.0.113.77")
                body = assert_error(r, 429, "too_many_attempts")
                assert 1 <= int(r.headers["retry-after"]) <= 30
                assert "retry in" in body["error"]["message"]

        # Once the backoff has run out, the owner signs in; that resets the count.
        await end_backoff(srv.services.redis, account.email, srv.services.login_attempts)
        r = await login(srv.client, account.email, account.password, "203.0.113.78")
        assert r.status_code == 200, r.text
        assert_error(await login(srv.client, account.email, "wrong", "203.0.113.79"),
                     401, "invalid_credentials")
    await srv.stop()


async def test_failed_reauths_count_against_the_account(
    nursery: trio.Nursery, server_settings: dict[str, str]
) -> None:
    srv = await start(nursery, server_settings, RATE_LIMIT_AUTH="100/min")
    async with srv.client:
        account = await signup(srv.client)
        for _ in range(9):
            r = await srv.client.post("/v1/auth/reauth", json={"password": "wrong!"},
                                      headers=account.auth)
            assert_error(r, 401, "invalid_credentials")
        assert_error(await login(srv.client, account.email, "wrong"), 401, "invalid_credentials")
        # 10 failures of reauth and sign-in together: both back off
        r = await srv.client.post("/v1/auth/reauth", json={"password": account.password},
                                  headers=account.auth)
        assert_error(r, 429, "too_many_attempts")
        assert 1 <= int(r.headers["retry-after"]) <= 30
        assert_error(await login(srv.client, account.email, account.password),
                     429, "too_many_attempts")
        await end_backoff(srv.services.redis, account.email, srv.services.login_attempts)
        r = await srv.client.post("/v1/auth/reauth", json={"password": account.password},
                                  headers=account.auth)
        assert r.status_code == 200, r.text
        assert await srv.services.redis.client.exists(
            [srv.services.login_attempts.key(account.email)]) == 0
    await srv.stop()


async def test_a_full_argon2_queue_answers_503_busy_and_the_queued_sign_ins_proceed(
    nursery: trio.Nursery, server_settings: dict[str, str]
) -> None:
    srv = await start(nursery, server_settings, RATE_LIMIT_AUTH="100/min")
    async with srv.client:
        passwords = srv.services.passwords
        accounts = [await signup(srv.client) for _ in range(passwords.max_waiting)]
        slots = await every_slot_held(passwords)
        statuses: dict[str, int] = {}

        async def queued(i: int) -> None:
            account = accounts[i]
            password = account.password if i % 2 == 0 else "wrong password"
            r = await login(srv.client, account.email, password)
            statuses[account.email] = r.status_code

        with slots:
            async with trio.open_nursery() as requests:
                for i in range(len(accounts)):
                    requests.start_soon(queued, i)
                await wait_for_queue(passwords, passwords.max_waiting)
                # the queue is full: more sign-ins answer at once instead of waiting
                for email, password in ((accounts[0].email, accounts[0].password),
                                        (new_email(), "unknown account")):
                    r = await login(srv.client, email, password)
                    assert_error(r, 503, "busy")
                    assert r.headers["retry-after"] == "1"
                r = await srv.client.post("/v1/auth/signup",
                                          json={"email": new_email(), "password": "long enough"})
                assert_error(r, 503, "busy")
                slots.release()  # the queued sign-ins get their turn
        assert statuses == {a.email: 200 if i % 2 == 0 else 401 for i, a in enumerate(accounts)}
        assert passwords.limiter.statistics().tasks_waiting == 0
    await srv.stop()


async def test_ipv6_clients_of_one_64_share_a_rate_limit(
    nursery: trio.Nursery, server_settings: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start(nursery, server_settings, TRUST_PROXY="1")
    async with srv.client:
        remaining = []
        for ip in ("2001:db8:1:2::a", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:3::1",
                   "::ffff:198.51.100.7", "198.51.100.7"):
            r = await login(srv.client, new_email(), "whatever", ip)
            assert r.status_code == 401
            remaining.append(r.headers["ratelimit-remaining"])
        assert remaining == ["9", "8", "9", "9", "8"]
        client = srv.services.redis.client
        keys = sorted([k async for k in client.scan_iter(match="rl:/v1/auth/login:*")])
        assert keys == ["rl:/v1/auth/login:198.51.100.7", "rl:/v1/auth/login:2001:db8:1:2::/64",
                        "rl:/v1/auth/login:2001:db8:1:3::/64"]
    await srv.stop()
    # behind a trusted proxy the header is expected: no warning
    assert not [r for r in caplog.records if r.name == "innera.guards.client_ip"]


async def test_forwarded_for_without_trust_proxy_is_reported_once(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    await server.client.get("/openapi.json")
    assert not [r for r in caplog.records if r.name == "innera.guards.client_ip"]
    for ip in ("203.0.113.9", "203.0.113.10"):
        r = await login(server.client, new_email(), "whatever", ip)
        assert r.status_code == 401
    await server.client.get("/openapi.json", headers={"x-forwarded-for": "203.0.113.11"})
    warnings = [r for r in caplog.records if r.name == "innera.guards.client_ip"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "X-Forwarded-For" in message and "TRUST_PROXY" in message and "ignored" in message
    # and the header was indeed ignored: the peer's address was counted
    keys = [k async for k in server.services.redis.client.scan_iter(match="rl:/*")]
    assert keys == ["rl:/v1/auth/login:127.0.0.1"]
