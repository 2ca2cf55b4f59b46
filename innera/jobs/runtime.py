"""Which job queues this process works on, and with which handlers.

:data:`HANDLERS` is the registry: queue name → (``"module:factory"``, concurrency). A
factory takes the :class:`~innera.services.Services` and returns the queue's handler
(``async def handler(job, ctx)``). Modules are imported when the workers start; a missing
module is an error, not a skipped queue.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from innera.queue.worker import Handler, QueueConfig

if TYPE_CHECKING:
    from innera.services import Services

HANDLERS: dict[str, tuple[str, int]] = {
    # Empty until the worker modules land in innera/jobs/workers/, e.g.
    # "export-jobs": ("innera.jobs.workers.export:make_handler", 2),
}


def load_factory(target: str) -> object:
    module, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"handler {target!r} is not 'module:factory'")
    return getattr(importlib.import_module(module), attr)


def worker_queues(svc: Services) -> dict[str, QueueConfig]:
    """The :class:`QueueConfig` of every registered queue (``{}`` while none is)."""
    queues: dict[str, QueueConfig] = {}
    for name, (target, concurrency) in HANDLERS.items():
        factory = load_factory(target)
        handler: Handler = factory(svc)  # type: ignore[operator]
        queues[name] = QueueConfig(handler=handler, concurrency=concurrency)
    return queues
