"""Redis memory of one user's event log (``ws:events:{userId}``) when full: 1,000 events.

    .venv/bin/python bench/event_log_memory.py [--url redis://127.0.0.1:6379/0]

Each case writes MAX_EVENTS events of one shape through innera's own ``EventLog.publish``
(sealed, exactly as the server writes them) into a fresh key, then reads ``MEMORY USAGE key
SAMPLES 0`` (every entry counted) and deletes the key. The shapes are the events innera
sends: ``job.progress``, ``notification.created``, and ``entry.created`` with a body of 300,
2,000 and 7,500 characters (the entry is in the event; 7,500 is about the longest the log
keeps whole, MAX_LOGGED_BYTES), plus a mix of them.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from typing import Any

import trio

from innera.config import RedisSettings
from innera.realtime.event_log import MAX_EVENTS, EventLog, log_key
from innera.redis import run_redis

NOW = "2025-01-01T12:00:00.000Z"


def job_progress() -> tuple[str, dict[str, Any]]:
    return "job.progress", {"id": str(uuid.uuid4()), "kind": "export", "status": "running",
                            "progress": 0.4231, "error": None}


def notification() -> tuple[str, dict[str, Any]]:
    return "notification.created", {
        "id": str(uuid.uuid4()), "kind": "export.ready", "title": "Your export is ready",
        "body": "Your journal export is ready to download in the app. It is kept for 7 days.",
        "data": {"exportId": str(uuid.uuid4())}, "readAt": None, "createdAt": NOW}


def entry(body_chars: int) -> tuple[str, dict[str, Any]]:
    entry_id = str(uuid.uuid4())
    return "entry.created", {"id": entry_id, "entry": {
        "id": entry_id, "title": "A walk by the river", "body": "word " * (body_chars // 5),
        "tags": ["walk", "river"], "mood": "calm", "occurredAt": NOW, "createdAt": NOW,
        "updatedAt": NOW}}


CASES = {
    "job.progress": [job_progress],
    "notification.created": [notification],
    "entry.created, 300-character body": [lambda: entry(300)],
    "entry.created, 2,000-character body": [lambda: entry(2000)],
    "entry.created, 7,500-character body (the largest kept)": [lambda: entry(7500)],
    "mix: 60% job.progress, 20% notification, 20% entry (300)": [
        job_progress, job_progress, job_progress, notification, lambda: entry(300)],
}


async def main(url: str) -> None:
    async with trio.open_nursery() as nursery:
        redis = await nursery.start(run_redis, RedisSettings(url=url))
        events = EventLog(redis, os.urandom(32))
        print(f"{'events':<58} {'JSON bytes/event':>16} {'MEMORY USAGE':>14} {'per event':>10}")
        for name, makers in CASES.items():
            user_id = f"bench-{uuid.uuid4()}"
            sizes = []
            for i in range(MAX_EVENTS):
                kind, data = makers[i % len(makers)]()
                sizes.append(len(json.dumps({"type": kind, "data": data},
                                            separators=(",", ":"))))
                assert await events.publish(user_id, f"ws:user:{user_id}", kind, data)
            used = await redis.client.memory_usage(log_key(user_id), samples=0)
            await redis.client.delete([log_key(user_id)])
            assert used is not None
            print(f"{name:<58} {sum(sizes) / len(sizes):>16.0f} {used:>14,} "
                  f"{used / MAX_EVENTS:>10.0f}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    trio.run(main, parser.parse_args().url)
