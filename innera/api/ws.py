"""``GET /v1/ws``: the realtime socket of a signed-in device.

Authentication: ``Authorization: Bearer <access token>`` or ``?access_token=``. A missing,
invalid or expired token, or an inactive user, is refused during the handshake with an HTTP
401 (Hypercorn supports the ASGI ``websocket.http.response`` extension, so Quart sends the
handler's response instead of accepting).

Server → client: ``{"type": ..., "data": {...}}`` events from the user's Redis channel, and
``{"type": "ping"}`` every :data:`PING_INTERVAL_S`. Client → server: ``{"type": "ping"}`` →
``{"type": "pong"}``; ``{"type": "pong"}`` (the answer to the server's ping); anything else
→ ``{"type": "error", "data": {"code": "unknown_type" | "invalid_json", "message": ...}}``.

Liveness is application level: ASGI has no event for a received protocol pong (Hypercorn
answers the client's pings itself and can send pings of its own, but never tells the app
about pongs), so a peer that sends nothing within :data:`PONG_TIMEOUT_S` of a server ping is
closed with 4002 "Ping timeout". Any client message counts as a sign of life.

Closes: 1009 for a message over 64 KiB (Hypercorn, ``websocket_max_message_size``), 1013 when
the outbound queue is full (hub), 4001 "Token expired" at the token's ``exp``, 4000 "Server
restarting" on shutdown, and whatever :meth:`Hub.close_user` is given.

One socket is two tasks: this handler reads; a writer owns every send (events, replies,
pings) from the socket's bounded queue and also keeps the ping and expiry deadlines.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jwt
import trio
from quart import Blueprint, Response, websocket

from innera.errors import Unauthorized, error_body
from innera.observability import sentry
from innera.realtime.hub import TOKEN_EXPIRED, Socket
from innera.users import get_active_user

log = logging.getLogger("innera.realtime")

blueprint = Blueprint("ws", __name__, url_prefix="/v1")

PING_INTERVAL_S = 30.0
PONG_TIMEOUT_S = 10.0
PING_TIMEOUT = (4002, "Ping timeout")
INTERNAL_ERROR = (1011, "Internal error")
SEND_TIMEOUT_S = 10.0  # one frame not written within this: the peer is too slow
CLOSE_TIMEOUT_S = 2.0
SUBSCRIBE_WAIT_S = 1.0  # the handshake waits this long at most for the user's channel

PING = json.dumps({"type": "ping"})
PONG = json.dumps({"type": "pong"})


def _error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "data": {"code": code, "message": message}},
                      separators=(",", ":"))


def _token() -> str:
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return websocket.args.get("access_token", "").strip()


def _unauthorized(message: str) -> Response:
    from innera.app import json_response

    return json_response(error_body("unauthorized", message, None), 401,
                         headers={"WWW-Authenticate": "Bearer"})


@blueprint.websocket("/ws")
async def ws() -> Response | None:
    from innera.app import services

    svc = services()
    token = _token()
    try:
        user_id = svc.access_tokens.verify(token)
    except Unauthorized as exc:
        return _unauthorized(exc.message)
    # verified just above: reading exp needs no second signature check
    exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    remaining = exp - time.time()
    if remaining <= 0:  # verify() tolerates a few seconds of skew; a socket would not
        return _unauthorized("Access token expired")
    if await get_active_user(svc.db, user_id) is None:
        return _unauthorized("This account is no longer active")
    expires_at = trio.current_time() + remaining

    with sentry.task_scope(task="websocket", user_id=user_id):
        async with svc.hub.connection(user_id) as sock:
            await svc.hub.wait_subscribed(user_id, SUBSCRIBE_WAIT_S)
            await websocket.accept()
            try:
                with sock.scope:
                    await _serve(sock, websocket._get_current_object(), expires_at)
            except Exception as exc:
                log.exception("websocket of user %s failed", user_id)
                sentry.capture_task_exception(exc, task="websocket")
                sock.close(*INTERNAL_ERROR)
            if sock.close_code is not None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await websocket.close(sock.close_code, sock.close_reason)
    return None


class _Peer:
    __slots__ = ("last_seen",)

    def __init__(self) -> None:
        self.last_seen = trio.current_time()


async def _serve(sock: Socket, ws: Any, expires_at: float) -> None:
    peer = _Peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write, sock, ws, peer, expires_at)
        while True:
            message = await ws.receive()
            peer.last_seen = trio.current_time()
            reply = _answer(message)
            if reply is not None:
                sock.offer(reply)


def _answer(message: str | bytes) -> str | None:
    try:
        parsed = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return _error("invalid_json", "The message is not valid JSON")
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if kind == "ping":
        return PONG
    if kind == "pong":
        return None
    return _error("unknown_type", f"Unknown message type: {str(kind)[:64]}"
                  if kind is not None else "A message needs a string \"type\"")


async def _write(sock: Socket, ws: Any, peer: _Peer, expires_at: float) -> None:
    """The socket's only sender: the queue, the server's pings, the expiry."""
    outbox = sock.outbox
    next_ping = trio.current_time() + PING_INTERVAL_S
    ping_sent: float | None = None
    while True:
        if ping_sent is None:
            deadline = min(next_ping, expires_at)
        else:
            deadline = min(ping_sent + PONG_TIMEOUT_S, expires_at)
        with trio.move_on_at(deadline):
            message = await outbox.receive()
            with trio.move_on_after(SEND_TIMEOUT_S) as send_scope:
                await ws.send(message)
            if send_scope.cancelled_caught:
                sock.close(1013, "Too slow")
                return
            continue
        now = trio.current_time()
        if now >= expires_at:
            sock.close(*TOKEN_EXPIRED)
            return
        if ping_sent is not None:
            if peer.last_seen >= ping_sent:
                ping_sent = None
            elif now >= ping_sent + PONG_TIMEOUT_S:
                log.info("websocket of user %s: no answer to ping; closing", sock.user_id)
                sock.close(*PING_TIMEOUT)
                return
        if ping_sent is None and now >= next_ping:
            sock.offer(PING)
            ping_sent, next_ping = now, now + PING_INTERVAL_S

