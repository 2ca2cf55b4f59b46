"""``GET /v1/ws``: the realtime socket of a signed-in device.

This is a plain ASGI endpoint, not a Quart route: :class:`innera.app.Router` hands it the
``websocket`` scopes of ``/v1/ws``. A socket lives for hours, and going through the framework
cost every socket Quart-trio's websocket machinery (a context, a nursery and tasks, channels)
for nothing this endpoint uses.

Authentication: ``Authorization: Bearer <access token>`` or ``?access_token=``, checked as
every HTTP route checks it (:func:`innera.auth.authentication.authenticate`: the batched
"still active?" query, session generation included). The token is verified first (no I/O:
its user is what the handshake rate limit counts and whose channel the socket subscribes
to); the query runs once the channel is subscribed. A missing, invalid or expired token, a
session that ended, or an inactive user, is refused during the handshake with an HTTP 401
(the ASGI ``websocket.http.response`` extension, which Hypercorn supports; without it the
handshake is closed with 4001 "Unauthorized"). Refusals carry the error contract's body
(:mod:`innera.api.pipeline`) with the handshake's ``requestId``.

Limits: a handshake with a valid token is counted against ``RATE_LIMIT_WS`` for its user and,
separately, for its client IP (an IPv6 client by its /64); past either it is refused with HTTP
429 ``rate_limited`` with ``Retry-After`` and ``RateLimit-*`` headers (without the extension:
closed with 4029 "Too many requests"); Redis unavailable lets it pass, like every rate limit.
A user holds at most ``WS_MAX_CONNECTIONS_PER_USER`` sockets on one instance: past it the
hub closes the user's oldest socket with 4008 "Too many connections" (:mod:`innera.realtime.hub`
explains why the newest is kept).

Server → client: ``{"id": ..., "type": ..., "data": {...}}`` events from the user's Redis
channel, and ``{"type": "ping"}`` every :data:`PING_INTERVAL_S`. An event's ``id`` is its
entry id in the user's event log (:mod:`innera.realtime.event_log`): the same on every
instance, increasing per user.

Resume: ``GET /v1/ws?since=<id>`` (the id of the last event the client got) first sends every
event of the log after it, in order, then the live ones, with no duplicate and no gap at the
seam: the socket is registered with the hub and the user's channel subscribed *before* the log
is read, live events queue in the socket's outbox meanwhile, and the writer drops those the
replay already sent (ids up to the last replayed). When the log cannot bring the client up to
date (an unknown, expired, malformed or future ``since``, the log gone or unreadable, the
channel not subscribed in time) ``{"type": "resync_required"}`` is sent first, and the client
re-fetches; a malformed ``since`` is not refused at the handshake, so a client with a stored
id it cannot trust needs no other path. The replay is at most 1,000 events, read in pages;
its sends are bounded like every send, and live events arriving meanwhile fill the outbox
under the hub's rules (full: 1013 "Too slow"). Client → server: ``{"type": "ping"}`` →
``{"type": "pong"}``; ``{"type": "pong"}`` (the answer to the server's ping); anything else
→ ``{"type": "error", "data": {"code": "unknown_type" | "invalid_json", "message": ...}}``
(``invalid_json`` also for a message nested more than 64 levels deep; the socket stays
open).

Liveness is application level: ASGI has no event for a received protocol pong (Hypercorn
answers the client's pings itself and can send pings of its own, but never tells the app
about pongs), so a peer that sends nothing within :data:`PONG_TIMEOUT_S` of a server ping is
closed with 4002 "Ping timeout". Any client message counts as a sign of life.

Closes: 1009 for a message over 64 KiB (Hypercorn, ``websocket_max_message_size``), 1013 when
the outbound queue is full (hub), 4008 for the oldest socket past
WS_MAX_CONNECTIONS_PER_USER (hub), 4001 "Token expired" at the token's ``exp``, 4001 "Session
ended" on every instance when the user's sessions end (password change, sign-out
everywhere), 4003 "Account deleted", 4000 "Server restarting" on shutdown, and whatever
:meth:`Hub.close_user` is given.

One socket is two tasks: :func:`serve` reads; a writer owns every send (events, replies,
pings) from the socket's bounded queue and also keeps the ping and expiry deadlines. On
innera's fast server (its ``innera.websocket.send_nowait`` extension) a message is written at
once from the task that offers it (the pub/sub listener, for an event) while the socket's
buffer has room and nothing is queued before it, and only queued otherwise
(:mod:`innera.realtime.hub`): a broadcast to many sockets costs no task switch per socket.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import trio

from innera import json_input
from innera.api.pipeline import (
    Pipeline,
    asgi_json_headers,
    error_json,
    report_socket_error,
    socket_scope,
)
from innera.auth.access_tokens import AccessClaims, bearer_token
from innera.auth.authentication import authenticate
from innera.errors import Unauthorized
from innera.guards.client_ip import client_ip, rate_limit_client
from innera.guards.ratelimit import Decision
from innera.http import fast
from innera.realtime import hub
from innera.realtime.event_log import RESYNC_REQUIRED, EventId, EventLog, message_id
from innera.realtime.hub import FLUSH, TOKEN_EXPIRED, UNAUTHORIZED, Socket
from innera.services import Services

log = logging.getLogger("innera.realtime")

PATH = "/v1/ws"
PING_INTERVAL_S = 30.0
PONG_TIMEOUT_S = 10.0
PING_TIMEOUT = (4002, "Ping timeout")
INTERNAL_ERROR = (1011, "Internal error")
RATE_LIMITED = (4029, "Too many requests")  # only without websocket.http.response
CLOSE_TIMEOUT_S = 2.0
SUBSCRIBE_WAIT_S = 1.0  # the handshake waits this long at most for the user's channel
HANDSHAKE_TIMEOUT_S = 10.0

PING = json.dumps({"type": "ping"})
PONG = json.dumps({"type": "pong"})

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: what a send to a peer that has gone raises (the connection is being torn down)
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: the fast server's ``send_nowait`` becomes the hub's Socket.direct as it is: same answers
assert (fast.WROTE_NOTHING, fast.WROTE_ALL, fast.WROTE_PART) == (
    hub.WROTE_NOTHING, hub.WROTE_ALL, hub.WROTE_PART)
_FLUSH_MESSAGE = {"type": fast.FLUSH}
DirectWrite = Callable[[str], int]


def _error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "data": {"code": code, "message": message}},
                      separators=(",", ":"))


def _token(scope: Message) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            token = bearer_token(value.decode("latin-1"))
            if token is not None:
                return token
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("access_token") or [""])[0].strip()


def _direct_write(scope: Message, send: Send) -> DirectWrite | None:
    """The server's write without waiting (:data:`innera.http.fast.SEND_NOWAIT_EXTENSION`),
    or None (Hypercorn: every message goes through the writer)."""
    extension = (scope.get("extensions") or {}).get(fast.SEND_NOWAIT_EXTENSION)
    return extension["send_nowait_of"](send) if extension else None


def _since(scope: Message) -> str | None:
    """``?since=``: the id of the last event the client got (None: a fresh start)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("since")
    return values[0].strip()[:64] if values else None


def _refusal_headers(pipeline: Pipeline, body: bytes, request_id: str
                     ) -> list[tuple[bytes, bytes]]:
    return [*asgi_json_headers(body), (b"x-request-id", request_id.encode()),
            *pipeline.asgi_security]


async def _refuse(pipeline: Pipeline, scope: Message, send: Send, request_id: str,
                  message: str) -> int:
    """Answer the handshake with HTTP 401 (or close with 4001 without the extension); the
    status answered."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": UNAUTHORIZED[0],
                    "reason": UNAUTHORIZED[1]})
        return 403  # what the server answers a handshake closed before it was accepted
    body = error_json("unauthorized", message, request_id)
    await send({"type": "websocket.http.response.start", "status": 401,
                "headers": [*_refusal_headers(pipeline, body, request_id),
                            (b"www-authenticate", b"Bearer")]})
    await send({"type": "websocket.http.response.body", "body": body})
    return 401


def _verify_token(svc: Services, scope: Message) -> tuple[AccessClaims, float]:
    """The token's claims and its remaining lifetime; :class:`Unauthorized` otherwise."""
    claims = svc.access_tokens.verify_claims(_token(scope))
    remaining = claims.exp - time.time()
    if remaining <= 0:  # verify() tolerates a few seconds of skew; a socket would not
        raise Unauthorized("Access token expired")
    return claims, remaining


def _client_ip(svc: Services, scope: Message) -> str:
    peer = scope.get("client")
    forwarded = [value.decode("latin-1") for name, value in scope.get("headers", ())
                 if name == b"x-forwarded-for"]
    return client_ip(peer[0] if peer else None, forwarded, svc.settings.server.trust_proxy)


async def _refuse_rate_limited(pipeline: Pipeline, scope: Message, send: Send,
                               request_id: str, decision: Decision) -> int:
    """Answer the handshake with HTTP 429 and the rate limit headers (or close with 4029
    without the extension); the status answered."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": RATE_LIMITED[0],
                    "reason": RATE_LIMITED[1]})
        return 403
    message = f"Too many WebSocket handshakes; retry in {decision.reset_s} s"
    body = error_json("rate_limited", message, request_id)
    headers = [*_refusal_headers(pipeline, body, request_id),
               *((name.lower().encode(), value.encode())
                 for name, value in decision.headers().items())]
    await send({"type": "websocket.http.response.start", "status": 429, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
    return 429


async def _handshake_rate(svc: Services, scope: Message, user_id: str) -> Decision | None:
    """Count this handshake against ``RATE_LIMIT_WS`` for ``user_id`` and for the client IP;
    the refusing decision with the longest wait when either is spent, else ``None``."""
    limit, window = svc.settings.limits.rate_limit_ws
    refused: list[Decision] = []
    for client in (f"user:{user_id}", f"ip:{rate_limit_client(_client_ip(svc, scope))}"):
        decision = await svc.rate_limiter.hit(PATH, client, limit, window)
        if decision is not None and not decision.allowed:  # None: Redis down, fail open
            refused.append(decision)
    return max(refused, key=lambda d: d.reset_s) if refused else None


async def serve(svc: Services, pipeline: Pipeline, scope: Message, receive: Receive,
                send: Send) -> None:
    """The ASGI application of one ``/v1/ws`` socket. The handshake follows the request
    pipeline: a request id (``X-Request-Id`` on the answer, bound to the socket's log lines),
    the security headers, and one metric and access-log line for the handshake itself
    (101 when accepted; its duration is the handshake's, not the socket's)."""
    started = time.perf_counter()
    request_id = pipeline.begin()
    user_id: str | None = None
    status = 408  # the client sent no handshake within HANDSHAKE_TIMEOUT_S
    try:
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            if (await receive())["type"] != "websocket.connect":
                status = 499  # gone before the handshake
                return
            try:
                claims, remaining = _verify_token(svc, scope)
            except Unauthorized as exc:
                status = await _refuse(pipeline, scope, send, request_id, exc.message)
                return
            user_id = claims.user_id
            refused = await _handshake_rate(svc, scope, user_id)
            if refused is not None:
                status = await _refuse_rate_limited(pipeline, scope, send, request_id, refused)
                return
            status = 0  # past the handshake's checks
        if status:
            return
    finally:
        if status:
            pipeline.finish("GET", PATH, PATH, scope.get("query_string", b""), request_id,
                            user_id, status, started)
    expires_at = trio.current_time() + remaining
    assert user_id is not None
    since = _since(scope)

    with socket_scope(user_id):
        async with svc.hub.connection(user_id) as sock:
            subscribed = await svc.hub.wait_subscribed(user_id, SUBSCRIBE_WAIT_S)
            # checked once the user's channel is subscribed: an account deleted, or sessions
            # ended, after this check reach this socket through the channel's close message
            try:
                await authenticate(svc.active_users, claims, svc.active_user_counter)
            except Unauthorized as exc:
                status = await _refuse(pipeline, scope, send, request_id, exc.message)
                pipeline.finish("GET", PATH, PATH, scope.get("query_string", b""), request_id,
                                user_id, status, started)
                return
            svc.hub.admit(sock)  # past WS_MAX_CONNECTIONS_PER_USER: the oldest closes (4008)
            await send({"type": "websocket.accept",
                        "headers": [(b"x-request-id", request_id.encode()),
                                    *pipeline.asgi_security]})
            pipeline.finish("GET", PATH, PATH, scope.get("query_string", b""), request_id,
                            user_id, 101, started)
            resume = None if since is None else _Resume(svc.events, since, subscribed)
            try:
                with sock.scope:
                    await _serve(sock, receive, send, expires_at, resume,
                                 _direct_write(scope, send))
            except Exception as exc:
                report_socket_error(exc, user_id)
                sock.close(*INTERNAL_ERROR)
            finally:
                sock.direct = None  # the writer is gone: nothing is written but the close
            if sock.close_code is not None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    try:
                        await send({"type": "websocket.close", "code": sock.close_code,
                                    "reason": sock.close_reason})
                    except _GONE:
                        pass


class _Resume:
    """What the writer needs to catch the client up (``?since=``) before it goes live."""

    __slots__ = ("events", "since", "subscribed")

    def __init__(self, events: EventLog, since: str, subscribed: bool) -> None:
        self.events, self.since, self.subscribed = events, since, subscribed

    async def run(self, user_id: str, send: Send) -> EventId | None:
        """Send the events after ``since`` (or ``resync_required``); the id up to which live
        events are duplicates (see :meth:`EventLog.replay`). Without the user's channel
        subscribed, events published after the log is read could be missed: resync."""
        async def send_text(message: str) -> None:
            await send({"type": "websocket.send", "text": message})

        if not self.subscribed:
            await send_text(RESYNC_REQUIRED)
            return None
        return await self.events.replay(user_id, self.since, send_text)


class _Peer:
    __slots__ = ("last_seen",)

    def __init__(self) -> None:
        self.last_seen = trio.current_time()


async def _serve(sock: Socket, receive: Receive, send: Send, expires_at: float,
                 resume: _Resume | None, direct: DirectWrite | None) -> None:
    """Read until the peer disconnects (the writer is then cancelled) or the socket's scope is
    cancelled (a close requested by the writer or the hub)."""
    peer = _Peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write, sock, send, peer, expires_at, resume, direct)
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":  # websocket.disconnect
                nursery.cancel_scope.cancel()
                return
            peer.last_seen = trio.current_time()
            data = message.get("text")
            reply = _answer(data if data is not None else message.get("bytes") or b"")
            if reply is not None:
                sock.offer(reply)


def _answer(message: str | bytes) -> str | None:
    try:
        parsed = json_input.loads(message)
    except json_input.JsonTooDeep as exc:
        return _error("invalid_json", f"The message is {exc}")
    except json_input.InvalidJsonInput:
        return _error("invalid_json", "The message is not valid JSON")
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if kind == "ping":
        return PONG
    if kind == "pong":
        return None
    return _error("unknown_type", f"Unknown message type: {str(kind)[:64]}"
                  if kind is not None else "A message needs a string \"type\"")


async def _write(sock: Socket, send: Send, peer: _Peer, expires_at: float,
                 resume: _Resume | None, direct: DirectWrite | None) -> None:
    """The socket's only sender: the replay of ``?since=`` first, then the queue (less the
    live events the replay already sent), the server's pings, the expiry.

    With ``direct`` (the fast server), messages offered while nothing is queued are written by
    the task offering them (:attr:`Socket.direct`), from the moment the replay is over and the
    live events no longer need the duplicate check; the writer sends what had to queue. A
    broadcast to a server without it wakes the writer of every socket at once, so a message
    costs a writer no cancel scope: the timer for pings and expiry is one scope per period,
    and a send needs no deadline of its own because both HTTP servers bound every write
    (``SEND_TIMEOUT_S`` in ``innera/http/``: a peer that reads nothing for that long is
    disconnected, which ends the send with an error)."""
    outbox = sock.outbox
    replayed: EventId | None = None  # live events up to this id were replayed: dropped
    if resume is not None:
        try:
            replayed = await resume.run(sock.user_id, send)
        except _GONE:
            sock.scope.cancel()
            return
    if replayed is None:
        sock.direct = direct
    next_ping = trio.current_time() + PING_INTERVAL_S
    ping_sent: float | None = None
    while True:
        if ping_sent is None:
            deadline = min(next_ping, expires_at)
        else:
            deadline = min(ping_sent + PONG_TIMEOUT_S, expires_at)
        with trio.move_on_at(deadline):
            while True:
                message = await outbox.receive()
                if message is FLUSH:  # the rest of a message the server wrote in part
                    try:
                        await send(_FLUSH_MESSAGE)
                    except _GONE:
                        sock.scope.cancel()
                        return
                    sock.sent()
                    continue
                if replayed is not None:
                    event_id = message_id(message)
                    if event_id is not None:
                        if event_id <= replayed:
                            sock.sent()
                            continue
                        replayed = None  # the live events are in id order: all new now
                        sock.direct = direct
                try:
                    await send({"type": "websocket.send", "text": message})
                except _GONE:  # the connection is gone: nothing more to send or read
                    sock.scope.cancel()
                    return
                sock.sent()
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

