"""The size of an export archive per entry, from a real export: for the object-storage part of
the capacity plan (docs/capacity.md).

    .venv/bin/python bench/export_size.py [--entries 1000]

A fresh database on the local PostgreSQL and a private ``redis-server``; one account with
``--entries`` entries of ~1 KB (sealed with its data key, COPY, through innera's own
services: ``bench/mixed_load.py``'s seeding) and no attachments. ``innera serve`` (this
checkout, job workers on, the local object store under a temporary data dir) runs the export
the client asks for (``POST /v1/exports``); the archive is downloaded from the job's
``downloadUrl`` and its bytes counted. Attachments go into an archive as they are (stored,
not compressed), so an export's size is this per entry plus the user's attachment bytes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import database, server_env, start_server, stop_server  # noqa: E402
from bench.mixed_load import private_redis, seed  # noqa: E402

DEADLINE_S = 300


def export(port: int, token: str) -> bytes:
    """Ask for an export, wait until it is completed (``DEADLINE_S`` at most), download it."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        started = client.post("/v1/exports")
        started.raise_for_status()
        location = started.headers["Location"]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            job = client.get(location).json()
            if job["status"] == "completed":
                break
            if job["status"] == "failed" or time.monotonic() > deadline:
                raise SystemExit(f"the export did not complete: {job}")
            time.sleep(0.2)
    # a signed link, relative with the local store: no Authorization header
    archive = httpx.get(httpx.URL(f"http://127.0.0.1:{port}/").join(job["downloadUrl"]),
                        timeout=60)
    archive.raise_for_status()
    return archive.content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="innera-export-size-") as tmp, \
            database() as database_url, \
            private_redis(Path(tmp) / "redis", "--appendonly", "no") as (redis_url, _):
        env = server_env(database_url, redis_url, Path(tmp) / "data")
        (account,) = trio.run(seed, env, 1, args.entries)
        started = start_server({**env, "INNERA_HTTP_SERVER": "fast", "LOG_LEVEL": "warn"},
                               Path(tmp) / "server.log")
        if started is None:
            raise SystemExit("the server did not start")
        proc, port = started
        try:
            t0 = time.perf_counter()
            body = export(port, account.token)
            took = time.perf_counter() - t0
        finally:
            stop_server(proc)
        with zipfile.ZipFile(BytesIO(body)) as archive:
            members = archive.infolist()
            json_size = sum(m.file_size for m in members if m.filename.endswith(".json"))
        print(f"export of {args.entries:,} entries of ~1 KB, no attachments, in {took:.1f} s: "
              f"{len(body):,} bytes ({len(members)} member(s), {json_size:,} bytes of JSON "
              f"uncompressed): {len(body) / args.entries:,.0f} bytes per entry "
              f"({json_size / args.entries:,.0f} before compression)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (cleaned up)")
