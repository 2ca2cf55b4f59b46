"""Request and response bodies shared by several resources."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    """Unknown fields are refused (422), so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", str_max_length=100_000)


class UserOut(Model):
    id: str = Field(description="User id (UUID)")
    email: str
    createdAt: str = Field(description="ISO 8601 timestamp")


class ErrorDetail(Model):
    code: str = Field(description="snake_case error code")
    message: str
    details: Any | None = None


class ErrorOut(Model):
    error: ErrorDetail
    requestId: str
