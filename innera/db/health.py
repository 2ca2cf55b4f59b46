"""Database health probes for readiness checks and start-up sizing."""

from __future__ import annotations

import logging

import trio
from psycopg.rows import tuple_row

from innera.db.pool import Pool

__all__ = ["check_db_health", "max_connections"]

log = logging.getLogger("innera.db")


async def check_db_health(pool: Pool, timeout_s: float = 1.0) -> bool:
    """``SELECT 1`` through the pool within ``timeout_s`` (acquire included).

    Returns False on any failure or timeout; never raises (except the caller's own
    cancellation) and never waits longer than ``timeout_s``.
    """
    with trio.move_on_after(timeout_s):
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1", name="db.health")
            return True
        except Exception as exc:
            log.warning("database health check failed: %s", exc)
            return False
    log.warning("database health check timed out after %g s", timeout_s)
    return False


async def max_connections(pool: Pool) -> int:
    """The server's ``max_connections`` setting."""
    async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SHOW max_connections", name="db.max_connections")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])
