"""Imports past a limit fail with the limit's code and a message naming it, and store
nothing: in the parser itself (small limits), and end to end through the parsing child
process (its memory, CPU and wall-clock limits; cancellation kills it)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from innera.config import load_settings
from tests.fixtures.accounts import signup
from tests.fixtures.server import RunningServer, start_server
from tests.workers.test_imports import (
    dayone_doc,
    dayone_entry,
    entries_of,
    innera_entry,
    innera_zip,
    object_keys,
    post_import,
    run_import,
    zip_of,
)
from workers.import_child import MAX_LINE_BYTES, ChildFailed, _Reader
from workers.import_format import BadImportFile, Limits
from workers.import_parse import parse_upload

pytestmark = pytest.mark.timeout(90)

LIMITS = Limits(max_bytes=200_000, attachment_max_bytes=10_000, max_entries=50,
                max_attachments=20)


def refuse(data: bytes, limits: Limits = LIMITS) -> BadImportFile:
    with pytest.raises(BadImportFile) as caught:
        parse_upload(io.BytesIO(data), limits)
    return caught.value


def slow_to_parse() -> bytes:
    """A valid Day One journal that takes seconds of CPU to validate (3.5 s here: 100,000
    entries of 20 tags each), with little memory (a 22 MB file)."""
    tags = [f"t{k}" for k in range(20)]
    return dayone_json([{"uuid": f"U{i}", "text": f"e{i}", "creationDate":
                         "2024-01-02T03:04:05Z", "tags": tags} for i in range(100_000)])


def dayone_json(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps(dayone_doc(entries)).encode()


def attachment(path: str, size: int) -> dict[str, Any]:
    return {"filename": "p.png", "contentType": "image/png", "size": size, "path": path}


# --- the parser's limits ----------------------------------------------------------------


def test_each_limit_has_its_code_and_names_itself() -> None:
    error = refuse(dayone_json([dayone_entry("x")] * 51))
    assert (error.code, str(error)) == ("too_many_entries", "51 entries, more than the limit "
                                        "of 50 (IMPORT_MAX_ENTRIES)")
    error = refuse(innera_zip([innera_entry()] * 51))
    assert error.code == "too_many_entries" and "IMPORT_MAX_ENTRIES" in str(error)

    error = refuse(dayone_json([dayone_entry("ok"), dayone_entry("x" * 101_000)]))
    assert error.code == "entry_too_large"
    assert str(error).startswith("entries[1].text: 101000 characters, more than the limit")
    error = refuse(innera_zip([innera_entry(body="x" * 100_001)]), Limits(
        max_bytes=1_000_000, attachment_max_bytes=10))
    assert error.code == "entry_too_large"
    assert str(error).startswith("innera-export.json: entries[0].body: 100001 characters")

    deep = b'{"entries": [{"uuid": "a", "text": "t", "tags": ' + b"[" * 70 + b"]" * 70 + b"}]}"
    error = refuse(deep)
    assert (error.code, str(error)) == ("too_deep", "the JSON is nested more than 64 levels "
                                        "deep")
    error = refuse(b"[" * 200_000)  # deeper than the decoder itself goes
    assert error.code == "too_deep"

    # a Journal.json expanding past IMPORT_MAX_BYTES is refused before it is decompressed
    error = refuse(zip_of({"Journal.json": b" " * 200_001}))
    assert error.code == "import_too_large" and "IMPORT_MAX_BYTES" in str(error)


def test_attachment_references_are_bounded_as_a_whole() -> None:
    """One member referenced again and again: every reference counts, by number and by
    bytes (each becomes an object of its own)."""
    member = "attachments/a/p.png"
    data = os.urandom(9_000)

    def export(references: int) -> bytes:
        entries = [innera_entry(attachments=[attachment(member, len(data))] * 4)
                   for _ in range(references // 4)]
        return innera_zip(entries, {member: data})

    assert len(parse_upload(io.BytesIO(export(20)), LIMITS).entries) == 5
    error = refuse(export(24))
    assert (error.code, str(error)) == ("too_many_attachments", "innera-export.json: more "
                                        "than 20 attachments (IMPORT_MAX_ATTACHMENTS)")
    many = Limits(max_bytes=50_000, attachment_max_bytes=10_000, max_attachments=1000)
    error = refuse(export(24), many)  # 24 × 9,000 bytes > 4 × 50,000
    assert error.code == "import_too_large" and "each reference counted" in str(error)


# --- through the child process ----------------------------------------------------------


async def _failed_job(server: RunningServer, data: bytes, content_type: str
                      ) -> dict[str, Any]:
    alice = await signup(server.client)
    job = await run_import(server, alice, data, content_type)
    assert job["status"] == "failed", job
    assert job["result"] is None
    assert await entries_of(server, alice) == []
    assert await object_keys(server, alice.id) == []
    return job


async def _with_server(nursery: trio.Nursery, settings: dict[str, str], **extra: str
                       ) -> RunningServer:
    return await start_server(nursery, load_settings({**settings,
                                                      "RATE_LIMIT_USER": "100000/min",
                                                      **extra}))


async def test_a_file_needing_too_much_memory_fails_the_job(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    server = await _with_server(nursery, server_settings,
                                IMPORT_PARSE_MEMORY_BYTES=str(128 * 1024 * 1024))
    async with server.client:
        # 9 MB of JSON that parses into three million objects (~250 MB)
        data = b'{"entries": [' + b"{}," * 3_000_000 + b"{}]}"
        job = await _failed_job(server, zip_of({"Journal.json": data}), "application/zip")
        assert job["errorCode"] == "import_too_large"
        assert "IMPORT_PARSE_MEMORY_BYTES (128 MiB)" in job["error"]
    await server.stop()


async def test_cpu_and_wall_clock_limits_fail_the_job(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    # seconds of CPU: past a limit of 1 s (and a wall clock of 0.5 s) on a machine several
    # times faster than this one
    data = slow_to_parse()
    server = await _with_server(nursery, server_settings, IMPORT_PARSE_CPU_S="1",
                                IMPORT_MAX_ENTRIES="100000")
    async with server.client:
        job = await _failed_job(server, data, "application/json")
        assert job["errorCode"] == "import_too_large"
        assert "IMPORT_PARSE_CPU_S (1 s) of CPU time" in job["error"]
    await server.stop()
    server = await _with_server(nursery, server_settings, IMPORT_PARSE_TIMEOUT_S="0.5")
    async with server.client:
        job = await _failed_job(server, data, "application/json")
        assert job["errorCode"] == "import_too_large"
        assert "IMPORT_PARSE_TIMEOUT_S (0.5 s)" in job["error"]
    await server.stop()


def _parser_children() -> list[int]:
    """This process's children that run the import parser."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"workers.import_parse" in cmdline:
            found.append(int(pid))
    return found


async def test_stopping_the_server_mid_parse_kills_the_child(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    # the workers get SHUTDOWN_TIMEOUT_S − 5 s (1 s here) to finish their job, then are
    # cancelled: mid-parse, with seconds of parsing left
    server = await _with_server(nursery, server_settings, SHUTDOWN_TIMEOUT_S="6")
    async with server.client:
        alice = await signup(server.client)
        data = slow_to_parse()
        await post_import(server, alice, data, "application/json")
        with trio.fail_after(30):
            while not _parser_children():
                await trio.sleep(0.02)
    await server.stop()
    assert _parser_children() == []


async def test_the_worker_does_not_trust_the_childs_output() -> None:
    """What the worker reads from the parsing child is bounded and checked too: a child
    gone wrong (or subverted by the file) fails the job as an error, never as entries."""
    good = (b'{"entries": [{"source": "dayone", "sourceId": "A", "title": null, "body": "x", '
            b'"tags": [], "mood": null, "occurredAt": "2024-01-02T03:04:05+00:00", '
            b'"attachments": [["../../etc/passwd", "image/png", 3, "m"]]}]}\n')
    reader = _Reader(LIMITS)
    stream = trio.testing.MemoryReceiveStream()
    stream.put_data(good + b'{"done": {"format": "dayone"}}\n')
    stream.put_eof()
    await reader.read(stream)
    [entry] = reader.entries
    assert (reader.format, entry.body, entry.attachments[0].filename) == (
        "dayone", "x", "passwd")  # file names are sanitised on this side
    for output in (b'{"entries": [{"source": "dayone"}]}\n', b"not JSON\n", b"[1]\n",
                   b"[" * 100 + b"\n", b"x" * (MAX_LINE_BYTES + 2)):
        stream = trio.testing.MemoryReceiveStream()
        stream.put_data(output)
        stream.put_eof()
        with pytest.raises(ChildFailed):
            await _Reader(LIMITS).read(stream)
    stream = trio.testing.MemoryReceiveStream()
    stream.put_data(good * (LIMITS.max_entries + 1))
    stream.put_eof()
    with pytest.raises(BadImportFile) as caught:
        await _Reader(LIMITS).read(stream)
    assert caught.value.code == "too_many_entries"
