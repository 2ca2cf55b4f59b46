"""Routes that exist only when ``INNERA_ENV=test``: the shutdown and hang-up tests need
requests that are slow on purpose. Never registered in development or production."""

from __future__ import annotations

import trio
from quart import Blueprint, Response, request, websocket

from innera.api.context import json_response, services
from innera.errors import ValidationFailed

blueprint = Blueprint("debug", __name__, url_prefix="/_test")


def _seconds() -> float:
    """The ``seconds`` query parameter (default 1), between 0 and 60."""
    try:
        seconds = float(request.args.get("seconds", "1"))
    except ValueError:
        raise ValidationFailed("seconds must be a number") from None
    if not 0 <= seconds <= 60:
        raise ValidationFailed("seconds must be between 0 and 60")
    return seconds


@blueprint.get("/sleep")
async def sleep() -> Response:
    seconds = _seconds()
    await trio.sleep(seconds)
    return json_response({"slept": seconds})


@blueprint.get("/pg-sleep")
async def pg_sleep() -> Response:
    """A request whose work is a slow query (the hang-up tests watch it in pg_stat_activity)."""
    seconds = _seconds()
    async with services().db.connection() as conn:
        await conn.execute("SELECT pg_sleep(%s) /* innera hang-up test */", (seconds,),
                           name="debug.pg_sleep")
    return json_response({"slept": seconds})


@blueprint.post("/echo")
async def echo() -> Response:
    return json_response({"json": await request.get_json(force=True)})


@blueprint.get("/boom")
async def boom() -> Response:
    raise RuntimeError("secret internals: password=hunter2")


@blueprint.websocket("/ws")
async def ws_echo() -> None:
    """An echo socket registered with the hub (the shutdown test watches its close code)."""
    await websocket.accept()
    async with services().hub.connection("test-user") as sock:
        with sock.scope:
            while True:
                await websocket.send(await websocket.receive())
        if sock.close_code is not None:
            await websocket.close(sock.close_code, sock.close_reason)
