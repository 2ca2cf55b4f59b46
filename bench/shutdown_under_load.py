"""SIGTERM under keep-alive load: does the drain cut any request?

    .venv/bin/python bench/shutdown_under_load.py [--servers fast,hypercorn] [--runs 20]
        [--clients 6] [--load 300] [--path entry|health] [--env NAME=VALUE ...]
        [--client-close] [--tree DIR]

Each run starts ``innera serve`` (external PostgreSQL and Redis, rate limits out of the way),
starts ``--clients`` keep-alive clients (``tests/fixtures/keepalive_load.py``) sending
``GET /v1/entries/{id}`` (or ``/health``), sends SIGTERM once ``--load`` responses have
arrived, and lets every client run on until its new connection is refused. A request is
*cut* when its connection resets or closes before the whole response arrived; the script
prints each cut, the cuts per run and in total, and the server's exit code. ``--env`` passes
settings to the server (``SHUTDOWN_DRAIN_DELAY_S=1``); ``--client-close`` makes every
request open a connection of its own (new connections arrive all the time, independent of the
server's responses); ``--tree DIR`` runs the server from another checkout (``git worktree add
/tmp/base main``: before and after).

This is the reproduction of issue 17's "one request in about 6,000 ended in a connection
reset"; ``bench/results/`` holds its figures before and after the fix.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import database, redis_db, server_env  # noqa: E402
from tests.fixtures.keepalive_load import Tally, keep_alive_client, render_get  # noqa: E402
from tests.fixtures.server import spawn_process  # noqa: E402


def seed(url: str) -> tuple[str, str]:
    """A user with one entry, through the API: its access token and the entry's id."""
    with httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/v1/auth/signup", json={"email": "load@example.com",
                                                  "password": "correct horse battery"})
        r.raise_for_status()
        token = r.json()["accessToken"]
        r = client.post("/v1/entries", json={"body": "Went swimming."},
                        headers={"authorization": f"Bearer {token}"})
        r.raise_for_status()
        return token, r.json()["id"]


async def one_run(host: str, port: int, request: bytes, clients: int, load: int,
                  terminate: object) -> Tally:
    tally = Tally(loaded_after=load)
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(keep_alive_client, host, port, request, tally)
        with trio.fail_after(60):
            await tally.loaded.wait()
        terminate()  # type: ignore[operator]
        tally.signalled = True
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="fast,hypercorn")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--load", type=int, default=300,
                        help="responses before SIGTERM (all clients together)")
    parser.add_argument("--path", choices=("entry", "health"), default="entry")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--client-close", action="store_true",
                        help="one request per connection (the clients send Connection: close)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="run the server from this checkout (a baseline worktree)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with database() as database_url, redis_db() as redis_url, \
            tempfile.TemporaryDirectory() as tmp:
        env = {**server_env(database_url, redis_url, Path(tmp)), "PORT": "0", **extra}
        totals: dict[str, Counter[str]] = {}
        request = b""
        for name in args.servers.split(","):
            total = totals.setdefault(name, Counter())
            for run in range(args.runs):
                sp = spawn_process({**env, "INNERA_HTTP_SERVER": name}, tree=args.tree)
                # the access log goes to a pipe: read it all along, or the server blocks
                reader = threading.Thread(target=sp.read_rest)
                reader.start()
                parts = urlsplit(sp.url)
                host, port = parts.hostname or "127.0.0.1", parts.port or 0
                if not request:
                    token, entry_id = seed(sp.url)
                    path = f"/v1/entries/{entry_id}" if args.path == "entry" else "/health"
                    headers = {"Authorization": f"Bearer {token}"}
                    if args.client_close:
                        headers["Connection"] = "close"
                    request = render_get(path, f"{host}:{port}", headers)
                try:
                    tally = trio.run(one_run, host, port, request, args.clients, args.load,
                                     lambda sp=sp: sp.proc.send_signal(signal.SIGTERM))
                    code = sp.proc.wait(60)
                finally:
                    if sp.proc.poll() is None:
                        sp.proc.kill()
                        sp.proc.wait()
                reader.join()
                total.update(responses=tally.responses, refused=tally.refused,
                             closes=tally.closes, cut=len(tally.cut), runs=1,
                             nonzero_exit=int(code != 0))
                print(f"{name} run {run + 1}: {tally.responses} responses "
                      f"({tally.on_new_connections_after_signal} on connections opened after "
                      f"the signal), {tally.closes} with Connection: close, "
                      f"{tally.refused} refused, "
                      f"{len(tally.cut)} cut, exit {code}", flush=True)
                for cut in tally.cut:
                    print(f"    cut: {cut}", flush=True)
        print()
        for name, total in totals.items():
            print(f"{name}: {total['runs']} runs x {args.clients} clients: "
                  f"{total['responses']} responses, {total['cut']} cut "
                  f"({total['cut'] / max(1, total['responses'] + total['cut']):.2e} of requests), "
                  f"{total['refused']} refused new connections, "
                  f"{total['nonzero_exit']} non-zero exits")


if __name__ == "__main__":
    main()
