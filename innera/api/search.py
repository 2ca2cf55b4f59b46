"""`/v1/search` (in progress)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("search", __name__, url_prefix="/v1/search")
