"""The whole innera process on one page.

::

    trio.run(run_process)
      root nursery
      ├── signal watcher: 1st SIGTERM/SIGINT → graceful shutdown (deadline armed);
      │                   2nd signal or deadline passed → exit 1 at once
      └── services, started in order, each supervised by a nursery of its own, and
          stopped in the reverse order (an exit stack):
            1. embedded PostgreSQL / Valkey     (only when DATABASE_URL / REDIS_URL are unset)
            2. PostgreSQL pool                  (+ migrations, max_connections sizing check)
            3. Redis client; then the auth and guard services built on both (a supervised
               cleaner task when refresh tokens live in PostgreSQL)
            4. pub/sub listener, WebSocket hub  (realtime issue)
            5. job reconciler, upload sweeper,  (innera/jobs; unless INNERA_WORKERS=0)
               export sweeper, job workers      (workers/)
            6. HTTP server                      (innera/http: fast, or Hypercorn)

Graceful shutdown, in the spec's order, bounded by SHUTDOWN_TIMEOUT_S:
  readiness turns 503 and the listeners close at once → WebSockets are closed with 4000
  "Server restarting" → in-flight requests finish (requests on open keep-alive connections are
  still answered, with ``Connection: close``) → job workers finish their current job → Redis
  and the DB pool close → embedded servers stop → exit 0.

``innera worker`` (:func:`run_worker_process`) is the same without steps 4 and 6: the
services, the reconciler and the job workers until a signal, with the same shutdown rules.

A failed start of any service is fatal: the exception propagates, the services already
started are stopped in reverse order, and the CLI exits non-zero with the reason.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from innera import __version__
from innera.accounts import ActiveUsers
from innera.attachments.upload_sweeper import run_upload_sweeper
from innera.auth.access_tokens import AccessTokens, load_jwt_secret_async
from innera.auth.passwords import PasswordHasher
from innera.auth.reauth import ReauthTokens
from innera.auth.refresh_tokens import PostgresRefreshTokenStore, open_refresh_store
from innera.config import DatabaseSettings, Settings, StorageSettings
from innera.crypto.data_keys import DataKeys
from innera.crypto.entry_cipher import EntryCipher
from innera.crypto.keyring import LocalKeyProvider, load_keyring_async
from innera.db.health import max_connections
from innera.db.migrate import migrate
from innera.db.pool import Pool
from innera.exports.sweeper import run_export_sweeper
from innera.guards.idempotency import Idempotency
from innera.guards.login_attempts import LoginAttempts
from innera.guards.ratelimit import RateLimiter
from innera.jobs.reconciler import RECONCILE_INTERVAL_S, run_reconciler
from innera.jobs.runtime import worker_queues
from innera.journal.entries import EntryReads
from innera.local_secrets import derive_key
from innera.observability import sentry
from innera.observability.metrics import Metrics
from innera.pagination import CursorCodec
from innera.queue.worker import job_workers
from innera.realtime.hub import SERVER_RESTARTING, Hub
from innera.realtime.listener import run_listener
from innera.redis import Redis, run_redis
from innera.services import Lifecycle, Services
from innera.storage import LocalStorage, S3Storage, Storage
from workers.registry import HANDLERS, JOB_KINDS

log = logging.getLogger("innera.process")

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass
class Started:
    """What a running process exposes (the HTTP addresses, for tests and logs)."""

    services: Services
    addresses: list[tuple[str, int]]


@asynccontextmanager
async def supervised(fn: Callable[..., Awaitable[Any]], *args: Any) -> AsyncIterator[Any]:
    """Start ``fn`` in a nursery of its own and yield what it passed to ``task_status.started``.
    Leaving the block cancels it; ``fn`` does its own bounded clean-up on cancellation."""
    async with trio.open_nursery() as nursery:
        value = await nursery.start(fn, *args)
        yield value
        nursery.cancel_scope.cancel()


async def open_database(stack: AsyncExitStack, settings: Settings, *, migrations: bool,
                        metrics: Metrics | None = None) -> Pool:
    """Embedded PostgreSQL when DATABASE_URL is unset, then the pool (sizing check and,
    when asked, migrations under an advisory lock)."""
    database_url = settings.db.url
    if database_url is None:
        from innera import embedded

        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
        database_url = await stack.enter_async_context(
            supervised(embedded.run_embedded_postgres, settings.server.data_dir))
    pool = Pool(
        database_url,
        min_size=settings.db.pool_min,
        max_size=settings.db.pool_max,
        idle_timeout_s=settings.db.idle_timeout_s,
        acquire_timeout_s=settings.db.connection_timeout_s,
        connect_kwargs=db_connect_kwargs(settings.db, database_url),
        on_query=metrics.observe_query if metrics is not None else None,
    )
    await stack.enter_async_context(supervised(pool.run))
    if metrics is not None:
        metrics.watch_pool(pool)
    await check_pool_sizing(pool, settings.db)
    if migrations:
        applied = await migrate(pool)
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
    return pool


async def open_redis(stack: AsyncExitStack, settings: Settings, metrics: Metrics) -> Redis:
    """Embedded Valkey when neither REDIS_URL nor REDIS_SENTINELS is set, then the client."""
    redis_url = settings.redis.url
    if settings.embedded_redis:
        from innera import embedded

        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
        redis_url = await stack.enter_async_context(
            supervised(embedded.run_embedded_valkey, settings.server.data_dir))
    return await stack.enter_async_context(supervised(
        run_redis, replace(settings.redis, url=redis_url), metrics.record_redis_error))


async def open_services(stack: AsyncExitStack, settings: Settings, lifecycle: Lifecycle
                        ) -> Services:
    """Steps 1–3: embedded servers (when configured), the DB pool, Redis, storage."""
    metrics = Metrics()
    pool = await open_database(stack, settings, migrations=settings.server.migrate_on_start,
                               metrics=metrics)
    redis = await open_redis(stack, settings, metrics)
    keyring = await load_keyring_async(settings.crypto.mek, settings.crypto.mek_file,
                                       settings.server.data_dir, settings.production)
    data_keys = DataKeys(pool, LocalKeyProvider(keyring), metrics)
    entry_cipher = EntryCipher(data_keys)
    refresh_tokens = open_refresh_store(settings.auth, pool, redis)
    if isinstance(refresh_tokens, PostgresRefreshTokenStore):
        await stack.enter_async_context(supervised(refresh_tokens.run_cleaner))
    jwt_secret = await load_jwt_secret_async(settings.auth.jwt_secret, settings.server.data_dir,
                                             settings.production)
    return Services(
        settings=settings, db=pool, redis=redis, metrics=metrics,
        hub=Hub(metrics, max_per_user=settings.limits.ws_max_connections_per_user),
        lifecycle=lifecycle,
        storage=open_storage(
            settings.storage, url_key=derive_key(jwt_secret, "attachments-url"),
            local_dir=settings.server.data_dir / "attachments" if settings.local_storage else None),
        cursors=CursorCodec(derive_key(jwt_secret, "innera:cursor:v1")),
        passwords=PasswordHasher(),
        access_tokens=AccessTokens(jwt_secret, settings.auth.access_token_ttl_s),
        refresh_tokens=refresh_tokens,
        reauth=ReauthTokens(redis),
        rate_limiter=RateLimiter(redis),
        login_attempts=LoginAttempts(redis, secret=derive_key(jwt_secret, "login-failures")),
        idempotency=Idempotency(redis),
        data_keys=data_keys,
        entry_cipher=entry_cipher,
        active_users=ActiveUsers(pool),
        entry_reads=EntryReads(pool, entry_cipher),
    )


@contextmanager
def frozen_start_up_heap() -> Iterator[None]:
    """What start-up built (modules, the app and its routes, clients) lives as long as the
    process: it is moved out of the collector's generations (``gc.freeze``), so that a full
    collection, which pauses the event loop, traverses only what the traffic created. Undone
    on the way out (in-process test servers come and go)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def open_jobs(stack: AsyncExitStack, svc: Services) -> None:
    """Step 5: the reconciler (one pass before it reports started), the sweepers of uploads
    never completed and of export archives past EXPORT_RETENTION_DAYS, then the job workers
    of the registered queues; on exit the workers stop claiming and get until
    SHUTDOWN_TIMEOUT_S − 5 s (at least 1 s) to finish their current jobs."""
    await stack.enter_async_context(supervised(
        partial(run_reconciler, svc.db, svc.redis, JOB_KINDS, interval_s=RECONCILE_INTERVAL_S)))
    await stack.enter_async_context(supervised(
        partial(run_upload_sweeper, svc.db, svc.storage,
                url_ttl_s=svc.settings.storage.attachment_url_ttl_s)))
    await stack.enter_async_context(supervised(
        partial(run_export_sweeper, svc.db, svc.storage,
                retention_days=svc.settings.jobs.export_retention_days)))
    queues = worker_queues(svc, HANDLERS)
    if queues:
        await stack.enter_async_context(job_workers(
            svc.redis, queues, svc.metrics,
            drain_timeout_s=max(1.0, svc.settings.server.shutdown_timeout_s - 5)))
    log.info("job reconciler started; job workers on: %s", ", ".join(queues) or "no queue yet")


@asynccontextmanager
async def signal_handling(lifecycle: Lifecycle, shutdown_timeout_s: float
                          ) -> AsyncIterator[None]:
    """The root nursery with the signal watcher (:func:`watch_signals`) for the block."""
    async with trio.open_nursery() as root:
        root.start_soon(watch_signals, lifecycle, shutdown_timeout_s)
        yield
        root.cancel_scope.cancel()


@asynccontextmanager
async def process_services(settings: Settings
                           ) -> AsyncIterator[tuple[AsyncExitStack, Services]]:
    """What ``innera serve`` and ``innera worker`` share: Sentry, the signal watcher, steps
    1-3 in an exit stack the caller extends; on the way out Sentry is flushed before the
    services close (in reverse order)."""
    lifecycle = Lifecycle()
    sentry.init_sentry(settings.observability.sentry_dsn, environment=settings.server.env,
                       release=__version__,
                       traces_sample_rate=settings.observability.sentry_traces_sample_rate,
                       untraced_paths=settings.observability.sentry_untraced_paths)
    async with signal_handling(lifecycle, settings.server.shutdown_timeout_s):
        async with AsyncExitStack() as stack:
            yield stack, await open_services(stack, settings, lifecycle)
            await trio.to_thread.run_sync(sentry.flush, 2.0)
    log.info("shutdown complete")


async def run_process(
    settings: Settings,
    *,
    on_started: Callable[[Started], None] | None = None,
) -> int:
    """Run innera until a signal (or a fatal error). Returns the exit code."""
    from innera.app import create_asgi
    from innera.http import serve_http

    async with process_services(settings) as (stack, svc):
        lifecycle = svc.lifecycle
        # 4. the pub/sub listener feeding the WebSocket hub (stopped after the HTTP drain)
        await stack.enter_async_context(supervised(run_listener, svc.redis, svc.hub))
        # 5. the job reconciler and workers (stopped after the HTTP drain)
        if settings.server.workers:
            await open_jobs(stack, svc)
        app = create_asgi(svc)
        with frozen_start_up_heap():
            async with trio.open_nursery() as http:
                addresses = await http.start(
                    serve_http, app, settings.server.host, settings.server.port, lifecycle.draining,
                    settings.server.http_server)
                log.info("innera listening on %s",
                         ", ".join(f"http://{h}:{p}" for h, p in addresses))
                if on_started is not None:
                    on_started(Started(svc, addresses))
                await lifecycle.shutdown_requested.wait()
                log.info("shutting down: readiness 503, listeners closed, draining requests")
                lifecycle.draining.set()
                closed = await svc.hub.close_all(*SERVER_RESTARTING)
                log.info("closed %d WebSocket(s) with 4000 Server restarting", closed)
        log.info("HTTP drained; stopping workers, Redis, the DB pool and embedded servers")
    return EXIT_OK


async def run_worker_process(
    settings: Settings,
    *,
    on_started: Callable[[Services], None] | None = None,
) -> int:
    """``innera worker``: the services (no HTTP, no pub/sub listener), the reconciler and
    the job workers, until a signal. Returns the exit code."""
    async with process_services(settings) as (stack, svc):
        await open_jobs(stack, svc)
        log.info("innera worker running")
        if on_started is not None:
            on_started(svc)
        await svc.lifecycle.shutdown_requested.wait()
        log.info("shutting down: stopping workers, Redis, the DB pool and embedded servers")
    return EXIT_OK


async def watch_signals(lifecycle: Lifecycle, shutdown_timeout_s: float) -> None:
    """1st SIGTERM/SIGINT starts the graceful shutdown and arms its hard deadline; a 2nd
    signal, or the deadline passing, ends the process with exit code 1 at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not lifecycle.shutdown_requested.is_set():
                log.info("received %s: graceful shutdown (deadline %gs)",
                         signal.Signals(signum).name, shutdown_timeout_s)
                lifecycle.shutdown_requested.set()
                trio.lowlevel.spawn_system_task(
                    _deadline, shutdown_timeout_s, name="innera.shutdown-deadline")
            else:
                force_exit(f"second {signal.Signals(signum).name} during shutdown")


async def _deadline(seconds: float) -> None:
    await trio.sleep(seconds)
    force_exit(f"graceful shutdown exceeded SHUTDOWN_TIMEOUT_S={seconds:g}")


def force_exit(reason: str) -> None:
    """Exit 1 now. Embedded servers run in sessions of their own: ask them to stop."""
    log.error("forced exit: %s", reason)
    from innera.embedded import signal_children

    signal_children()
    logging.shutdown()
    os._exit(EXIT_FAILED)


def db_connect_kwargs(db: DatabaseSettings, database_url: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, round(db.connection_timeout_s)),
        "application_name": "innera",
        # a PostgreSQL that vanishes from the network (no RST) is detected in about 30 s
        # instead of the kernel's default of hours: keepalives while idle, and a bound on
        # unacknowledged sends while a query is on the wire.
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
        "keepalives_count": 3, "tcp_user_timeout": 30_000,
    }
    if db.sslmode and "sslmode=" not in database_url:
        kwargs["sslmode"] = db.sslmode
    return kwargs


async def check_pool_sizing(pool: Pool, db: DatabaseSettings) -> None:
    """The spec's sizing rule: pool max × instances ≤ max_connections − 10."""
    limit = await max_connections(pool)
    wanted = db.pool_max * db.instances
    if wanted > limit - 10:
        log.warning(
            "DB_POOL_MAX=%d × INNERA_INSTANCES=%d = %d exceeds PostgreSQL max_connections=%d "
            "minus 10 reserved; lower DB_POOL_MAX to at most %d",
            db.pool_max, db.instances, wanted, limit,
            max(1, (limit - 10) // db.instances),
        )


def open_storage(storage: StorageSettings, *, url_key: bytes, local_dir: Path | None
                 ) -> Storage:
    """The local disk under ``local_dir`` when given (the embedded default), else S3 (or
    compatible); ``url_key`` signs the local store's upload and download URLs."""
    if local_dir is not None:
        return LocalStorage(local_dir, url_key=url_key)
    return S3Storage(
        bucket=storage.s3_bucket,
        endpoint=storage.s3_endpoint,
        region=storage.s3_region,
        access_key_id=storage.s3_access_key_id,
        secret_access_key=storage.s3_secret_access_key,
    )
