"""``/v1/entries``: the signed-in user's journal entries (content encrypted at rest).

Limits (lengths in Unicode code points): ``title`` ≤ 200 (or null); ``body`` required,
≤ 100,000, not only whitespace (stored as sent); ``tags`` ≤ 20 items, each 1..50 after
trimming surrounding whitespace, duplicates dropped keeping the first; ``mood`` a free label
of 1..32 characters after trimming (e.g. ``"calm"``, ``"😊"``) or null; ``occurredAt`` an ISO
8601 date-time WITH an offset (``Z`` or ``±hh:mm``), default now. Every timestamp is
returned in UTC with ``Z`` and millisecond precision.

Another user's entry answers exactly like a missing one (404 ``not_found``), and so does a
malformed id. Changes publish ``entry.created`` / ``entry.updated`` (``{id, entry}``) and
``entry.deleted`` (``{id}``) to the user's devices (best effort).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field
from quart import Blueprint, g

from innera.api.bodies import storage_errors
from innera.api.context import services
from innera.api.operation import KEY_SERVICE_UNAVAILABLE, Caller, operation
from innera.api.schemas import Cursor, Model, NextCursor, QueryInt
from innera.attachments import delete_entry_objects
from innera.errors import NotFound
from innera.ids import canonical_uuid
from innera.journal.entries import (
    Entry,
    delete_entry,
    insert_entry,
    list_entries,
    update_entry,
)
from innera.journal.rules import EntryIn, EntryPatch
from innera.realtime.events import publish_to_user

blueprint = Blueprint("entries", __name__, url_prefix="/v1/entries")

LIST_PURPOSE = "list"

NO_ENTRY = "`not_found`: no such entry of this user"
STORAGE_UNAVAILABLE = ("`storage_unavailable`: attachment storage failed or timed out; nothing "
                       "was lost, retry")
ENTRY = {"entry_id": "$response.body#/id"}
#: where a created entry's id leads
ENTRY_LINKS = {"getEntry": ENTRY, "updateEntry": ENTRY, "deleteEntry": ENTRY,
               "createAttachment": ENTRY, "listAttachments": ENTRY}


class EntryOut(Model):
    id: str
    title: str | None
    body: str
    tags: list[str]
    mood: str | None
    occurredAt: str = Field(description="ISO 8601, UTC")
    createdAt: str
    updatedAt: str


class EntryPage(Model):
    items: list[EntryOut]
    nextCursor: NextCursor


class ListQuery(Model):
    limit: QueryInt = Field(20, ge=1, le=100)
    cursor: Cursor = None


def entry_out(entry: Entry) -> EntryOut:
    # Built from an entry innera validated when it was written and has just decrypted:
    # validating it again (about a third of the cost of a read's JSON) would find it valid.
    return EntryOut.model_construct(**entry.public())


def _entry_id(text: str) -> str:
    entry_id = canonical_uuid(text)
    if entry_id is None:
        raise NotFound("No such entry")
    return entry_id


async def _publish(event: str, data: dict[str, Any]) -> None:
    await publish_to_user(services().events, g.user_id, event, data)


# --- routes ----------------------------------------------------------------------------


@operation(blueprint, "POST", "", operation_id="createEntry", summary="Create an entry",
           body=EntryIn, response=EntryOut, status=201, links=ENTRY_LINKS,
           errors={503: KEY_SERVICE_UNAVAILABLE})
async def create_entry(body: EntryIn) -> EntryOut:
    svc = services()
    entry = Entry(id=str(uuid.uuid4()), title=body.title, body=body.body, tags=body.tags,
                  mood=body.mood)
    entry = await insert_entry(svc.db, svc.entry_cipher, g.user_id, entry, body.occurredAt)
    svc.metrics.entries_created.inc()
    out = entry_out(entry)
    await _publish("entry.created", {"id": entry.id, "entry": out.model_dump()})
    return out


@operation(blueprint, "GET", "", operation_id="listEntries",
           summary="List entries, newest first", query=ListQuery, response=EntryPage,
           errors={503: KEY_SERVICE_UNAVAILABLE},
           description="Keyset pagination: `nextCursor` is opaque and signed; a cursor that "
                       "was altered answers 400 `invalid_cursor`.")
async def list_entries_route(query: ListQuery) -> EntryPage:
    svc = services()
    codec = svc.cursors
    after = (codec.decode(LIST_PURPOSE, g.user_id, query.cursor)
             if query.cursor is not None else None)
    entries, next_position = await list_entries(svc.db, svc.entry_cipher, g.user_id,
                                                query.limit, after)
    return EntryPage(
        items=[entry_out(e) for e in entries],
        nextCursor=(codec.encode(LIST_PURPOSE, g.user_id, next_position)
                    if next_position is not None else None))


@operation(blueprint, "GET", "/<entry_id>", operation_id="getEntry", summary="Read an entry",
           response=EntryOut, errors={404: NO_ENTRY, 503: KEY_SERVICE_UNAVAILABLE},
           direct=True)
async def read_entry(caller: Caller, entry_id: str) -> EntryOut:
    entry = await caller.svc.entry_reads.get(caller.user_id, _entry_id(entry_id))
    if entry is None:
        raise NotFound("No such entry")
    return entry_out(entry)


_ATTRIBUTES = {"title": "title", "body": "body", "tags": "tags", "mood": "mood",
               "occurredAt": "occurred_at"}


@operation(blueprint, "PATCH", "/<entry_id>", operation_id="updateEntry",
           summary="Change some fields of an entry",
           description="Only the fields sent change; the content is sealed again with a fresh "
                       "nonce. `title` and `mood` may be null to clear them.",
           body=EntryPatch, response=EntryOut,
           errors={404: NO_ENTRY, 503: KEY_SERVICE_UNAVAILABLE})
async def patch_entry(entry_id: str, body: EntryPatch) -> EntryOut:
    svc = services()
    entry_id = _entry_id(entry_id)
    changes = {_ATTRIBUTES[name]: getattr(body, name) for name in body.model_fields_set}
    if not changes:
        entry = await svc.entry_reads.get(g.user_id, entry_id)
    else:
        entry = await update_entry(svc.db, svc.entry_cipher, g.user_id, entry_id, changes)
    if entry is None:
        raise NotFound("No such entry")
    out = entry_out(entry)
    if changes:
        await _publish("entry.updated", {"id": entry.id, "entry": out.model_dump()})
    return out


@operation(blueprint, "DELETE", "/<entry_id>", operation_id="deleteEntry",
           summary="Delete an entry (and its attachments)", status=204,
           errors={404: NO_ENTRY, 503: STORAGE_UNAVAILABLE},
           links={"getEntry": {"entry_id": "$request.path.entry_id"}})
async def remove_entry(entry_id: str) -> None:
    svc = services()
    entry_id = _entry_id(entry_id)
    # Stored attachment objects first (only this user's prefix; 503 and nothing lost if the
    # store fails, so a retry finishes), then the row: attachment rows go with it (CASCADE).
    with storage_errors():
        await delete_entry_objects(svc.storage, g.user_id, entry_id)
    if not await delete_entry(svc.db, g.user_id, entry_id):
        raise NotFound("No such entry")
    await _publish("entry.deleted", {"id": entry_id})
