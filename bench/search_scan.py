"""The search scan on a realistic journal: one user, N entries of ~1 KB body.

    .venv/bin/python bench/search_scan.py [--admin-url URL] [--entries 10000] [--runs 5]
                                          [--accented 0.2]

Creates a throw-away database from the admin URL, migrates it, makes one user with a data key
(the real DataKeys / EntryCipher on a generated keyring), seeds the entries with COPY, then
times ``innera.journal.search.search_entries``:

- a query matching nothing (the full scan): median of ``--runs``;
- a query matching early (a common word: the first batch fills ``limit`` = 20);
- for reference, the parts of the full scan: streaming the rows only, and decrypting +
  normalising the rows in memory.

``--accented`` is the share of entries with non-ASCII text (1 word in 10 accented, about
one emoji per entry): the slower normalisation paths.
Goal: the full scan of 10,000 entries in ≤ 150 ms. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import trio
from psycopg import sql

from innera.crypto.data_keys import DataKeys
from innera.crypto.entry_cipher import EntryCipher
from innera.crypto.keyring import Keyring, LocalKeyProvider, generate_keyring_text, parse_keyring
from innera.db.connection import TrioConnection
from innera.db.migrate import migrate
from innera.db.pool import Pool
from innera.journal.entries import ROW_COLUMNS
from innera.journal.search import normalise, parse_terms, search_entries
from innera.observability.metrics import Metrics

WORDS = ("the a and to of in was we it my day walk morning evening coffee work friend call "
         "talked felt tired happy quiet rain sun garden book read wrote dinner cooked long "
         "short train city park river bread music slept early late remember plan week "
         "Monday Tuesday weekend letter family dog cat market window light cold warm").split()
ACCENTED = "café été Straße naïve crème brûlée déjà vu Zürich señor façade Ålesund l’heure".split()
EMOJI = "😀 ❤️ 👍🏽 🌧️ ☕".split()
SETUP_TIMEOUT_S = 120
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def url_for_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(dbname)))


def make_body(rng: random.Random, accented: bool, size: int = 1000) -> str:
    """~``size`` characters of words; ``accented``: 1 word in 10 accented, ~1 emoji."""
    words: list[str] = []
    length = 0
    while length < size:
        draw = rng.random() if accented else 1.0
        word = rng.choice(EMOJI if draw < 0.006 else ACCENTED if draw < 0.1 else WORDS)
        words.append(word)
        length += len(word) + 1
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


async def seed(pool: Pool, cipher: EntryCipher, user_id: str, count: int, accented_share: float
               ) -> None:
    rng = random.Random(42)
    dek = await cipher.data_keys.get(user_id)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    async with pool.connection() as conn:
        cur = conn.cursor()
        async with cur.copy(
                "COPY entries (id, user_id, content, occurred_at) FROM STDIN") as copy:
            for i in range(count):
                entry_id = str(uuid.uuid4())
                body = make_body(rng, rng.random() < accented_share)
                content = {"title": f"Day {i}", "body": body, "tags": rng.sample(WORDS, 2),
                           "mood": None}
                sealed = cipher.seal_with(dek, user_id, entry_id, content)
                await copy.write_row((entry_id, user_id, sealed,
                                      start + timedelta(hours=i)))
        await conn.execute("VACUUM ANALYZE entries")


async def timed(fn: Any, runs: int) -> tuple[float, Any]:
    """Median seconds of ``runs`` calls (after one warm-up), and the last result."""
    result = await fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


async def bench(args: argparse.Namespace, url: str) -> None:
    metrics = Metrics()
    pool = Pool(url, min_size=1, max_size=4, acquire_timeout_s=10, name="bench-search")
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(SETUP_TIMEOUT_S):
            await migrate(pool)
            keyring = Keyring(parse_keyring(generate_keyring_text()))
            data_keys = DataKeys(pool, LocalKeyProvider(keyring), metrics)
            cipher = EntryCipher(data_keys)
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO users (email, password_hash) VALUES (%s, 'x') RETURNING id::text",
                    (f"bench-{uuid.uuid4().hex[:8]}@example.com",))
                row = await cur.fetchone()
                assert row is not None
                user_id = row[0]
                await data_keys.create(conn, user_id)
            started = time.perf_counter()
            await seed(pool, cipher, user_id, args.entries, args.accented)
            print(f"seeded {args.entries} entries (~1 KB body, {args.accented:.0%} with "
                  f"non-ASCII text) in {time.perf_counter() - started:.1f} s")

        async def scan(q: str, limit: int = 20) -> Any:
            with trio.fail_after(60):
                return await search_entries(pool, cipher, user_id, parse_terms(q),
                                            limit=limit, timeout_s=30)

        def report(label: str, seconds: float, scanned: int) -> None:
            print(f"{label:<34} {seconds * 1000:8.1f} ms  {scanned:6d} entries  "
                  f"{scanned / seconds:10,.0f} entries/s")

        full_s, full = await timed(lambda: scan("xylophonequartz"), args.runs)
        assert full.complete and full.scanned == args.entries and not full.entries
        report(f"full scan, no match (median of {args.runs})", full_s, full.scanned)
        early_s, early = await timed(lambda: scan("coffee"), args.runs)
        assert early.complete and len(early.entries) == 20
        report(f"early match, limit 20 (median of {args.runs})", early_s, early.scanned)
        multi_s, multi = await timed(lambda: scan("coffee garden Monday river"), args.runs)
        report("4 terms (AND), limit 20", multi_s, multi.scanned)

        # the parts, for reference
        async def fetch_only() -> list[Any]:
            with trio.fail_after(60):
                async with pool.connection() as conn:
                    cursor = conn.cursor(binary=True)
                    query = (f"SELECT {ROW_COLUMNS} FROM entries WHERE user_id = %s "
                             "ORDER BY occurred_at DESC, id DESC")
                    async with aclosing(cursor.stream(query, [user_id], size=500)) as rows:
                        return [row async for row in rows]

        fetch_s, rows = await timed(fetch_only, args.runs)
        report("  part: stream the rows only", fetch_s, len(rows))
        dek = await data_keys.get(user_id)

        async def decrypt_only() -> int:
            for row in rows:
                cipher.open_with(dek, user_id, row[0], row[1])
            return len(rows)

        decrypt_s, _ = await timed(decrypt_only, args.runs)
        report("  part: decrypt + JSON only", decrypt_s, len(rows))
        contents = [cipher.open_with(dek, user_id, row[0], row[1]) for row in rows]

        async def normalise_only() -> int:
            for c in contents:
                normalise(f"{c['title']}\n{c['body']}\n" + "\n".join(c["tags"]))
            return len(contents)

        norm_s, _ = await timed(normalise_only, args.runs)
        report("  part: normalise only", norm_s, len(contents))
        goal = "met" if full_s <= 0.150 else "NOT met"
        print(f"goal (full scan of 10,000 ≤ 150 ms): {goal}" if args.entries == 10_000
              else "")
        nursery.cancel_scope.cancel()


async def main(args: argparse.Namespace) -> None:
    dbname = f"innera_bench_search_{os.getpid()}"
    ident = sql.Identifier(dbname)
    with trio.fail_after(30):
        async with await TrioConnection.connect(args.admin_url, autocommit=True) as admin:
            await admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        await bench(args, url_for_database(args.admin_url, dbname))
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(30):
            async with await TrioConnection.connect(args.admin_url, autocommit=True) as admin:
                await admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        print(f"dropped {dbname}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default=os.environ.get("INNERA_TEST_DATABASE_URL",
                                                              DEFAULT_ADMIN_URL))
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accented", type=float, default=0.2,
                        help="share of entries with non-ASCII text (default 0.2)")
    trio.run(main, parser.parse_args())
