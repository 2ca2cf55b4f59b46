"""`/v1/attachments` (in progress)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("attachments", __name__, url_prefix="/v1/attachments")
