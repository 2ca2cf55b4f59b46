"""What every route needs from the app: the services object, the JSON response helper and
links. (Kept apart from ``innera/app.py``, which imports the blueprints.)"""

from __future__ import annotations

import json
from typing import Any

from quart import Response, current_app

from innera.services import Services


def services() -> Services:
    """The services of the app serving the current request."""
    return current_app.extensions["innera"]


def json_response(body: Any, status: int = 200, *, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status,
                    content_type=content_type, headers=headers)


def link(path: str) -> str:
    """A link to ``path`` (``/v1/exports/{id}``) as the API returns it: absolute on
    PUBLIC_URL when that is set (a client need not know how to resolve it), else the path
    itself, relative to the URL the client called."""
    return f"{services().settings.server.public_url or ''}{path}"
