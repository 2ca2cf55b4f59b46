"""Versioned SQL migrations: ``innera/db/migrations/NNNN_name.sql``.

``await migrate(pool_or_conn)`` applies the pending files in version order, each in its own
transaction together with its row in ``schema_migrations``, all under a session-level
``pg_advisory_lock`` so that instances starting together apply each migration once (the
others wait, then find nothing to do). Files must not contain BEGIN/COMMIT.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
import trio
from psycopg import pq
from psycopg.rows import tuple_row

from innera.db.connection import CANCEL_TIMEOUT_S
from innera.db.pool import Pool

__all__ = ["ADVISORY_LOCK_KEY", "Migration", "MigrationError", "load_migrations", "migrate"]

#: Fixed 64-bit key of the advisory lock serialising migrations ("innera" + "MG").
ADVISORY_LOCK_KEY = 0x696E6E657261_4D47

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = b"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """A migration file failed (it was rolled back); the message names the file."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # "0001_users"
    sql: str


def load_migrations(package: str = "innera.db", directory: str = "migrations"
                    ) -> list[Migration]:
    """The migration files of ``package``/``directory``, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).joinpath(directory).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        if not (m := _FILE_RE.match(entry.name)):
            raise MigrationError(f"badly named migration file {entry.name!r} "
                                 "(expected NNNN_lower_case_name.sql)")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}: "
                                 f"{found[version].name}, {entry.name}")
        found[version] = Migration(version, entry.name[:-4], entry.read_text("utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(target: Pool | psycopg.AsyncConnection[Any], *,
                  migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply the pending migrations; return the names applied (e.g. ``["0001_users"]``).

    ``target`` is a running :class:`Pool` or an idle connection (set to autocommit for the
    duration). Raises :class:`MigrationError` naming the file that failed.
    """
    todo = load_migrations() if migrations is None else list(migrations)
    if isinstance(target, Pool):
        async with target.connection() as conn:
            return await _migrate(conn, todo)
    autocommit = target.autocommit
    if not autocommit:
        await target.set_autocommit(True)
    try:
        return await _migrate(target, todo)
    finally:
        if not autocommit and not target.closed:
            await target.set_autocommit(False)


async def _migrate(conn: psycopg.AsyncConnection[Any], todo: list[Migration]) -> list[str]:
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        raise MigrationError("migrate() needs a connection outside any transaction")
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,), name="migrate.lock")
        try:
            await cur.execute(_CREATE_TABLE, name="migrate.create_table")
            await cur.execute("SELECT version FROM schema_migrations", name="migrate.applied")
            done = {row[0] for row in await cur.fetchall()}
            applied: list[str] = []
            for migration in todo:
                if migration.version in done:
                    continue
                try:
                    async with conn.transaction():
                        await cur.execute(migration.sql.encode(), name="migrate.apply")
                        await cur.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            (migration.version, migration.name),
                            name="migrate.record",
                        )
                except psycopg.Error as ex:
                    raise MigrationError(
                        f"migration {migration.name}.sql failed: {str(ex).strip()}") from ex
                applied.append(migration.name)
            return applied
        finally:
            await _unlock(conn)


async def _unlock(conn: psycopg.AsyncConnection[Any]) -> None:
    """Release the advisory lock even when cancelled; if that fails, close the connection
    (which releases it too)."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + CANCEL_TIMEOUT_S
        try:
            if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                await conn.rollback()
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,),
                               name="migrate.unlock")
            return
        except psycopg.Error:
            pass
    await conn.close()
