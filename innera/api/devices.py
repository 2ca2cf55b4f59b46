"""`/v1/devices` (in progress)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("devices", __name__, url_prefix="/v1/devices")
