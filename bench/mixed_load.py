"""A mixed workload on ``innera serve`` over 1,000 accounts: CPU per request (the primary
figure), req/s and p99 per route, for the capacity plan (docs/capacity.md) and for
before/after comparisons of a change.

    .venv/bin/python bench/mixed_load.py [--servers fast] [--duration 5] [--rounds 2]
        [--connections 32] [--accounts 1000] [--entries 100] [--only mix entry ...]

The mix (issue 19): 70 % ``GET /v1/entries/{id}``, 15 % ``GET /v1/entries?limit=20``, 10 %
``POST /v1/entries`` with a unique ``Idempotency-Key``, 4 % ``GET
/v1/notifications/unread-count``, 1 % ``GET /v1/search`` (half a common word: the first 20
matches; half a word in no entry: a scan of the account's entries). Every request is for one
of the accounts, drawn uniformly; the requests are rendered beforehand (4,000 of them,
shuffled with a fixed seed) and each connection cycles through them from its own offset, so
every connection sends the mix. Each route is also measured alone (workloads ``entry``,
``list``, ``create``, ``unread``, ``search``) over the same accounts: its CPU per request,
and the mix's CPU per request predicted from them, beside the one measured. ``search`` alone
runs on 8 connections, the accounts in turn (one search at a time per account, else 429
``search_in_progress``).

Columns: CPU ms per request of the server, its PostgreSQL backends and its Redis (over all
rounds); req/s (mean of the rounds); p50/p99 over every round's requests; ``srv``: the server
process's CPU share of its core during the measurement (well below 100 %: other processes
took the core, and req/s says more about them than about innera); ``gen``: the load
generator's (``!`` ≥ 90 %: it was the limit); the server's CPU ms per request of each round.

Why CPU per request first: the machine is shared (other processes run at the same time), so
req/s moves with their load (×3 between rounds here), while the CPU time the server process
spends per request (from ``/proc``, divided by the requests answered in that window) moves
less; it still rises when the cores are contended (shared caches, and a vCPU's stolen time
is counted to the process that was running), so compare servers within one run, whose
rounds alternate them. It is also what capacity is planned with. Beside the server's own
CPU, the CPU of its PostgreSQL backends (the pooled connections of the bench database, found
in ``pg_stat_activity``: the pool is opened at its maximum, ``DB_POOL_MIN = DB_POOL_MAX``, so
the same backends serve the whole run) and of its Redis (a private ``redis-server`` with
append-only persistence, ``everysec``, as in docker-compose.yml) are measured the same way.
During ``mix`` the pool gauge ``innera_db_pool_active`` is read from ``/metrics`` twice a
second: the connection time a request holds (mean in use ÷ req/s), which sizes
``DB_POOL_MAX``.

Set-up, once: a fresh database on the local PostgreSQL, seeded through innera's own services
(same settings as the server): ``--accounts`` users with a data key each, ``--entries``
entries of ~1 KB each (sealed, COPY), 20 notifications each (5 unread); an access token per
account. The table sizes per row are printed (they size the database's disk).

Servers: as in ``bench/http_load.py`` (``innera serve``, rate limits out of the way,
``LOG_LEVEL=warn``, pinned to CPU 0; the load generator, ``bench/loadgen.py``, on CPU 1;
PostgreSQL and Redis float). ``NAME@DIR`` runs ``INNERA_HTTP_SERVER=NAME`` from the checkout
in ``DIR`` (before/after in one run: ``--servers fast,fast@/tmp/base``). Each round starts
every server in turn (order reversed every other round) and runs every workload on it for
``--duration`` s after 0.5 s of warm-up; the first server is compared with each other one.
The entries a workload created (``mix``, ``create``) are deleted after it, so every server
and round reads and scans the seeded entries only (search's scan half reads all of an
account's entries: without it, whichever server ran later paid for the earlier creates).
The database, the Redis server and the temporary files go at the end, also on Ctrl-C.

``--pgbouncer``: the servers reach PostgreSQL through a private PgBouncer (the Debian
``pgbouncer`` on PATH, ``pool_mode = transaction``, ``default_pool_size`` 10, trust auth)
started for the run, configured as the README says for transaction mode
(``DB_PREPARED_STATEMENTS=false``, ``DATABASE_MIGRATION_URL`` straight to PostgreSQL): what
the pooler costs (its process's CPU per request is reported as ``pgbouncer``).
``--server-env KEY=VALUE`` (repeatable) sets a variable of every server last, e.g.
``DB_PREPARED_STATEMENTS=true`` behind PgBouncer (the failure it prevents), or
``DB_PREPARED_STATEMENTS=false`` without it (what turning them off costs by itself).

Closed loop: every connection sends its next request when the previous one is answered, so
the server runs flat out and latencies include queueing behind ``--connections`` requests:
read p99 as the shape under saturation, not as the latency at a planned load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean
from urllib.parse import urlsplit, urlunsplit

import psycopg
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import (  # noqa: E402
    ADMIN,
    GENERATOR_BOUND,
    LOADGEN_CPUS,
    NO_MATCH,
    WARMUP_S,
    database,
    free_port,
    machine_facts,
    pin,
    render,
    server_env,
    start_server,
    stop_process,
    stop_server,
)
from bench.search_scan import WORDS, make_body  # noqa: E402
from innera.accounts import create_user  # noqa: E402
from innera.config import load_settings  # noqa: E402
from innera.process import open_services  # noqa: E402
from innera.services import Lifecycle  # noqa: E402

#: (route label, share of the mix in %, what it sends)
MIX = (
    ("entry", 70, "GET /v1/entries/{id}"),
    ("list", 15, "GET /v1/entries?limit=20"),
    ("create", 10, "POST /v1/entries (1 KB, Idempotency-Key)"),
    ("unread", 4, "GET /v1/notifications/unread-count"),
    ("search", 1, "GET /v1/search?q=… (half the first 20 matches, half a full scan)"),
)
ROUTES = tuple(name for name, _, _ in MIX)
WORKLOADS = ("mix", *ROUTES)
MIX_REQUESTS = 4000  # rendered requests of the mix (shares exact, order shuffled)
ROUTE_REQUESTS = 2000  # rendered requests of a single-route workload
NOTIFICATIONS, UNREAD = 20, 5
POOL_MAX = 20  # DB_POOL_MAX's default
POOL_SAMPLE_S = 0.5
SEARCH_CONNECTIONS = 8


@dataclass
class Account:
    token: str
    entry_ids: list[str]


@dataclass
class Result:
    """One workload on one server, over the rounds."""

    rates: list[float] = field(default_factory=list)
    count: int = 0
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    watch_cpu_s: Counter[str] = field(default_factory=Counter)
    loadgen_cpu: list[float] = field(default_factory=list)
    server_share: list[float] = field(default_factory=list)  # of one core, per round
    cpu_per_round: list[float] = field(default_factory=list)  # server ms per request
    errors: Counter[str] = field(default_factory=Counter)
    latencies_us: dict[str, list[int]] = field(default_factory=dict)  # per route
    route_errors: dict[str, Counter[str]] = field(default_factory=dict)
    pool_in_use: list[float] = field(default_factory=list)  # samples of the pool gauge

    def add(self, report: dict, pool_samples: list[float]) -> None:
        self.rates.append(report["count"] / report["seconds"])
        self.count += report["count"]
        self.seconds += report["seconds"]
        self.server_cpu_s += report["server_cpu_s"]
        self.watch_cpu_s.update(report["watch_cpu_s"])
        self.loadgen_cpu.append(report["own_cpu"])
        self.server_share.append(report["server_cpu"])
        self.cpu_per_round.append(1000 * report["server_cpu_s"] / max(report["count"], 1))
        self.errors.update(report["errors"])
        for label, part in report["by_label"].items():
            self.latencies_us.setdefault(label, []).extend(part["latencies_us"])
            self.route_errors.setdefault(label, Counter()).update(part["errors"])
        self.pool_in_use += pool_samples

    @property
    def rate(self) -> float:
        return mean(self.rates)

    def cpu_ms(self, what: str = "server") -> float:
        """CPU milliseconds per answered request: of the server process, or of a watched
        group (``postgres``, ``redis``)."""
        spent = self.server_cpu_s if what == "server" else self.watch_cpu_s[what]
        return 1000 * spent / self.count if self.count else math.nan

    def percentile_ms(self, route: str, p: float) -> float:
        ordered = sorted(self.latencies_us.get(route, ()))
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] / 1000 if ordered else 0.0

    def route_count(self, route: str) -> int:
        return len(self.latencies_us.get(route, ()))


# --- Redis: a private server -----------------------------------------------------------------


@contextmanager
def private_redis(directory: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A ``redis-server`` of this run only (free port, files in ``directory``), so its CPU
    and memory are this run's alone: ``(url, process)``. Append-only persistence as in
    docker-compose.yml unless ``extra`` says otherwise."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start (exit code {proc.poll()})")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        stop_process(proc, signal.SIGTERM, 10)


# --- PgBouncer: a private one ---------------------------------------------------------------


@contextmanager
def private_pgbouncer(directory: Path, database_url: str
                      ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A PgBouncer of this run in transaction mode, in front of ``database_url``'s server:
    ``(the database URL through it, process)``. As root it runs as ``postgres`` (PgBouncer
    refuses root)."""
    if shutil.which("pgbouncer") is None:
        raise SystemExit("pgbouncer is not on PATH (apt-get install pgbouncer)")
    parts = urlsplit(database_url)
    user = parts.username or "postgres"
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={parts.hostname or '127.0.0.1'} port={parts.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 10\nmax_client_conn = 1000\n"
        "ignore_startup_parameters = extra_float_digits,options\n")
    argv = ["pgbouncer", str(ini)]
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        for path in directory.iterdir():
            shutil.chown(path, "postgres")
        argv[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"pgbouncer did not start (exit code {proc.poll()})"
                                     ) from None
                time.sleep(0.05)
        yield urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}")), proc
    finally:
        stop_process(proc, signal.SIGTERM, 10)


def pgbouncer_version() -> str:
    out = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "pgbouncer"


# --- seeding --------------------------------------------------------------------------------


async def seed(env: dict[str, str], accounts: int, entries: int) -> list[Account]:
    """Accounts with a data key, ``entries`` sealed entries and the notifications each,
    through innera's own services (so the server opens what this sealed and accepts the
    tokens minted here)."""
    rng = random.Random(42)
    async with AsyncExitStack() as stack:
        svc = await open_services(stack, load_settings(env), Lifecycle())
        password_hash = await svc.passwords.hash("bench password 1234")
        users = []
        async with svc.db.connection() as conn, conn.transaction():
            for i in range(accounts):
                user = await create_user(conn, f"mixed-{i}@example.com", password_hash)
                await svc.data_keys.create(conn, user.id)
                users.append(str(user.id))
        result = []
        start = datetime(2024, 1, 1, tzinfo=UTC)
        async with svc.db.connection() as conn:
            async with conn.cursor().copy(
                    "COPY entries (id, user_id, content, occurred_at) FROM STDIN") as copy:
                for user_id in users:
                    dek = await svc.data_keys.get(user_id)
                    ids = [str(uuid.uuid4()) for _ in range(entries)]
                    for i, entry_id in enumerate(ids):
                        content = {"title": f"Day {i}", "body": make_body(rng, rng.random() < 0.2),
                                   "tags": rng.sample(WORDS, 2), "mood": None}
                        sealed = svc.entry_cipher.seal_with(dek, user_id, entry_id, content)
                        await copy.write_row((entry_id, user_id, sealed,
                                              start + timedelta(hours=i)))
                    result.append(Account(svc.access_tokens.issue(user_id)[0], ids))
            await conn.execute(
                "INSERT INTO notifications (id, user_id, kind, title, body, created_at, read_at) "
                "SELECT gen_random_uuid(), u, 'entry.reminder', 'Time to write', "
                "'A minute for today?', now() - g * interval '1 hour', "
                "CASE WHEN g > %s THEN now() END "
                "FROM unnest(%s::uuid[]) u, generate_series(1, %s) g",
                (UNREAD, users, NOTIFICATIONS))
            await conn.execute("VACUUM ANALYZE")
        return result


def seeded_at(database_url: str) -> datetime:
    """The database's clock after seeding: every entry created later is the load's."""
    with psycopg.connect(database_url) as c:
        return c.execute("SELECT now()").fetchone()[0]  # type: ignore[index]


def undo_creates(database_url: str, since: datetime) -> int:
    """Delete the entries created after ``since`` (by a workload's creates); how many."""
    with psycopg.connect(database_url, autocommit=True) as c:
        return c.execute("DELETE FROM entries WHERE created_at > %s", (since,)).rowcount


def table_sizes(database_url: str) -> list[str]:
    """Bytes per row of the seeded tables (heap + TOAST + indexes): the database's disk."""
    lines = []
    with psycopg.connect(database_url) as c:
        for table in ("entries", "notifications", "users", "user_keys"):
            exists = c.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if not exists or exists[0] is None:
                continue
            rows, size = c.execute(
                f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}"
            ).fetchone()  # type: ignore[misc]
            if rows:
                lines.append(f"{table}: {rows:,} rows, {size / 2**20:,.1f} MiB with indexes "
                             f"and TOAST: {size / rows:,.0f} bytes per row")
    return lines


# --- requests ---------------------------------------------------------------------------------


def request_for(route: str, account: Account, rng: random.Random, search_turn: int) -> str:
    if route == "entry":
        return render("GET", f"/v1/entries/{rng.choice(account.entry_ids)}", account.token)
    if route == "list":
        return render("GET", "/v1/entries?limit=20", account.token)
    if route == "create":
        return render("POST", "/v1/entries", account.token, json.dumps(
            {"title": "Bench", "body": make_body(rng, False), "tags": ["bench"],
             "mood": "calm"}))
    if route == "unread":
        return render("GET", "/v1/notifications/unread-count", account.token)
    term = "coffee" if search_turn % 2 == 0 else NO_MATCH
    return render("GET", f"/v1/search?q={term}", account.token)


def requests_for(workload: str, accounts: list[Account]) -> tuple[list[str], list[str]]:
    """The rendered requests of ``workload`` and the route of each."""
    rng = random.Random(f"mixed-{workload}")
    if workload == "mix":
        routes = [name for name, share, _ in MIX for _ in range(MIX_REQUESTS * share // 100)]
        rng.shuffle(routes)
    else:
        routes = [workload] * ROUTE_REQUESTS
    if workload == "search":
        # one search at a time per account (429 search_in_progress): the accounts in turn,
        # so the few connections of this workload stay on different ones
        chosen = [accounts[i % len(accounts)] for i in range(len(routes))]
    else:
        chosen = [rng.choice(accounts) for _ in routes]
    requests = [request_for(route, account, rng, i) for i, (route, account) in
                enumerate(zip(routes, chosen, strict=True))]
    return requests, routes


def connections_for(workload: str, args: argparse.Namespace) -> int:
    """``--connections``; at most ``SEARCH_CONNECTIONS`` for search alone (as in
    bench/http_load.py: one search at a time per account)."""
    return min(args.connections, SEARCH_CONNECTIONS) if workload == "search" else args.connections


# --- measuring --------------------------------------------------------------------------------


def backend_pids(database_url: str, application_name: str | None = "innera") -> list[int]:
    """The server's PostgreSQL backends: connections to the bench database (named innera,
    unless ``application_name`` is None: PgBouncer's connections)."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN) as c:
        rows = c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                         "(%s::text IS NULL OR application_name = %s) AND pid <> "
                         "pg_backend_pid()", (name, application_name, application_name)
                         ).fetchall()
    return [r[0] for r in rows]


class PoolSampler:
    """Reads ``innera_db_pool_active`` from ``/metrics`` every ``POOL_SAMPLE_S`` in a thread
    while the block runs (the bench's own process, not the server's loop)."""

    GAUGE = re.compile(rb"^innera_db_pool_active(?:\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)

    def __init__(self, port: int, start_after_s: float) -> None:
        self.port, self.start_after_s = port, start_after_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.start_after_s):
            return
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                            timeout=5) as r:
                    found = self.GAUGE.search(r.read())
                if found:
                    self.samples.append(float(found.group(1)))
            except OSError:
                pass
            self._stop.wait(POOL_SAMPLE_S)

    def __enter__(self) -> PoolSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run_load(server: subprocess.Popen[bytes], port: int, workload: str, accounts: list[Account],
             watch: dict[str, list[int]], args: argparse.Namespace, workdir: Path
             ) -> tuple[dict, list[float]]:
    """One ``bench/loadgen.py`` run: its report, and the pool gauge's samples (mix only)."""
    requests, routes = requests_for(workload, accounts)
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"host": "127.0.0.1", "port": port, "server_pid": server.pid,
                                "warmup_s": WARMUP_S, "duration_s": args.duration,
                                "timeout_s": 10, "requests": requests, "labels": routes,
                                "watch": watch}))
    gen = subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py"), str(spec),
                            str(connections_for(workload, args))], stdout=subprocess.PIPE)
    pin(gen.pid, LOADGEN_CPUS)
    sampler = PoolSampler(port, WARMUP_S + 0.3) if workload == "mix" else None
    try:
        if sampler:
            with sampler:
                out = gen.communicate(timeout=args.duration + 60)[0]
        else:
            out = gen.communicate(timeout=args.duration + 60)[0]
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    if gen.returncode:
        raise RuntimeError(f"the load generator failed (exit code {gen.returncode})")
    return json.loads(out), sampler.samples if sampler else []


def measure(args: argparse.Namespace, env: dict[str, str], database_url: str,
            watched: dict[str, int], accounts: list[Account], workdir: Path
            ) -> dict[tuple[str, str], Result]:
    """Every (workload, server) over the rounds. ``watched``: processes whose CPU is measured
    beside the PostgreSQL backends (``{"redis": pid}``, and PgBouncer's)."""
    since = seeded_at(database_url)
    results: dict[tuple[str, str], Result] = {}
    failed: set[str] = set()
    for round_ in range(args.rounds):
        order = args.servers if round_ % 2 == 0 else args.servers[::-1]
        for server in order:
            if server in failed:
                continue
            name, _, tree = server.partition("@")
            started = start_server({**env, "INNERA_HTTP_SERVER": name, "LOG_LEVEL": "warn"},
                                   workdir / f"{server.replace('/', '_')}.log",
                                   tree=Path(tree) if tree else ROOT)
            if started is None:
                failed.add(server)
                continue
            proc, port = started
            try:
                if "pgbouncer" in watched:
                    # PgBouncer opens its server connections on demand: warm them first
                    run_load(proc, port, "mix", accounts, {}, args, workdir)
                    undo_creates(database_url, since)
                backends = backend_pids(database_url,
                                        None if "pgbouncer" in watched else "innera")
                watch = {"postgres": backends, **{k: [v] for k, v in watched.items()}}
                for workload in args.only:
                    report, samples = run_load(proc, port, workload, accounts, watch, args,
                                               workdir)
                    result = results.setdefault((workload, server), Result())
                    result.add(report, samples)
                    print(f"round {round_ + 1} {server:<24} {workload:<7} "
                          f"{result.rates[-1]:>7,.0f} req/s  "
                          f"{1000 * report['server_cpu_s'] / max(report['count'], 1):.2f} "
                          "ms CPU/request", flush=True)
                    if workload in ("mix", "create"):
                        undo_creates(database_url, since)
            finally:
                stop_server(proc)
    return results


# --- tables -----------------------------------------------------------------------------------


def print_tables(args: argparse.Namespace, results: dict[tuple[str, str], Result]) -> None:
    titles = {"mix": "the mix", **{name: title for name, _, title in MIX}}
    print(f"\nCPU per request (ms): server process / its PostgreSQL backends / its Redis; "
          f"{args.connections} connections ({min(args.connections, SEARCH_CONNECTIONS)} for "
          f"search), {args.rounds} × {args.duration:g} s")
    bouncer = ("pgbouncer",) if args.pgbouncer else ()
    print(f"{'workload':<9}{'server':<24}{'srv ms':>8}{'pg ms':>7}{'redis ms':>9}"
          + "".join(f"{'bouncer ms':>11}" for _ in bouncer)
          + f"{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'srv':>5}{'gen':>5}  {'errors':<7}"
            "srv ms per round")
    for workload in WORKLOADS:
        for server in args.servers:
            r = results.get((workload, server))
            if r is None or not r.count:
                continue
            every = sorted(v for lat in r.latencies_us.values() for v in lat)
            p50 = every[int(len(every) * 0.5)] / 1000 if every else 0
            p99 = every[min(len(every) - 1, int(len(every) * 0.99))] / 1000 if every else 0
            gen = mean(r.loadgen_cpu)
            errors = ", ".join(f"{k}: {v}" for k, v in r.errors.most_common()) or "0"
            print(f"{workload:<9}{server:<24}{r.cpu_ms():>8.2f}{r.cpu_ms('postgres'):>7.2f}"
                  f"{r.cpu_ms('redis'):>9.3f}"
                  + "".join(f"{r.cpu_ms(b):>11.3f}" for b in bouncer)
                  + f"{r.rate:>8,.0f}{p50:>8.1f}{p99:>8.1f}"
                  f"{mean(r.server_share):>5.0%}{gen:>5.0%}"
                  f"{'!' if gen >= GENERATOR_BOUND else ' '} {errors:<7} "
                  f"{' / '.join(f'{x:.2f}' for x in r.cpu_per_round)}")
    for server in args.servers:
        mix = results.get(("mix", server))
        if mix is None or not mix.count:
            continue
        print(f"\nThe mix on {server}: per route (share of the answered requests, latency)")
        print(f"{'route':<8}{'share':>7}{'p50 ms':>8}{'p99 ms':>8}  errors   {'':<4}what")
        for name, share, _ in MIX:
            n = mix.route_count(name)
            errors = sum(mix.route_errors.get(name, Counter()).values())
            print(f"{name:<8}{n / mix.count:>7.1%}{mix.percentile_ms(name, 0.5):>8.1f}"
                  f"{mix.percentile_ms(name, 0.99):>8.1f}  {errors:<8} {share:>3} % "
                  f"{titles[name]}")
        singles = {name: results.get((name, server)) for name in ROUTES}
        if all(s is not None and s.count for s in singles.values()):
            for what in ("server", "postgres", "redis", *(("pgbouncer",) if
                                                          args.pgbouncer else ())):
                predicted = sum(share / 100 * singles[name].cpu_ms(what)  # type: ignore[union-attr]
                                for name, share, _ in MIX)
                print(f"{what} CPU per request: mix measured {mix.cpu_ms(what):.3f} ms, "
                      f"predicted from the routes alone {predicted:.3f} ms")
        if mix.pool_in_use:
            in_use = mean(mix.pool_in_use)
            print(f"DB pool in use during the mix: mean {in_use:.1f} of {POOL_MAX} "
                  f"(max {max(mix.pool_in_use):.0f}) at {mix.rate:,.0f} req/s: "
                  f"{1000 * in_use / mix.rate:.2f} ms of a connection per request")
    first = args.servers[0]
    for other in args.servers[1:]:
        print(f"\n{first} / {other} (CPU per request: below 1 is cheaper; req/s: above 1 is "
              "faster)")
        for workload in WORKLOADS:
            a, b = results.get((workload, first)), results.get((workload, other))
            if a and b and a.count and b.count:
                print(f"{workload:<9} CPU ×{a.cpu_ms() / b.cpu_ms():.2f}   "
                      f"req/s ×{a.rate / b.rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="fast", type=lambda s: s.split(","),
                        help="INNERA_HTTP_SERVER values, compared in this order; NAME@DIR runs "
                             "NAME from the checkout in DIR (before/after in one run)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=100, help="entries per account")
    parser.add_argument("--pgbouncer", action="store_true",
                        help="the servers reach PostgreSQL through a private PgBouncer in "
                             "transaction mode")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable of every server (last word: after "
                             "--pgbouncer's); repeatable")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS),
                        metavar="NAME", help=f"a subset of: {', '.join(WORKLOADS)}")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C

    print(*machine_facts(), sep="\n")
    print(f"servers {', '.join(args.servers)}; {args.rounds} round(s) of {args.duration:g} s "
          f"per workload after {WARMUP_S:g} s warm-up; {args.connections} connections from one "
          "loadgen.py process; DB_POOL_MIN = DB_POOL_MAX = 20", flush=True)
    with tempfile.TemporaryDirectory(prefix="innera-mixed-bench-") as tmp, \
            database() as database_url, \
            private_redis(Path(tmp) / "redis") as (redis_url, redis_proc), \
            (private_pgbouncer(Path(tmp) / "pgbouncer", database_url) if args.pgbouncer
             else nullcontext((database_url, None))) as (server_database_url, bouncer):
        watched = {"redis": redis_proc.pid}
        if bouncer is not None:
            watched["pgbouncer"] = bouncer.pid
            print(f"through {pgbouncer_version()}, transaction mode, default_pool_size 10",
                  flush=True)
        env = server_env(database_url, redis_url, Path(tmp) / "data")
        env.update(DB_POOL_MIN=str(POOL_MAX), DB_POOL_MAX=str(POOL_MAX))
        started = time.perf_counter()
        accounts = trio.run(seed, env, args.accounts, args.entries)
        print(f"seeded {args.accounts:,} accounts × {args.entries} entries of ~1 KB, "
              f"{NOTIFICATIONS} notifications ({UNREAD} unread) each in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        print(*table_sizes(database_url), sep="\n", flush=True)
        env["DATABASE_URL"] = server_database_url
        if bouncer is not None:
            env.update(DB_PREPARED_STATEMENTS="false", DATABASE_MIGRATION_URL=database_url)
        for pair in args.server_env:
            key, _, value = pair.partition("=")
            env[key] = value
        if args.server_env:
            print(f"server environment: {', '.join(args.server_env)}", flush=True)
        results = measure(args, env, database_url, watched, accounts, Path(tmp))
        print_tables(args, results)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (cleaned up)")
