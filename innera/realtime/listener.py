"""The Redis pub/sub listener: one pub/sub connection per process, subscribed to
``ws:user:{id}`` for exactly the users with a socket on this process.

``run_listener`` is a supervised service task (``innera/process.py``)::

    await stack.enter_async_context(supervised(run_listener, redis, hub))

Two tasks share one pub/sub session:

- the syncer waits for :attr:`Hub.changed` and SUBSCRIBEs / UNSUBSCRIBEs the difference
  between the hub's users and what is subscribed;
- the reader takes messages with ``get_message(timeout=...)`` (bounded waits on coredis'
  in-memory queue, never a cancelled socket read) and hands them to :meth:`Hub.deliver`,
  which never waits. A control message (``control.close``, see ``innera/realtime/events.py``)
  is not delivered: it closes the user's local sockets (:meth:`Hub.close_user`).

When Redis drops, sockets stay open; the error is counted (``redis.record_error`` →
``innera_redis_errors_total``), the listener reconnects with a bounded exponential backoff
(0.1 s doubling to 5 s) and resubscribes every channel the hub needs. coredis' own retry
(unbounded, errors invisible) is disabled for that reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio
from coredis.patterns.pubsub import PubSub
from coredis.retry import NoRetryPolicy

from innera.observability import sentry
from innera.realtime.events import is_control, parse_close, user_channel
from innera.realtime.hub import Hub
from innera.redis import UNAVAILABLE_ERRORS, Redis

log = logging.getLogger("innera.realtime")

CHANNEL_PREFIX = user_channel("")
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
READ_POLL_S = 1.0  # get_message's bound; the reader loops
RESYNC_S = 30.0  # re-check subscriptions even without a change notice
SUBSCRIBE_TIMEOUT_S = 2.0  # an unacknowledged SUBSCRIBE means the connection is bad
KEEPALIVE_S = 10.0  # coredis PINGs an idle pub/sub connection after this long
CHUNK = 500  # channels per SUBSCRIBE command


async def run_listener(redis: Redis, hub: Hub, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen until cancelled. Reports started after the first session is subscribed or
    has failed once: a Redis outage at start-up does not block the process."""
    started = False

    def ready() -> None:
        nonlocal started, backoff
        backoff = BACKOFF_MIN_S
        if not started:
            started = True
            task_status.started()

    backoff = BACKOFF_MIN_S
    while True:
        try:
            await _session(redis, hub, ready)
        except BaseException as exc:  # sorted below; cancellation re-raised
            cancelled, rest = _split_cancelled(exc)
            if cancelled is not None:
                hub.mark_offline()
                raise cancelled from None
            assert rest is not None
            _report(redis, rest)
        hub.mark_offline()
        if not started:
            started = True
            task_status.started()
        log.info("pub/sub listener reconnecting in %.1f s", backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX_S)


def _split_cancelled(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
        return exc, None
    return None, exc


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _report(redis: Redis, exc: BaseException) -> None:
    leaves = list(_leaves(exc))
    unexpected = [e for e in leaves if not isinstance(e, UNAVAILABLE_ERRORS)]
    if unexpected:
        log.error("pub/sub listener failed", exc_info=unexpected[0])
        sentry.capture_task_exception(unexpected[0], task="pubsub-listener")
    else:
        redis.record_error(leaves[0])


async def _session(redis: Redis, hub: Hub, ready: Callable[[], None]) -> None:
    pubsub: PubSub[str] = redis.client.pubsub(
        retry_policy=NoRetryPolicy(), ignore_subscribe_messages=True,
        subscription_timeout=SUBSCRIBE_TIMEOUT_S, max_idle_seconds=KEEPALIVE_S)
    # entering acquires a pooled connection: bounded by the pool's timeout and the
    # connect timeout (innera/redis.py)
    async with pubsub, trio.open_nursery() as nursery:
        nursery.start_soon(_read, pubsub, hub)
        await _sync(pubsub, hub, ready)


async def _read(pubsub: PubSub[str], hub: Hub) -> None:
    while True:
        message = await pubsub.get_message(timeout=READ_POLL_S)
        if message is None or message["type"] != "message":
            continue
        channel = message["channel"]
        if isinstance(channel, str) and channel.startswith(CHANNEL_PREFIX):
            data = message["data"]
            if isinstance(data, bytes):
                data = data.decode("utf-8", "replace")
            user_id, text = channel[len(CHANNEL_PREFIX):], str(data)
            if is_control(text):
                _control(hub, user_id, text)
            else:
                hub.deliver(user_id, text)


def _control(hub: Hub, user_id: str, message: str) -> None:
    """A control message of a user channel: acted on here, never forwarded to a client."""
    close = parse_close(message)
    if close is None:
        log.warning("ignored a malformed control message on the channel of user %s", user_id)
        return
    closed = hub.close_user(user_id, *close)
    if closed:
        log.info("closed %d socket(s) of user %s with %d (control message)", closed, user_id,
                 close[0])


async def _sync(pubsub: PubSub[str], hub: Hub, ready: Callable[[], None]) -> None:
    subscribed: set[str] = set()
    first = True
    while True:
        changed = hub.changed  # taken before reading the set: no change is missed
        wanted = hub.user_ids()
        add, remove = wanted - subscribed, subscribed - wanted
        for chunk in _chunks(add):
            # coredis bounds the acknowledgement (subscription_timeout): TimeoutError
            with trio.fail_after(SUBSCRIBE_TIMEOUT_S + 1):
                await pubsub.subscribe(*(user_channel(u) for u in chunk))
            subscribed |= chunk
            hub.mark_subscribed(chunk)
        if remove:
            # coredis waits 0.1 s for the acknowledgement and only warns without it
            with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
                await pubsub.unsubscribe(*(user_channel(u) for u in remove))
            subscribed -= remove
            hub.mark_unsubscribed(remove)
        if first:
            first = False
            hub.mark_subscribed(set())  # online, even with no user yet
            log.info("pub/sub listener subscribed to %d user channel(s)", len(subscribed))
            ready()
        with trio.move_on_after(RESYNC_S):
            await changed.wait()


def _chunks(users: set[str]) -> Iterable[set[str]]:
    items = sorted(users)
    for i in range(0, len(items), CHUNK):
        yield set(items[i:i + CHUNK])
