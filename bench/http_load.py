"""HTTP load on ``innera serve``: the same workloads against each HTTP server
(``INNERA_HTTP_SERVER``), alternated in one run, so the servers compare by their ratios.

    .venv/bin/python bench/http_load.py [--servers fast,hypercorn] [--duration 5]
        [--connections 64] [--rounds 2] [--generator wrk|python] [--procs 1] [--no-info]
        [--only NAME ...]

Set-up, once: a fresh database on the local PostgreSQL and a Redis DB held the way the tests
hold theirs (lock ``innera-test:db:N`` in DB 0), seeded in this process through innera's
own services (same settings as the server): 10 users, 10,000 entries of ~1 KB for the main
user (sealed with its data key, COPY), 100 for each other user, 200 notifications each;
access tokens minted with the server's JWT secret.

Each round starts every server in turn (the order reversed every other round): ``innera
serve`` with rate limits out of the way and ``LOG_LEVEL=warn``, pinned to CPU 0, then each
workload for ``--duration`` s (after 0.5 s of warm-up) from the load generator pinned to CPU 1
(PostgreSQL and Redis float). The server is stopped with SIGTERM. Workloads marked ``info``
run again on a server with ``LOG_LEVEL=info`` (label ``NAME+info``): the cost of the access
log. Writes go to a second user, so every server reads the same data. Then
``ws_broadcast.py`` once per server and ``queue_throughput.py`` once, as subprocesses.

Load generators (``--generator``; the default is wrk when it is on PATH), both closed loop on
keep-alive connections with the requests rendered beforehand (a unique ``Idempotency-Key`` per
POST):

- ``wrk``: one wrk process of ``--procs`` threads (default 1) with ``bench/wrk_load.lua``: a
  wrk for the warm-up (discarded), then another for the measurement, each stopped with SIGINT
  (in-flight requests are dropped). About a tenth of ``loadgen.py``'s CPU per request, so the
  server stays the limit. p50/p99 come from wrk's latency histogram (1,000 quantiles per
  round, pooled over the rounds by request count), which wrk corrects for coordinated
  omission (a slow response adds synthetic samples), so its p99 can exceed the raw one.
  Errors: ``4xx/5xx`` (wrk counts statuses > 399 without telling them apart), ``reset``
  (connect, read, write errors; a malformed response counts as a read error), ``timeout``.
- ``python``: ``--procs`` ``bench/loadgen.py`` processes (Trio, ``httptools``), latencies of
  every request; one process tops out near 5–7k req/s, so a fast server's rate is a lower
  bound. Errors by status (non-2xx), ``timeout``, ``reset``, ``parse``.

Tables: req/s (mean of the rounds), p50/p99 over all rounds' latencies, the CPU share of the
server process and of the load generators during the measurement (``!``: the generators were
the limit, ≥ 90 % of their core; the server's req/s is then a lower bound), errors, req/s of
each round; and the first server over each other one. The database, the Redis DB and the
temporary files go at the end, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from statistics import mean
from urllib.parse import urlsplit, urlunsplit

import psycopg
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import cpu_s  # noqa: E402
from bench.search_scan import WORDS, make_body  # noqa: E402
from innera.accounts import create_user  # noqa: E402
from innera.config import load_settings  # noqa: E402
from innera.process import open_services  # noqa: E402
from innera.services import Lifecycle  # noqa: E402
from tests.fixtures.redis import TEST_DBS, RespConnection  # noqa: E402

ADMIN = os.environ.get("INNERA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("INNERA_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SERVER_CPU, LOADGEN_CPUS = {0}, {1}
WARMUP_S = 0.5
GENERATOR_BOUND = 0.9  # load generators' CPU share past which req/s is their limit
WRK_SCRIPT = ROOT / "bench" / "wrk_load.lua"
# wrk's error counts → the kinds of loadgen.py; wrk counts statuses > 399 in one sum, and a
# malformed response as a read error.
WRK_ERRORS = {"connect": "reset", "read": "reset", "write": "reset", "timeout": "timeout",
              "status": "4xx/5xx"}
USERS, MAIN_ENTRIES, OTHER_ENTRIES, NOTIFICATIONS = 10, 10_000, 100, 200
NO_MATCH = "xylophonequartz"
PACKAGES = ("trio", "hypercorn", "quart", "quart-trio", "httptools", "wsproto", "psycopg",
            "coredis")


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    connections: int | None = None  # None: --connections
    info: bool = False  # also measured with LOG_LEVEL=info


WORKLOADS = (
    Workload("health", "GET /health", info=True),
    Workload("entry", "GET /v1/entries/{id}", info=True),
    Workload("list", "GET /v1/entries?limit=20"),
    Workload("create", "POST /v1/entries (1 KB, Idempotency-Key)"),
    Workload("search", "GET /v1/search?q=coffee (a common word: the first 20 matches)", 8),
    Workload("search-scan", f"GET /v1/search?q={NO_MATCH} (no match: full scan of 10,000)", 8),
    Workload("entry-256", "GET /v1/entries/{id} (p99 under many connections)", 256),
)
SUBPROCESS_BENCHES = ("ws_broadcast", "queue_throughput")


@dataclass
class Seed:
    reader: str  # token of the user with the 10,000 entries
    writer: str  # token of the user the POSTs go to
    entry_ids: list[str]


@dataclass
class Result:
    """One workload on one server, over the rounds."""

    rates: list[float] = field(default_factory=list)
    count: int = 0
    latencies_us: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu: list[float] = field(default_factory=list)
    loadgen_cpu: list[float] = field(default_factory=list)

    def add(self, reports: list[dict]) -> None:
        self.rates.append(sum(r["count"] / r["seconds"] for r in reports))
        self.server_cpu.append(max(r["server_cpu"] for r in reports))
        self.loadgen_cpu.append(sum(r["own_cpu"] for r in reports))
        for r in reports:
            self.count += r["count"]
            self.latencies_us += r["latencies_us"]
            self.errors.update(r["errors"])
        self.latencies_us.sort()

    @property
    def rate(self) -> float:
        return mean(self.rates)

    def percentile_ms(self, p: float) -> float:
        ordered = self.latencies_us
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] / 1000 if ordered else 0.0


# --- machine facts, database, Redis -------------------------------------------------------


def machine_facts() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    with psycopg.connect(ADMIN) as c:
        pg = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    with redis_connection() as r:
        info = r.call("INFO", "server")
    redis = next(line.split(":")[1] for line in info.splitlines() if "_version:" in line)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES)
    return [f"Machine: {cpu}, {os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB, Linux "
            f"{platform.release()}; Python {platform.python_version()}; PostgreSQL {pg}, "
            f"Redis {redis.strip()} (local)",
            f"Versions: {versions}",
            f"CPUs: the server on {sorted(SERVER_CPU)}, the load generators on "
            f"{sorted(LOADGEN_CPUS)}, PostgreSQL/Redis unpinned. One core each: compare "
            "servers by the ratios within this run, not by absolute figures."]


def redis_connection() -> RespConnection:
    parts = urlsplit(REDIS_BASE)
    return RespConnection(parts.hostname or "127.0.0.1", parts.port or 6379)


@contextmanager
def redis_db(candidates: Iterable[int] = TEST_DBS) -> Iterator[str]:
    """A logical DB of the local Redis, held like a test's (so no test shares it), flushed
    before and after."""
    token = uuid.uuid4().hex
    with redis_connection() as conn:
        for _ in range(600):
            db = next((n for n in candidates
                       if conn.call("SET", f"innera-test:db:{n}", token, "NX", "EX", 3600)), None)
            if db is not None:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("every test Redis DB stayed busy for 60 s")
        conn.call("SELECT", db)
        conn.call("FLUSHDB")
        try:
            yield urlunsplit(urlsplit(REDIS_BASE)._replace(path=f"/{db}"))
        finally:
            conn.call("FLUSHDB")
            conn.call("SELECT", 0)
            conn.call("DEL", f"innera-test:db:{db}")
            print(f"flushed Redis DB {db}")


@contextmanager
def database() -> Iterator[str]:
    name = f"innera_bench_http_{os.getpid()}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"dropped database {name}")


async def seed(env: dict[str, str]) -> Seed:
    """Users, entries and notifications through innera's own services (same settings as the
    server, so the server opens what this sealed and accepts the tokens minted here)."""
    rng = random.Random(42)
    async with AsyncExitStack() as stack:
        svc = await open_services(stack, load_settings(env), Lifecycle())
        password_hash = await svc.passwords.hash("bench password 1234")
        users = []
        async with svc.db.connection() as conn, conn.transaction():
            for i in range(USERS):
                user = await create_user(conn, f"bench-{i}@example.com", password_hash)
                await svc.data_keys.create(conn, user.id)
                users.append(user.id)
        main_ids = [str(uuid.uuid4()) for _ in range(MAIN_ENTRIES)]
        start = datetime(2020, 1, 1, tzinfo=UTC)
        async with svc.db.connection() as conn:
            async with conn.cursor().copy(
                    "COPY entries (id, user_id, content, occurred_at) FROM STDIN") as copy:
                for n, user_id in enumerate(users):
                    dek = await svc.data_keys.get(user_id)
                    ids = main_ids if n == 0 else [str(uuid.uuid4()) for _ in range(OTHER_ENTRIES)]
                    for i, entry_id in enumerate(ids):
                        content = {"title": f"Day {i}", "body": make_body(rng, rng.random() < 0.2),
                                   "tags": rng.sample(WORDS, 2), "mood": None}
                        sealed = svc.entry_cipher.seal_with(dek, user_id, entry_id, content)
                        occurred = start + timedelta(hours=i)
                        await copy.write_row((entry_id, user_id, sealed, occurred))
            await conn.execute(
                "INSERT INTO notifications (id, user_id, kind, title, body, created_at, read_at) "
                "SELECT gen_random_uuid(), u, 'entry.reminder', 'Time to write', "
                "'A minute for today?', now() - g * interval '1 hour', "
                "CASE WHEN g > 20 THEN now() END "
                "FROM unnest(%s::uuid[]) u, generate_series(1, %s) g", (users, NOTIFICATIONS))
            await conn.execute("VACUUM ANALYZE")
        return Seed(reader=svc.access_tokens.issue(users[0])[0],
                    writer=svc.access_tokens.issue(users[1])[0],
                    entry_ids=rng.sample(main_ids, 1000))


# --- requests, load, servers ------------------------------------------------------------


def render(method: str, path: str, token: str | None = None, body: str = "") -> str:
    """A raw HTTP/1.1 request; ``@KEY@`` becomes a unique Idempotency-Key in loadgen.py."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    if method == "POST":
        head += ["Content-Type: application/json", f"Content-Length: {len(body.encode())}",
                 "Idempotency-Key: @KEY@"]
    return "\r\n".join(head) + "\r\n\r\n" + body


def requests_for(name: str, seed: Seed) -> list[str]:
    if name == "health":
        return [render("GET", "/health")]
    if name in ("entry", "entry-256"):
        return [render("GET", f"/v1/entries/{i}", seed.reader) for i in seed.entry_ids]
    if name == "list":
        return [render("GET", "/v1/entries?limit=20", seed.reader)]
    if name == "search":
        return [render("GET", "/v1/search?q=coffee", seed.reader)]
    if name == "search-scan":
        return [render("GET", f"/v1/search?q={NO_MATCH}", seed.reader)]
    rng = random.Random(7)
    return [render("POST", "/v1/entries", seed.writer, json.dumps(
        {"title": "Bench", "body": make_body(rng, False), "tags": ["bench"], "mood": "calm"}))
        for _ in range(50)]


def pin(pid: int, cpus: set[int]) -> None:
    """Run process ``pid`` on ``cpus`` only (not on a 1-CPU machine)."""
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(pid, cpus)


def run_load(server: subprocess.Popen[bytes], port: int, requests: list[str], connections: int,
             args: argparse.Namespace, workdir: Path) -> list[dict]:
    """One report per load-generator process: ``{"count", "seconds", "errors", "latencies_us",
    "server_cpu", "own_cpu"}`` (see ``bench/loadgen.py``)."""
    if args.generator == "wrk":
        return [run_wrk(server, port, requests, connections, args, workdir)]
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"host": "127.0.0.1", "port": port, "server_pid": server.pid,
                                "warmup_s": WARMUP_S, "duration_s": args.duration,
                                "timeout_s": 10, "requests": requests}))
    procs = max(1, min(args.procs, connections))
    shares = [connections // procs + (i < connections % procs) for i in range(procs)]
    gens = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py"), str(spec),
                              str(n)], stdout=subprocess.PIPE) for n in shares]
    for gen in gens:
        pin(gen.pid, LOADGEN_CPUS)
    try:
        outputs = [gen.communicate(timeout=args.duration + 60)[0] for gen in gens]
    finally:
        for gen in gens:
            if gen.poll() is None:
                gen.kill()
                gen.wait()
    if any(gen.returncode for gen in gens):
        raise RuntimeError(f"a load generator failed: {[g.returncode for g in gens]}")
    return [json.loads(out) for out in outputs]


def run_wrk(server: subprocess.Popen[bytes], port: int, requests: list[str], connections: int,
            args: argparse.Namespace, workdir: Path) -> dict:
    """wrk for ``WARMUP_S`` (discarded), then a second wrk for ``--duration`` s: the report
    ``run_load`` returns, its ``latencies_us`` made of wrk's 1,000 latency quantiles (each
    repeated for its share of ``count``, so rounds pool by their request counts)."""
    path = workdir / "requests.bin"  # raw requests, NUL-separated (see bench/wrk_load.lua)
    path.write_bytes(b"\0".join(r.encode() for r in requests))
    threads = max(1, min(args.procs, connections))
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "--timeout", "10s", "--latency",
            "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/"]
    wrk_once(argv, path, WARMUP_S, server.pid)
    out, server_cpu, own_cpu = wrk_once(argv, path, args.duration, server.pid)
    errors: Counter[str] = Counter()
    for kind, n in out["errors"].items():
        errors[WRK_ERRORS[kind]] += n
    count, quantiles = out["requests"], out["quantiles_us"]
    return {"count": count, "seconds": out["duration_us"] / 1e6, "errors": dict(+errors),
            "latencies_us": [quantiles[i * len(quantiles) // count] for i in range(count)],
            "server_cpu": server_cpu, "own_cpu": own_cpu}


def wrk_once(argv: list[str], requests: Path, seconds: float, server_pid: int
             ) -> tuple[dict, float, float]:
    """One wrk process, stopped with SIGINT after ``seconds`` (its ``-d`` takes whole seconds
    only, so it is just a backstop): the JSON line of ``done()`` in bench/wrk_load.lua, and the
    CPU share of the server and of wrk over those ``seconds``. A fresh run id per process keeps
    the Idempotency-Keys unique across runs."""
    wrk = subprocess.Popen([*argv, "-d", f"{math.ceil(seconds) + 5}s", "--", str(requests),
                            uuid.uuid4().hex[:12]], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    # Pinned before wrk starts its threads (they inherit it): it loads its libraries, the Lua
    # script and the requests first. wrk ignores SIGINT until its threads run (a few ms; it
    # would then stop at -d).
    pin(wrk.pid, LOADGEN_CPUS)
    try:
        start = cpu_s(server_pid), cpu_s(wrk.pid), time.perf_counter()
        time.sleep(seconds)
        end = cpu_s(server_pid), cpu_s(wrk.pid), time.perf_counter()
        wrk.send_signal(signal.SIGINT)
        out, err = wrk.communicate(timeout=seconds + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if wrk.returncode or not lines:
        raise RuntimeError(f"wrk failed (exit code {wrk.returncode}): "
                           f"{err.decode().strip()[-500:]}")
    wall = end[2] - start[2]
    return json.loads(lines[-1]), (end[0] - start[0]) / wall, (end[1] - start[1]) / wall


def wrk_version() -> str:
    """``wrk <version>`` as ``wrk -v`` prints it (then its usage, exit code 1)."""
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    return " ".join(out[:2]) or "wrk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_server(env: dict[str, str], log: Path, profile: Path | None = None,
                 tree: Path = ROOT) -> tuple[subprocess.Popen[bytes], int] | None:
    """``innera serve`` pinned to the server CPU, once ``/health/ready`` answers 200; None
    (after printing why) when it exits or is not ready within 60 s. With ``profile``, the
    server runs under cProfile, which writes its stats there when the server exits."""
    port = free_port()
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *profiler, "-m", "innera.cli", "serve"], cwd=tree,
                                env={**env, "PORT": str(port)}, stdout=out,
                                stderr=subprocess.STDOUT)
    pin(proc.pid, SERVER_CPU)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(port):
            return proc, port
        time.sleep(0.05)
    if proc.poll() is None:
        stop_server(proc)
    tail = [last_words(line) for line in log.read_text(errors="replace").splitlines()[-3:]]
    print(f"!! {env['INNERA_HTTP_SERVER']} did not start (exit code {proc.returncode}); "
          "skipped. Its last log lines:", *tail, sep="\n   ")
    return None


def last_words(line: str) -> str:
    """The message of a JSON log line (else the line), cut to 200 characters."""
    try:
        line = json.loads(line).get("msg", line)
    except (ValueError, AttributeError):
        pass
    return line[:200]


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    """Send ``sig``; kill ``proc`` if it has not exited within ``timeout_s``."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, signal.SIGTERM, 40)
    if proc.returncode:
        print(f"!! the server exited with code {proc.returncode} after SIGTERM")


def server_env(database_url: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_ENV", "INNERA_HTTP_SERVER")}
    fast = "100000000/min"
    env.update(INNERA_ENV="test", HOST="127.0.0.1", DATABASE_URL=database_url,
               REDIS_URL=redis_url, INNERA_DATA_DIR=str(data_dir),
               INNERA_MEK=base64.b64encode(secrets.token_bytes(32)).decode(),
               JWT_SECRET=secrets.token_urlsafe(48), ACCESS_TOKEN_TTL_S="86400",
               RATE_LIMIT_AUTH=fast, RATE_LIMIT_USER=fast, RATE_LIMIT_ANON=fast)
    return env


# --- the run ----------------------------------------------------------------------------


def measure(args: argparse.Namespace, env: dict[str, str], seed: Seed, workdir: Path
            ) -> tuple[dict[tuple[str, str], Result], set[str]]:
    """Every (workload, server label) over the rounds; and the servers that did not start."""
    results: dict[tuple[str, str], Result] = {}
    workloads = [w for w in WORKLOADS if w.name in args.only]
    failed: set[str] = set()
    if not workloads:
        return results, failed
    for round_ in range(args.rounds):
        order = args.servers if round_ % 2 == 0 else args.servers[::-1]
        variants = [(s, "warn") for s in order]
        if args.info and any(w.info for w in workloads):
            variants += [(s, "info") for s in order]
        for server, level in variants:
            label = server if level == "warn" else f"{server}+info"
            if server in failed:
                continue
            slug = label.replace("/", "_")
            profile = (args.profile / f"{slug}-round{round_ + 1}.prof") if args.profile else None
            name, _, tree = server.partition("@")
            started = start_server({**env, "INNERA_HTTP_SERVER": name, "LOG_LEVEL": level},
                                   workdir / f"{slug}.log", profile,
                                   Path(tree) if tree else ROOT)
            if started is None:
                failed.add(server)
                continue
            proc, port = started
            try:
                for w in workloads:
                    if level == "info" and not w.info:
                        continue
                    sample = (args.sample / f"{w.name}-{slug}-round{round_ + 1}.txt"
                              if args.sample else None)
                    with sampling(proc.pid, sample, args.duration):
                        reports = run_load(proc, port, requests_for(w.name, seed),
                                           w.connections or args.connections, args, workdir)
                    result = results.setdefault((w.name, label), Result())
                    result.add(reports)
                    print(f"round {round_ + 1} {label:<15} {w.name:<12} "
                          f"{result.rates[-1]:>9,.0f} req/s", flush=True)
            finally:
                stop_server(proc)
    return results, failed


@contextmanager
def sampling(pid: int, out: Path | None, duration_s: float) -> Iterator[None]:
    """With ``out``, py-spy samples process ``pid`` (without pausing it) while the block runs
    and writes collapsed stacks there: a profile that, unlike cProfile, does not inflate small
    calls."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "250",
                            "--nonblocking", "--format", "raw", "--output", str(out),
                            "--duration", str(int(duration_s + WARMUP_S + 1))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pin(spy.pid, LOADGEN_CPUS)
    try:
        yield
    finally:
        stop_process(spy, signal.SIGINT, 10)


def ratio_line(results: dict[tuple[str, str], Result], name: str, a: str, b: str) -> str | None:
    """``a / b`` for req/s, p50 and p99, when both were measured."""
    ra, rb = results.get((name, a)), results.get((name, b))
    if not (ra and rb and ra.count and rb.count):
        return None
    ratios = [ra.rate / rb.rate] + [ra.percentile_ms(p) / rb.percentile_ms(p) for p in (0.5, 0.99)]
    return f"{a + ' / ' + b:<22}" + "".join(f"{f'×{x:.2f}':>{w}}" for x, w in zip(
        ratios, (11, 10, 10), strict=True))


def print_tables(args: argparse.Namespace, results: dict[tuple[str, str], Result]) -> None:
    labels = args.servers + [f"{s}+info" for s in args.servers]
    for w in WORKLOADS:
        rows = [(label, results[w.name, label]) for label in labels if (w.name, label) in results]
        if not rows:
            continue
        print(f"\n{w.title}: {w.connections or args.connections} connections, "
              f"{args.rounds} × {args.duration:g} s")
        print(f"{'server':<22}{'req/s':>11}{'p50 ms':>10}{'p99 ms':>10}{'CPU srv':>9}"
              f"{'gen':>5}  {'errors':<8}req/s per round")
        for label, r in rows:
            errors = sum(r.errors.values())
            detail = ", ".join(f"{k}: {v}" for k, v in r.errors.most_common())
            gen = mean(r.loadgen_cpu)
            print(f"{label:<22}{r.rate:>11,.0f}{r.percentile_ms(0.5):>10.2f}"
                  f"{r.percentile_ms(0.99):>10.2f}{mean(r.server_cpu):>9.0%}"
                  f"{gen:>5.0%}{'!' if gen >= GENERATOR_BOUND else ' '} {errors:<8}"
                  f"{' / '.join(f'{x:,.0f}' for x in r.rates)}"
                  f"{f'  ({detail})' if detail else ''}")
        a = args.servers[0]
        for b in args.servers[1:]:
            for line in (ratio_line(results, w.name, a, b),
                         ratio_line(results, w.name, f"{a}+info", f"{b}+info")):
                if line:
                    print(line)


def run_subprocess_benches(args: argparse.Namespace, servers: list[str], redis_url: str
                           ) -> None:
    keys = {"ws_broadcast": ("per idle connection", "broadcast to"),
            "queue_throughput": ("throughput:", "latency")}
    runs = [(f"ws_broadcast ({s})", ["ws_broadcast.py"], {"INNERA_HTTP_SERVER": s})
            for s in servers if "ws_broadcast" in args.only and "@" not in s]
    if "queue_throughput" in args.only:
        runs.append(("queue_throughput", ["queue_throughput.py", "--redis-url", redis_url], {}))
    for title, argv, extra in runs:
        print(f"\n=== {title}", flush=True)
        # (ws_broadcast.py holds a Redis DB of its own, like this script)
        done = subprocess.run([sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:]],
                              cwd=ROOT, env={**os.environ, **extra}, capture_output=True,
                              text=True, timeout=600)
        print(*(line for line in done.stdout.splitlines()
                if any(k in line for k in keys[title.split()[0]])), sep="\n")
        if done.returncode:
            print(f"!! exit code {done.returncode}:", *done.stderr.splitlines()[-5:],
                  sep="\n   ")


def main() -> None:
    names = [w.name for w in WORKLOADS] + list(SUBPROCESS_BENCHES)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="fast,hypercorn", type=lambda s: s.split(","),
                        help="INNERA_HTTP_SERVER values, compared in this order; NAME@DIR runs "
                             "NAME from the checkout in DIR (e.g. a git worktree of an older "
                             "commit: before/after in one run; not for ws_broadcast)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--generator", choices=("wrk", "python"),
                        default="wrk" if shutil.which("wrk") else "python",
                        help="the load generator: wrk (with bench/wrk_load.lua) or python "
                             "(bench/loadgen.py processes); default: wrk when it is on PATH, "
                             "else python (here: %(default)s)")
    parser.add_argument("--procs", type=int, default=1,
                        help="load-generator processes (python) or wrk threads (wrk)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run each server under cProfile; stats go to DIR/<server>-roundN.prof "
                             "(figures are then not comparable with unprofiled runs)")
    parser.add_argument("--sample", type=Path, default=None, metavar="DIR",
                        help="sample each server with py-spy (on the load generators' CPU) "
                             "during each workload; collapsed stacks go to "
                             "DIR/<workload>-<server>-roundN.txt")
    parser.add_argument("--no-info", dest="info", action="store_false",
                        help="skip the LOG_LEVEL=info variant")
    parser.add_argument("--only", nargs="+", choices=names, default=names, metavar="NAME",
                        help=f"a subset of: {', '.join(names)}")
    args = parser.parse_args()
    if args.generator == "wrk" and not shutil.which("wrk"):
        parser.error("--generator wrk: wrk is not on PATH")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C

    print(*machine_facts(), sep="\n")
    generator = (f"{wrk_version()} with {args.procs} thread(s) (p50/p99 from its latency "
                 "histogram)" if args.generator == "wrk"
                 else f"{args.procs} loadgen.py process(es)")
    print(f"servers {', '.join(args.servers)}; {args.rounds} round(s) of {args.duration:g} s "
          f"per workload after {WARMUP_S:g} s warm-up; load from {generator}", flush=True)
    with database() as database_url, redis_db() as redis_url, \
            tempfile.TemporaryDirectory(prefix="innera-http-bench-") as tmp:
        env = server_env(database_url, redis_url, Path(tmp) / "data")
        started = time.perf_counter()
        seeded = trio.run(seed, env)
        print(f"seeded {USERS} users, {MAIN_ENTRIES:,} + {USERS - 1} × {OTHER_ENTRIES} entries, "
              f"{NOTIFICATIONS} notifications each in {time.perf_counter() - started:.1f} s",
              flush=True)
        results, failed = measure(args, env, seeded, Path(tmp))
        print_tables(args, results)
        run_subprocess_benches(args, [s for s in args.servers if s not in failed], redis_url)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (cleaned up)")
