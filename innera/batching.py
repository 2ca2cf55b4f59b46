"""Coalescing concurrent lookups into one round trip (automatic batching).

Every authenticated request asks PostgreSQL whether its user is still active and asks Redis
to count it against its rate limit. Done one by one, each is a full client round trip
(pool lease, protocol encoding, reply parsing, scheduling), and under load those round trips
are most of a request's CPU. A :class:`Batcher` lets concurrent callers share them::

    active_users = Batcher(fetch_active_users)      # async (ids) -> [User | None per id]
    user = await active_users(user_id)

A call with no batch in flight runs at once, alone: batching adds no latency at low load.
Calls that arrive while a batch is in flight queue up; when it completes, the first of them
leads the next batch, which takes every queued call (up to ``max_size``). Each call still
gets an answer read after it was made, so nothing is cached and nothing goes stale.

There is no background task: the leader is one of the callers, in its own task and under
its own deadline. If the leader is cancelled mid-batch, the other calls of its batch go back
to the front of the queue and the first of them leads again; if the batch fails, every call
in it raises the error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

K = TypeVar("K")
R = TypeVar("R")

_QUEUED, _LEAD, _IN_BATCH, _DONE, _GONE = range(5)


class _Call(Generic[K, R]):
    __slots__ = ("error", "item", "result", "state", "woken")

    def __init__(self, item: K) -> None:
        self.item = item
        self.state = _QUEUED
        self.woken = trio.Event()
        self.result: R | None = None
        self.error: BaseException | None = None

    def finish(self, result: R | None, error: BaseException | None) -> None:
        self.state, self.result, self.error = _DONE, result, error
        self.woken.set()


class Batcher(Generic[K, R]):
    """``await batcher(item)`` → the result for ``item`` of ``run(items)``, which answers a
    list of items with one result per item, in order."""

    def __init__(self, run: Callable[[Sequence[K]], Awaitable[Sequence[R]]], *,
                 max_size: int = 128) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._run = run
        self.max_size = max_size
        self._queue: deque[_Call[K, R]] = deque()
        self._leading = False
        #: batches run and items answered, for tests and benchmarks
        self.batches = 0
        self.items = 0

    async def __call__(self, item: K) -> R:
        call: _Call[K, R] = _Call(item)
        if self._leading:
            self._queue.append(call)
            try:
                await call.woken.wait()
            except BaseException:
                if call.state == _QUEUED:
                    self._queue.remove(call)
                elif call.state == _LEAD:
                    self._pass_lead()
                elif call.state == _IN_BATCH:  # its batch must not hand it the lead later
                    call.state = _GONE
                raise
            if call.state == _DONE:
                if call.error is not None:
                    raise call.error
                return call.result  # type: ignore[return-value]
        else:
            self._leading = True
        return await self._lead(call)

    async def _lead(self, own: _Call[K, R]) -> R:
        batch = [own]
        while self._queue and len(batch) < self.max_size:
            batch.append(self._queue.popleft())
        for call in batch:
            call.state = _IN_BATCH
        try:
            results = await self._run([call.item for call in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except Exception as exc:
            for call in batch[1:]:
                call.finish(None, exc)
            self._pass_lead()
            raise
        except BaseException:  # the leader was cancelled: the others are not
            for call in reversed(batch[1:]):
                if call.state == _IN_BATCH:  # not cancelled meanwhile
                    call.state = _QUEUED
                    self._queue.appendleft(call)
            self._pass_lead()
            raise
        self.batches += 1
        self.items += len(batch)
        for call, result in zip(batch[1:], results[1:], strict=True):
            call.finish(result, None)
        self._pass_lead()
        return results[0]

    def _pass_lead(self) -> None:
        if self._queue:
            nxt = self._queue.popleft()
            nxt.state = _LEAD
            nxt.woken.set()
        else:
            self._leading = False
