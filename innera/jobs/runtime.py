"""The job queues a process works on, from a registry of handlers (``workers/registry.py``):
:func:`worker_queues` turns ``{JobKind or QueueSpec: factory}`` into the
:class:`~innera.queue.worker.QueueConfig` of each queue. A factory takes the services and
returns the queue's handler (``async def handler(job, ctx)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

from innera.jobs.handlers import JobServices, mark_dead_lettered
from innera.jobs.kinds import JobKind, QueueSpec
from innera.queue.worker import Handler, QueueConfig

S = TypeVar("S", bound=JobServices)

Factory = Callable[[S], Handler]


def worker_queues(svc: S, handlers: Mapping[JobKind | QueueSpec, Factory[S]]
                  ) -> dict[str, QueueConfig]:
    """The :class:`QueueConfig` of every queue of ``handlers`` (``{}`` while there is none).
    A job kind's queue marks the row of a job the queue dead-letters ``failed``."""
    queues: dict[str, QueueConfig] = {}
    for key, factory in handlers.items():
        spec = key.queue if isinstance(key, JobKind) else key
        if spec.name in queues:
            raise ValueError(f"queue {spec.name!r} is registered twice")
        on_dead_letter = (partial(mark_dead_lettered, svc, key) if isinstance(key, JobKind)
                          else None)
        queues[spec.name] = QueueConfig(handler=factory(svc), concurrency=spec.concurrency,
                                        timeout_s=spec.timeout_s,
                                        backoff_base_s=spec.backoff_base_s,
                                        on_dead_letter=on_dead_letter)
    return queues
