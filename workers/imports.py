"""The ``import-jobs`` worker: a file uploaded to ``POST /v1/imports`` → the user's entries.

One job, in order:

1. copy the upload (``{userId}/imports/{jobId}``, at most IMPORT_MAX_BYTES) to a private
   temporary file;
2. parse and **validate everything** in a child process with hard limits on its memory, CPU
   and time (``workers/import_child.py``; the rules and bounds are
   ``workers/import_parse.py``'s): a zip (innera export, else Day One journals) or a JSON
   document (a Day One journal, or a bare ``innera-export.json``). A file past a limit fails
   the job with the limit's code (``import_too_large``, ``too_many_entries``,
   ``too_many_attachments``, ``entry_too_large``, ``too_deep``), any other bad file with
   ``invalid_import_file``; the message names the problem;
3. skip what is already there: each entry's source (``("innera", id)`` / ``("dayone",
   uuid)``) is kept in ``entry_sources`` as an HMAC under a key derived from the user's data
   key (migration 0008 says why), and an innera entry whose id is one of the user's own
   entries (an export imported back into its account) is skipped too, as is a source
   repeated within the file;
4. store the attachments of the entries to import (innera exports; read from the temporary
   file's archive, which the child has checked) under their final object keys, one object
   per reference, then insert the entries (sealed exactly as the entries API seals them),
   their sources, the attachment rows (``ready``) and the job's ``result`` in **one
   transaction** (a per-user advisory lock serialises imports of one user);
5. delete the upload and the temporary file. A job that fails for good (a bad file:
   :class:`ImportRejected`, no retry; or its last attempt) deletes them too, and leaves
   nothing behind: the transaction never committed and the attachment objects it stored are
   deleted.

Idempotent across deliveries: entry and attachment ids are derived from the job id
(uuid5), so a retry writes the same objects; the result is committed with the entries, so a
delivery finding it only deletes the upload. Entries' ``createdAt``/``updatedAt`` are the
import time; entry events are not sent to the user's devices (one ``job.progress`` at the
end instead).

Progress: 0.05 read, 0.25 validated, up to 0.6 attachments stored, up to 0.95 inserted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from psycopg.types.json import Jsonb

from innera.imports import IMPORT_JOB, upload_key
from innera.jobs.handlers import JobRun, LeaseLost, table_handler
from innera.queue.jobs import PermanentJobError, UserFacingJobError
from innera.queue.worker import Handler
from innera.storage.keys import entry_prefix, object_key
from workers.import_child import ChildLimits, ParsedFile, parse_in_child
from workers.import_format import (
    IMPORT_TOO_LARGE,
    INVALID,
    BadImportFile,
    ImportEntry,
    Limits,
)
from workers.import_parse import read_member

if TYPE_CHECKING:
    from innera.db.connection import TrioConnection
    from innera.services import Services

log = logging.getLogger("innera.workers.imports")

#: bounds on the steps (the queue's handler timeout, 10 min, bounds the whole job)
READ_TIMEOUT_S = 120.0
STORE_TIMEOUT_S = 300.0
INSERT_TIMEOUT_S = 300.0
CLEANUP_TIMEOUT_S = 30.0
#: rows per progress report while inserting
BATCH = 500
SOURCE_KEY_INFO = b"innera-entry-source:v1"


# --- sources -------------------------------------------------------------------------------


def source_keys(dek: bytes, entries: Sequence[ImportEntry]) -> list[bytes]:
    """Each entry's source as stored: HMAC-SHA256 under a key derived from the user's DEK."""
    key = hmac.new(dek, SOURCE_KEY_INFO, hashlib.sha256).digest()
    return [hmac.new(key, f"{e.source}\x1f{e.source_id}".encode(), hashlib.sha256).digest()
            for e in entries]


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


@dataclass
class Plan:
    """The entries of the file that are new, with their derived ids and sealed content."""

    job_id: uuid.UUID
    user_id: str
    entries: list[ImportEntry]
    keys: list[bytes]
    total: int  # entries in the file
    todo: list[int] = field(default_factory=list)  # indexes into entries
    entry_ids: dict[int, str] = field(default_factory=dict)
    sealed: dict[int, bytes] = field(default_factory=dict)

    def entry_id(self, i: int) -> str:
        return str(uuid.uuid5(self.job_id, f"entry:{i}"))

    def attachment_id(self, i: int, k: int) -> str:
        return str(uuid.uuid5(self.job_id, f"attachment:{i}:{k}"))


async def _already_there(conn: TrioConnection[Any], plan: Plan, indexes: Sequence[int]
                         ) -> set[int]:
    """Which of ``indexes`` the user already has: by source, or (innera) by entry id."""
    if not indexes:
        return set()
    keys = [plan.keys[i] for i in indexes]
    cur = await conn.execute(
        "SELECT source_key FROM entry_sources WHERE user_id = %s AND source_key = ANY(%s)",
        (plan.user_id, keys), name="imports.known_sources")
    known = {bytes(row[0]) for row in await cur.fetchall()}
    found = {i for i in indexes if plan.keys[i] in known}
    own = {i: _uuid_or_none(plan.entries[i].source_id) for i in indexes
           if plan.entries[i].source == "innera"}
    ids = [u for u in own.values() if u is not None]
    if ids:
        cur = await conn.execute(
            "SELECT id FROM entries WHERE user_id = %s AND id = ANY(%s)", (plan.user_id, ids),
            name="imports.own_entries")
        mine = {row[0] for row in await cur.fetchall()}
        found |= {i for i, u in own.items() if u in mine}
    return found


# --- the job -------------------------------------------------------------------------------


def make_handler(svc: Services) -> Handler:
    async def work(run: JobRun[Services]) -> None:
        await run_import(svc, run)

    return table_handler(svc, IMPORT_JOB, work)


async def run_import(svc: Services, run: JobRun[Services]) -> None:
    assert run.user_id is not None
    upload = upload_key(run.user_id, str(run.id))
    if "result" not in run.payload:  # else an earlier delivery imported it
        try:
            await _import(svc, run, upload)
        except LeaseLost:
            raise
        except Exception as exc:
            if isinstance(exc, PermanentJobError) or run.last_attempt:
                await _delete_upload(svc, upload)
            raise
    try:
        with trio.fail_after(CLEANUP_TIMEOUT_S):
            await svc.storage.delete(upload)
    except Exception:
        if not run.last_attempt:
            raise  # retried: the next delivery finds the result and only deletes the upload
        log.warning("import %s: could not delete the upload %s", run.id, upload, exc_info=True)


async def _delete_upload(svc: Services, key: str) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT_S):
        try:
            await svc.storage.delete(key)
        except Exception:
            log.warning("could not delete the import upload %s", key, exc_info=True)


class ImportRejected(UserFacingJobError):
    """The file can never be imported (no retry): its code and message name the problem.
    The message is the parser's, written for the user (the job shows it as it is)."""


async def _copy_upload(svc: Services, key: str, max_bytes: int, path: Path) -> None:
    """The upload, streamed to ``path`` (at most ``max_bytes``)."""
    total = 0
    try:
        with trio.fail_after(READ_TIMEOUT_S):
            async with await trio.open_file(path, "wb") as file, \
                    aclosing(svc.storage.get_stream(key)) as stream:
                async for chunk in stream:
                    total += len(chunk)
                    if total > max_bytes:
                        raise ImportRejected(f"the file is larger than IMPORT_MAX_BYTES "
                                             f"({max_bytes} bytes)", code=IMPORT_TOO_LARGE)
                    await file.write(chunk)
    except FileNotFoundError:
        raise ImportRejected("the uploaded file is gone; upload it again",
                             code=INVALID) from None


def _limits(svc: Services) -> tuple[Limits, ChildLimits]:
    s = svc.settings.jobs
    return (Limits(s.import_max_bytes, svc.settings.storage.attachment_max_bytes,
                   s.import_max_entries, s.import_max_attachments),
            ChildLimits(s.import_parse_memory_bytes, s.import_parse_cpu_s,
                        s.import_parse_timeout_s))


async def _import(svc: Services, run: JobRun[Services], upload: str) -> None:
    limits, child = _limits(svc)
    fd, name = await trio.to_thread.run_sync(tempfile.mkstemp, "", "innera-import-")
    os.close(fd)
    path = Path(name)
    try:
        await _copy_upload(svc, upload, limits.max_bytes, path)
        await run.progress(0.05, force=True)
        try:
            parsed = await parse_in_child(path, limits, child)
        except BadImportFile as exc:
            raise ImportRejected(str(exc), code=exc.code) from None
        await run.progress(0.25, force=True)
        await _import_parsed(svc, run, parsed, path)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_unlink, path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _import_parsed(svc: Services, run: JobRun[Services], parsed: ParsedFile,
                         path: Path) -> None:
    assert run.user_id is not None
    dek = await svc.data_keys.get(run.user_id)
    keys = await trio.to_thread.run_sync(source_keys, dek, parsed.entries)
    plan = Plan(run.id, run.user_id, parsed.entries, keys, len(parsed.entries))
    seen: set[bytes] = set()
    fresh = []
    for i, key in enumerate(keys):  # a source repeated in the file: the first one counts
        if key not in seen:
            seen.add(key)
            fresh.append(i)
    async with svc.db.connection() as conn:
        there = await _already_there(conn, plan, fresh)
    plan.todo = [i for i in fresh if i not in there]
    plan.entry_ids = {i: plan.entry_id(i) for i in plan.todo}
    plan.sealed = await trio.to_thread.run_sync(_seal_all, svc, dek, plan)
    stored: list[str] = []  # entry ids with attachment objects
    try:
        await _store_attachments(svc, run, plan, path, stored)
        inserted = await _insert(svc, run, plan, parsed.format)
    except LeaseLost:
        raise  # the job is another worker's now, and so are these objects
    except Exception:
        await _remove_objects(svc, plan.user_id, stored)
        raise
    # objects of entries another import inserted meanwhile (or, with None, another
    # delivery of this job): only those of entries not in the database go
    await _remove_objects(svc, plan.user_id,
                          [e for e in stored if inserted is None or e not in inserted])
    if inserted:
        svc.metrics.entries_created.inc(len(inserted))


def _seal_all(svc: Services, dek: bytes, plan: Plan) -> dict[int, bytes]:
    cipher = svc.entry_cipher
    out = {}
    for i in plan.todo:
        e = plan.entries[i]
        content = {"title": e.title, "body": e.body, "tags": e.tags, "mood": e.mood}
        out[i] = cipher.seal_with(dek, plan.user_id, plan.entry_ids[i], content)
    return out


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _store_attachments(svc: Services, run: JobRun[Services], plan: Plan, path: Path,
                             stored: list[str]) -> None:
    """Each attachment reference of the entries to import, stored as an object of its own
    (their count and bytes were bounded by the parser)."""
    work = [(i, k, a) for i in plan.todo for k, a in enumerate(plan.entries[i].attachments)]
    if not work:
        return
    total = sum(a.size for _, _, a in work) or 1
    done, reported = 0, 0.0
    archive = await trio.to_thread.run_sync(zipfile.ZipFile, path)
    with archive, trio.fail_after(STORE_TIMEOUT_S):
        for i, k, attachment in work:
            data = await trio.to_thread.run_sync(read_member, archive, attachment.member)
            entry_id = plan.entry_ids[i]
            if not stored or stored[-1] != entry_id:
                stored.append(entry_id)  # before the write: a failed one is cleaned up too
            await svc.storage.put_stream(
                object_key(plan.user_id, entry_id, plan.attachment_id(i, k)), _one(data),
                content_type=attachment.content_type, max_bytes=attachment.size)
            done += attachment.size
            if done / total - reported >= 0.01:  # a row update per percent, not per file
                reported = done / total
                await run.progress(0.25 + 0.35 * reported)
            run.check_lease()


async def _insert(svc: Services, run: JobRun[Services], plan: Plan, kind: str
                  ) -> set[str] | None:
    """The one transaction; returns the ids of the entries inserted. None: another delivery
    of this job committed first."""
    user_id = plan.user_id
    with trio.fail_after(INSERT_TIMEOUT_S):
        async with svc.db.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                               (f"innera-import:{user_id}",), name="imports.lock_user")
            # no FOR UPDATE: progress is stored on the row meanwhile; the lock above already
            # serialises the deliveries of this job (same user)
            cur = await conn.execute("SELECT payload ? 'result' FROM import_jobs WHERE id = %s",
                                     (plan.job_id,), name="imports.result_recorded")
            row = await cur.fetchone()
            if row is None or row[0]:
                return None
            raced = await _already_there(conn, plan, plan.todo)  # another import meanwhile
            todo = [i for i in plan.todo if i not in raced]
            cur = conn.cursor()
            for start in range(0, len(todo), BATCH):
                batch = todo[start:start + BATCH]
                async with cur.copy("COPY entries (id, user_id, content, occurred_at) "
                                    "FROM STDIN", name="imports.copy_entries") as copy:
                    for i in batch:
                        await copy.write_row((plan.entry_ids[i], user_id, plan.sealed[i],
                                              plan.entries[i].occurred_at))
                await run.progress(0.6 + 0.35 * (start + len(batch)) / len(todo))
            async with cur.copy("COPY entry_sources (user_id, source_key, entry_id) "
                                "FROM STDIN", name="imports.copy_sources") as copy:
                for i in todo:
                    await copy.write_row((user_id, plan.keys[i], plan.entry_ids[i]))
            attachments = 0
            async with cur.copy("COPY attachments (id, user_id, entry_id, filename, "
                                "content_type, size, status) FROM STDIN",
                                name="imports.copy_attachments") as copy:
                for i in todo:
                    for k, a in enumerate(plan.entries[i].attachments):
                        await copy.write_row((plan.attachment_id(i, k), user_id,
                                              plan.entry_ids[i], a.filename, a.content_type,
                                              a.size, "ready"))
                        attachments += 1
            result = {"imported": len(todo), "skipped": plan.total - len(todo),
                      "format": kind, "attachments": attachments}
            await conn.execute(
                "UPDATE import_jobs SET payload = payload || %s WHERE id = %s",
                (Jsonb({"result": result}), plan.job_id), name="imports.record_result")
            run.check_lease()
    log.info("import %s: %d entries imported, %d skipped", plan.job_id, result["imported"],
             result["skipped"])
    return {plan.entry_ids[i] for i in todo}


async def _remove_objects(svc: Services, user_id: str, entry_ids: Sequence[str]) -> None:
    """Delete the attachment objects stored for entries that are not in the database (a
    failed or raced import). Shielded and bounded: it runs while failing."""
    if not entry_ids:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT_S):
        try:
            async with svc.db.connection() as conn:
                cur = await conn.execute(
                    "SELECT id::text FROM entries WHERE user_id = %s AND id = ANY(%s::uuid[])",
                    (user_id, list(entry_ids)), name="imports.present_entries")
                present = {row[0] for row in await cur.fetchall()}
            for entry_id in entry_ids:
                if entry_id not in present:
                    await svc.storage.delete_prefix(entry_prefix(user_id, entry_id))
        except Exception:
            log.warning("import: could not delete the attachment objects of %d entries",
                        len(entry_ids), exc_info=True)
