"""innera/compat/psycopg.py against the installed psycopg: the version is one it was written
for, and every internal it reaches exists with the shape the Trio adapter uses. A failure
here after an upgrade names what moved; review innera/compat/psycopg.py (and run tests/db)."""

from __future__ import annotations

import inspect
import socket
from typing import Any

import psycopg
import pytest
import trio
from psycopg import _copy_async, connection_async, cursor_async, generators, waiting
from psycopg.conninfo import make_conninfo
from psycopg.transaction import AsyncTransaction

from innera.compat import psycopg as compat
from innera.db import TrioConnection
from innera.db.connection import wait_conn

MODULE = "innera/compat/psycopg.py"
OUR_NAMES = ("connection_params", "connect_gen", "set_connect_options", "in_pipeline",
             "should_cancel", "cancel_gen", "mark_closed", "try_cancel", "terminate")


def params(func: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(func).parameters.values()]


P, KW, VAR_KW = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY,
                 inspect.Parameter.VAR_KEYWORD)


def test_installed_version_is_supported() -> None:
    compat.SUPPORTED.check()


def test_wait_timeout_is_an_operational_error() -> None:
    assert compat.WaitTimeout is psycopg.errors._WaitTimeout, MODULE
    assert issubclass(compat.WaitTimeout, psycopg.OperationalError), MODULE


def test_ready_now_polls_a_socket_without_waiting() -> None:
    assert compat.ready_now is waiting._ready, MODULE
    a, b = socket.socketpair()
    with a, b:
        assert compat.ready_now(a.fileno(), waiting.Wait.R) == 0
        assert compat.ready_now(a.fileno(), waiting.Wait.W) == waiting.Ready.W
        b.send(b"x")
        assert compat.ready_now(a.fileno(), waiting.Wait.RW) == waiting.Ready.RW


def test_conninfo_utils() -> None:
    assert params(compat.split_attempts) == [("params", P)], MODULE
    assert params(compat.get_param) == [("params", P), ("name", P)], MODULE
    assert compat.split_attempts({"host": "a,b", "port": "1,2", "dbname": "x"}) == [
        {"host": "a", "port": "1", "dbname": "x"}, {"host": "b", "port": "2", "dbname": "x"}]
    assert compat.get_param({"host": "h"}, "host") == "h"
    assert compat.get_param({}, "load_balance_hosts") in (None, "disable")
    port = compat.get_param_def("port")
    assert port is not None and hasattr(port, "compiled"), MODULE
    assert compat.is_ip_address("127.0.0.1") and compat.is_ip_address("::1")
    assert not compat.is_ip_address("localhost")


def test_transaction_exit_gen_signature() -> None:
    assert params(AsyncTransaction._exit_gen) == [
        ("self", P), ("exc_type", P), ("exc_val", P), ("exc_tb", P)], MODULE
    assert {"ACTIVE", "FAILED"} <= set(AsyncTransaction.Status.__members__), MODULE


def test_connection_private_methods() -> None:
    conn = psycopg.AsyncConnection
    static = inspect.getattr_static
    assert isinstance(static(conn, "_get_connection_params"), classmethod), MODULE
    assert inspect.iscoroutinefunction(conn._get_connection_params), MODULE
    assert params(conn._get_connection_params) == [("conninfo", P), ("kwargs", VAR_KW)]
    assert isinstance(static(conn, "_connect_gen"), classmethod), MODULE
    assert params(conn._connect_gen) == [("conninfo", P)], MODULE
    assert params(conn._should_cancel) == [("self", P)], MODULE
    assert inspect.isgeneratorfunction(conn._cancel_gen), MODULE
    assert inspect.iscoroutinefunction(conn._try_cancel), MODULE
    assert params(conn._try_cancel) == [("self", P), ("timeout", KW)], MODULE


def test_psycopg_calls_the_try_cancel_hook_on_clean_up() -> None:
    """TrioConnection.try_cancel is reached through psycopg's own ``_try_cancel`` calls."""
    for module in (connection_async, cursor_async, _copy_async):
        assert "._try_cancel(" in inspect.getsource(module), (module.__name__, MODULE)


def test_overridden_public_methods_keep_their_shape() -> None:
    conn = psycopg.AsyncConnection
    assert params(conn.wait) == [("self", P), ("gen", P), ("interval", P), ("timeout", P)]
    assert params(conn.cancel_safe) == [("self", P), ("timeout", KW)], MODULE
    assert params(conn.transaction) == [
        ("self", P), ("savepoint_name", P), ("force_rollback", P)], MODULE
    assert params(generators.fetch) == [("pgconn", P)], MODULE
    assert {"R", "W", "RW"} <= set(waiting.Wait.__members__), MODULE
    assert {"R", "W", "RW"} <= set(waiting.Ready.__members__), MODULE


def test_our_public_names_do_not_shadow_psycopg() -> None:
    for name in OUR_NAMES:
        assert not hasattr(psycopg.AsyncConnection, name), (name, MODULE)


async def test_instance_attributes(db_conn: TrioConnection[Any]) -> None:
    state = vars(db_conn)
    for name in ("_autocommit", "_adapters", "_pipeline", "_closed", "lock"):
        assert name in state, (name, MODULE)
    assert isinstance(db_conn.lock, trio.Lock)

    db_conn.set_connect_options(autocommit=True, context=None)
    assert db_conn.autocommit is True
    db_conn.set_connect_options(autocommit=False, context=psycopg.adapters)
    assert db_conn.autocommit is False
    assert db_conn.adapters is not psycopg.adapters  # a map of its own, derived from it

    assert not db_conn.in_pipeline
    async with db_conn.pipeline():
        assert db_conn.in_pipeline
    assert not db_conn.in_pipeline
    assert db_conn.should_cancel() is True


async def test_connect_gen_and_connection_params(database_url: str) -> None:
    conninfo = await TrioConnection.connection_params(database_url, application_name="t")
    assert conninfo["application_name"] == "t"
    gen = TrioConnection.connect_gen(make_conninfo("", **conninfo))
    conn = await wait_conn(gen, timeout=10)
    assert type(conn) is TrioConnection
    try:
        assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
    finally:
        conn.mark_closed()
        conn.pgconn.finish()
    assert conn.closed and not conn.broken


@pytest.mark.parametrize("exc", [None, ValueError("boom")])
async def test_transaction_exit_gen_commits_or_rolls_back(
    db_conn: TrioConnection[Any], exc: BaseException | None
) -> None:
    await db_conn.execute("CREATE TEMP TABLE t (x int)")
    tx = AsyncTransaction(db_conn)
    await tx.__aenter__()
    await db_conn.execute("INSERT INTO t VALUES (1)")
    async with db_conn.lock:
        suppressed = await db_conn.wait(compat.transaction_exit_gen(tx, exc))
    assert suppressed is False
    rows = await (await db_conn.execute("SELECT count(*) FROM t")).fetchone()
    assert rows == ((1,) if exc is None else (0,))


@pytest.mark.skipif(not psycopg.capabilities.has_cancel_safe(), reason="libpq < 17")
async def test_cancel_gen_cancels_a_running_query(db_conn: TrioConnection[Any]) -> None:
    async def cancel_soon() -> None:
        await trio.sleep(0.3)
        await wait_conn(db_conn.cancel_gen(), timeout=5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_soon)
        with pytest.raises(psycopg.errors.QueryCanceled):
            await db_conn.execute("SELECT pg_sleep(10)")
