"""DB_PREPARED_STATEMENTS on every connection innera opens (``innera.db.connect_options``):
off, nothing is prepared on the server, however often a query runs, executemany (which
psycopg prepares at once, in pipeline mode) included."""

from __future__ import annotations

import pytest

from innera.config import load_settings
from innera.db.connect_options import connect_options


@pytest.mark.parametrize(("setting", "prepares"), [("true", True), ("false", False)])
async def test_db_prepared_statements_decides_whether_the_server_holds_prepared_statements(
    database_url: str, setting: str, prepares: bool,
) -> None:
    db = load_settings({"DATABASE_URL": database_url, "DB_PREPARED_STATEMENTS": setting}).db
    async with await connect_options(db, database_url).connect() as conn:
        for _ in range(10):  # psycopg prepares after 5 runs by default
            await conn.execute("SELECT count(*) FROM users WHERE email = %s", ("a@b.c",))
        async with conn.cursor() as cur:
            await cur.executemany("SELECT %s::int", [(1,), (2,)])
        cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
        row = await cur.fetchone()
    assert row is not None
    assert (row[0] > 0) is prepares, f"{row[0]} prepared statement(s) on the server"
