"""The embedded default (innera/embedded.py): real PostgreSQL and Valkey processes, no mocks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import coredis
import psycopg
import pytest
import trio

from innera.embedded import (
    LOCK_FILE,
    EmbeddedError,
    run_embedded_postgres,
    run_embedded_valkey,
)

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, except as root: PostgreSQL then runs as another account that must
    traverse the path, and /tmp/pytest-of-root is 0700 -- re-set to 0700 by every pytest
    session that starts meanwhile (a parallel run), which pulled the floor from under an
    initdb once ("failed to remove contents of data directory"). So as root: a private dir
    directly under the temp dir, removed afterwards."""
    path = tmp_path if os.geteuid() != 0 else Path(tempfile.mkdtemp(prefix="innera-emb-test-"))
    try:
        yield path
    finally:
        kill_servers_in(path)  # a failed test must not leak servers (e.g. the crash test's)
        if path != tmp_path:
            shutil.rmtree(path, ignore_errors=True)


def kill_servers_in(directory: Path) -> None:
    """SIGKILL every process whose working directory is under ``directory`` (both servers
    chdir into their directory)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd == str(directory) or cwd.startswith(f"{directory}/"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)



async def sql(url: str, query: str) -> list[tuple[object, ...]]:
    """Run ``query`` with sync psycopg off the event loop (psycopg's async API is asyncio)."""

    def run() -> list[tuple[object, ...]]:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    return await trio.to_thread.run_sync(run)


async def redis(url: str, command: Callable[[coredis.Redis[str]], Awaitable[T]]) -> T:
    """Run ``command`` with the client innera uses (coredis, on Trio through anyio)."""
    client = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        return await command(client)


async def start_alone(fn: Callable[..., Awaitable[None]], data_dir: Path) -> None:
    """Start ``fn`` in a nursery of its own, re-raising its start-up error unwrapped."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fn, data_dir)
            nursery.cancel_scope.cancel()
    except ExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def pid_in(pidfile: Path) -> int:
    return int(pidfile.read_text().split("\n", 1)[0])


def running(pid: int) -> bool:
    """Alive, as opposed to gone or a zombie (this container's init does not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def has_proc_entry(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def port_open(url: str) -> bool:
    u = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((u.hostname or "", u.port or 0)) == 0


# -- tests -----------------------------------------------------------------------------------


async def test_cold_start_serves_both_and_cancellation_stops_them(data_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        pg_url = await nursery.start(run_embedded_postgres, data_dir)
        vk_url = await nursery.start(run_embedded_valkey, data_dir)

        assert pg_url.startswith("postgresql://postgres@127.0.0.1:")
        assert pg_url.endswith("/innera")
        assert vk_url.startswith("redis://127.0.0.1:")
        assert vk_url.endswith("/0")
        assert await sql(pg_url, "SELECT 1") == [(1,)]
        assert await sql(pg_url, "SELECT current_database()") == [("innera",)]
        assert await redis(vk_url, lambda r: r.ping()) == "PONG"
        config = await redis(vk_url, lambda r: r.config_get(["appendonly", "save"]))
        assert config == {"appendonly": "yes", "save": ""}
        pg_pid = pid_in(data_dir / "postgres" / "postmaster.pid")
        vk_pid = pid_in(data_dir / "valkey" / "valkey.pid")
        assert running(pg_pid)
        assert running(vk_pid)
        nursery.cancel_scope.cancel()

    # our children, reaped by us: not even zombies left
    assert not any(map(has_proc_entry, (pg_pid, vk_pid)))
    assert not port_open(pg_url)
    assert not port_open(vk_url)
    # clean shutdowns: both removed their pid files
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "valkey" / "valkey.pid").exists()
    if os.geteuid() == 0:  # PostgreSQL refuses root: it ran as the dedicated account
        assert (data_dir / "postgres").stat().st_uid != 0


async def test_second_start_reuses_the_data(data_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        pg_url = await nursery.start(run_embedded_postgres, data_dir)
        vk_url = await nursery.start(run_embedded_valkey, data_dir)
        await sql(pg_url, "CREATE TABLE entries (body text); INSERT INTO entries VALUES ('one')")
        await redis(vk_url, lambda r: r.rpush("queue", ["job-1"]))
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        pg_url2 = await nursery.start(run_embedded_postgres, data_dir)
        vk_url2 = await nursery.start(run_embedded_valkey, data_dir)
        assert await sql(pg_url2, "SELECT body FROM entries") == [("one",)]
        assert await redis(vk_url2, lambda r: r.lrange("queue", 0, -1)) == ["job-1"]
        nursery.cancel_scope.cancel()


HELPER = textwrap.dedent("""
    import sys, trio
    from pathlib import Path
    from innera.embedded import run_embedded_postgres, run_embedded_valkey

    async def main():
        async with trio.open_nursery() as nursery:
            pg = await nursery.start(run_embedded_postgres, Path(sys.argv[1]))
            vk = await nursery.start(run_embedded_valkey, Path(sys.argv[1]))
            print(pg, vk, flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


@pytest.mark.timeout(90)
async def test_crash_of_innera_leaves_nothing_that_blocks_the_next_start(data_dir: Path
                                                                         ) -> None:
    helper = await trio.lowlevel.open_process(
        [sys.executable, "-c", HELPER, str(data_dir)], cwd=REPO,
        stdout=-1, stderr=-1)  # subprocess.PIPE
    try:
        assert helper.stdout is not None
        out = b""
        with trio.fail_after(45):
            while b"\n" not in out:
                chunk = await helper.stdout.receive_some()
                assert chunk, f"helper exited: {helper.poll()}"
                out += chunk
        pg_url, vk_url = out.decode().split()
        await sql(pg_url, "CREATE TABLE entries (body text); INSERT INTO entries VALUES ('kept')")
        await redis(vk_url, lambda r: r.set("key", "kept"))

        # While it runs, the data dir is taken: refused clearly, nothing started.
        with pytest.raises(EmbeddedError, match=rf"another innera is using data dir .*"
                           rf"{LOCK_FILE}.* held by pid {helper.pid}"):
            await start_alone(run_embedded_postgres, data_dir)
        with pytest.raises(EmbeddedError, match="another innera is using data dir"):
            await start_alone(run_embedded_valkey, data_dir)

        orphans = [pid_in(data_dir / "postgres" / "postmaster.pid"),
                   pid_in(data_dir / "valkey" / "valkey.pid")]
    finally:
        helper.kill()  # SIGKILL: no clean-up of any kind in the helper
        with trio.CancelScope(shield=True):
            await helper.wait()
    assert helper.returncode == -signal.SIGKILL
    assert all(running(pid) for pid in orphans), "the servers outlive a killed innera"

    async with trio.open_nursery() as nursery:
        pg_url2 = await nursery.start(run_embedded_postgres, data_dir)
        vk_url2 = await nursery.start(run_embedded_valkey, data_dir)
        assert not any(running(pid) for pid in orphans), "orphans were stopped"
        assert await sql(pg_url2, "SELECT body FROM entries") == [("kept",)]
        assert await redis(vk_url2, lambda r: r.get("key")) == "kept"
        nursery.cancel_scope.cancel()


async def test_second_concurrent_start_in_one_process_is_refused(data_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        vk_url = await nursery.start(run_embedded_valkey, data_dir)
        with pytest.raises(EmbeddedError, match=r"another innera is using data dir .*lock"):
            await nursery.start(run_embedded_valkey, data_dir)
        assert await redis(vk_url, lambda r: r.ping()) == "PONG"  # the first one is unharmed
        nursery.cancel_scope.cancel()
    await start_alone(run_embedded_valkey, data_dir)  # released with the last server


async def test_start_up_failure_reports_the_log_tail(data_dir: Path) -> None:
    await start_alone(run_embedded_postgres, data_dir)  # initdb, start, stop
    with (data_dir / "postgres" / "postgresql.conf").open("a") as conf:
        conf.write("shared_buffers = 'plenty'\n")
    with pytest.raises(EmbeddedError, match=r"(?s)exited with code 1 during start-up.*"
                                            r"shared_buffers"):
        await start_alone(run_embedded_postgres, data_dir)


async def test_unexpected_death_fails_the_nursery(data_dir: Path) -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(EmbeddedError, match="exited unexpectedly"),
                            allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_embedded_valkey, data_dir)
            os.kill(pid_in(data_dir / "valkey" / "valkey.pid"), signal.SIGKILL)
            await trio.sleep_forever()
