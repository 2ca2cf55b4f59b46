"""One self-registered account attacks one instance (a real ``innera serve`` process) while a
bystander probes ``GET /health`` every 50 ms from a process of its own
(``tests/fixtures/bystander.py``). For every attack:

- the bystander's worst ``/health`` stays under 250 ms, and every probe succeeds;
- the server's resident memory grows by less than 256 MiB (96 MiB for an upload carrying an
  ``Idempotency-Key``): the kernel's peak (``VmHWM``, reset through ``clear_refs`` before the
  attack) against the resident size before it;
- the attack is refused with a 4xx in the error contract, or its job fails with a clear code,
  and nothing is half-written;
- afterwards an honest user's import, search and login still work.

The attacks are the ones the hostile-input review ran (issue "Hostile input"): a Day One
heading that made a regular expression backtrack, a small zip expanding to a huge JSON,
JSON nested 200,000 deep, concurrent searches over long entries, a large upload with an
Idempotency-Key, and an import referencing one big attachment again and again.
"""

from __future__ import annotations

import io
import json
import random
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.fixtures.accounts import Account, signup
from tests.fixtures.bystander import Probe, bystander
from tests.fixtures.server import server_environ
from tests.fixtures.ws import WsClient
from tests.test_http import assert_error
from tests.workers.test_imports import dayone_doc, dayone_entry, innera_entry

pytestmark = pytest.mark.timeout(240)

MiB = 1024 * 1024
WORST_HEALTH_S = 0.250
MAX_GROWTH = 256 * MiB
MAX_GROWTH_KEYED_UPLOAD = 96 * MiB


@dataclass
class Target:
    """The attacked server process."""

    url: str
    pid: int

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for {self.pid}")

    def rss(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def peak(self) -> int:
        return self._status("VmHWM")


@dataclass
class Outcome:
    probe: Probe
    growth: int


@pytest.fixture
def target(spawn_server: Any, database_url: str, redis_url: str, tmp_path: Path) -> Target:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path / "data",
                                     RATE_LIMIT_USER="100000/min",
                                     RATE_LIMIT_AUTH="1000/min"))
    return Target(sp.url, sp.proc.pid)


@pytest.fixture
async def client(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=target.url, timeout=120) as http:
        yield http


async def attack(target: Target, run: Callable[[], Awaitable[None]]) -> Outcome:
    """Run ``run`` with the bystander probing; the server's memory growth meanwhile."""
    before = target.rss()
    target.reset_peak()
    async with bystander(target.url) as probe:
        await run()
    outcome = Outcome(probe, target.peak() - before)
    print(f"bystander: worst /health {probe.worst_s * 1000:.0f} ms over {probe.probes} probes;"
          f" server memory growth {outcome.growth / MiB:.1f} MiB")
    assert probe.probes > 0 and probe.failures == 0, probe
    assert probe.worst_s < WORST_HEALTH_S, (
        f"the bystander's /health took {probe.worst_s * 1000:.0f} ms")
    return outcome


async def import_file(client: httpx.AsyncClient, account: Account, data: bytes,
                      content_type: str, **headers: str) -> dict[str, Any]:
    """Upload ``data`` and wait for its job to finish."""
    r = await client.post("/v1/imports", content=data, headers={
        **account.auth, "content-type": content_type, **headers})
    assert r.status_code == 202, r.text
    with trio.fail_after(120):
        while True:
            job = (await client.get(r.headers["location"], headers=account.auth)).json()
            if job["status"] in ("completed", "failed"):
                return job
            await trio.sleep(0.1)


async def imports_under_attack(target: Target, client: httpx.AsyncClient, account: Account,
                               *files: tuple[bytes, str]) -> list[dict[str, Any]]:
    """Import ``files`` (data, content type) one after the other as the attack; their jobs."""
    jobs: list[dict[str, Any]] = []

    async def run() -> None:
        for data, content_type in files:
            jobs.append(await import_file(client, account, data, content_type))

    outcome = await attack(target, run)
    assert outcome.growth < MAX_GROWTH, outcome
    return jobs


async def entry_count(client: httpx.AsyncClient, account: Account) -> int:
    r = await client.get("/v1/entries?limit=100", headers=account.auth)
    assert r.status_code == 200, r.text
    return len(r.json()["items"])


async def honest_use(client: httpx.AsyncClient) -> None:
    """What another user does afterwards still works: sign up and log in, import, search."""
    bob = await signup(client)
    r = await client.post("/v1/auth/login", json={"email": bob.email, "password": bob.password})
    assert r.status_code == 200, r.text
    doc = dayone_doc([dayone_entry("# Honest\n\nA quiet walk by the river")])
    job = await import_file(client, bob, json.dumps(doc).encode(), "application/json")
    assert (job["status"], job["result"]["imported"]) == ("completed", 1), job
    r = await client.get("/v1/search", params={"q": "river"}, headers=bob.auth)
    assert r.status_code == 200, r.text
    assert [hit["entry"]["title"] for hit in r.json()["items"]] == ["Honest"]


def zipped(name: str, chunks: Callable[[], Any]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(name, "w", force_zip64=True) as member:
        for chunk in chunks():
            member.write(chunk)
    return buf.getvalue()


# --- the attacks ------------------------------------------------------------------------


async def test_a_day_one_heading_built_to_backtrack(target: Target,
                                                    client: httpx.AsyncClient) -> None:
    mallory = await signup(client)
    long_line = json.dumps(dayone_doc([dayone_entry("# a" + " " * 60_000 + "b")])).encode()
    too_long = json.dumps(dayone_doc([dayone_entry("# a" + " " * 100_000 + "b")])).encode()
    jobs = await imports_under_attack(target, client, mallory, (long_line, "application/json"),
                                      (too_long, "application/json"))
    # a single long line is a valid body (no title: nothing follows the heading)
    assert jobs[0]["status"] == "completed" and jobs[0]["result"]["imported"] == 1, jobs[0]
    assert (jobs[1]["status"], jobs[1]["errorCode"]) == ("failed", "entry_too_large"), jobs[1]
    assert "entries[0].text: 100004 characters" in jobs[1]["error"]
    assert await entry_count(client, mallory) == 1
    await honest_use(client)


async def test_a_small_zip_that_expands_to_a_huge_json(target: Target,
                                                       client: httpx.AsyncClient) -> None:
    mallory = await signup(client)

    def objects(count: int) -> Callable[[], Any]:
        def chunks() -> Any:
            yield b'{"entries": ['
            block = b"{}," * 1_000_000
            for _ in range(count // 1_000_000):
                yield block
            yield b"{}]}"
        return chunks

    # 20 million {} (60 MB of JSON: past IMPORT_MAX_BYTES once expanded), and 15 million
    # (45 MB: within it, but about a gigabyte once parsed: past the parser's memory)
    huge = zipped("Journal.json", objects(20_000_000))
    large = zipped("Journal.json", objects(15_000_000))
    assert len(huge) < 256 * 1024
    jobs = await imports_under_attack(target, client, mallory, (huge, "application/zip"),
                                      (large, "application/zip"))
    for job in jobs:
        assert (job["status"], job["errorCode"]) == ("failed", "import_too_large"), job
    assert "more than IMPORT_MAX_BYTES" in jobs[0]["error"]
    assert "IMPORT_PARSE_MEMORY_BYTES (512 MiB)" in jobs[1]["error"]
    assert await entry_count(client, mallory) == 0
    await honest_use(client)


async def test_json_nested_200000_deep(target: Target, client: httpx.AsyncClient) -> None:
    mallory = await signup(client)
    deep = b"[" * 200_000
    nested = b'{"body": "x", "tags": ' + b"[" * 100 + b"]" * 100 + b"}"
    url = urlsplit(target.url)

    async def run() -> None:
        for _ in range(20):  # again and again, while the bystander probes
            r = await client.post("/v1/auth/login", content=deep,
                                  headers={"content-type": "application/json"})
            body = assert_error(r, 400, "invalid_json")
            assert body["error"]["message"] == ("The request body is nested more than 64 "
                                                "levels deep")
            r = await client.post("/v1/entries", content=nested, headers={
                **mallory.auth, "content-type": "application/json"})
            assert_error(r, 400, "invalid_json")
        ws = await WsClient.connect(url.hostname or "", url.port or 80, "/v1/ws",
                                    [("authorization", f"Bearer {mallory.access}")])
        try:
            await ws.send_text("[" * 30_000)
            error = json.loads(await _next_reply(ws))
            assert error == {"type": "error", "data": {
                "code": "invalid_json", "message": "The message is nested more than 64 "
                                                   "levels deep"}}
            await ws.send_text('{"type": "ping"}')  # the socket is still usable
            assert json.loads(await _next_reply(ws)) == {"type": "pong"}
        finally:
            await ws.aclose()

    outcome = await attack(target, run)
    assert outcome.growth < MAX_GROWTH
    assert await entry_count(client, mallory) == 0
    await honest_use(client)


async def _next_reply(ws: WsClient) -> str:
    """The next message that is not an event or the server's ping."""
    with trio.fail_after(10):
        while True:
            message = await ws.receive()
            assert isinstance(message, str), message
            if json.loads(message).get("type") not in ("ping", "job.progress"):
                return message


async def test_concurrent_searches_over_long_entries(target: Target,
                                                     client: httpx.AsyncClient) -> None:
    mallory = await signup(client)
    rng = random.Random(13)
    for _ in range(60):  # 95,000 Hangul syllables each: the slowest text to normalise
        body = "".join(chr(rng.randrange(0xAC00, 0xD7A4)) for _ in range(95_000))
        r = await client.post("/v1/entries", json={"body": body}, headers=mallory.auth)
        assert r.status_code == 201, r.text
    answers: list[httpx.Response] = []

    async def one() -> None:
        answers.append(await client.get("/v1/search", params={"q": "nothing-matches"},
                                        headers=mallory.auth))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)

    outcome = await attack(target, run)
    assert outcome.growth < MAX_GROWTH
    statuses = sorted(r.status_code for r in answers)
    assert 200 in statuses and set(statuses) <= {200, 429}, statuses
    for r in answers:
        if r.status_code == 429:
            assert_error(r, 429, "search_in_progress")
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert r.json()["items"] == []
    await honest_use(client)


async def test_a_large_upload_with_an_idempotency_key(target: Target,
                                                      client: httpx.AsyncClient) -> None:
    mallory = await signup(client)
    chunk = bytes(range(256)) * 4096  # 1 MiB, neither JSON nor a zip

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(33):
            yield chunk

    jobs: list[dict[str, Any]] = []

    async def run() -> None:
        r = await client.post("/v1/imports", content=upload(), headers={
            **mallory.auth, "content-type": "application/zip",
            "idempotency-key": str(uuid.uuid4())})
        assert r.status_code == 202, r.text
        with trio.fail_after(60):
            while True:
                job = (await client.get(r.headers["location"], headers=mallory.auth)).json()
                if job["status"] in ("completed", "failed"):
                    jobs.append(job)
                    return
                await trio.sleep(0.1)

    outcome = await attack(target, run)
    assert outcome.growth < MAX_GROWTH_KEYED_UPLOAD, f"grew {outcome.growth / MiB:.0f} MiB"
    assert (jobs[0]["status"], jobs[0]["errorCode"]) == ("failed", "invalid_import_file")
    await honest_use(client)


async def test_an_import_referencing_one_big_attachment_again_and_again(
        target: Target, client: httpx.AsyncClient) -> None:
    mallory = await signup(client)
    member = "attachments/a/big.png"

    def export(references: int, per_entry: int, size: int) -> bytes:
        ref = {"filename": "big.png", "contentType": "image/png", "size": size,
               "path": member}
        doc = {"format": "innera-export", "version": 1, "exportedAt": "2026-11-28T18:00:00Z",
               "entries": [innera_entry(attachments=[ref] * per_entry)
                           for _ in range(references // per_entry)]}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("innera-export.json", json.dumps(doc))
            with archive.open(member, "w") as out:
                for _ in range(0, size, MiB):
                    out.write(bytes(min(MiB, size)))
        return buf.getvalue()

    # a million references would be a 100 MB document: 100,000 of a small member (past the
    # count), and 4,000 of a 25 MiB one (within the count, but 100 GB to store)
    many, heavy = export(100_000, 1000, 1024), export(4_000, 100, 25 * MiB)
    jobs = await imports_under_attack(target, client, mallory, (many, "application/zip"),
                                      (heavy, "application/zip"))
    assert (jobs[0]["status"], jobs[0]["errorCode"]) == ("failed", "too_many_attachments")
    assert (jobs[1]["status"], jobs[1]["errorCode"]) == ("failed", "import_too_large")
    assert "each reference counted" in jobs[1]["error"]
    assert await entry_count(client, mallory) == 0
    await honest_use(client)
