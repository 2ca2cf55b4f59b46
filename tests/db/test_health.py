"""check_db_health / max_connections."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from innera.db.health import check_db_health, max_connections
from innera.db.pool import Pool

pytestmark = pytest.mark.timeout(10)


async def test_healthy(db_pool: Pool) -> None:
    assert await check_db_health(db_pool) is True
    assert await max_connections(db_pool) >= 10


async def test_unhealthy_server_answers_false_quickly(database_url: str, tcp_proxy: Any) -> None:
    proxy = await tcp_proxy.start("127.0.0.1", 5432)
    pool = Pool(database_url.replace(":5432/", f":{proxy.port}/"), min_size=1, max_size=2,
                acquire_timeout_s=5.0, on_error=lambda _: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        assert await check_db_health(pool, 0.5) is True

        proxy.set_mode("hang")  # connections cut, new ones hang: the pool would wait 5 s
        for _ in range(2):  # the 1st may fail at once on the cut connection, the 2nd hangs
            t0 = time.monotonic()
            assert await check_db_health(pool, 0.3) is False
            assert time.monotonic() - t0 < 0.45
        assert time.monotonic() - t0 > 0.25

        proxy.set_mode("refuse")
        t0 = time.monotonic()
        assert await check_db_health(pool, 1.0) is False
        assert time.monotonic() - t0 < 0.5

        proxy.set_mode("pass")
        assert await check_db_health(pool, 1.0) is True
        nursery.cancel_scope.cancel()


async def test_stopped_pool_is_unhealthy(database_url: str) -> None:
    pool = Pool(database_url, min_size=1, max_size=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        nursery.cancel_scope.cancel()
    assert await check_db_health(pool) is False


async def test_unreachable_port_is_unhealthy() -> None:
    pool = Pool("postgresql://postgres@127.0.0.1:1/postgres", min_size=0, max_size=1)
    t0 = time.monotonic()
    assert await check_db_health(pool, 1.0) is False  # never started: "pool not started"
    assert time.monotonic() - t0 < 0.2
