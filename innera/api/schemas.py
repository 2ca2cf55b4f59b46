"""Request and response bodies shared by several resources, and the types of query
parameters."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Model(BaseModel):
    """Unknown fields are refused (422), so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", str_max_length=100_000)


class UserOut(Model):
    id: str = Field(description="User id (UUID)")
    email: str
    createdAt: str = Field(description="ISO 8601 timestamp")


class ErrorDetail(Model):
    code: str = Field(description="snake_case error code, stable")
    message: str = Field(description="For people; may change")
    details: Any | None = Field(None, description="validation_failed: a list of "
                                                  "`{field, message, type}`")


class ErrorOut(Model):
    """The body of every error answer."""

    error: ErrorDetail
    requestId: str = Field(description="This request's id, also in X-Request-Id (quote it "
                                       "when reporting a problem)")


# --- query parameters --------------------------------------------------------------------
# A query string holds text: these read it exactly as the OpenAPI document states the
# parameter, instead of pydantic's lenient coercion ("1.0", " 1", "yes", "0" …), so that what
# the document forbids is refused (422).


def _query_int(value: Any) -> Any:
    if isinstance(value, str):
        digits = value[1:] if value.startswith("-") else value
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
            raise ValueError("must be a whole number")
        return int(value)
    return value


def _query_bool(value: Any) -> Any:
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("must be true or false")
        return value == "true"
    return value


#: an integer query parameter: optional minus sign, ASCII digits
QueryInt = Annotated[int, BeforeValidator(_query_int)]
#: a boolean query parameter: ``true`` or ``false``
QueryBool = Annotated[bool, BeforeValidator(_query_bool)]

CURSOR_MAX = 200
#: the ``cursor`` query parameter of every list
Cursor = Annotated[str | None, Field(
    max_length=CURSOR_MAX,
    description="Opaque: the `nextCursor` of the previous page, passed back unchanged. Any "
                "other value is 400 `invalid_cursor`.")]
#: the ``nextCursor`` of every list page
NextCursor = Annotated[str | None, Field(
    description="Opaque: pass it as `?cursor=` for the next page; null on the last page")]
