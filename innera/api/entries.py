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

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator
from quart import Blueprint, g

from innera.api.attachments import delete_entry_objects
from innera.api.context import services
from innera.api.operation import operation
from innera.api.schemas import Model
from innera.errors import NotFound
from innera.ids import canonical_uuid
from innera.journal.entries import (
    Entry,
    delete_entry,
    insert_entry,
    list_entries,
    update_entry,
)
from innera.realtime.events import publish_to_user

blueprint = Blueprint("entries", __name__, url_prefix="/v1/entries")

TITLE_MAX = 200
BODY_MAX = 100_000
TAGS_MAX = 20
TAG_MAX = 50
MOOD_MAX = 32
LIST_PURPOSE = "list"



# --- field rules (shared by create and update) -----------------------------------------


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})")


def _occurred_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DATE_TIME.fullmatch(value):
        raise ValueError("must be an ISO 8601 date-time with an offset, e.g. "
                         "2024-05-01T18:30:00Z or 2024-05-01T20:30:00+02:00")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("not a valid date-time") from None


class _EntryRules(Model):
    """The rules shared by creation and update (validators only)."""

    @field_validator("body", check_fields=False)
    @classmethod
    def _check_body(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the body may not be empty or only whitespace")
        return value

    @field_validator("tags", check_fields=False)
    @classmethod
    def _check_tags(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        tags: dict[str, None] = {}
        for i, tag in enumerate(value):
            tag = tag.strip()
            if not tag:
                raise ValueError(f"tag {i} is empty")
            if len(tag) > TAG_MAX:
                raise ValueError(f"tag {i} is longer than {TAG_MAX} characters")
            tags.setdefault(tag)
        return list(tags)

    @field_validator("mood", check_fields=False)
    @classmethod
    def _check_mood(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("the mood may not be empty (send null to clear it)")
        if len(value) > MOOD_MAX:
            raise ValueError(f"the mood is longer than {MOOD_MAX} characters")
        return value

    @field_validator("occurredAt", mode="before", check_fields=False)
    @classmethod
    def _check_occurred_at(cls, value: Any) -> datetime | None:
        return _occurred_at(value)


_TAGS_TEXT = (f"≤ {TAGS_MAX} tags of 1..{TAG_MAX} characters (trimmed; duplicates dropped, "
              "keeping the first)")
_MOOD_TEXT = f"A free label of 1..{MOOD_MAX} characters (trimmed), e.g. \"calm\" or an emoji"
_OCCURRED_TEXT = "ISO 8601 date-time with offset (Z or ±hh:mm)"


class EntryIn(_EntryRules):
    title: str | None = Field(None, max_length=TITLE_MAX)
    body: str = Field(min_length=1, max_length=BODY_MAX,
                      description="Required; may not be only whitespace")
    tags: list[str] = Field(default_factory=list, max_length=TAGS_MAX, description=_TAGS_TEXT)
    mood: str | None = Field(None, description=_MOOD_TEXT)
    occurredAt: datetime | None = Field(None, description=_OCCURRED_TEXT + "; default now")


class EntryPatch(_EntryRules):
    """Only the fields present change; ``title`` and ``mood`` may be null (cleared)."""

    title: str | None = Field(None, max_length=TITLE_MAX)
    body: str | None = Field(None, min_length=1, max_length=BODY_MAX,
                             description="May not be null or only whitespace")
    tags: list[str] | None = Field(None, max_length=TAGS_MAX, description=_TAGS_TEXT)
    mood: str | None = Field(None, description=_MOOD_TEXT + "; null clears it")
    occurredAt: datetime | None = Field(None, description=_OCCURRED_TEXT)

    @field_validator("body", "tags", "occurredAt", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value


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
    nextCursor: str | None = Field(description="Pass as ?cursor= for the next page; null at "
                                               "the end")


class ListQuery(Model):
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=200)


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
    await publish_to_user(services().redis, g.user_id, event, data)


# --- routes ----------------------------------------------------------------------------


@operation(blueprint, "POST", "", summary="Create an entry", body=EntryIn, response=EntryOut,
           status=201, errors=(409, 422, 429))
async def create_entry(body: EntryIn) -> EntryOut:
    svc = services()
    entry = Entry(id=str(uuid.uuid4()), title=body.title, body=body.body, tags=body.tags,
                  mood=body.mood)
    entry = await insert_entry(svc.db, svc.entry_cipher, g.user_id, entry, body.occurredAt)
    svc.metrics.entries_created.inc()
    out = entry_out(entry)
    await _publish("entry.created", {"id": entry.id, "entry": out.model_dump()})
    return out


@operation(blueprint, "GET", "", summary="List entries, newest first", query=ListQuery,
           response=EntryPage, errors=(400, 422, 429),
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


@operation(blueprint, "GET", "/<entry_id>", summary="Read an entry", response=EntryOut,
           errors=(404, 429))
async def read_entry(entry_id: str) -> EntryOut:
    svc = services()
    entry = await svc.entry_reads.get(g.user_id, _entry_id(entry_id))
    if entry is None:
        raise NotFound("No such entry")
    return entry_out(entry)


_ATTRIBUTES = {"title": "title", "body": "body", "tags": "tags", "mood": "mood",
               "occurredAt": "occurred_at"}


@operation(blueprint, "PATCH", "/<entry_id>", summary="Change some fields of an entry",
           description="Only the fields sent change; the content is sealed again with a fresh "
                       "nonce. `title` and `mood` may be null to clear them.",
           body=EntryPatch, response=EntryOut, errors=(404, 409, 422, 429))
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


@operation(blueprint, "DELETE", "/<entry_id>", summary="Delete an entry", status=204,
           errors=(404, 409, 429))
async def remove_entry(entry_id: str) -> None:
    svc = services()
    entry_id = _entry_id(entry_id)
    # Stored attachment objects first (only this user's prefix; 503 and nothing lost if the
    # store fails, so a retry finishes), then the row: attachment rows go with it (CASCADE).
    await delete_entry_objects(svc, g.user_id, entry_id)
    if not await delete_entry(svc.db, g.user_id, entry_id):
        raise NotFound("No such entry")
    await _publish("entry.deleted", {"id": entry_id})
