"""``innera serve`` runs the reconciler (step 5) unless ``INNERA_WORKERS=0``."""

from __future__ import annotations

import pytest
import trio

from innera.config import load_settings
from innera.db.pool import Pool
from innera.exports import EXPORT_JOB
from innera.jobs import tables
from innera.queue.jobs import JobQueue
from innera.redis import Redis
from tests.fixtures.server import start_server
from tests.jobs.test_tables import make_user

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("workers", "enqueued"), [("1", True), ("0", False)])
async def test_serve_reconciles_at_start_unless_workers_are_off(
        nursery: trio.Nursery, server_settings: dict[str, str], db_pool: Pool, redis: Redis,
        workers: str, enqueued: bool) -> None:
    user = await make_user(db_pool)
    row_id = await tables.create_job(db_pool, EXPORT_JOB, user_id=user, payload={})
    queue_id = tables.queue_job_id(EXPORT_JOB, row_id)
    srv = await start_server(nursery, load_settings({**server_settings,
                                                     "INNERA_WORKERS": workers}))
    try:
        # the reconciler's first pass runs before the HTTP server starts
        assert (await JobQueue(redis, "export-jobs").get(queue_id) is not None) is enqueued
    finally:
        await srv.client.aclose()
        assert await srv.stop() == 0
