"""Password hashing: argon2id on worker threads, bounded concurrency, constant-ish timing."""

from __future__ import annotations

import argon2
import pytest
import trio

from innera.auth.passwords import MEMORY_COST_KIB, PARALLELISM, TIME_COST, PasswordHasher
from innera.errors import ServiceUnavailable

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher()


async def test_hash_and_verify(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse")
    assert encoded.startswith(
        f"$argon2id$v=19$m={MEMORY_COST_KIB},t={TIME_COST},p={PARALLELISM}$")
    assert "correct horse" not in encoded
    assert await hasher.verify(encoded, "correct horse") is True
    assert await hasher.verify(encoded, "correct horsE") is False
    assert await hasher.verify(encoded, "") is False
    assert await hasher.hash("correct horse") != encoded  # salted


async def test_verify_is_false_for_invalid_hashes(hasher: PasswordHasher) -> None:
    for stored in ("", "nonsense", "$argon2id$v=19$m=65536,t=2,p=1$broken",
                   "$2b$12$C6UzMDM.H6dfI/f/IKcEeO5kQ9W2dP8mO0QqoYJxB1v6VJQ8jv6u2"):
        assert await hasher.verify(stored, "pw") is False


async def test_needs_rehash(hasher: PasswordHasher) -> None:
    assert hasher.needs_rehash(await hasher.hash("pw")) is False
    weaker = argon2.PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    old = weaker.hash("pw")
    assert hasher.needs_rehash(old) is True
    assert await hasher.verify(old, "pw") is True  # old hashes still verify
    assert hasher.needs_rehash("not a hash") is True


async def test_hashing_runs_off_the_event_loop(hasher: PasswordHasher) -> None:
    """A task keeps running on the loop while 4 hashes run, and at most max_concurrency (2)
    hashing threads run at once. Observed, not timed: the ticker runs while both hashing
    threads are busy, which a hash on the event loop would not allow."""
    ticks_while_hashing = 0
    most_borrowed = 0
    done = trio.Event()

    async def ticker() -> None:
        nonlocal most_borrowed, ticks_while_hashing
        while not done.is_set():
            await trio.sleep(0.005)
            borrowed = hasher.limiter.borrowed_tokens
            most_borrowed = max(most_borrowed, borrowed)
            ticks_while_hashing += borrowed > 0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with trio.open_nursery() as work:
            for i in range(4):
                work.start_soon(hasher.hash, f"password {i}")
        done.set()

    assert most_borrowed == 2
    assert ticks_while_hashing >= 4  # at least one tick per hash in flight
    assert hasher.limiter.borrowed_tokens == 0
    assert hasher.passes == 4


async def test_waiting_for_a_hashing_slot_is_bounded() -> None:
    hasher = PasswordHasher(max_concurrency=1, queue_timeout_s=0.02)
    encoded = await hasher.hash("pw")
    results: list[object] = []

    async def verify() -> None:
        try:
            results.append(await hasher.verify(encoded, "pw"))
        except ServiceUnavailable as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(verify)
    # The one that got the slot finishes although its deadline passed mid-hash.
    assert results.count(True) == 1
    assert sum(isinstance(r, ServiceUnavailable) for r in results) == 2


async def test_unknown_email_and_wrong_password_cost_the_same_work(
    hasher: PasswordHasher,
) -> None:
    """burn() runs one argon2 pass with the parameters of a real hash, as verifying a wrong
    password does: the same work, so the same time (counted, not timed)."""
    stored = await hasher.hash("the real password")
    for _ in range(3):
        before = hasher.passes
        assert await hasher.verify(stored, "a wrong guess") is False
        wrong_password = hasher.passes - before
        before = hasher.passes
        await hasher.burn()  # the first call makes the dummy hash: one pass as well
        assert wrong_password == hasher.passes - before == 1
    assert hasher._dummy_hash is not None and not hasher.needs_rehash(hasher._dummy_hash)
