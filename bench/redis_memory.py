"""Redis memory per key family, in bytes per key, with the keys innera itself writes: for the
capacity plan (docs/capacity.md).

    .venv/bin/python bench/redis_memory.py [--users 200] [--refreshes 4] [--creates 2]
                                           [--jobs 2000] [--hll 1000000]

A private ``redis-server`` (free port, no persistence: its memory is this run's alone) and a
fresh database on the local PostgreSQL. ``innera serve`` (this checkout, job workers off so
queued jobs stay queued) is driven over HTTP the way clients drive it, ``--users`` times
(three at a time: sign-ups queue behind argon2):

- sign up (a session: refresh-token family 1), sign in from a second device (family 2),
  rotate family 1's refresh token ``--refreshes`` times (each rotation keeps the consumed
  token until its own expiry: reuse detection), create ``--creates`` entries of ~1 KB with an
  ``Idempotency-Key`` (the response is kept 24 h), read the unread count (cached 5 min), read
  the entry list and an entry (rate-limit counters per route and user);
- for one user in ten: a re-auth token, and a wrong password (the sign-in failure counter).

The server is stopped, then in this process, through innera's own code on the same Redis:
``--jobs`` push jobs (a notification's fan-out job) and as many device jobs enqueued on the
push queue, half of each then claimed and completed (completed jobs are kept, at most 1,000
per queue, 24 h); the "sent" record of ``--jobs`` pushed notifications (``push:sent:<id>``,
7 days, one field per device that received it: here 1).

Each key is put in its family by its pattern (the patterns of innera/; an unknown key is
reported as such) and measured twice: ``MEMORY USAGE key SAMPLES 0`` (what Redis attributes
to the key, value and dict entry), and the drop of ``used_memory`` when the family is deleted
(everything, expiry entries and allocator rounding included; the figure to plan with). The
queue is one set of keys for every job, so it is reported per job.

HyperLogLogs (active users per day; no such key exists in innera yet, another issue adds
``innera_active_users`` with one PFADD HyperLogLog per day): measured directly in Redis, a key
PFADDed with random user ids (UUIDs, 1,000 per command) up to ``--hll`` distinct ones, with
``MEMORY USAGE`` and ``PFCOUNT`` at each power of ten on the way.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import database, machine_facts, server_env, start_server, stop_server  # noqa: E402,I001
from bench.mixed_load import private_redis  # noqa: E402
from bench.search_scan import make_body  # noqa: E402
from innera.config import load_settings  # noqa: E402
from innera.notifications.push_jobs import PUSH_JOBS  # noqa: E402
from innera.process import open_services  # noqa: E402
from innera.queue.jobs import JobQueue, keys as queue_keys  # noqa: E402
from innera.services import Lifecycle  # noqa: E402
from tests.fixtures.redis import RespConnection  # noqa: E402
from workers.push import _MARK_SENT, SENT_TTL_S, device_job_id, sent_key  # noqa: E402

PASSWORD = "correct horse battery staple"
#: (family, key pattern, what it is, its lifetime in innera): the patterns of innera/
FAMILIES = (
    ("rt (live)", r"rt:[0-9a-f]{64}", "refresh token record, unconsumed",
     "30 d (REFRESH_TOKEN_TTL_S)"),
    ("rt (consumed)", r"rt:[0-9a-f]{64}", "refresh token record, rotated: kept for reuse "
     "detection", "rest of its 30 d"),
    ("rt:family", r"rt:family:[0-9a-f-]{36}", "refresh token family index (sorted set)",
     "30 d, renewed"),
    ("rt:user", r"rt:user:[0-9a-f-]{36}", "a user's families (sorted set)", "30 d, renewed"),
    ("rl", r"rl:(?!login-failures:).+", "rate-limit counter, per route and user (or IP)",
     "the window (1 min)"),
    ("rl:login-failures", r"rl:login-failures:[0-9a-f]{64}", "sign-in failure counter (hash)",
     "15 min + backoff"),
    ("idempotency", r"idempotency:[^:]+:(?!.*:lock$).+", "stored response of a write",
     "24 h"),
    ("notif:unread", r"notif:unread:[0-9a-f-]{36}", "cached unread count (hash)", "5 min"),
    ("reauth", r"reauth:[0-9a-f]{64}", "re-auth token", "300 s"),
    ("push:sent", r"push:sent:[0-9a-f-]{36}", "devices a notification was pushed to (hash)",
     "7 d"),
    ("queue", r"\{q:[^}]+\}:.+", "job queue keys (per job below)", "until done; 1,000 "
     "completed for 24 h, 10,000 failed for 7 d"),
)


def family_of(key: str, value_is_consumed: bool) -> str:
    for name, pattern, _, _ in FAMILIES:
        if re.fullmatch(pattern, key):
            if name == "rt (live)" and value_is_consumed:
                continue
            return name
    return "other: " + key.split(":", 1)[0]


# --- driving the server -----------------------------------------------------------------------


async def drive_user(client: httpx.AsyncClient, n: int, args: argparse.Namespace,
                     rng: random.Random) -> None:
    email = f"memory-{n}-{uuid.uuid4().hex[:6]}@example.com"
    first = await call(client, "POST", "/v1/auth/signup",
                       json={"email": email, "password": PASSWORD},
                       headers={"User-Agent": "Innera iOS/1.0"})
    await call(client, "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD},
               headers={"User-Agent": "Innera Android/1.0"})
    refresh = first["refreshToken"]
    for _ in range(args.refreshes):
        refresh = (await call(client, "POST", "/v1/auth/refresh",
                              json={"refreshToken": refresh}))["refreshToken"]
    auth = {"Authorization": f"Bearer {first['accessToken']}"}
    entry = None
    for _ in range(args.creates):
        entry = await call(client, "POST", "/v1/entries", headers={
            **auth, "Idempotency-Key": str(uuid.uuid4())}, json={
            "title": "A day", "body": make_body(rng, False), "tags": ["memory"],
            "mood": "calm"})
    await call(client, "GET", "/v1/notifications/unread-count", headers=auth)
    await call(client, "GET", "/v1/entries?limit=20", headers=auth)
    if entry is not None:
        await call(client, "GET", f"/v1/entries/{entry['id']}", headers=auth)
    if n % 10 == 0:
        await call(client, "POST", "/v1/auth/reauth", headers=auth, json={"password": PASSWORD})
        await call(client, "POST", "/v1/auth/login", expect=401,
                   json={"email": email, "password": "not the password"})


async def call(client: httpx.AsyncClient, method: str, path: str, *, expect: int | None = None,
               **kwargs: Any) -> Any:
    """One request; retried after ``Retry-After`` on 503 ``busy`` (the argon2 queue)."""
    for _ in range(50):
        response = await client.request(method, path, **kwargs)
        if response.status_code == 503 and response.json()["error"]["code"] == "busy":
            await trio.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        if expect is not None:
            if response.status_code != expect:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            return None
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None
    raise RuntimeError(f"{method} {path}: busy 50 times")


async def drive(port: int, args: argparse.Namespace) -> None:
    rng = random.Random(3)
    limiter = trio.CapacityLimiter(3)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        async def one(n: int) -> None:
            async with limiter:
                await drive_user(client, n, args, rng)

        async with trio.open_nursery() as nursery:
            for n in range(args.users):
                nursery.start_soon(one, n)


# --- jobs and push records, in process --------------------------------------------------------


async def queue_and_push(env: dict[str, str], args: argparse.Namespace,
                         redis: RespConnection) -> list[tuple[str, int, float]]:
    """Push jobs through innera's queue: (stage, jobs, used_memory delta per job)."""
    out = []
    async with AsyncExitStack() as stack:
        svc = await open_services(stack, load_settings(env), Lifecycle())
        queue = JobQueue(svc.redis, PUSH_JOBS.name, attempts=PUSH_JOBS.attempts)
        before = used_memory(redis)
        notifications = [str(uuid.uuid4()) for _ in range(args.jobs)]
        for notification_id in notifications:
            await queue.enqueue({"notification_id": notification_id},
                                job_id=f"push:{notification_id}")
        after = used_memory(redis)
        out.append(("fan-out job waiting", args.jobs, (after - before) / args.jobs))
        before = after
        for notification_id in notifications:
            device_id = str(uuid.uuid4())
            await queue.enqueue({"notification_id": notification_id, "device_id": device_id},
                                job_id=device_job_id(notification_id, device_id))
        after = used_memory(redis)
        out.append(("device job waiting", args.jobs, (after - before) / args.jobs))
        half = args.jobs // 2
        claimed = []
        while len(claimed) < half:
            claimed += await queue.claim(min(100, half - len(claimed)))
        before = used_memory(redis)
        for job in claimed:
            await queue.complete(job)
        after = used_memory(redis)
        # a completed job keeps its meta; its payload goes: the change is per completed job
        out.append(("waiting → completed (change)", half, (after - before) / half))
        mark = svc.redis.client.register_script(_MARK_SENT)
        before = used_memory(redis)
        for notification_id in notifications:
            await mark(keys=[sent_key(notification_id)], args=[str(uuid.uuid4()), SENT_TTL_S])
        after = used_memory(redis)
        out.append(("push:sent record, 1 device", args.jobs, (after - before) / args.jobs))
    return out


# --- measuring --------------------------------------------------------------------------------


def used_memory(redis: RespConnection) -> int:
    info = redis.call("INFO", "memory")
    return int(re.search(r"^used_memory:(\d+)", info, re.MULTILINE).group(1))  # type: ignore[union-attr]


def all_keys(redis: RespConnection) -> list[str]:
    keys: list[str] = []
    cursor = "0"
    while True:
        cursor, batch = redis.call("SCAN", cursor, "COUNT", 1000)
        keys += batch
        if cursor == "0":
            return keys


def measure_families(redis: RespConnection) -> dict[str, dict[str, Any]]:
    """Per family: keys, MEMORY USAGE of each, and the used_memory drop when all are deleted."""
    families: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key in all_keys(redis):
        consumed = False
        if key.startswith("rt:") and redis.call("TYPE", key) == "string":
            consumed = bool(json.loads(redis.call("GET", key)).get("consumed"))
        families[family_of(key, consumed)].append(
            (key, int(redis.call("MEMORY", "USAGE", key, "SAMPLES", "0"))))
    result = {}
    for name, keys in families.items():
        if name == "queue":
            continue  # measured per job, and deleted with the rest
        before = used_memory(redis)
        for i in range(0, len(keys), 500):
            redis.call("DEL", *[k for k, _ in keys[i:i + 500]])
        sizes = sorted(size for _, size in keys)
        result[name] = {"keys": len(keys), "usage": sizes,
                        "freed": (before - used_memory(redis)) / len(keys)}
    return result


def measure_hll(redis: RespConnection, most: int) -> list[tuple[int, int, int]]:
    """(distinct ids added, MEMORY USAGE, PFCOUNT) at each power of ten up to ``most``."""
    key = "bench:active-users:2026-12-05"
    redis.call("DEL", key)
    out, added, mark = [], 0, 10
    while added < most:
        batch = min(1000, most - added, mark - added)
        redis.call("PFADD", key, *[str(uuid.uuid4()) for _ in range(batch)])
        added += batch
        if added == mark or added == most:
            out.append((added, int(redis.call("MEMORY", "USAGE", key, "SAMPLES", "0")),
                        int(redis.call("PFCOUNT", key))))
            mark *= 10
    redis.call("DEL", key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--refreshes", type=int, default=4,
                        help="rotations of each user's first refresh-token family")
    parser.add_argument("--creates", type=int, default=2,
                        help="entries created with an Idempotency-Key per user")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--hll", type=int, default=1_000_000,
                        help="distinct ids PFADDed to the HyperLogLog")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(*machine_facts()[:2], sep="\n")
    with tempfile.TemporaryDirectory(prefix="innera-redis-memory-") as tmp, \
            database() as database_url, \
            private_redis(Path(tmp) / "redis", "--appendonly", "no") as (redis_url, _):
        host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        with RespConnection(host, int(port), timeout_s=30) as redis:
            version = re.search(r"redis_version:(\S+)", redis.call("INFO", "server"))
            print(f"private redis-server {version.group(1) if version else '?'}, "  # type: ignore[union-attr]
                  f"no persistence; empty: used_memory {used_memory(redis):,} bytes")
            env = server_env(database_url, redis_url, Path(tmp) / "data")
            env["INNERA_WORKERS"] = "0"
            started = start_server({**env, "INNERA_HTTP_SERVER": "fast", "LOG_LEVEL": "warn"},
                                   Path(tmp) / "server.log")
            if started is None:
                raise SystemExit("the server did not start")
            proc, server_port = started
            t0 = time.perf_counter()
            try:
                trio.run(drive, server_port, args)
            finally:
                stop_server(proc)
            print(f"drove {args.users} users in {time.perf_counter() - t0:.1f} s "
                  f"({args.refreshes} rotations of family 1, a second family, {args.creates} "
                  "creates with Idempotency-Key, unread count, list, read; re-auth and one "
                  "wrong password for one user in ten)")
            jobs = trio.run(queue_and_push, env, args, redis)
            families = measure_families(redis)
            queue_left = [k for k in all_keys(redis) if k.startswith("{q:")]
            print(f"\n{'family':<20}{'keys':>7}{'MEMORY USAGE bytes/key':>24}"
                  f"{'used_memory freed':>19}  lifetime · what")
            print(f"{'':<20}{'':>7}{'mean (min–max)':>24}{'bytes/key':>19}")
            described = {name: (what, ttl) for name, _, what, ttl in FAMILIES}
            for name in sorted(families, key=lambda n: list(described).index(n)
                               if n in described else 99):
                f = families[name]
                usage = f["usage"]
                what, ttl = described.get(name, ("not a known innera key", "?"))
                spread = f"{sum(usage) / len(usage):,.0f} ({usage[0]:,}–{usage[-1]:,})"
                print(f"{name:<20}{f['keys']:>7,}{spread:>24}{f['freed']:>19,.0f}  "
                      f"{ttl} · {what}")
            print(f"\npush jobs on the queue {PUSH_JOBS.name!r} (keys "
                  f"{', '.join(sorted(queue_keys(PUSH_JOBS.name).values()))}; "
                  f"{len(queue_left)} exist now), and push:sent: used_memory per job")
            for stage, n, per_job in jobs:
                print(f"  {stage:<32}{n:>7,} jobs {per_job:>9,.0f} bytes/job")
            print(f"\nHyperLogLog (measured directly: PFADD of random UUIDs, {1000} per "
                  "command; no innera key yet)")
            print(f"{'distinct ids':>14}{'MEMORY USAGE bytes':>20}{'PFCOUNT':>12}{'error':>8}")
            for added, usage, count in measure_hll(redis, args.hll):
                print(f"{added:>14,}{usage:>20,}{count:>12,}{(count - added) / added:>8.2%}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (cleaned up)")
