"""`/v1/notifications` (in progress)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("notifications", __name__, url_prefix="/v1/notifications")
