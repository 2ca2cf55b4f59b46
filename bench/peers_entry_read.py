"""The peers' entry read (``../shared/peers/entry_read``) with one or more innera checkouts
in the same run: before/after against Fastify and Starlette, ratios from one run.

    .venv/bin/python bench/peers_entry_read.py [--tree before=/tmp/innera-before]
        [--tree after=.] [--users 200] [--rounds 3] [--secs 8] [--conns 64]
        [--wide-conns 256] [--peers ../shared/peers/entry_read/run.py]

It drives the peers with their own script's functions (``run.py``: its set-up, its seeding,
its wrk script of random (token, entry) pairs, its accounts created through innera's API),
so every server gets the very same load: ``GET /v1/entries/{id}``, a random account's entry
per request, over ``--users`` accounts, ``--conns`` connections, ``--secs`` per round.

Each round starts every server in turn, measures it and stops it: Fastify, Starlette, then
each ``--tree`` (``innera serve`` from that checkout, ``INNERA_HTTP_SERVER=fast`` unless
``LABEL=NAME@DIR``), in the order given, reversed every other round for innera's. No server
is pinned to a CPU (as in the peers' script). innera runs as in production but for the rate
limits (out of the way, as the peers' README says) and ``INNERA_ENV=test``: access log at
``LOG_LEVEL=info`` written to /dev/null (the peers write theirs there too), metrics on.

All innera checkouts share one fresh database and one Redis DB (the schema must be the same),
seeded once through innera's services (``bench/mixed_load.py``'s seeding: its sign-up path
hashes a password per account, which the peers' script does over the API 16 at a time and
innera's bounded hashing queue refuses with 503 ``busy``): ``--users`` accounts with 2,000
entries of ~1 KB in all, the same as the peers' script creates, and a token per account.
After the rounds, every server is driven once more at ``--wide-conns`` (256) connections:
its errors (non-2xx, connect/read/write errors, timeouts) and p99.

Prints every round, the medians, each server's ratio to Fastify and to Starlette, and the
innera trees against each other.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from bench.http_load import (  # noqa: E402
    WARMUP_S,
    database,
    free_port,
    machine_facts,
    ready,
    redis_db,
    sampling,
    server_env,
    stop_server,
)
from bench.mixed_load import seed  # noqa: E402

PEERS = ROOT.parent / "shared" / "peers" / "entry_read" / "run.py"
#: entries over the accounts (the peers' script creates 2,000 through innera's API)
ENTRIES = 2000
FASTIFY, STARLETTE = "fastify+pg", "starlette+uvicorn+asyncpg"


@dataclass
class Round:
    rps: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    #: the server process's CPU µs per request (innera's rounds)
    cpu_us: float = math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(proc: subprocess.Popen[bytes], run, sample: Path | None, secs: int
             ) -> Round:
    """``run()`` (a wrk round) with the server's CPU per request, sampled by py-spy into
    ``sample`` if given."""
    before = cpu_seconds(proc.pid)
    with sampling(proc.pid, sample, secs - WARMUP_S - 1):
        result = run()
    result.cpu_us = 1e6 * (cpu_seconds(proc.pid) - before) / max(result.rps * secs, 1)
    return result


def load_peers(path: Path):
    spec = importlib.util.spec_from_file_location("peers_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wrk(peers, base: str, pairs: list[tuple[str, str]], conns: int, secs: int
        ) -> Round:
    """The peers' wrk command (their script of random pairs), with socket errors counted."""
    script = peers.lua_for(pairs)
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-s", script,
                          base + "/"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    non2xx = int((re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out) or [0, 0])[1])
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    return Round(rps, p99, non2xx, sum(int(n) for n in errors.groups()) if errors else 0)


def start_innera(tree: Path, http_server: str, env: dict[str, str]
                 ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "innera.cli", "serve"], cwd=tree,
                            env={**env, "PORT": str(port), "INNERA_HTTP_SERVER": http_server},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(port):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"innera from {tree} did not start")


def start_peer(peers, name: str) -> tuple[subprocess.Popen[bytes], int]:
    here = os.path.dirname(peers.__file__)
    env = {**os.environ, "NODE_PATH": os.path.join(peers.NODE, "node_modules"),
           "PEER_WORKLOAD": peers.WORKLOAD}
    if name == FASTIFY:
        cmd, port = ["node", os.path.join(here, "fastify_server.js")], 8100
        env["PORT"] = "8100"
    else:
        cmd, port = [os.path.join(peers.VENV, "bin", "uvicorn"), "--app-dir", here, "--port",
                     "8101", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                     "starlette_app:app"], 8101
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peers.wait_up(f"http://127.0.0.1:{port}/health")
    return proc, port


def stop_peer(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def cpu_text(rows: list[Round]) -> str:
    values = [r.cpu_us for r in rows if not math.isnan(r.cpu_us)]
    return f"{statistics.median(values):.0f}" if values else "-"


def parse_tree(text: str) -> tuple[str, str, Path]:
    label, _, rest = text.partition("=")
    if not rest:
        label, rest = Path(text).name or "innera", text
    name, _, directory = rest.rpartition("@") if "@" in rest else ("fast", "", rest)
    return label, name, Path(directory).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=[NAME@]DIR",
                        help="an innera checkout to serve (repeatable; default: this one)")
    parser.add_argument("--peers", type=Path, default=PEERS)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=8)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--wide-conns", type=int, default=256)
    parser.add_argument("--sample", type=Path, default=None, metavar="DIR",
                        help="py-spy samples each innera round into DIR/<label>-roundN.txt "
                             "(collapsed stacks)")
    args = parser.parse_args()
    trees = [parse_tree(t) for t in args.tree] or [("innera", "fast", ROOT)]
    peers = load_peers(args.peers)
    peers.setup(args.users)  # the peers' venv, node_modules and seeded table
    import json

    workload = json.load(open(peers.WORKLOAD))
    peer_pairs = [(t, i) for t, i in workload["pairs"]]
    print(*(line for line in machine_facts() if not line.startswith("CPUs:")), sep="\n")
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # py-spy
    print(f"{args.users} accounts, {args.conns} connections, {args.rounds} rounds of "
          f"{args.secs} s; innera: {', '.join(f'{label}={name}@{d}' for label, name, d in trees)}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="innera-peers-") as tmp, database() as db_url, \
            redis_db() as redis_url:
        env = server_env(db_url, redis_url, Path(tmp) / "data")
        env["LOG_LEVEL"] = "info"
        accounts = trio.run(seed, env, args.users, ENTRIES // args.users)
        innera_pairs = [(account.token, entry_id) for account in accounts
                        for entry_id in account.entry_ids]
        results: dict[str, list[Round]] = {}
        for rnd in range(args.rounds):
            for name in (FASTIFY, STARLETTE):
                proc, port = start_peer(peers, name)
                try:
                    results.setdefault(name, []).append(
                        wrk(peers, f"http://127.0.0.1:{port}", peer_pairs, args.conns, args.secs))
                finally:
                    stop_peer(proc)
            for label, http_server, tree in (trees if rnd % 2 == 0 else trees[::-1]):
                proc, port = start_innera(tree, http_server, env)
                sample = args.sample / f"{label}-round{rnd + 1}.txt" if args.sample else None
                try:
                    results.setdefault(label, []).append(measured(proc, functools.partial(
                        wrk, peers, f"http://127.0.0.1:{port}", innera_pairs, args.conns,
                        args.secs), sample, args.secs))
                finally:
                    stop_server(proc)
            print(f"round {rnd + 1}: " + "; ".join(
                f"{k} {v[-1].rps:.0f} req/s p99 {v[-1].p99_ms:.1f} ms" for k, v in results.items()),
                flush=True)
        wide: dict[str, Round] = {}
        if args.wide_conns:
            for name in (FASTIFY, STARLETTE):
                proc, port = start_peer(peers, name)
                try:
                    wide[name] = wrk(peers, f"http://127.0.0.1:{port}", peer_pairs,
                                     args.wide_conns, args.secs)
                finally:
                    stop_peer(proc)
            for label, http_server, tree in trees:
                proc, port = start_innera(tree, http_server, env)
                try:
                    wide[label] = wrk(peers, f"http://127.0.0.1:{port}", innera_pairs,
                                      args.wide_conns, args.secs)
                finally:
                    stop_server(proc)
    med = {k: statistics.median(r.rps for r in v) for k, v in results.items()}
    print(f"\n| server | req/s (median) | p99 ms (median) | non-2xx | × Fastify | × Starlette "
          f"| innera CPU µs/request | {args.wide_conns} conns: req/s, p99 ms, errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, rows in results.items():
        w = wide.get(k)
        wide_text = (f"{w.rps:,.0f}, {w.p99_ms:.1f}, {w.non2xx + w.socket_errors}"
                     if w else "-")
        print(f"| {k} | {med[k]:,.0f} | {statistics.median(r.p99_ms for r in rows):.1f} | "
              f"{sum(r.non2xx for r in rows)} | {med[k] / med[FASTIFY]:.2f} | "
              f"{med[k] / med[STARLETTE]:.2f} | {cpu_text(rows)} | {wide_text} |")
    print("rounds (req/s): " + "; ".join(
        f"{k} {' / '.join(f'{r.rps:,.0f}' for r in v)}" for k, v in results.items()))
    labels = [label for label, _, _ in trees]
    for other in labels[1:]:
        print(f"{labels[0]} / {other}: ×{med[labels[0]] / med[other]:.2f} req/s")


if __name__ == "__main__":
    main()
