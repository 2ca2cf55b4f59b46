"""Search over HTTP against the real server (entries seeded through the real cipher), and the
text normalisation it relies on."""

from __future__ import annotations

import random
import sys
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from innera.journal.search import (
    _normalise_pieces,
    normalise,
    normalise_reference,
    parse_terms,
    search_entries,
    snippet,
)
from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer
from tests.test_entries import create, metric, seed_entries
from tests.test_http import assert_error


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "RATE_LIMIT_AUTH": "1000/min", "RATE_LIMIT_USER": "10000/min"}


BASE = datetime(2024, 1, 1, tzinfo=UTC)


async def search(server: RunningServer, account: Account, q: str, **params: Any
                 ) -> dict[str, Any]:
    r = await server.client.get("/v1/search", params={"q": q, **params}, headers=account.auth)
    assert r.status_code == 200, r.text
    return r.json()


def bodies(result: dict[str, Any]) -> list[str]:
    return [hit["entry"]["body"] for hit in result["items"]]


# --- normalisation (pure functions) ---------------------------------------------------------


def test_normalise_folds_case_accents_and_compatibility_forms() -> None:
    assert normalise("Café") == normalise("CAFE") == normalise("cafe\u0301") == "cafe"
    assert normalise("Straße") == normalise("STRASSE") == "strasse"
    assert normalise("ﬁne Ｆｕｌｌ") == "fine full"
    assert normalise("Ἀθῆναι") == normalise("αθηναι")
    assert normalise("😀") == "😀" and normalise("❤️") == normalise("❤")
    assert normalise("ASCII only, untouched!") == "ascii only, untouched!"
    assert normalise("Ωmega") == normalise("ωMEGA")
    assert parse_terms("  Café\u00a0STRASSE café ") == ["cafe", "strasse"]
    assert parse_terms(" \u0301 ") == [] and parse_terms("   ") == []


def test_the_fast_paths_agree_with_the_reference() -> None:
    rng = random.Random(7)
    pages = ("cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1257")
    alphabet = sorted({c for page in pages for c in bytes(range(256)).decode(page, "ignore")})
    singles = [chr(c) for c in range(0x3000)] + alphabet + ["😀", "👍🏽", "日", "&", "#", ";"]
    for char in singles:
        assert normalise(char) == normalise_reference(char), hex(ord(char))
    extras = ["😀", "❤️", "👨\u200d👩\u200d👧", "&#65;", "&#", "日本", "ł", "Ж", "é", "ß",
              "ﬁ", "İ", "…"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        for _ in range(rng.randint(0, 3)):
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(extras) + text[at:]
        assert normalise(text) == normalise_reference(text), repr(text)


def test_long_text_normalised_in_pieces_has_the_same_form() -> None:
    # the scan normalises long text piece by piece (short C calls): cutting anywhere, even
    # inside a combining sequence or a Hangul syllable made of jamo, changes nothing
    rng = random.Random(9)
    alphabet = ([chr(c) for c in range(0x20, 0x250)] + [chr(c) for c in range(0x300, 0x370)]
                + [chr(c) for c in range(0x1100, 0x1200)] + [chr(c) for c in range(0x3300, 0x3400)]
                + list("가각ᾳΣσςßİﬁかカ😀&#;") + ["\u0345", "\ufdfa", "\ufe0f", "\u3099", "\u0b47",
                                                "\u0b3e", "\u0dd9", "\u0dcf", "\u102e"])
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 60)))
        piece = rng.randint(1, 7)
        assert _normalise_pieces(text, piece) == normalise(text), (piece, text)
    assert _normalise_pieces("\ufdfa" * 5000) == normalise("\ufdfa" * 5000)


def test_no_combining_mark_lies_above_plane_1() -> None:
    # normalise() strips the marks it found below U+20000 only
    assert not [c for c in range(0x20000, sys.maxunicode + 1) if unicodedata.combining(chr(c))]


def test_snippet_is_cut_around_the_first_match_on_the_original_text() -> None:
    body = ("Lorem ipsum dolor sit amet " * 6 + "nous avons bu un CAFÉ crème au soleil "
            + "consectetur adipiscing elit " * 6)
    text = snippet(body, parse_terms("cafe"))
    assert "CAFÉ crème" in text
    assert text.startswith("…") and text.endswith("…") and len(text) <= 124
    assert snippet("Straße und Café", ["cafe"]) == "Straße und Café"
    decomposed = "x " * 80 + "cafe\u0301 " + "y " * 80
    cut = snippet(decomposed, ["cafe"])
    assert "cafe\u0301" in cut  # the accent of the matched letter is kept
    assert snippet("no match here " * 20, ["zzz"]).startswith("no match here")
    assert snippet("no match here " * 20, ["zzz"]).endswith("…")
    assert snippet("short", ["zzz"]) == "short"
    long_body = "ß" * 300 + " target"
    assert snippet(long_body, ["target"]).endswith("target")
    assert snippet("α" * 50 + "\n\n  ΣΟΦΊΑ  \n" + "β" * 200, ["σοφια"]).count("ΣΟΦΊΑ") == 1


# --- matching over HTTP ---------------------------------------------------------------------


async def test_case_accents_emoji_and_tags(server: RunningServer) -> None:
    account = await signup(server.client)
    await seed_entries(server, account.id, [
        ({"body": "Un Café à Paris"}, BASE + timedelta(hours=6)),
        ({"body": "cafe au lait"}, BASE + timedelta(hours=5)),
        ({"body": "Die Straße ist lang"}, BASE + timedelta(hours=4)),
        ({"body": "Feeling 😀 today"}, BASE + timedelta(hours=3)),
        ({"title": "Weekend", "body": "planted tulips", "tags": ["Gardening"]},
         BASE + timedelta(hours=2)),
        ({"title": "Ébauche", "body": "draft"}, BASE + timedelta(hours=1)),
    ])
    assert bodies(await search(server, account, "cafe")) == ["Un Café à Paris", "cafe au lait"]
    assert bodies(await search(server, account, "CAFÉ")) == ["Un Café à Paris", "cafe au lait"]
    assert bodies(await search(server, account, "STRASSE")) == ["Die Straße ist lang"]
    assert bodies(await search(server, account, "straße")) == ["Die Straße ist lang"]
    assert bodies(await search(server, account, "😀")) == ["Feeling 😀 today"]
    assert bodies(await search(server, account, "😢")) == []
    assert bodies(await search(server, account, "garden")) == ["planted tulips"]
    assert bodies(await search(server, account, "ebauche")) == ["draft"]
    result = await search(server, account, "nothing-like-this")
    assert result == {"items": [], "scanned": 6, "complete": True, "nextCursor": None}


async def test_every_term_must_match(server: RunningServer) -> None:
    account = await signup(server.client)
    await seed_entries(server, account.id, [
        ({"body": "apple and banana"}, BASE + timedelta(hours=3)),
        ({"body": "apple and cherry"}, BASE + timedelta(hours=2)),
        ({"title": "Banana", "body": "bread", "tags": ["apple"]}, BASE + timedelta(hours=1)),
    ])
    assert bodies(await search(server, account, "apple banana")) == ["apple and banana",
                                                                    "bread"]
    assert bodies(await search(server, account, "BANANA   apple")) == ["apple and banana",
                                                                      "bread"]
    assert bodies(await search(server, account, "apple")) == ["apple and banana",
                                                             "apple and cherry", "bread"]
    assert bodies(await search(server, account, "apple durian")) == []


async def test_limit_newest_first_snippet_and_continuation(server: RunningServer) -> None:
    account = await signup(server.client)
    filler = "Nothing much happened in the morning and the weather was grey again. " * 3
    await seed_entries(server, account.id, [
        ({"body": f"{filler}Then a walk to the Lighthouse number {i}. {filler}"},
         BASE + timedelta(days=i))
        for i in range(7)
    ] + [({"body": "unrelated"}, BASE + timedelta(days=i, hours=1)) for i in range(7)])
    first = await search(server, account, "lighthouse", limit=3)
    assert [h["entry"]["occurredAt"] for h in first["items"]] == [
        "2024-01-07T00:00:00.000Z", "2024-01-06T00:00:00.000Z", "2024-01-05T00:00:00.000Z"]
    assert first["complete"] is True and first["nextCursor"]
    for hit in first["items"]:
        assert "Lighthouse" in hit["snippet"]
        assert hit["snippet"].startswith("…") and hit["snippet"].endswith("…")
        assert len(hit["snippet"]) <= 125
    assert first["items"][0]["entry"]["body"].startswith(filler)
    rest = await search(server, account, "lighthouse", limit=3, cursor=first["nextCursor"])
    assert [h["entry"]["occurredAt"][:10] for h in rest["items"]] == [
        "2024-01-04", "2024-01-03", "2024-01-02"]
    last = await search(server, account, "lighthouse", limit=3, cursor=rest["nextCursor"])
    assert len(last["items"]) == 1 and last["nextCursor"] is None and last["complete"]
    everything = await search(server, account, "lighthouse", limit=100)
    assert len(everything["items"]) == 7 and everything["scanned"] == 14
    only_title = await create(server, account, title="Lighthouse keeper", body="short note")
    hit = (await search(server, account, "keeper"))["items"][0]
    assert hit["entry"] == only_title and hit["snippet"] == "short note"


async def test_the_scan_crosses_batches(server: RunningServer) -> None:
    account = await signup(server.client)
    items = [({"body": f"ordinary day {i}", "tags": ["daily"]}, BASE + timedelta(minutes=i))
             for i in range(1, 1201)]
    items.append(({"body": "the very first entry: Zygomorphic"}, BASE))
    await seed_entries(server, account.id, items)
    result = await search(server, account, "zygomorphic")
    assert bodies(result) == ["the very first entry: Zygomorphic"]
    assert result["scanned"] == 1201 and result["complete"] is True
    assert result["nextCursor"] is None


async def test_query_validation(server: RunningServer) -> None:
    account = await signup(server.client)
    for params, field in [({}, "q"), ({"q": ""}, "q"), ({"q": "x" * 201}, "q"),
                          ({"q": "   "}, "q"), ({"q": "\u0301"}, "q"),
                          ({"q": "a", "limit": 0}, "limit"), ({"q": "a", "limit": 101}, "limit"),
                          ({"q": "a", "page": 2}, "page")]:
        r = await server.client.get("/v1/search", params=params, headers=account.auth)
        body = assert_error(r, 422, "validation_failed")
        assert [d["field"] for d in body["error"]["details"]] == [field], params
    assert (await search(server, account, "x" * 200, limit=100))["items"] == []
    r = await server.client.get("/v1/search", params={"q": "a", "cursor": "forged"},
                                headers=account.auth)
    assert_error(r, 400, "invalid_cursor")
    assert_error(await server.client.get("/v1/search", params={"q": "a"}), 401, "unauthorized")


async def test_every_search_is_timed(server: RunningServer) -> None:
    account = await signup(server.client)
    before = await metric(server, "innera_search_duration_seconds_count")
    await search(server, account, "one")
    await search(server, account, "two")
    assert await metric(server, "innera_search_duration_seconds_count") == before + 2


class TestTimeout:
    @pytest.fixture
    def server_settings(self, server_settings: dict[str, str]) -> dict[str, str]:
        return {**server_settings, "SEARCH_TIMEOUT_S": "0.001"}

    async def test_a_slow_scan_returns_what_it_found_incomplete(self, server: RunningServer
                                                                ) -> None:
        account = await signup(server.client)
        await seed_entries(server, account.id, [
            ({"body": f"entry number {i} " + "lorem ipsum " * 80}, BASE + timedelta(minutes=i))
            for i in range(3000)
        ])
        before = await metric(server, "innera_search_duration_seconds_count")
        result = await search(server, account, "no-such-word")
        assert result["complete"] is False and result["items"] == []
        assert result["scanned"] < 3000
        assert result["nextCursor"]
        assert await metric(server, "innera_search_duration_seconds_count") == before + 1
        # the connection came back usable: the entries still list
        r = await server.client.get("/v1/entries", params={"limit": 1}, headers=account.auth)
        assert r.status_code == 200 and len(r.json()["items"]) == 1


async def test_a_scan_cut_midway_keeps_its_matches(server: RunningServer) -> None:
    """The scan itself (real pool and cipher), with deadlines shorter than a full scan."""
    account = await signup(server.client)
    total = 2000
    await seed_entries(server, account.id, [
        ({"body": f"entry {i} " + ("needle " if i % 10 == 0 else "") + "lorem ipsum " * 80},
         BASE + timedelta(minutes=i)) for i in range(total)])
    svc = server.services
    terms = parse_terms("needle")
    started = trio.current_time()
    full = await search_entries(svc.db, svc.entry_cipher, account.id, terms, limit=1000,
                                timeout_s=10)
    elapsed = trio.current_time() - started
    assert full.complete and full.scanned == total and len(full.entries) == total // 10
    timeout = elapsed / 2
    for _ in range(12):
        cut = await search_entries(svc.db, svc.entry_cipher, account.id, terms, limit=1000,
                                   timeout_s=timeout)
        if 0 < cut.scanned < total:
            break
        timeout = timeout * 2 if cut.scanned == 0 else timeout / 2
    else:
        pytest.fail("no deadline cut the scan midway")
    assert not cut.complete
    # newest first: exactly the matches among the entries read, in order
    assert [e.id for e in cut.entries] == [e.id for e in full.entries][:len(cut.entries)]
    assert len(cut.entries) == len([i for i in range(total - cut.scanned, total) if i % 10 == 0])
    assert cut.next_position is not None
    rest = await search_entries(svc.db, svc.entry_cipher, account.id, terms, limit=1000,
                                timeout_s=10, after=cut.next_position)
    assert rest.complete and rest.scanned == total - cut.scanned
    assert [e.id for e in cut.entries + rest.entries] == [e.id for e in full.entries]


# --- sharing the server ---------------------------------------------------------------------


async def _waiting_on_entries(locker: Any, count: int) -> None:
    """Until ``count`` queries of this database wait for the lock ``locker`` holds on
    ``entries``."""
    with trio.fail_after(10):
        while True:
            cur = await locker.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'entries'::regclass"
                " AND database = (SELECT oid FROM pg_database"
                "                 WHERE datname = current_database())")
            row = await cur.fetchone()
            if row[0] >= count:
                return
            await trio.sleep(0.01)


async def test_one_search_at_a_time_per_account(server: RunningServer, database_url: str
                                                ) -> None:
    """While a search of an account runs (stuck on a locked table), another search of that
    account answers 429 at once; another account's search runs at the same time."""
    from innera.db.connection import TrioConnection

    alice, bob = await signup(server.client), await signup(server.client)
    await seed_entries(server, alice.id, [({"body": "Alice went hiking"}, BASE)])
    await seed_entries(server, bob.id, [({"body": "Bob went hiking"}, BASE)])
    results: dict[str, dict[str, Any]] = {}

    async def run(name: str, account: Account) -> None:
        results[name] = await search(server, account, "hiking")

    async with await TrioConnection.connect(database_url) as locker:
        async with trio.open_nursery() as nursery:
            async with locker.transaction():
                await locker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
                nursery.start_soon(run, "alice", alice)
                await _waiting_on_entries(locker, 1)
                r = await server.client.get("/v1/search", params={"q": "other words"},
                                            headers=alice.auth)
                body = assert_error(r, 429, "search_in_progress")
                assert "search" in body["error"]["message"]
                assert r.headers["retry-after"] == "1"
                nursery.start_soon(run, "bob", bob)
                await _waiting_on_entries(locker, 2)  # both searches are running
            # the lock is released: both finish
    assert bodies(results["alice"]) == ["Alice went hiking"] and results["alice"]["complete"]
    assert bodies(results["bob"]) == ["Bob went hiking"] and results["bob"]["complete"]
    # once it has finished, the account can search again
    assert bodies(await search(server, alice, "alice")) == ["Alice went hiking"]


async def test_entries_of_long_compatibility_expansions(server: RunningServer) -> None:
    """U+FDFA is 18 characters after NFKC: such entries are found, with their snippets."""
    account = await signup(server.client)
    await seed_entries(server, account.id, [
        ({"body": "\ufdfa" * 40_000 + f" marker{i} " + "\ufdfa" * 40_000},
         BASE + timedelta(minutes=i)) for i in range(3)])
    result = await search(server, account, "MARKER1")
    assert result["scanned"] == 3 and result["complete"] is True
    [hit] = result["items"]
    assert "marker1" in hit["snippet"] and hit["snippet"].startswith("…\ufdfa")
    assert hit["entry"]["body"] == "\ufdfa" * 40_000 + " marker1 " + "\ufdfa" * 40_000


def _hangul(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.randint(0xAC00, 0xD7A3)) if rng.random() > 0.15 else " "
                   for _ in range(n))


async def test_a_row_failing_to_decrypt_in_a_scan_thread_fails_the_search(
        server: RunningServer) -> None:
    account = await signup(server.client)
    text = _hangul(random.Random(5), 20_000)  # large enough to be examined in a thread
    ids = await seed_entries(server, account.id, [
        ({"body": f"{text} entry {i}"}, BASE + timedelta(minutes=i)) for i in range(20)])
    async with server.services.db.connection() as conn:
        await conn.execute(
            "UPDATE entries SET content = (SELECT content FROM entries WHERE id = %s) "
            "WHERE id = %s", (ids[3], ids[7]))
    r = await server.client.get("/v1/search", params={"q": "entry"}, headers=account.auth)
    assert_error(r, 500, "crypto_error")
    # the failed search does not count as one in progress
    r = await server.client.get("/v1/search", params={"q": "entry"}, headers=account.auth)
    assert_error(r, 500, "crypto_error")


class TestTimeoutInsideABatch:
    """Every entry comes in the first batch (one query); the deadline still cuts the scan
    between two time slices, and the cursor continues after the last entry examined."""

    @pytest.fixture
    def server_settings(self, server_settings: dict[str, str]) -> dict[str, str]:
        return {**server_settings, "SEARCH_TIMEOUT_S": "0.15"}

    async def test_continuing_finds_every_entry_once(self, server: RunningServer) -> None:
        account = await signup(server.client)
        total = 80
        text = _hangul(random.Random(3), 95_000)  # several ms to normalise
        await seed_entries(server, account.id, [
            ({"body": f"{text} entry {i}" + (" needle" if i % 7 == 0 else "")},
             BASE + timedelta(minutes=i)) for i in range(total)])
        pages: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while len(pages) < 200:
            page = await search(server, account, "needle", **params)
            pages.append(page)
            if page["nextCursor"] is None:
                break
            params["cursor"] = page["nextCursor"]
        first, last = pages[0], pages[-1]
        assert first["complete"] is False and first["nextCursor"]
        assert first["scanned"] < total  # cut inside the first (and only) batch
        assert last["complete"] is True and last["nextCursor"] is None
        assert all(not page["complete"] for page in pages[:-1])
        # no entry examined twice, none skipped
        assert sum(page["scanned"] for page in pages) == total
        found = [hit["entry"]["body"].rsplit(" entry ", 1)[1]
                 for page in pages for hit in page["items"]]
        assert found == [f"{i} needle" for i in reversed(range(total)) if i % 7 == 0]
        for page in pages:
            for hit in page["items"]:
                assert hit["snippet"].startswith("…") and hit["snippet"].endswith("needle")
