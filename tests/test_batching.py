"""Batcher: concurrent calls share round trips, each still gets its own answer, and a
cancelled or failing caller strands nobody."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio
import trio.testing

from innera.batching import Batcher

pytestmark = pytest.mark.timeout(10)


class Backend:
    """A round trip that takes ``delay_s`` (or until ``release`` is set) and doubles."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.release: trio.Event | None = None
        self.fail_with: Exception | None = None

    async def run(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        if self.release is not None:
            await self.release.wait()
        else:
            await trio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return [2 * item for item in items]


async def queue_behind_a_first_call(nursery: trio.Nursery,
                                    call: Callable[[int], Awaitable[None]]) -> None:
    """call(0) leads a batch (blocked in the backend); call(1) and call(2) queue behind it."""
    nursery.start_soon(call, 0)
    await trio.testing.wait_all_tasks_blocked()
    for item in (1, 2):
        nursery.start_soon(call, item)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_lone_call_runs_at_once_alone() -> None:
    backend = Backend(delay_s=0)
    batcher = Batcher(backend.run)
    assert await batcher(3) == 6
    assert await batcher(4) == 8
    assert backend.batches == [[3], [4]]


async def test_concurrent_calls_share_round_trips_and_get_their_own_answers() -> None:
    backend = Backend()
    batcher = Batcher(backend.run)
    answers: dict[int, int] = {}

    async def call(item: int) -> None:
        answers[item] = await batcher(item)

    async with trio.open_nursery() as nursery:
        for item in range(100):
            nursery.start_soon(call, item)
    assert answers == {item: 2 * item for item in range(100)}
    # the first call goes alone; the 99 that queued behind it share the next round trip
    assert len(backend.batches) == 2
    assert sorted(i for batch in backend.batches for i in batch) == list(range(100))
    assert (batcher.batches, batcher.items) == (2, 100)


async def test_a_batch_takes_at_most_max_size_calls() -> None:
    backend = Backend()
    batcher = Batcher(backend.run, max_size=10)
    async with trio.open_nursery() as nursery:
        for item in range(35):
            nursery.start_soon(batcher, item)
    assert [len(b) for b in backend.batches] == [1, 10, 10, 10, 4]


async def test_the_leader_cancelled_mid_batch_hands_its_batch_to_the_next_caller() -> None:
    gate = trio.Event()
    batches: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) <= 2:
            await gate.wait()  # the first two batches hang until cancelled
        return [2 * item for item in items]

    batcher = Batcher(run)
    answers: dict[int, int] = {}

    async def call(item: int) -> None:
        answers[item] = await batcher(item)

    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def cancellable(item: int, scope: trio.CancelScope) -> None:
            with scope:
                await call(item)

        nursery.start_soon(cancellable, 0, first)
        await trio.testing.wait_all_tasks_blocked()
        second = trio.CancelScope()
        nursery.start_soon(cancellable, 1, second)
        await trio.testing.wait_all_tasks_blocked()
        for item in (2, 3):
            nursery.start_soon(call, item)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()  # 1 leads [1, 2, 3], which hangs
        await trio.testing.wait_all_tasks_blocked()
        assert [sorted(b) for b in batches] == [[0], [1, 2, 3]]
        second.cancel()  # 2 and 3 go back to the queue; one of them leads them again
    assert [sorted(b) for b in batches] == [[0], [1, 2, 3], [2, 3]]
    assert answers == {2: 4, 3: 6}


async def test_calls_cancelled_inside_a_cancelled_batch_do_not_stall_the_batcher() -> None:
    """The leader and a call of its batch are both cancelled mid-batch (clients that hang
    up): the batch is not handed to the cancelled call, later calls are answered."""
    gate = trio.Event()
    batches: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) <= 2:
            await gate.wait()
        return [2 * item for item in items]

    batcher = Batcher(run)
    scopes = {item: trio.CancelScope() for item in range(3)}
    answers: dict[int, int] = {}

    async def call(item: int) -> None:
        with scopes.get(item) or trio.CancelScope():
            answers[item] = await batcher(item)

    async with trio.open_nursery() as nursery:
        await queue_behind_a_first_call(nursery, call)
        scopes[0].cancel()  # 1 or 2 leads [1, 2]
        await trio.testing.wait_all_tasks_blocked()
        leader, follower = batches[1]
        assert {leader, follower} == {1, 2}
        scopes[follower].cancel()
        await trio.testing.wait_all_tasks_blocked()
        scopes[leader].cancel()
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            assert await batcher(7) == 14
    assert answers == {}
    assert batches[-1] == [7]


async def test_a_queued_call_that_is_cancelled_is_not_sent() -> None:
    backend = Backend()
    backend.release = trio.Event()
    batcher = Batcher(backend.run)
    answers: dict[int, int] = {}

    async def call(item: int, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            answers[item] = await batcher(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 0)
        await trio.testing.wait_all_tasks_blocked()
        scope = trio.CancelScope()
        nursery.start_soon(call, 1, scope)
        nursery.start_soon(call, 2)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        backend.release.set()
    assert answers == {0: 0, 2: 4}
    assert backend.batches == [[0], [2]]


async def test_a_failing_batch_raises_in_each_of_its_calls_and_the_next_batch_works() -> None:
    backend = Backend()
    backend.release = trio.Event()
    batcher = Batcher(backend.run)
    outcomes: dict[int, object] = {}

    async def call(item: int) -> None:
        try:
            outcomes[item] = await batcher(item)
        except ConnectionError as exc:
            outcomes[item] = exc

    async with trio.open_nursery() as nursery:
        await queue_behind_a_first_call(nursery, call)
        backend.fail_with = ConnectionError("down")
        backend.release.set()
    assert all(isinstance(outcomes[i], ConnectionError) for i in (0, 1, 2))
    backend.fail_with, backend.release = None, None
    assert await batcher(5) == 10


async def test_a_backend_answering_the_wrong_number_of_results_is_an_error() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return []

    with pytest.raises(RuntimeError, match="a batch of 1 got 0 results"):
        await Batcher(short)(1)


@pytest.mark.parametrize("seed", range(5))
async def test_random_cancellations_never_stall_or_mix_up_answers(seed: int) -> None:
    rng = random.Random(seed)

    async def run(items: Sequence[int]) -> list[int]:
        await trio.sleep(rng.choice([0, 0.001, 0.003]))
        if rng.random() < 0.1:
            raise ConnectionError("flaky")
        return [2 * item for item in items]

    batcher = Batcher(run, max_size=8)
    answers: dict[int, int] = {}

    async def call(item: int) -> None:
        await trio.sleep(rng.random() * 0.02)
        with trio.move_on_after(rng.choice([0.0005, 0.002, 0.005, 1])):
            try:
                answers[item] = await batcher(item)
            except ConnectionError:
                pass

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for item in range(300):
                nursery.start_soon(call, item)
        assert answers and all(answer == 2 * item for item, answer in answers.items())
        for _ in range(20):  # the batcher still works: each call gets an answer or the error
            try:
                assert await batcher(1000) == 2000
            except ConnectionError:
                pass
