"""`/v1/entries` (in progress)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("entries", __name__, url_prefix="/v1/entries")
