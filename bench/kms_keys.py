"""Data keys wrapped by AWS KMS (moto's server in process) against the local provider.

    .venv/bin/python bench/kms_keys.py [--admin-url URL] [--users 1000] [--calls 200]
                                       [--rtt-ms 5]

Starts moto's server (a process of its own) on a loopback port, creates a KMS key, a
throw-away database (migrated) with ``--users`` users whose data keys are wrapped by a local
key, then prints:

- one unwrap (``KeyProvider.unwrap``) with the local provider and with KMS (``Decrypt`` in a
  worker thread): median and p99 of ``--calls`` sequential calls; and 64 concurrent unwraps
  through the KMS provider's thread limiter (unwraps/s);
- ``DataKeys.get`` on a cached key (the path of nearly every request);
- a rotation from the local key to KMS (``rewrap_all``: a Decrypt-free local unwrap and a
  KMS ``Encrypt`` per key) with the rows of a batch re-wrapped one at a time and
  ``REWRAP_CONCURRENCY`` at a time (rows/s), and back to local (a KMS ``Decrypt`` per key);
  meanwhile a ticker records the longest event-loop stall.

moto answers from the same machine in a few milliseconds of its own CPU; ``--rtt-ms`` (5 by
default) holds every request for a network round trip as to AWS KMS in the same region, which
is what concurrency overlaps (moto's CPU it cannot: on a small machine moto is the ceiling of
the concurrent figures). The database is dropped at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for innera

import argparse
import os
import socket
import statistics
import subprocess
import time
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import trio
from psycopg import sql

from innera import key_rotation
from innera.crypto.data_keys import DataKeys, dek_context
from innera.crypto.keyring import KeyProviders, Keyring, LocalKeyProvider, parse_keyring
from innera.crypto.kms import open_kms_provider
from innera.db.connection import TrioConnection
from innera.db.migrate import migrate
from innera.db.pool import Pool
from innera.observability.metrics import Metrics

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def url_for_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(dbname)))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def timed_calls(calls: int, fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


class Ticker:
    """The longest gap between 1 ms sleeps: how long the event loop was held."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await trio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - t - 0.001)


async def delaying_proxy(target_port: int, rtt_s: float, *,
                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A TCP proxy to moto that holds each request chunk for ``rtt_s`` (a network round
    trip, as to AWS KMS in the region); the port it listens on."""

    async def pump(src: trio.SocketStream, dst: trio.SocketStream, delay: float) -> None:
        try:
            while data := await src.receive_some(65536):
                await trio.sleep(delay)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handle(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", target_port) as upstream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream, rtt_s)
                nursery.start_soon(pump, upstream, client, 0.0)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def bench(args: argparse.Namespace, database_url: str, endpoint: str) -> None:
    import boto3

    os.environ.update({"AWS_ENDPOINT_URL_KMS": endpoint, "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
    arn = (await trio.to_thread.run_sync(  # off the loop: the delaying proxy runs on it
        lambda: boto3.session.Session().client("kms").create_key()))["KeyMetadata"]["Arn"]
    metrics = Metrics()
    local = LocalKeyProvider(Keyring(parse_keyring("1:" + "A" * 43 + "=")))
    kms = await open_kms_provider({2: arn}, metrics)
    both = KeyProviders([local, kms])
    context = dek_context(str(uuid.uuid4()))
    _, local_wrapped = await local.wrap(os.urandom(32), context)
    _, kms_wrapped = await kms.wrap(os.urandom(32), context)

    print(f"one unwrap, {args.calls} sequential calls (median / p99):")
    med, p99 = await timed_calls(args.calls, lambda: local.unwrap(1, local_wrapped, context))
    print(f"  local provider        {ms(med)} / {ms(p99)}")
    med, p99 = await timed_calls(args.calls, lambda: kms.unwrap(2, kms_wrapped, context))
    print(f"  AWS KMS (moto)        {ms(med)} / {ms(p99)}")
    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(64 * 4):
            nursery.start_soon(kms.unwrap, 2, kms_wrapped, context)
    print(f"  AWS KMS, 64 at a time through the limiter ({kms.limiter.total_tokens:g} "
          f"threads): {256 / (time.perf_counter() - t):.0f} unwraps/s")

    async with trio.open_nursery() as nursery:
        pool = Pool(database_url, min_size=2, max_size=10, acquire_timeout_s=10)
        await nursery.start(pool.run)
        await migrate(pool)
        keys = DataKeys(pool, local, metrics)
        user_ids = [str(uuid.uuid4()) for _ in range(args.users)]
        async with pool.connection() as conn, conn.transaction():
            for user_id in user_ids:
                await conn.execute("INSERT INTO users (id, email, password_hash) VALUES "
                                   "(%s, %s, 'x')", (user_id, f"{user_id}@example.com"))
                await keys.create(conn, user_id)
        cached = DataKeys(pool, both, metrics)
        await cached.get(user_ids[0])
        med, _ = await timed_calls(10_000, lambda: cached.get(user_ids[0]))
        print(f"DataKeys.get, cached: {med * 1e6:.2f} µs")

        print(f"rotation of {args.users} data keys (rewrap_all, batches of "
              f"{key_rotation.BATCH_SIZE}):")
        for concurrency in (1, key_rotation.REWRAP_CONCURRENCY):
            for to_version, what in ((2, "local → KMS (Encrypt)"),
                                     (3, "KMS → local (Decrypt)")):
                providers = both if to_version == 2 else KeyProviders([
                    kms, LocalKeyProvider(Keyring({3: os.urandom(32)}))])
                key_rotation.REWRAP_CONCURRENCY = concurrency
                ticker = Ticker()
                async with trio.open_nursery() as ticking:
                    ticking.start_soon(ticker.run)
                    t = time.perf_counter()
                    state = await key_rotation.rewrap_all(pool, providers, to_version)
                    elapsed = time.perf_counter() - t
                    ticking.cancel_scope.cancel()
                assert state.rewrapped == args.users and not state.failed, state
                print(f"  {what}, {concurrency} at a time: {args.users / elapsed:.0f} rows/s "
                      f"({elapsed:.2f} s; longest loop stall {ms(ticker.worst)})")
                if to_version == 3:  # back to version 1 for the next round, locally
                    async with pool.connection() as conn:
                        await conn.execute("DELETE FROM user_keys")
                    async with pool.connection() as conn, conn.transaction():
                        for user_id in user_ids:
                            await keys.create(conn, user_id)
        nursery.cancel_scope.cancel()


def start_moto() -> tuple[subprocess.Popen[bytes], int]:
    """moto's server in a process of its own (in this one it would hold the GIL, and the
    event loop, while it serves), on a free port; waits until it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto's server did not start")


async def main(args: argparse.Namespace) -> None:
    server, port = start_moto()
    host = "127.0.0.1"
    dbname = f"innera_bench_kms_{os.getpid()}"
    ident = sql.Identifier(dbname)
    with trio.fail_after(30):
        async with await TrioConnection.connect(args.admin_url, autocommit=True) as admin:
            await admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        async with trio.open_nursery() as nursery:
            if args.rtt_ms:
                port = await nursery.start(delaying_proxy, port, args.rtt_ms / 1000)
            print(f"AWS KMS: moto, {args.rtt_ms:g} ms added per request")
            await bench(args, url_for_database(args.admin_url, dbname), f"http://{host}:{port}")
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(30):
            async with await TrioConnection.connect(args.admin_url, autocommit=True) as admin:
                await admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        server.terminate()
        server.wait(10)
        print(f"dropped {dbname}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default=os.environ.get("INNERA_TEST_DATABASE_URL",
                                                              DEFAULT_ADMIN_URL))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rtt-ms", type=float, default=5.0,
                        help="network round trip added to every KMS request (0: none)")
    trio.run(main, parser.parse_args())
