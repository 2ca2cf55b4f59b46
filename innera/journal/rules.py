"""What an entry and its attachments may hold: the field rules the entries API applies to
every write, and imports apply to every imported entry, so an import cannot store what the
API would refuse. Lengths are in Unicode code points; see ``innera/api/entries.py`` for the
rules in prose. (Plain pydantic and the standard library: the import parser's child process
loads this module, and nothing heavier.)"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from innera.whitespace import NOT_WHITESPACE, trimmed

TITLE_MAX = 200
BODY_MAX = 100_000
TAGS_MAX = 20
TAG_MAX = 50
MOOD_MAX = 32
STRING_MAX = 100_000  # any string of a request (the models' str_max_length)

#: checked before parsing: a fixed-shape pattern, linear in its input
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}"
                        r"(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:[0-9]{2})")


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


class _Strict(BaseModel):
    """Unknown fields are refused (the API's ``Model`` rule)."""

    model_config = ConfigDict(extra="forbid", str_max_length=STRING_MAX)


class _EntryRules(_Strict):
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
# What the validators above accept, as JSON Schema for the OpenAPI document (the validators
# stay the rule; these state it exactly).
_BODY = {"type": "string", "minLength": 1, "maxLength": BODY_MAX, "pattern": NOT_WHITESPACE}
_TAGS = {"type": "array", "maxItems": TAGS_MAX, "items": {
    "type": "string", "maxLength": STRING_MAX, "pattern": trimmed(TAG_MAX)}}
_MOOD = {"type": "string", "maxLength": STRING_MAX, "pattern": trimmed(MOOD_MAX)}
_OCCURRED = {"type": "string", "pattern": "^" + _DATE_TIME.pattern + "$"}
_NULL = {"type": "null"}


def _described(schema: dict[str, Any], text: str, *, nullable: bool = False
               ) -> WithJsonSchema:
    if nullable:
        return WithJsonSchema({"anyOf": [schema, _NULL], "description": text})
    return WithJsonSchema({**schema, "description": text})


class EntryIn(_EntryRules):
    title: str | None = Field(None, max_length=TITLE_MAX)
    body: Annotated[str, _described(_BODY, "Required; may not be only whitespace")] = Field(
        min_length=1, max_length=BODY_MAX)
    tags: Annotated[list[str], _described(_TAGS, _TAGS_TEXT)] = Field(
        default_factory=list, max_length=TAGS_MAX)
    mood: Annotated[str | None, _described(_MOOD, _MOOD_TEXT, nullable=True)] = None
    occurredAt: Annotated[datetime | None, _described(
        _OCCURRED, _OCCURRED_TEXT + "; default now", nullable=True)] = None


class EntryPatch(_EntryRules):
    """Only the fields present change; ``title`` and ``mood`` may be null (cleared)."""

    # body, tags and occurredAt may be left out but not null: their schemas say so
    title: str | None = Field(None, max_length=TITLE_MAX)
    body: Annotated[str | None, _described(_BODY, "May not be only whitespace")] = Field(
        None, min_length=1, max_length=BODY_MAX)
    tags: Annotated[list[str] | None, _described(_TAGS, _TAGS_TEXT)] = Field(
        None, max_length=TAGS_MAX)
    mood: Annotated[str | None, _described(
        _MOOD, _MOOD_TEXT + "; null clears it", nullable=True)] = None
    occurredAt: Annotated[datetime | None, _described(_OCCURRED, _OCCURRED_TEXT)] = None

    @field_validator("body", "tags", "occurredAt", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value


#: what an attachment may be
ALLOWED_CONTENT_TYPES = frozenset({
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/heic",
    "audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", "audio/wav", "audio/webm",
    "application/pdf",
})
