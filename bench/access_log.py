"""CPU per access-log line ("request completed", one per request), in process: N lines of
``log_request_completed`` to a ``/dev/null`` stream configured by ``configure_logging``
(``json``, ``LOG_LEVEL=info``), from a Trio task with ``requestId`` (and ``userId``) bound,
as a request's task has them.

    .venv/bin/python bench/access_log.py [--lines 20000] [--rounds 5] [--before DIR] [--sentry]

Each variant runs in a process of its own, rounds alternating their order; the figure is
the median over rounds of CPU µs per line (``time.process_time``):

- ``after``: this checkout (the line written directly in ``json``);
- ``after, chain``: this checkout with a filter on ``innera.request``, which sends every line
  through logging and the structlog chain (what ``console``, or a caller's own context
  variable, still costs);
- ``before``: the checkout in ``DIR`` (``git worktree add --detach DIR main``), if given.

``--sentry`` initialises Sentry in every variant as ``innera serve`` does with a DSN (tracing
off, a transport that sends nothing): each line is then also a breadcrumb.

Cases: ``entry`` (``GET /v1/entries/{id}``, signed in), ``list`` (``?limit=20``, signed in:
the query is censored), ``health`` (anonymous). ``bind`` is the per-request cost of
``bind_request`` + ``bind_user``, the context variables every line of a request carries.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REQUEST_ID = "0b9e8c1a-2d3f-4e5a-8b7c-6d5e4f3a2b1c"
USER_ID = "7d1f6c2e-4b1a-4c55-9a53-5c3f2d1e0b9a"
#: (name, method, path, query, signed in)
CASES = [
    ("entry", "GET", "/v1/entries/5f0c3a9e-7b1d-4c2e-9a8f-1e2d3c4b5a69", b"", True),
    ("list", "GET", "/v1/entries", b"limit=20", True),
    ("health", "GET", "/health", b"", False),
]
WARM_UP = 1000


def worker(tree: str, chain: bool, lines: int, sentry: bool) -> dict[str, float]:
    """µs of CPU per line per case (and per bind), in this process, from ``tree``."""
    sys.path.insert(0, tree)
    import logging

    import trio
    from sentry_sdk.transport import Transport

    from innera.observability import logging as innera_logging
    from innera.observability.sentry import init_sentry

    class Unsent(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            pass

    if sentry:
        init_sentry("http://public@127.0.0.1:9/1", environment="bench", release="bench",
                    traces_sample_rate=0.0, transport=Unsent())

    with open(os.devnull, "w") as devnull:
        innera_logging.configure_logging("info", devnull, log_format="json")
        if chain:
            innera_logging.access_log.addFilter(logging.Filter())
        return trio.run(_measure, innera_logging, lines)


async def _measure(innera_logging: Any, lines: int) -> dict[str, float]:
    log, bind_request, bind_user = (innera_logging.log_request_completed,
                                    innera_logging.bind_request, innera_logging.bind_user)
    out: dict[str, float] = {}
    for name, method, path, query, signed_in in CASES:
        bind_request(REQUEST_ID)
        user = USER_ID if signed_in else None
        if signed_in:
            bind_user(USER_ID)
        for _ in range(WARM_UP):
            log(method, path, query, REQUEST_ID, user, 200, 0.0042)
        started = time.process_time()
        for _ in range(lines):
            log(method, path, query, REQUEST_ID, user, 200, 0.0042)
        out[name] = (time.process_time() - started) / lines * 1e6
    started = time.process_time()
    for _ in range(lines):
        bind_request(REQUEST_ID)
        bind_user(USER_ID)
    out["bind"] = (time.process_time() - started) / lines * 1e6
    return out


def run_variant(tree: Path, chain: bool, lines: int, sentry: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", str(tree), "--lines", str(lines)]
    if chain:
        cmd.append("--chain")
    if sentry:
        cmd.append("--sentry")
    done = subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, timeout=600)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a checkout to compare with (DIR)")
    parser.add_argument("--sentry", action="store_true",
                        help="Sentry initialised (no tracing): each line is a breadcrumb too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--chain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.chain, args.lines, args.sentry)))
        return

    variants: list[tuple[str, Path, bool]] = [("after", ROOT, False), ("after, chain", ROOT, True)]
    if args.before is not None:
        variants.append(("before", args.before.resolve(), False))
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in variants}
    for round_no in range(args.rounds):
        order = variants if round_no % 2 == 0 else variants[::-1]
        for label, tree, chain in order:
            results[label].append(run_variant(tree, chain, args.lines, args.sentry))
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

    names = [name for name, *_ in CASES] + ["bind"]
    median = {label: {name: statistics.median(r[name] for r in rounds) for name in names}
              for label, rounds in results.items()}
    print(f"CPU µs per line{' (Sentry on)' if args.sentry else ''}, median of {args.rounds} "
          f"rounds of {args.lines} lines "
          f"({', '.join(f'{label}: {tree}' for label, tree, _ in variants)})")
    print(f"{'variant':<14}" + "".join(f"{name:>10}" for name in names))
    for label, values in median.items():
        print(f"{label:<14}" + "".join(f"{values[name]:>10.2f}" for name in names))
    baseline = "before" if "before" in median else "after, chain"
    print(f"\nratio {baseline} / after (how many times cheaper the line is now)")
    print(f"{'':<14}" + "".join(
        f"{median[baseline][name] / median['after'][name]:>10.1f}" for name in names))


if __name__ == "__main__":
    main()
