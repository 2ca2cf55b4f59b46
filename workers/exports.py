"""Export jobs (queue ``export-jobs``, table ``export_jobs``): every entry of the user,
decrypted, and the bytes of every ready attachment, in one ZIP archive
(``docs/export-format.md``) streamed into storage under ``{userId}/exports/{jobId}``; then an
``export.ready`` notification carrying the export's id only. Its data also goes to push
providers (Expo, FCM, a webhook), so it holds no download link, a bearer link to the whole
decrypted journal: the client reads ``GET /v1/exports/{id}`` for a fresh one. The archive is
deleted EXPORT_RETENTION_DAYS after it was made (``innera/exports/sweeper.py``).

One pass over the user's entries in keyset pages of :data:`PAGE_ENTRIES`, ordered by
``(occurred_at, id)``. For each page, the ready attachments of its entries are copied into
the archive as they are read from storage (``attachments/<id>/<filename>``, stored: photos,
audio and PDFs are compressed already, so deflating them would cost ~16 ms of CPU per MiB
for nothing), and the page's entries are decrypted and serialised (in a worker thread) into
``innera-export.json``, which is deflated ahead, in a worker thread, into a temporary file.
That member comes last, followed by the central directory (also spooled to a temporary
file): so the JSON lists exactly the attachments the archive holds (an attachment whose
object vanished meanwhile is left out of both), and memory stays bounded by one page of
entries plus a few chunks, whatever the account's size (``workers/archive.py``).

At-least-once: a redelivered job writes the whole archive again under the same key (a failed
or interrupted stream stores nothing, ``Storage.put_stream``); the notification is created in
``on_completed``, which runs only in the delivery that marked the row completed.
Progress (``job.progress`` events) counts entries, and attachment bytes at one entry per MiB.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from innera.exports import CONTENT_TYPE, EXPORT_JOB, archive_key
from innera.jobs.handlers import JobRun, table_handler
from innera.journal.entries import ROW_COLUMNS, entry_from_row
from innera.notifications import create_notification
from innera.queue.jobs import PermanentJobError
from innera.queue.worker import Handler
from innera.storage.keys import object_key
from innera.storage.names import sanitize_filename
from innera.timestamps import iso_utc
from workers.archive import DEFLATED, DeflatedSpool, Spool, ZipWriter

if TYPE_CHECKING:
    from innera.services import Services

log = logging.getLogger("innera.exports")

#: entries read, decrypted and serialised at a time
PAGE_ENTRIES = 50
#: the job's progress is stored (and sent) at most this often
PROGRESS_INTERVAL_S = 0.5
#: attachment bytes that weigh as much as one entry in the progress
PROGRESS_BYTES_PER_UNIT = 1024 * 1024
#: bound on each database round trip of the export
DB_TIMEOUT_S = 15.0
JSON_NAME = "innera-export.json"
FORMAT = "innera-export"
VERSION = 1


def make_handler(svc: Services) -> Handler:
    return table_handler(svc, EXPORT_JOB, export_archive, on_completed=notify_ready)


async def export_archive(run: JobRun[Services]) -> None:
    """Build the user's archive and store it under :func:`archive_key` (overwriting)."""
    svc, user_id = run.svc, run.user_id
    if user_id is None:
        raise PermanentJobError("an export job needs a user")
    entries, attachment_bytes = await _totals(svc, user_id)
    progress = _Progress(run, entries + attachment_bytes / PROGRESS_BYTES_PER_UNIT)
    async with Spool() as json_spool, Spool() as central:
        builder = ArchiveBuilder(svc, user_id, run, progress, json_spool, central)
        async with aclosing(builder.chunks()) as chunks:
            size = await svc.storage.put_stream(archive_key(user_id, str(run.id)), chunks,
                                                content_type=CONTENT_TYPE)
    log.info("export %s of user %s: %d entries, %d attachments, %d bytes", run.id, user_id,
             builder.entries, builder.attachments, size)


async def notify_ready(run: JobRun[Services]) -> None:
    """The ``export.ready`` notification: ``{exportId}`` only, never a link (its data is
    pushed through third parties); the app reads the export for a fresh download link."""
    svc, user_id = run.svc, run.user_id
    assert user_id is not None
    days = svc.settings.jobs.export_retention_days
    await create_notification(
        svc.db, svc.redis, user_id, events=svc.events,
        push_provider=svc.settings.push.provider,
        kind="export.ready", title="Your export is ready",
        body=f"Your journal export is ready to download in the app. It is kept for {days} "
             f"day{'s' if days != 1 else ''}.",
        data={"exportId": str(run.id)})


# --- reading ----------------------------------------------------------------------------------


@dataclass
class _Attachment:
    id: str
    entry_id: str
    filename: str
    content_type: str
    size: int
    created_at: datetime


@dataclass
class _Page:
    rows: list[Sequence[Any]]  # ROW_COLUMNS rows, sealed
    attachments: list[_Attachment]  # ready ones, by entry in page order, then oldest first


async def _totals(svc: Services, user_id: str) -> tuple[int, int]:
    """(entries, bytes of ready attachments) of the user, for the progress."""
    with trio.fail_after(DB_TIMEOUT_S):
        async with svc.db.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM entries WHERE user_id = %s), "
                "(SELECT coalesce(sum(size), 0) FROM attachments "
                " WHERE user_id = %s AND status = 'ready')", (user_id, user_id),
                name="exports.totals")
            row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _read_page(svc: Services, user_id: str, after: tuple[datetime, str] | None) -> _Page:
    """The next :data:`PAGE_ENTRIES` entries after ``after`` (oldest first) and their ready
    attachments."""
    where, params = "user_id = %s", [user_id]
    if after is not None:
        where += " AND (occurred_at, id) > (%s, %s)"
        params += [after[0], uuid.UUID(after[1])]
    with trio.fail_after(DB_TIMEOUT_S):
        async with svc.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT {ROW_COLUMNS} FROM entries WHERE {where} "
                "ORDER BY entries.occurred_at, entries.id LIMIT %s",
                (*params, PAGE_ENTRIES), binary=True, name="exports.entries_page")
            rows = list(await cur.fetchall())
            if not rows:
                return _Page([], [])
            cur = await conn.execute(
                "SELECT id::text, entry_id::text, filename, content_type, size, created_at "
                "FROM attachments WHERE user_id = %s AND status = 'ready' "
                "AND entry_id = ANY(%s) ORDER BY created_at, id",
                (user_id, [uuid.UUID(r[0]) for r in rows]), name="exports.attachments_of_page")
            found = [_Attachment(*r) for r in await cur.fetchall()]
    by_entry: dict[str, list[_Attachment]] = defaultdict(list)
    for attachment in found:
        by_entry[attachment.entry_id].append(attachment)
    return _Page(rows, [a for r in rows for a in by_entry.get(r[0], [])])


# --- building ---------------------------------------------------------------------------------


class _Progress:
    """Counts work done and stores the fraction at most every PROGRESS_INTERVAL_S (capped
    below 1: completion is the handler's to report)."""

    def __init__(self, run: JobRun[Services], total: float) -> None:
        self.run = run
        self.total = total
        self.done = 0.0
        self._last = -1e9

    async def advance(self, units: float) -> None:
        self.done += units
        now = trio.current_time()
        if self.total > 0 and now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            await self.run.progress(min(0.99, self.done / self.total))


class ArchiveBuilder:
    """The archive's bytes (:meth:`chunks`), built in one pass over the user's entries."""

    def __init__(self, svc: Services, user_id: str, run: JobRun[Services],
                 progress: _Progress, json_spool: Spool, central: Spool) -> None:
        self.svc = svc
        self.user_id = user_id
        self.run = run
        self.progress = progress
        self.zip = ZipWriter()
        self.json = DeflatedSpool(json_spool)
        self.json_spool = json_spool
        self.central = central
        self.exported_at = datetime.now(UTC)
        self.entries = 0
        self.attachments = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        with trio.fail_after(DB_TIMEOUT_S):
            dek = await self.svc.entry_cipher.data_keys.get(self.user_id)
        head = {"format": FORMAT, "version": VERSION, "exportedAt": iso_utc(self.exported_at)}
        opened = json.dumps(head, separators=(",", ":"))[:-1]  # the object, left open
        await self.json.write(opened.encode() + b',"entries":[\n')
        after: tuple[datetime, str] | None = None
        while True:
            self.run.check_lease()
            page = await _read_page(self.svc, self.user_id, after)
            if not page.rows:
                break
            exported: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for attachment in page.attachments:
                async with aclosing(self._attachment(attachment, exported)) as pieces:
                    async for piece in pieces:
                        yield piece
            text = await trio.to_thread.run_sync(self._entries_json, dek, page.rows, exported)
            await self.json.write(text)
            self.entries += len(page.rows)
            last = page.rows[-1]
            after = (last[2], last[0])
            await self.progress.advance(len(page.rows))
        await self.json.write(b"\n]}\n")
        await self.json.close()
        yield self.zip.begin_known(JSON_NAME, self.exported_at, method=DEFLATED,
                                   crc=self.json.crc, compressed_size=self.json.compressed_size,
                                   size=self.json.size)
        async with aclosing(self.json_spool.chunks()) as spooled:
            async for chunk in spooled:
                yield self.zip.data(chunk)
        tail, record = self.zip.end()
        await self.central.write(record)
        if tail:
            yield tail
        central_offset = self.zip.offset
        async with aclosing(self.central.chunks()) as records:
            async for chunk in records:
                yield chunk
        yield self.zip.end_of_archive(central_offset, self.central.size)

    async def _attachment(self, attachment: _Attachment,
                          exported: dict[str, list[dict[str, Any]]]) -> AsyncIterator[bytes]:
        """One attachment's member, read from storage as it is written. An object that is
        gone (deleted meanwhile) is skipped, and left out of the JSON."""
        self.run.check_lease()
        key = object_key(self.user_id, attachment.entry_id, attachment.id)
        path = f"attachments/{attachment.id}/{sanitize_filename(attachment.filename)}"
        async with aclosing(self.svc.storage.get_stream(key)) as stream:
            try:
                first: bytes | None = await anext(stream)
            except FileNotFoundError:
                log.warning("export of user %s: attachment %s has no stored object; skipped",
                            self.user_id, attachment.id)
                return
            except StopAsyncIteration:
                first = None
            yield self.zip.begin_streamed(path, attachment.created_at,
                                          expected_size=attachment.size)
            size = 0
            if first is not None:
                size += len(first)
                yield self.zip.data(first)
                await self.progress.advance(len(first) / PROGRESS_BYTES_PER_UNIT)
            async for chunk in stream:
                size += len(chunk)
                yield self.zip.data(chunk)
                await self.progress.advance(len(chunk) / PROGRESS_BYTES_PER_UNIT)
        tail, record = self.zip.end()
        await self.central.write(record)
        yield tail
        self.attachments += 1
        exported[attachment.entry_id].append({
            "id": attachment.id, "filename": attachment.filename,
            "contentType": attachment.content_type, "size": size, "path": path})

    def _entries_json(self, dek: bytes, rows: list[Sequence[Any]],
                      exported: dict[str, list[dict[str, Any]]]) -> bytes:
        """A page of entries, decrypted, as the JSON array items (worker thread)."""
        items = []
        for row in rows:
            entry = entry_from_row(self.svc.entry_cipher, dek, self.user_id, row)
            item = {**entry.public(), "attachments": exported.get(entry.id, [])}
            items.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
        prefix = ",\n" if self.entries else ""
        return (prefix + ",\n".join(items)).encode()
