"""WebSockets on one ``innera serve`` process: memory per idle connection, and the time and
server CPU of one broadcast event to every socket.

    .venv/bin/python bench/ws_broadcast.py [--clients 2000] [--rounds 5] [--passes 1]
        [--tree DIR ...] [--sample DIR] [--sample-rounds 3] [--native]

The server is a subprocess (the local PostgreSQL on a fresh database, a Redis DB of the local
Redis held with the tests' lock ``innera-test:db:N``, flushed before each server); the clients
all run in this process as sockets of one user, so the server is started with
``WS_MAX_CONNECTIONS_PER_USER`` and ``RATE_LIMIT_WS`` set to exactly the sockets the run opens
(``--clients`` plus 10 warm-up sockets): with the default cap of 10, each new socket would
close the user's oldest with 4008 (a socket closed that way fails the run).

Memory = (server RSS with N idle sockets − RSS with the 10 warm-up sockets) / N. Broadcast =
a raw ``PUBLISH ws:user:{id}`` → the last of the sockets has the event (median of the
rounds), read off the sockets with one ``epoll`` loop in a thread (no Trio task and no
WebSocket library per socket: 10,000 client tasks on one core would take longer to read the
event than the server takes to send it). Every socket must get every round's event exactly
once, in round order; the server's application pings (``{"type":"ping"}`` every 30 s) are
answered (also while the sockets are being opened, which can take longer than that). The
server's CPU time in that window (``/proc/PID/task/*/schedstat``: nanoseconds, every thread)
is printed too, and per socket, after the server's CPU over one idle second with every socket
open (its background work, part of every window); beside it the CPU of the kernel's
``ksoftirqd`` threads (loopback work deferred there would be missing from the server's) and
of the clients' reader (near the broadcast time: the clients were the limit). On two or more
CPUs every thread of the server runs on CPU 0, the clients on CPU 1.

Before/after in one run: ``--tree DIR`` (repeatable) runs the server from another checkout
(``git worktree add --detach /tmp/before main``); without it, this checkout. Each pass starts
every tree's server in turn (the order reversed every other pass); the summary compares each
tree with the first by the ratios of the medians. ``--sample DIR`` runs ``--sample-rounds``
more rounds per server under ``py-spy record -r 200 -f raw`` (``pip install py-spy`` into
``.venv``; ``--native`` adds C frames), after the measured ones, and writes the collapsed
stacks to ``DIR/<tree>-pass<N>.txt``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import redis_db  # noqa: E402
from tests.fixtures.server import spawn_process  # noqa: E402
from tests.fixtures.ws import WsClient  # noqa: E402

ADMIN = os.environ.get("INNERA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM = 10  # warm-up sockets, opened before the RSS baseline
#: a client frame answering the server's application ping (masked, with a zero key)
PONG_FRAME = b"\x81\x8f\x00\x00\x00\x00" + b'{"type":"pong"}'
PING_TEXTS = (b'{"type": "ping"}', b'{"type":"ping"}')
ROUND_TIMEOUT_S = 60.0
#: the CPUs this script may use, before it pins itself to CPU 1 (a server started later
#: inherits that pinning, and is pinned to CPU 0 again)
CPUS = os.sched_getaffinity(0)


@dataclass
class Figures:
    """One tree's figures over every pass."""

    kib_per_socket: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    idle_ms_per_s: list[float] = field(default_factory=list)
    softirq_ms: list[float] = field(default_factory=list)
    sockets: int = 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds of every thread of process ``pid`` so far (the scheduler's own count:
    ``/proc/…/stat`` counts in ticks of 10 ms, too coarse for one broadcast)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread gone meanwhile
            pass
    return total


def softirq_pids() -> list[int]:
    """The kernel's ``ksoftirqd/N`` threads: loopback traffic the sending process's own
    softirq processing could not finish in time is finished there, on the server's CPU, and
    counted to neither process."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().startswith("ksoftirqd/"):
                pids.append(int(comm.parent.name))
        except OSError:
            pass
    return pids


def softirq_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except OSError:
            pass
    return total


def publish(redis_url: str, channel: str, message: str) -> None:
    host, port = redis_url.split("://", 1)[1].partition("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        parts = [b"PUBLISH", channel.encode(), message.encode()]
        s.sendall(b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        s.recv(64)


def split_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole frames at the start of ``buf`` (first byte, payload) and what follows."""
    frames = []
    while len(buf) >= 2:
        size, head = buf[1] & 0x7F, 2
        if size == 126:
            size, head = int.from_bytes(buf[2:4], "big"), 4
        elif size == 127:
            size, head = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < head + size:
            break
        frames.append((buf[0], buf[head:head + size]))
        buf = buf[head + size:]
    return frames, buf


def check_frame(kind: int, payload: bytes) -> None:
    """A close or a non-text frame ends the run."""
    if kind == 0x88:  # close
        code = int.from_bytes(payload[:2], "big")
        raise SystemExit(f"a socket was closed with {code} "
                         f"{payload[2:].decode(errors='replace')!r}" +
                         (": past the per-user socket cap" if code == 4008 else ""))
    if kind != 0x81:  # FIN + text
        raise SystemExit(f"unexpected frame {kind:#x}")


async def answer_pings(client: WsClient, leftover: dict[int, bytes]) -> None:
    """While the sockets are being opened (it can take longer than the server's ping
    interval): answer the server's pings; nothing else may come. Cancelled before the rounds
    (a cancelled ``receive_some`` took nothing: what is left of a frame stays in
    ``leftover``)."""
    fd = client.stream.socket.fileno()
    while True:
        data = await client.stream.receive_some(65536)
        if not data:
            raise SystemExit("the server closed a socket")
        frames, leftover[fd] = split_frames(leftover.pop(fd, b"") + data)
        for kind, payload in frames:
            check_frame(kind, payload)
            if payload not in PING_TEXTS:
                raise SystemExit(f"unexpected message {payload[:200]!r}")
            await client.stream.send_all(PONG_FRAME)


class Receiver:
    """Every client socket in one ``epoll``: reads each socket's frames without a WebSocket
    library (server frames are unmasked; the server sends each message as one frame)."""

    def __init__(self, fds: list[int], leftover: dict[int, bytes]) -> None:
        self.fds = fds
        self.epoll = select.epoll()
        for fd in fds:
            self.epoll.register(fd, select.EPOLLIN)
        self.leftover = {fd: rest for fd, rest in leftover.items() if rest}
        self.pings = 0

    def close(self) -> None:
        self.epoll.close()

    def round(self, expected: bytes, start: Callable[[], None]) -> tuple[float, float]:
        """Call ``start()`` (the publish), then read until every socket had ``expected``
        once; the ``perf_counter`` when the last one had it, and this thread's CPU seconds
        meanwhile (near the broadcast time: the clients, not the server, were the limit)."""
        got: set[int] = set()
        n, last = len(self.fds), 0.0
        leftover, read = self.leftover, os.read
        # the usual read: exactly the event's frame (compared whole, the quickest check)
        whole = bytes((0x81, len(expected))) + expected if len(expected) < 126 else None
        cpu0 = time.thread_time()
        start()
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while len(got) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(got)} of {n} sockets had the event after "
                                 f"{ROUND_TIMEOUT_S:g} s")
            for fd, _ in self.epoll.poll(1.0):
                try:
                    data = read(fd, 65536)
                except BlockingIOError:
                    continue
                if data == whole and fd not in leftover:
                    frames, buf = [(0x81, expected)], b""
                else:
                    if not data:
                        raise SystemExit("the server closed a socket")
                    frames, buf = split_frames(leftover.pop(fd, b"") + data)
                for kind, payload in frames:
                    if kind != 0x81:
                        check_frame(kind, payload)
                    if payload == expected:
                        if fd in got:
                            raise SystemExit("a socket had the event twice")
                        got.add(fd)
                        if len(got) == n:
                            last = time.perf_counter()
                    elif payload in PING_TEXTS:
                        os.write(fd, PONG_FRAME)
                        self.pings += 1
                    else:
                        raise SystemExit(f"unexpected message {payload[:200]!r}")
                if buf:
                    leftover[fd] = buf
        return last, time.thread_time() - cpu0


def round_message(r: int) -> str:
    return json.dumps({"type": "job.progress", "data": {"round": r}})


async def bench(port: int, pid: int, token: str, user_id: str, redis_url: str, n: int,
                rounds: int, figures: Figures, sample: Path | None, sample_rounds: int,
                native: bool) -> None:
    path = f"/v1/ws?access_token={token}"
    limit = trio.CapacityLimiter(100)
    leftover: dict[int, bytes] = {}

    async def open_one(out: list[WsClient], pings: trio.Nursery) -> None:
        async with limit:
            client = await WsClient.connect("127.0.0.1", port, path)
        out.append(client)
        pings.start_soon(answer_pings, client, leftover)

    warm: list[WsClient] = []
    clients: list[WsClient] = []
    async with trio.open_nursery() as pings:
        async with trio.open_nursery() as nursery:
            for _ in range(WARM):
                nursery.start_soon(open_one, warm, pings)
        await trio.sleep(1)
        before = rss_kib(pid)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(open_one, clients, pings)
        connect_s = time.perf_counter() - t0
        await trio.sleep(2)
        after = rss_kib(pid)
        pings.cancel_scope.cancel()
    figures.kib_per_socket.append((after - before) / n)
    print(f"{n} sockets opened in {connect_s:.2f} s; server RSS {before / 1024:.1f} MiB → "
          f"{after / 1024:.1f} MiB: {(after - before) / n:.1f} KiB per idle connection",
          flush=True)

    everyone = clients + warm
    figures.sockets = len(everyone)
    receiver = Receiver([c.stream.socket.fileno() for c in everyone], leftover)
    # the load generator's own full collections (10,000 wsproto connections) would land in
    # the measured window: keep the set-up out of the collector, as a real client would
    gc.collect()
    gc.freeze()
    latencies, server_cpu, softirqs = [], [], []
    channel = f"ws:user:{user_id}"
    idle = cpu_ns(pid)
    await trio.sleep(1)
    idle_ms = (cpu_ns(pid) - idle) / 1e6
    figures.idle_ms_per_s.append(idle_ms)
    print(f"server CPU while idle with {len(everyone)} sockets: {idle_ms:.1f} ms/s (part of "
          "every figure below)", flush=True)

    softirqd = softirq_pids()

    def one_round(r: int) -> tuple[float, float, float, float]:
        message = round_message(r)
        marks: list[float] = []

        def start() -> None:
            marks.extend((time.perf_counter(), cpu_ns(pid), softirq_ns(softirqd)))
            publish(redis_url, channel, message)

        last, client_cpu = receiver.round(message.encode(), start)
        return (last - marks[0], (cpu_ns(pid) - marks[1]) / 1e6, client_cpu * 1000,
                (softirq_ns(softirqd) - marks[2]) / 1e6)

    try:
        for r in range(rounds):
            await trio.sleep(0.3)
            latency, cpu, client_cpu, softirq = await trio.to_thread.run_sync(one_round, r)
            latencies.append(latency * 1000)
            server_cpu.append(cpu)
            softirqs.append(softirq)
            print(f"round {r}: all {len(everyone)} clients had the event after "
                  f"{latency * 1000:.0f} ms (server CPU meanwhile {cpu:.1f} ms: "
                  f"{cpu * 1000 / len(everyone):.1f} µs per socket; ksoftirqd {softirq:.0f} ms;"
                  f" the clients' reader {client_cpu:.0f} ms)", flush=True)
        figures.latencies_ms += latencies
        figures.cpu_ms += server_cpu
        figures.softirq_ms += softirqs
        cpu = statistics.median(server_cpu)
        print(f"broadcast to {len(everyone)} sockets: median {statistics.median(latencies):.0f}"
              f" ms (min {min(latencies):.0f}, max {max(latencies):.0f}); server CPU"
              f" meanwhile: median {cpu:.1f} ms, {cpu * 1000 / len(everyone):.1f} µs per socket"
              f" ({receiver.pings} application pings answered)", flush=True)
        if sample is not None:
            beside = Path(sys.executable).with_name("py-spy")
            spy = await trio.lowlevel.open_process(
                [str(beside) if beside.exists() else "py-spy", "record", "-r", "200", "-f",
                 "raw", "-p", str(pid), "-o", str(sample), *(["--native"] if native else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await trio.sleep(1.5)  # attached
            for r in range(rounds, rounds + sample_rounds):
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(one_round, r)
            spy.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                await spy.wait()
            print(f"py-spy stacks of {sample_rounds} more rounds: {sample}", flush=True)
    finally:
        receiver.close()
        for client in everyone:
            await client.aclose()


def run_server(tree: Path, label: str, redis_url: str, args: argparse.Namespace,
               figures: Figures, sample: Path | None) -> None:
    name = f"innera_ws_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    data_dir = Path(tempfile.mkdtemp(prefix="innera-ws-bench-"))
    sockets = args.clients + WARM
    env = dict(INNERA_ENV="test", HOST="127.0.0.1", PORT="0", LOG_LEVEL="info",
               DATABASE_URL=ADMIN.rsplit("/", 1)[0] + "/" + name, REDIS_URL=redis_url,
               INNERA_DATA_DIR=str(data_dir), DB_POOL_MIN="1", DB_POOL_MAX="5",
               # every socket is one user's, from one IP: the per-user socket cap and the
               # handshake rate limit (per user and per IP) at exactly what the run opens
               WS_MAX_CONNECTIONS_PER_USER=str(sockets), RATE_LIMIT_WS=f"{sockets}/min")
    sp = spawn_process(env, tree=tree)
    proc = sp.proc
    try:
        # keep reading: a full pipe would block the server's logging
        threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True).start()
        if len(CPUS) >= 2:  # as bench/http_load.py: one core each
            for task in Path(f"/proc/{proc.pid}/task").iterdir():  # every thread
                os.sched_setaffinity(int(task.name), {0})
            os.sched_setaffinity(0, {1})
        port = int(sp.url.rsplit(":", 1)[1])
        print(f"\n=== {label}: server pid {proc.pid} on port {port} "
              f"(WS_MAX_CONNECTIONS_PER_USER={sockets})", flush=True)
        r = httpx.post(f"{sp.url}/v1/auth/signup", timeout=10, json={
            "email": f"bench-{uuid.uuid4().hex[:8]}@example.com",
            "password": "correct horse battery"})
        r.raise_for_status()
        body = r.json()
        trio.run(bench, port, proc.pid, body["accessToken"], body["user"]["id"], redis_url,
                 args.clients, args.rounds, figures, sample, args.sample_rounds, args.native)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush(redis_url: str) -> None:
    """Empty the held DB: the handshake rate limit's counters of the previous server."""
    hostport, _, db = redis_url.split("://", 1)[1].partition("/")
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n*1\r\n$7\r\nFLUSHDB\r\n"
                  % (len(db), db.encode()))
        got = b""
        while got.count(b"\r\n") < 2:
            data = s.recv(64)
            if not data:
                raise ConnectionError("Redis closed the connection")
            got += data


def summary(trees: list[tuple[str, Path]], results: dict[str, Figures]) -> None:
    print("\n=== summary (medians over every pass)")
    print(f"{'tree':<40}{'sockets':>8}{'KiB/socket':>12}{'median ms':>11}{'CPU ms':>9}"
          f"{'CPU µs/socket':>15}{'idle ms/s':>11}{'ksoftirqd ms':>14}")
    for label, _ in trees:
        f = results[label]
        if not f.latencies_ms:
            continue
        cpu = statistics.median(f.cpu_ms)
        print(f"{label:<40}{f.sockets:>8}{statistics.median(f.kib_per_socket):>12.1f}"
              f"{statistics.median(f.latencies_ms):>11.0f}{cpu:>9.1f}"
              f"{cpu * 1000 / f.sockets:>15.1f}{statistics.median(f.idle_ms_per_s):>11.1f}"
              f"{statistics.median(f.softirq_ms):>14.1f}")
    first = results[trees[0][0]]
    for label, _ in trees[1:]:
        f = results[label]
        if not f.latencies_ms or not first.latencies_ms:
            continue
        def ratio(a: list[float], b: list[float]) -> str:
            return f"{statistics.median(a) / statistics.median(b):.2f}"

        print(f"{label} against {trees[0][0]}: broadcast time × "
              f"{ratio(f.latencies_ms, first.latencies_ms)}, server CPU × "
              f"{ratio(f.cpu_ms, first.cpu_ms)}, memory per socket × "
              f"{ratio(f.kib_per_socket, first.kib_per_socket)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=1,
                        help="start every tree's server this many times, alternating")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="run the server from this checkout (repeatable; default: this one)")
    parser.add_argument("--sample", type=Path, help="py-spy the server into this directory")
    parser.add_argument("--sample-rounds", type=int, default=3)
    parser.add_argument("--native", action="store_true",
                        help="py-spy's --native: C frames too (the collector, system calls)")
    args = parser.parse_args()
    trees = [(str(t.resolve()), t.resolve()) for t in (args.tree or [ROOT])]
    if args.sample:
        args.sample.mkdir(parents=True, exist_ok=True)
    results = {label: Figures() for label, _ in trees}
    with redis_db() as redis_url:
        for p in range(args.passes):
            for label, tree in (trees if p % 2 == 0 else trees[::-1]):
                flush(redis_url)
                sample = None
                if args.sample:
                    sample = args.sample / f"{tree.name or 'root'}-pass{p}.txt"
                run_server(tree, label, redis_url, args, results[label], sample)
    if len(trees) > 1 or args.passes > 1:
        summary(trees, results)


if __name__ == "__main__":
    main()
