"""Migrations: ordering, the advisory lock, failures, and the users table."""

from __future__ import annotations

import pytest
import trio
from psycopg import errors as e

from innera.db.connection import TrioConnection
from innera.db.migrate import Migration, MigrationError, load_migrations, migrate
from innera.db.pool import Pool

pytestmark = pytest.mark.timeout(15)


async def versions(url: str) -> list[tuple[int, str]]:
    async with await TrioConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
        return await cur.fetchall()


def test_migration_files() -> None:
    found = load_migrations()
    assert [m.name for m in found][:1] == ["0001_users"]
    assert [m.version for m in found] == sorted({m.version for m in found})


async def test_template_is_migrated_and_rerun_applies_nothing(
        database_url: str, db_pool: Pool) -> None:
    assert await migrate(db_pool) == []
    assert (await versions(database_url))[0] == (1, "0001_users")


async def test_concurrent_migrations_apply_each_once(empty_database_url: str) -> None:
    conns = [await TrioConnection.connect(empty_database_url, autocommit=True)
             for _ in range(3)]
    results: list[list[str]] = []

    async def run(conn: TrioConnection[tuple[object, ...]]) -> None:
        results.append(await migrate(conn))

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(run, conn)
    names = [m.name for m in load_migrations()]
    assert sorted(results, key=len) == [[], [], names]
    assert [name for _, name in await versions(empty_database_url)] == names
    assert await migrate(conns[0]) == []
    for conn in conns:
        await conn.close()


async def test_failing_migration_rolls_back_and_names_the_file(
        empty_database_url: str) -> None:
    extra = [
        *load_migrations(),
        Migration(9001, "9001_ok", "CREATE TABLE ok_table (x int);"),
        Migration(9002, "9002_broken", "CREATE TABLE half_done (x int); SELECT nope();"),
    ]
    async with await TrioConnection.connect(empty_database_url) as conn:  # not autocommit
        with pytest.raises(MigrationError, match=r"9002_broken\.sql failed") as info:
            await migrate(conn, migrations=extra)
        assert isinstance(info.value.__cause__, e.UndefinedFunction)
        assert not conn.autocommit  # restored
        await conn.set_autocommit(True)
        cur = await conn.execute("SELECT to_regclass('ok_table') IS NOT NULL,"
                                 " to_regclass('half_done') IS NULL")
        assert await cur.fetchone() == (True, True)
        # the advisory lock was released: another session migrates right away
        async with await TrioConnection.connect(empty_database_url, autocommit=True) as other:
            with trio.fail_after(2), pytest.raises(MigrationError):
                await migrate(other, migrations=extra)
    expected = [*(m.version for m in load_migrations()), 9001]
    assert [v for v, _ in await versions(empty_database_url)] == expected


async def test_users_table(db_pool: Pool) -> None:
    async with db_pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO users (email, password_hash) VALUES ('a@example.com', 'h')"
            " RETURNING id, status, created_at, updated_at")
        uid, status, created, updated = await cur.fetchone()  # type: ignore[misc]
        assert status == "active" and created == updated and uid.version == 4
        with pytest.raises(e.UniqueViolation):
            await conn.execute("INSERT INTO users (email, password_hash)"
                               " VALUES ('a@example.com', 'h')")
        with pytest.raises(e.CheckViolation):
            await conn.execute("INSERT INTO users (email, password_hash)"
                               " VALUES ('B@example.com', 'h')")
        with pytest.raises(e.CheckViolation):
            await conn.execute("UPDATE users SET status = 'gone' WHERE id = %s", (uid,))
        await conn.execute("UPDATE users SET status = 'disabled' WHERE id = %s", (uid,))
        cur = await conn.execute("SELECT updated_at > created_at FROM users WHERE id = %s",
                                 (uid,))
        assert await cur.fetchone() == (True,)
