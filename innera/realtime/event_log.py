"""Each user's event log: the events sent on ``/v1/ws`` are kept for a while, so a client
that lost its socket (a phone changing networks, a rolling restart closing every socket with
4000) reconnects with the id of the last event it got and receives what it missed.

**The log** is a Redis stream per user, ``ws:events:{userId}`` (named after the spec's
``ws:user:{userId}`` channel, which carries the same events live). It holds at most
:data:`MAX_EVENTS` entries (``XADD … MAXLEN`` exact) and none older than :data:`MAX_AGE_S`
(``XTRIM … MINID`` from the new entry's time), and the key expires :data:`MAX_AGE_S` after
its last write, so an idle user's log vanishes with its last entry's age. An event larger than
:data:`MAX_LOGGED_BYTES` (an entry with a long body: bodies may have 100,000 characters) is
published whole but logged as a *placeholder* (an entry without the event), so one user's log
stays under ~10 MB whatever they write; a replay that reaches a placeholder sends
``resync_required``.

**One script writes and publishes** (:data:`_APPEND`): ``XADD``, the two trims, ``PEXPIRE``
and the ``PUBLISH`` on the user's channel run atomically, so a subscriber never sees a live
event that is not in the log, nor does the log hold one that was never published; and events
reach the channel in the order of their ids. The entry id Redis gives (``<ms>-<seq>``, from
the Redis server's clock, strictly increasing per stream) is the event's ``id``: the same on
every instance, ordered per user. The published message carries it first:
``{"id":"1712345678901-0","type":…,"data":…}``.

**Entries are sealed** (AES-256-GCM under a key of each user's own, derived with HKDF from a
key derived from ``JWT_SECRET`` and shared by every instance; the user id is also the
associated data, so an entry cannot be moved to another user's log, and no one key seals
everyone's events): events carry journal content (``entry.created`` holds the entry), which
innera keeps encrypted at rest everywhere else, and the log is kept for a day (with Redis'
persistence, on disk). Pub/sub messages are transient and stay plain, as before.

**Replay** (:meth:`EventLog.replay`, used by the ``/v1/ws`` endpoint for ``?since=<id>``):
every event after ``since``, in order, read in pages of :data:`PAGE` (each page a bounded
``XRANGE`` starting *at* the previous page's last id, which must still be there), at most
:data:`MAX_EVENTS`. ``{"type":"resync_required"}`` is sent instead when the client cannot be
brought up to date from the log:

- ``since`` is malformed, unknown (not an entry of the log), older than the oldest kept entry,
  newer than the newest (an id "from the future": another deployment's, or invented), or the
  log is gone (expired, Redis flushed) — the client must re-fetch;
- the log cannot be read (Redis unavailable) or an entry cannot be opened (``JWT_SECRET``
  changed);
- during a replay, entries not yet sent were trimmed (over ~1,000 new events for the user
  while it ran), or the replay reached a placeholder: ``resync_required`` then comes after
  the events already sent, and ends the replay.

Whatever precedes it, ``resync_required`` means: re-fetch, and carry on with the events that
follow (the live ones).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from coredis.exceptions import ResponseError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.realtime")

#: most events kept per user, and most one replay sends
MAX_EVENTS = 1000
#: how long an event is kept (and how long after its last write the log key lives)
MAX_AGE_S = 24 * 3600
#: largest event (its JSON, in bytes) the log keeps; a larger one is logged as a placeholder
MAX_LOGGED_BYTES = 8 * 1024
#: entries per XRANGE of a replay (at most ~0.8 MB with MAX_LOGGED_BYTES)
PAGE = 100
#: bound of a publish (the script), and of one replay page
PUBLISH_TIMEOUT_S = 0.5
READ_TIMEOUT_S = 2.0

RESYNC_REQUIRED = json.dumps({"type": "resync_required"}, separators=(",", ":"))
#: how every message of the log starts: the id first (:func:`with_id`)
_ID_HEAD = '{"id":"'
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_NONCE_BYTES = 12

#: An event id as numbers (``"1712345678901-3"`` → ``(1712345678901, 3)``), for ordering.
EventId = tuple[int, int]

# KEYS[1] = ws:events:{userId}
# ARGV: [1] the channel ws:user:{userId}, [2] the sealed event (the log entry; empty: a
#       placeholder), [3] the event without its id ({"type":…,"data":…}, published),
#       [4] MAX_EVENTS, [5] MAX_AGE in ms
# Returns the new entry's id, which the published message carries first.
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '*', 'e', ARGV[2])
local ms = tonumber(string.match(id, '^(%d+)-'))
local oldest = ms - tonumber(ARGV[5])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', oldest))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], '{"id":"' .. id .. '",' .. string.sub(ARGV[3], 2))
return id
"""


def log_key(user_id: str) -> str:
    return f"ws:events:{user_id}"


def parse_event_id(text: str) -> EventId | None:
    """``"<ms>-<seq>"`` (a Redis stream id) as numbers; ``None`` when malformed."""
    match = _ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms < 2**64 and seq < 2**64 else None


def message_id(message: str) -> EventId | None:
    """The id of an event message (``{"id":"…",…}``); ``None`` for any other message (a
    pong, an error reply, a ping)."""
    if not message.startswith(_ID_HEAD):
        return None
    end = message.find('"', len(_ID_HEAD))
    return parse_event_id(message[len(_ID_HEAD):end]) if end > 0 else None


def with_id(event_id: str, event: str) -> str:
    """``{"type":…}`` → ``{"id":"<event_id>","type":…}``: what the script publishes, and
    what a replay sends (the same bytes)."""
    return f'{_ID_HEAD}{event_id}",{event[1:]}'


class EventLog:
    """Publishing events into each user's log and channel, and replaying a log."""

    def __init__(self, redis: Redis, key: bytes) -> None:
        self.redis = redis
        self._key = key
        self._append = redis.client.register_script(_APPEND)

    def _cipher(self, user_id: str) -> AESGCM:
        """The user's own sealing key (HKDF of the shared key, the user id as its info)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"innera event log " + user_id.encode())
        return AESGCM(hkdf.derive(self._key))

    @staticmethod
    def _seal(cipher: AESGCM, user_id: str, event: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + cipher.encrypt(nonce, event.encode(), user_id.encode())

    @staticmethod
    def _open(cipher: AESGCM, user_id: str, sealed: bytes) -> str:
        return cipher.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                              user_id.encode()).decode()

    async def publish(self, user_id: str, channel: str, event_type: str,
                      data: dict[str, Any]) -> str | None:
        """Append ``{"type": event_type, "data": data}`` to the user's log and publish it on
        ``channel`` (with its id); the id, or ``None`` when Redis is unavailable (counted and
        logged: events are best effort, what they announce is already committed)."""
        event = json.dumps({"type": event_type, "data": data}, separators=(",", ":"))
        kept = (self._seal(self._cipher(user_id), user_id, event)
                if len(event) <= MAX_LOGGED_BYTES else b"")
        try:
            with trio.move_on_after(PUBLISH_TIMEOUT_S) as scope:
                event_id = await self._append(
                    keys=[log_key(user_id)],
                    args=[channel, kept, event, MAX_EVENTS, MAX_AGE_S * 1000])
            if scope.cancelled_caught:
                raise TimeoutError(f"publishing took over {PUBLISH_TIMEOUT_S}s")
        except UNAVAILABLE_ERRORS as exc:
            self.redis.record_error(exc)
            log.warning("event %s for user %s not published: %s", event_type, user_id, exc)
            return None
        except ResponseError as exc:  # a Redis out of memory, or read-only in a failover
            log.warning("event %s for user %s not published: Redis refused it: %s",
                        event_type, user_id, exc)
            return None
        return str(event_id)

    async def replay(self, user_id: str, since: str, send: Callable[[str], Awaitable[None]]
                     ) -> EventId | None:
        """Send (``send``, one message at a time, in order) every event of the user's log
        after ``since``, or ``resync_required`` (see the module docstring). Returns the id of
        the newest event the client now has (``since`` when nothing followed it; the last
        sent when the replay ended in ``resync_required``), so the caller drops live
        events up to it (they were replayed); ``None`` after an immediate
        ``resync_required`` (every live event is news)."""
        upto = parse_event_id(since)
        if upto is None:
            await send(RESYNC_REQUIRED)
            return None
        start, sent, complete = f"{upto[0]}-{upto[1]}", 0, False  # as Redis writes it
        while sent < MAX_EVENTS and not complete:
            page = await self._page(user_id, start)
            if page is None or not page or page[0][0] != start:  # unreadable, or trimmed
                await send(RESYNC_REQUIRED)
                return upto if sent else None
            complete = len(page) <= PAGE  # everything up to the log's end
            for event_id, event in page[1:MAX_EVENTS - sent + 1]:
                if event is None:  # a placeholder: this event was too large to keep
                    await send(RESYNC_REQUIRED)
                    return upto
                await send(with_id(event_id, event))
                sent += 1
                upto = parse_event_id(event_id)
                start = event_id
        if sent:
            log.debug("replayed %d event(s) to user %s", sent, user_id)
        return upto

    async def _page(self, user_id: str, start: str) -> list[tuple[str, str | None]] | None:
        """The entries from ``start`` (inclusive) on, at most PAGE + 1, opened (``None`` for a
        placeholder); ``None`` when the log cannot be read or an entry cannot be opened."""
        client = self.redis.client
        try:
            with trio.move_on_after(READ_TIMEOUT_S) as scope, client.decoding(False):
                entries = await client.xrange(log_key(user_id), start, "+", count=PAGE + 1)
            if scope.cancelled_caught:
                raise TimeoutError(f"reading the event log took over {READ_TIMEOUT_S}s")
        except UNAVAILABLE_ERRORS as exc:
            self.redis.record_error(exc)
            log.warning("event log of user %s unreadable: %s", user_id, exc)
            return None
        except ResponseError as exc:
            log.warning("event log of user %s unreadable: Redis refused it: %s", user_id, exc)
            return None
        cipher = self._cipher(user_id)
        page: list[tuple[str, str | None]] = []
        for entry in entries:
            event_id = entry.identifier
            event_id = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
            sealed = entry.field_values.get(b"e")
            try:
                if not isinstance(sealed, bytes):
                    raise ValueError("no sealed event")
                page.append((event_id, self._open(cipher, user_id, sealed) if sealed else None))
            except (InvalidTag, ValueError) as exc:  # another JWT_SECRET; UnicodeDecodeError
                log.warning("event %s of user %s cannot be opened (%s): resync",
                            event_id, user_id, type(exc).__name__)
                return None
        return page
