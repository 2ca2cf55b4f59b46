"""The import parser's child process, seen from the worker: an uploaded file is parsed where
it cannot hurt the server.

The child (``python -I -m workers.import_parse``, :func:`workers.import_parse.main`)
    limits itself before it opens the file: its address space (IMPORT_PARSE_MEMORY_BYTES,
    ``RLIMIT_AS``) and its CPU time (IMPORT_PARSE_CPU_S, ``RLIMIT_CPU``: SIGXCPU at the
    limit, SIGKILL a second later). It gets no environment (no secret reaches it) and runs
    isolated (``-I``). It writes JSON lines to stdout: ``{"entries": [...]}`` batches, then
    ``{"done": {"format": ...}}``; or one ``{"error": {"code", "message"}}`` for a file it
    refuses. Running out of memory is ``import_too_large`` naming the limit.

The worker
    reads the lines as they come (each bounded to :data:`MAX_LINE_BYTES`), turning them back
    into :class:`~workers.import_format.ImportEntry` (file names sanitised here), under a
    wall-clock deadline (IMPORT_PARSE_TIMEOUT_S). Cancellation, the deadline or a bad line
    kill the child. A child killed by its CPU limit or the deadline fails the import with
    ``import_too_large`` and a message naming the setting; a child that crashed otherwise
    raises :class:`ChildFailed`, an ordinary error the queue retries.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from innera import json_input
from innera.storage.names import sanitize_filename
from workers.import_format import (
    IMPORT_TOO_LARGE,
    TOO_MANY_ENTRIES,
    BadImportFile,
    ImportAttachment,
    ImportEntry,
    Limits,
)

log = logging.getLogger("innera.workers.import_child")

#: one line of the child's output, at most (an entry's JSON is well below it)
MAX_LINE_BYTES = 8 * 1024 * 1024
#: the child's stderr kept for the log when it crashes
STDERR_KEPT = 8 * 1024
_MiB = 1024 * 1024


@dataclass(frozen=True)
class ChildLimits:
    """The child's own bounds (each a documented setting)."""

    memory_bytes: int = 512 * _MiB  # IMPORT_PARSE_MEMORY_BYTES
    cpu_s: int = 60  # IMPORT_PARSE_CPU_S
    timeout_s: float = 120.0  # IMPORT_PARSE_TIMEOUT_S


@dataclass
class ParsedFile:
    format: str  # "innera" | "dayone"
    entries: list[ImportEntry]


class ChildFailed(Exception):
    """The parsing child died of something else than a limit (retried)."""


# --- the worker's side ---------------------------------------------------------------------


async def parse_in_child(path: Path, limits: Limits, child: ChildLimits) -> ParsedFile:
    """Parse the file at ``path`` in a limited child process (see the module doc)."""
    command = [sys.executable, "-I", "-m", "workers.import_parse", str(path),
               json.dumps({"limits": asdict(limits), "memory_bytes": child.memory_bytes,
                           "cpu_s": child.cpu_s})]
    proc = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"LC_ALL": "C.UTF-8"}, start_new_session=True)
    reader = _Reader(limits)
    stderr = bytearray()
    timed_out = False
    failure: ChildFailed | BadImportFile | None = None
    try:
        with trio.move_on_after(child.timeout_s) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_keep_head, proc.stderr, stderr)
                assert proc.stdout is not None
                try:
                    await reader.read(proc.stdout)
                    await proc.wait()
                except (ChildFailed, BadImportFile) as exc:  # raised below, not as a group
                    failure = exc
                    nursery.cancel_scope.cancel()
        timed_out = deadline.cancelled_caught
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    if failure is not None:
        raise failure
    if timed_out:
        raise BadImportFile(f"parsing the file took longer than IMPORT_PARSE_TIMEOUT_S "
                            f"({child.timeout_s:g} s)", IMPORT_TOO_LARGE)
    code = proc.returncode
    if reader.error is not None:
        raise reader.error
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        raise BadImportFile(f"parsing the file needed more than IMPORT_PARSE_CPU_S "
                            f"({child.cpu_s} s) of CPU time", IMPORT_TOO_LARGE)
    if code != 0 or reader.format is None or reader.truncated:
        tail = bytes(stderr).decode("utf-8", "replace").strip()[-2000:]
        log.error("the import parser exited with %s: %s", code, tail or "(no output)")
        raise ChildFailed(f"the import parser exited with {code}")
    return ParsedFile(reader.format, reader.entries)


async def _keep_head(stream: trio.abc.ReceiveStream | None, kept: bytearray) -> None:
    """Read ``stream`` to its end, keeping its first :data:`STDERR_KEPT` bytes."""
    if stream is None:
        return
    while chunk := await stream.receive_some(65536):
        if len(kept) < STDERR_KEPT:
            kept += chunk[:STDERR_KEPT - len(kept)]


class _Reader:
    """The child's lines → entries, a format, or the file's error."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.entries: list[ImportEntry] = []
        self.format: str | None = None
        self.error: BadImportFile | None = None
        self.truncated = False

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        pending = bytearray()
        while chunk := await stream.receive_some(256 * 1024):
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", start)) >= 0:
                await self._line(bytes(pending[start:end]))
                start = end + 1
            del pending[:start]
            if len(pending) > MAX_LINE_BYTES:
                raise ChildFailed("the import parser wrote a line longer than "
                                  f"{MAX_LINE_BYTES} bytes")
        # output ending mid-line: the child was killed while writing (its exit status says
        # why: a limit, or a crash)
        self.truncated = bool(pending)

    async def _line(self, line: bytes) -> None:
        try:
            message = await trio.to_thread.run_sync(json_input.loads, line)
        except json_input.InvalidJsonInput as exc:
            raise ChildFailed(f"the import parser wrote something else than JSON {exc}"
                              ) from None
        if not isinstance(message, dict):
            raise ChildFailed("the import parser wrote an unexpected line")
        if "entries" in message:
            try:
                self.entries += [_entry(raw) for raw in message["entries"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise ChildFailed(f"the import parser wrote a malformed entry: {exc!r}"
                                  ) from None
            if len(self.entries) > self.limits.max_entries:  # the child checks it first
                raise BadImportFile(f"more than {self.limits.max_entries} entries "
                                    "(IMPORT_MAX_ENTRIES)", TOO_MANY_ENTRIES)
        elif "done" in message:
            self.format = str(message["done"]["format"])
        elif "error" in message:
            error = message["error"]
            self.error = BadImportFile(str(error["message"]), str(error["code"]))


def _entry(raw: dict[str, Any]) -> ImportEntry:
    return ImportEntry(
        source=raw["source"], source_id=raw["sourceId"], title=raw["title"], body=raw["body"],
        tags=list(raw["tags"]), mood=raw["mood"],
        occurred_at=datetime.fromisoformat(raw["occurredAt"]),
        attachments=[ImportAttachment(sanitize_filename(name), content_type, int(size), member)
                     for name, content_type, size, member in raw["attachments"]])
