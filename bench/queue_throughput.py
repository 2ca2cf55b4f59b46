"""Job queue throughput and latency through one process (real Redis).

    .venv/bin/python bench/queue_throughput.py [--redis-url redis://127.0.0.1:6379/0]

1. throughput: N no-op jobs enqueued first, then drained by one worker process
   (``concurrency`` handlers) — jobs/s from the first start to the last completion;
2. latency: jobs enqueued at a steady rate while the workers run — enqueue→handler start,
   p50/p99 (idle workers poll every ``poll_interval_s``).

Uses a queue of its own (``bench-<random>``) and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import uuid

import trio

from innera.config import RedisSettings
from innera.observability.metrics import Metrics
from innera.queue.jobs import Job, JobQueue, keys
from innera.queue.worker import JobContext, QueueConfig, run_workers
from innera.redis import run_redis


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def main(url: str, jobs: int, concurrency: int, rate: float, poll_s: float) -> None:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    async with trio.open_nursery() as nursery:
        redis = await nursery.start(run_redis, RedisSettings(url=url))
        queue = JobQueue(redis, name)
        try:
            # 1. throughput
            t0 = trio.current_time()
            async with trio.open_nursery() as producers:
                for p in range(16):
                    async def produce(p: int = p) -> None:
                        for i in range(p, jobs, 16):
                            await queue.enqueue({"i": i})
                    producers.start_soon(produce)
            enqueue_s = trio.current_time() - t0
            print(f"enqueue: {jobs} jobs in {enqueue_s:.2f} s = {jobs / enqueue_s:,.0f}/s "
                  "(16 concurrent producers)")

            done = 0
            first = last = 0.0
            all_done = trio.Event()
            latencies: list[float] = []

            async def handler(job: Job, ctx: JobContext) -> None:
                nonlocal done, first, last
                now = trio.current_time()
                if "t" in job.payload:
                    latencies.append(now - job.payload["t"])
                first = first or now
                last = now
                done += 1
                if done == jobs:
                    all_done.set()

            stop = trio.Event()
            metrics = Metrics()
            config = QueueConfig(handler, concurrency=concurrency)
            async with trio.open_nursery() as workers:
                await workers.start(lambda task_status: run_workers(
                    redis, {name: config}, metrics, stop=stop, poll_interval_s=poll_s,
                    task_status=task_status))
                with trio.fail_after(120):
                    await all_done.wait()
                drain_s = last - first
                print(f"throughput: {jobs} no-op jobs in {drain_s:.2f} s = "
                      f"{jobs / drain_s:,.0f} jobs/s (concurrency {concurrency})")

                # 2. latency at a steady rate
                n = int(rate * 5)
                for _ in range(n):
                    await queue.enqueue({"t": trio.current_time()})
                    await trio.sleep(1 / rate)
                with trio.fail_after(10):
                    while len(latencies) < n:
                        await trio.sleep(0.05)
                ms = [v * 1000 for v in latencies]
                print(f"latency enqueue→start at {rate:g} jobs/s (poll {poll_s * 1000:g} ms): "
                      f"p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, "
                      f"mean {statistics.mean(ms):.1f} ms")
                stop.set()
        finally:
            with trio.move_on_after(5):
                await redis.client.delete(list(keys(name).values()))
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--poll-ms", type=float, default=100.0)
    a = parser.parse_args()
    trio.run(main, a.redis_url, a.jobs, a.concurrency, a.rate, a.poll_ms / 1000)
