"""Cost of innera's password hashing (argon2id parameters of innera.auth.passwords).

    .venv/bin/python bench/password_hashing.py [--rounds 8]

Prints the time of one hash and one verification on a single thread, then the throughput of
``--rounds`` concurrent verifications through :class:`PasswordHasher` with its limiter at 1
and at 2 threads, and the longest event-loop stall seen meanwhile (should stay ~0).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for innera

import argparse
import os
import statistics
import time

import trio

from innera.auth.passwords import (
    MEMORY_COST_KIB,
    PARALLELISM,
    TIME_COST,
    PasswordHasher,
)

PASSWORD = "correct horse battery staple"


def single_thread(hasher: PasswordHasher, rounds: int) -> tuple[float, float]:
    sync = hasher._argon2  # the same argon2-cffi hasher, called directly
    sync.hash(PASSWORD)  # warm-up
    hashes, verifies = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        encoded = sync.hash(PASSWORD)
        hashes.append(time.perf_counter() - t)
        t = time.perf_counter()
        sync.verify(encoded, PASSWORD)
        verifies.append(time.perf_counter() - t)
    return statistics.median(hashes) * 1000, statistics.median(verifies) * 1000


async def concurrent(threads: int, rounds: int, encoded: str) -> tuple[float, float]:
    """``rounds`` verifications started at once; (verifications/s, worst loop stall ms)."""
    # every call queued (the server's default bound, 2 × threads waiting, would refuse the
    # rest with HasherBusy: that is the flood guard, not the throughput measured here)
    hasher = PasswordHasher(max_concurrency=threads, max_waiting=rounds)
    worst_stall = 0.0
    done = trio.Event()

    async def ticker() -> None:
        nonlocal worst_stall
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(0.005)
            now = time.perf_counter()
            worst_stall = max(worst_stall, now - last - 0.005)
            last = now

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with trio.open_nursery() as work:
            for _ in range(rounds):
                work.start_soon(hasher.verify, encoded, PASSWORD)
        elapsed = time.perf_counter() - start
        done.set()
    return rounds / elapsed, worst_stall * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    hasher = PasswordHasher()
    print(f"argon2id t={TIME_COST} m={MEMORY_COST_KIB // 1024} MiB p={PARALLELISM}; "
          f"{os.cpu_count()} CPUs")
    hash_ms, verify_ms = single_thread(hasher, args.rounds)
    print(f"single thread: hash {hash_ms:.1f} ms, verify {verify_ms:.1f} ms (median of "
          f"{args.rounds})")
    encoded = hasher._argon2.hash(PASSWORD)
    for threads in (1, 2):
        rate, stall = trio.run(concurrent, threads, args.rounds, encoded)
        print(f"limiter={threads}: {rate:.1f} verifications/s "
              f"({1000 / rate:.1f} ms each on average); worst event-loop stall {stall:.1f} ms")


if __name__ == "__main__":
    main()
