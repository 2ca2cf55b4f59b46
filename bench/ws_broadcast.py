"""WebSockets on one ``innera serve`` process: memory per idle connection and the latency of
one broadcast event to every socket.

    .venv/bin/python bench/ws_broadcast.py [--clients 2000] [--rounds 5]

The server is a subprocess (the local PostgreSQL on a fresh database, the local Redis DB 15);
the clients all run in this process (wsproto over Trio, ``tests/fixtures/ws.py``) as sockets
of one user. Memory = (server RSS with N idle sockets − RSS with 10 warm-up sockets) / N.
Broadcast = a raw ``PUBLISH ws:user:{id}`` → the last of the N clients has the event (median
of the rounds). The clients' own receiving, on one core, is included, so the server's CPU
time in that window is printed too; the clients read the event's frame off their sockets
without a WebSocket library (``next_text``). On two or more CPUs the server runs on CPU 0,
the clients on CPU 1.
Prototype figures to beat: 38 KiB per connection, ~450 ms for 2,000 clients.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.ws import WsClient  # noqa: E402

ADMIN = os.environ.get("INNERA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("INNERA_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(channel: str, message: str) -> None:
    host, port = REDIS_BASE.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        parts = [b"PUBLISH", channel.encode(), message.encode()]
        s.sendall(b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        s.recv(64)


async def next_text(client: WsClient, leftover: dict[WsClient, bytes]) -> str:
    """The next text message, read off the socket with no WebSocket library: server frames
    are unmasked and the server sends each event as one frame, so a header and a length
    are all there is to parse. (wsproto's event machinery cost the 2,000 clients, all on one
    core, more than the server's whole broadcast.)"""
    buf = leftover.pop(client, b"")
    while True:
        if len(buf) >= 2:
            size, start = buf[1] & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) >= start + size:
                if buf[0] != 0x81:  # FIN + text
                    raise AssertionError(f"unexpected frame {buf[:2]!r}")
                if len(buf) > start + size:
                    leftover[client] = buf[start + size:]
                return buf[start:start + size].decode()
        data = await client.stream.receive_some(65536)
        if not data:
            raise AssertionError("the server closed the socket")
        buf += data


async def bench(port: int, pid: int, token: str, user_id: str, n: int, rounds: int) -> None:
    path = f"/v1/ws?access_token={token}"
    limit = trio.CapacityLimiter(100)

    async def open_one(out: list[WsClient]) -> None:
        async with limit:
            out.append(await WsClient.connect("127.0.0.1", port, path))

    warm: list[WsClient] = []
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(open_one, warm)
    await trio.sleep(1)
    before = rss_kib(pid)
    clients: list[WsClient] = []
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(open_one, clients)
    connect_s = time.perf_counter() - t0
    await trio.sleep(2)
    after = rss_kib(pid)
    print(f"{n} sockets opened in {connect_s:.2f} s; server RSS {before / 1024:.1f} MiB → "
          f"{after / 1024:.1f} MiB: {(after - before) / n:.1f} KiB per idle connection")

    everyone = clients + warm
    # the load generator's own full collections (2,000 wsproto connections) would land in
    # the measured window: keep the set-up out of the collector, as a real client would
    gc.collect()
    gc.freeze()
    latencies, server_cpu = [], []
    leftover: dict[WsClient, bytes] = {}
    for r in range(rounds):
        done = trio.Event()
        remaining = [len(everyone)]
        last = [0.0]

        async def wait_one(client: WsClient, r: int = r, remaining: list[int] = remaining,
                           last: list[float] = last, done: trio.Event = done) -> None:
            message = json.loads(await next_text(client, leftover))
            assert message["data"]["round"] == r, message
            remaining[0] -= 1
            if remaining[0] == 0:
                last[0] = time.perf_counter()
                done.set()

        async with trio.open_nursery() as nursery:
            for client in everyone:
                nursery.start_soon(wait_one, client)
            await trio.sleep(0.5)
            t0, cpu0 = time.perf_counter(), cpu_s(pid)
            await trio.to_thread.run_sync(
                publish, f"ws:user:{user_id}",
                json.dumps({"type": "job.progress", "data": {"round": r}}))
            with trio.fail_after(30):
                await done.wait()
            server_cpu.append(cpu_s(pid) - cpu0)
        latencies.append(last[0] - t0)
        print(f"round {r}: all {len(everyone)} clients had the event after "
              f"{latencies[-1] * 1000:.0f} ms (server CPU meanwhile "
              f"{server_cpu[-1] * 1000:.0f} ms)")
    print(f"broadcast to {len(everyone)} sockets: median {statistics.median(latencies) * 1000:.0f}"
          f" ms (min {min(latencies) * 1000:.0f}, max {max(latencies) * 1000:.0f}); server CPU"
          f" meanwhile: median {statistics.median(server_cpu) * 1000:.0f} ms")
    for client in everyone:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    name = f"innera_ws_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    data_dir = Path(tempfile.mkdtemp(prefix="innera-ws-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_ENV",)}
    env.update(INNERA_ENV="test", HOST="127.0.0.1", PORT="0", LOG_LEVEL="info",
               DATABASE_URL=ADMIN.rsplit("/", 1)[0] + "/" + name, REDIS_URL=REDIS_BASE + "/15",
               INNERA_DATA_DIR=str(data_dir), DB_POOL_MIN="1", DB_POOL_MAX="5",
               # every client is a socket of one user: lift the per-user caps
               WS_MAX_CONNECTIONS_PER_USER=str(args.clients + 100),
               RATE_LIMIT_WS=f"{args.clients + 100}/min")
    proc = subprocess.Popen([sys.executable, "-m", "innera.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            m = re.search(r"innera listening on http://[\d.]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise SystemExit("server did not start")
        tail: list[str] = []  # keep reading: a full pipe would block the server's logging
        threading.Thread(target=lambda: tail.extend(proc.stdout or ()), daemon=True).start()
        if len(os.sched_getaffinity(0)) >= 2:  # as bench/http_load.py: one core each
            os.sched_setaffinity(proc.pid, {0})
            os.sched_setaffinity(0, {1})
        print(f"server pid {proc.pid} on port {port}", flush=True)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/auth/signup", timeout=10, json={
            "email": f"bench-{uuid.uuid4().hex[:8]}@example.com",
            "password": "correct horse battery"})
        r.raise_for_status()
        body = r.json()
        trio.run(bench, port, proc.pid, body["accessToken"], body["user"]["id"],
                 args.clients, args.rounds)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
