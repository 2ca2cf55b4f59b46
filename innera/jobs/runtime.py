"""Which job queues this process works on, and with which handlers.

:data:`HANDLERS` is the registry: queue name → :class:`QueueSpec` (``"module:factory"``,
concurrency, handler timeout); the handlers live in ``workers/``. A factory takes the
:class:`~innera.services.Services` and returns the queue's handler (``async def handler(job,
ctx)``). Modules are imported when the workers start; a missing module is an error, not a
skipped queue.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from innera.jobs.handlers import mark_dead_lettered
from innera.queue.worker import Handler, QueueConfig

if TYPE_CHECKING:
    from innera.services import Services

@dataclass(frozen=True)
class QueueSpec:
    #: ``"module:factory"``
    target: str
    concurrency: int
    #: a handler running longer is cancelled (the attempt fails and is retried)
    timeout_s: float = 600.0


HANDLERS: dict[str, QueueSpec] = {
    "push-notifications": QueueSpec("workers.push:make_handler", 8, timeout_s=60),
    # archives of large accounts stream for a while; a retry starts the archive again
    "export-jobs": QueueSpec("workers.exports:make_handler", 1, timeout_s=3600),
    "import-jobs": QueueSpec("workers.imports:make_handler", 1, timeout_s=1800),
    "account-deletion": QueueSpec("workers.account_deletion:make_handler", 2, timeout_s=1800),
    # resumable: a rotation cut by the timeout continues from its progress on the next attempt
    "key-rotation": QueueSpec("workers.key_rotation:make_handler", 1, timeout_s=3600),
}


def load_factory(target: str) -> object:
    module, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"handler {target!r} is not 'module:factory'")
    return getattr(importlib.import_module(module), attr)


def worker_queues(svc: Services) -> dict[str, QueueConfig]:
    """The :class:`QueueConfig` of every registered queue (``{}`` while none is)."""
    queues: dict[str, QueueConfig] = {}
    for name, spec in HANDLERS.items():
        factory = load_factory(spec.target)
        handler: Handler = factory(svc)  # type: ignore[operator]
        queues[name] = QueueConfig(handler=handler, concurrency=spec.concurrency,
                                   timeout_s=spec.timeout_s,
                                   on_dead_letter=partial(mark_dead_lettered, svc))
    return queues
