"""Start-up and shutdown time of ``innera serve``, measured end to end on real processes.

    .venv/bin/python bench/startup_shutdown.py [--runs 3]

Modes: ``external`` (the local PostgreSQL and Redis, a fresh database each run),
``embedded-cold`` (fresh data dir: initdb + first start), ``embedded-warm`` (existing data dir).
Time to ready = process spawn → first 200 from ``/health/ready``; shutdown = SIGTERM → exit
(idle server). Figures are medians; the ratio column is relative to ``external`` in this run.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
ADMIN = os.environ.get("INNERA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("INNERA_TEST_REDIS_URL", "redis://127.0.0.1:6379") + "/15"


def run_once(env: dict[str, str]) -> tuple[float, float]:
    full = {k: v for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT", "NODE_ENV", "INNERA_ENV")}
    full.update(env, HOST="127.0.0.1", PORT="0", LOG_LEVEL="info")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "innera.cli", "serve"], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    port = None
    for line in proc.stdout:
        m = re.search(r"innera listening on http://[\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        raise SystemExit("server did not start")
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                c.request("GET", "/health/ready")
                if c.getresponse().status == 200:
                    break
            finally:
                c.close()  # an idle keep-alive connection would hold the drain for 5 s
        except OSError:
            pass
        time.sleep(0.02)
    ready = time.monotonic() - t0
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    stopped = time.monotonic() - t1
    proc.stdout.read()
    if code != 0:
        raise SystemExit(f"exit code {code}")
    return ready, stopped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    runs = ap.parse_args().runs
    results: dict[str, list[tuple[float, float]]] = {"external": [], "embedded-cold": [],
                                                      "embedded-warm": []}
    warm_dir = Path(tempfile.mkdtemp(prefix="innera-bench-warm-"))
    try:
        run_once({"INNERA_DATA_DIR": str(warm_dir)})  # prepare the warm dir
        for i in range(runs):  # alternate the modes so machine noise spreads evenly
            name = f"innera_bench_{os.getpid()}_{i}"
            with psycopg.connect(ADMIN, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{name}"')
            try:
                url = ADMIN.rsplit("/", 1)[0] + "/" + name
                results["external"].append(run_once({"DATABASE_URL": url, "REDIS_URL": REDIS,
                                                     "INNERA_DATA_DIR": str(warm_dir / "ext")}))
            finally:
                with psycopg.connect(ADMIN, autocommit=True) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cold_dir = Path(tempfile.mkdtemp(prefix="innera-bench-cold-"))
            try:
                results["embedded-cold"].append(run_once({"INNERA_DATA_DIR": str(cold_dir)}))
            finally:
                shutil.rmtree(cold_dir, ignore_errors=True)
            results["embedded-warm"].append(run_once({"INNERA_DATA_DIR": str(warm_dir)}))
    finally:
        shutil.rmtree(warm_dir, ignore_errors=True)

    base_ready = statistics.median(r for r, _ in results["external"])
    base_stop = statistics.median(s for _, s in results["external"])
    print(f"{'mode':<15}{'ready (s)':>11}{'× external':>12}{'shutdown (s)':>14}{'× external':>12}")
    for mode, rows in results.items():
        ready = statistics.median(r for r, _ in rows)
        stop = statistics.median(s for _, s in rows)
        print(f"{mode:<15}{ready:>11.2f}{ready / base_ready:>12.2f}"
              f"{stop:>14.2f}{stop / base_stop:>12.2f}")


if __name__ == "__main__":
    main()
