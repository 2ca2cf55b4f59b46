"""The whole innera process on one page.

::

    trio.run(run_process)
      root nursery
      ├── signal watcher: 1st SIGTERM/SIGINT → graceful shutdown (deadline armed);
      │                   2nd signal or deadline passed → exit 1 at once
      └── services, started in order, each supervised by a nursery of its own, and
          stopped in the reverse order (an exit stack):
            1. embedded PostgreSQL / Valkey     (only when DATABASE_URL / REDIS_URL are unset)
            2. PostgreSQL pool                  (+ migrations, on DATABASE_MIGRATION_URL when
                                                set; max_connections sizing check)
            3. Redis client; then the auth and guard services built on both (a supervised
               cleaner task when refresh tokens live in PostgreSQL); then, only when
               METRICS_PORT is set, the metrics port (/metrics, /health; metrics_port.py)
            4. pub/sub listener, WebSocket hub, (realtime issue; innera/auth/: the users
               active-user counter              authenticated, written to Redis in batches)
            5. job reconciler, upload sweeper,  (innera/jobs; unless INNERA_WORKERS=0)
               export sweeper, job workers      (workers/)
            6. HTTP server                      (innera/http: fast, or Hypercorn)

Graceful shutdown, in the spec's order, bounded by SHUTDOWN_TIMEOUT_S counted from the
signal:
  readiness turns 503 at once → for SHUTDOWN_DRAIN_DELAY_S (default 0) nothing else changes:
  the listeners accept and every connection is served, while a load balancer or Kubernetes
  takes the instance out of rotation → the listeners close (the connections the kernel had
  already completed are accepted and served first; new ones are refused) → WebSockets are
  closed with 4000 "Server restarting" → in-flight requests finish, every response from now
  on says ``Connection: close``, a request still arriving on an open keep-alive connection is
  answered (innera/http/listeners.py: how that close cuts no request) → job workers finish
  their current job → the active-user counter writes what it holds → the metrics port closes
  → Redis and the DB pool close → embedded servers stop → exit 0.
  The delay counts inside SHUTDOWN_TIMEOUT_S (the configuration refuses a delay that is not
  below it), so the hard deadline stays where the orchestrator's grace period expects it.

``innera worker`` (:func:`run_worker_process`) is the same without steps 4 and 6, and with
the metrics port always (METRICS_PORT, else 9091: the worker's only listener): the
services, the metrics port, the reconciler and the job workers until a signal, with the same
shutdown rules (no drain delay: its metrics port is not behind a load balancer).

The metrics port starts before the workers and stops after them, just before Redis and the
pool close: the job outcomes of the drain can still be scraped while it lasts. It is not
drained itself (a scrape in flight when it stops is cut).

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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from innera import __version__
from innera.accounts import ActiveUsers
from innera.attachments.upload_sweeper import run_upload_sweeper
from innera.auth.access_tokens import AccessTokens, load_jwt_secret_async
from innera.auth.active_user_counter import ActiveUserCounter
from innera.auth.passwords import PasswordHasher
from innera.auth.reauth import ReauthTokens
from innera.auth.refresh_tokens import PostgresRefreshTokenStore, open_refresh_store
from innera.config import WORKER_METRICS_PORT, DatabaseSettings, Settings, StorageSettings
from innera.crypto.data_keys import DataKeys
from innera.crypto.entry_cipher import EntryCipher
from innera.crypto.keyring import (
    KeyProvider,
    KeyProviders,
    LocalKeyProvider,
    keyring_source,
    load_keyring_async,
)
from innera.crypto.kms import open_kms_provider
from innera.db.connect_options import connect_options
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
from innera.realtime.event_log import EventLog
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
    """What a running process exposes (the HTTP addresses, for tests and logs; those of the
    metrics port when METRICS_PORT is set)."""

    services: Services
    addresses: list[tuple[str, int]]
    metrics_addresses: list[tuple[str, int]] = field(default_factory=list)


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
    when asked, migrations under an advisory lock: through DATABASE_MIGRATION_URL, a direct
    connection, when set)."""
    database_url = settings.db.url
    if database_url is None:
        from innera import embedded

        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
        database_url = await stack.enter_async_context(
            supervised(embedded.run_embedded_postgres, settings.server.data_dir))
    options = connect_options(settings.db, database_url)
    pool = Pool(
        database_url,
        min_size=settings.db.pool_min,
        max_size=settings.db.pool_max,
        idle_timeout_s=settings.db.idle_timeout_s,
        acquire_timeout_s=settings.db.connection_timeout_s,
        connect_kwargs=options.kwargs,
        explain_connect_error=options.explain,
        on_query=metrics.observe_query if metrics is not None else None,
    )
    await stack.enter_async_context(supervised(pool.run))
    if metrics is not None:
        metrics.watch_pool(pool)
    await check_pool_sizing(pool, settings.db)
    if migrations:
        applied = await run_migrations(pool, settings.db)
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
    return pool


async def run_migrations(pool: Pool, db: DatabaseSettings) -> list[str]:
    """Migrations hold a session-level advisory lock across several transactions, which a
    pooler in transaction mode would hand to other clients: with DATABASE_MIGRATION_URL they
    run on a direct connection of their own, else on one of the pool's."""
    if db.migration_url is None:
        return await migrate(pool)
    conn = await connect_options(db, db.migration_url, "DATABASE_MIGRATION_URL").connect()
    async with conn:
        return await migrate(conn)


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
    data_keys = DataKeys(pool, await open_key_provider(settings, metrics), metrics,
                         cache_size=settings.crypto.dek_cache_size,
                         cache_ttl_s=settings.crypto.dek_cache_ttl_s)
    entry_cipher = EntryCipher(data_keys)
    refresh_tokens = open_refresh_store(settings.auth, pool, redis)
    if isinstance(refresh_tokens, PostgresRefreshTokenStore):
        await stack.enter_async_context(supervised(refresh_tokens.run_cleaner))
    jwt_secret = await load_jwt_secret_async(settings.auth.jwt_secret, settings.server.data_dir,
                                             settings.production)
    return Services(
        settings=settings, db=pool, redis=redis, metrics=metrics,
        hub=Hub(metrics, max_per_user=settings.limits.ws_max_connections_per_user),
        events=EventLog(redis, derive_key(jwt_secret, "innera:event-log:v1")),
        lifecycle=lifecycle,
        storage=open_storage(
            settings.storage, url_key=derive_key(jwt_secret, "attachments-url"),
            local_dir=settings.server.data_dir / "attachments" if settings.local_storage else None,
            public_url=settings.server.public_url),
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
        active_user_counter=ActiveUserCounter(redis),
        entry_reads=EntryReads(pool, entry_cipher),
    )


async def open_key_provider(settings: Settings, metrics: Metrics) -> KeyProvider:
    """The master keys, by version: AWS KMS keys (INNERA_MEK_KMS_KEY_ID) and local keys
    (INNERA_MEK or INNERA_MEK_FILE; outside production, a generated key under the data dir,
    which is never generated when KMS holds the master key). :class:`KeyringError` when
    they are unusable (a version given twice, no region for a KMS key, …)."""
    crypto = settings.crypto
    kms_keys = dict(crypto.mek_kms_key_ids)
    keyring = await load_keyring_async(crypto.mek, crypto.mek_file, settings.server.data_dir,
                                       settings.production, beside_kms=bool(kms_keys))
    providers: list[KeyProvider] = []
    if keyring is not None:
        providers.append(LocalKeyProvider(
            keyring, keyring_source(crypto.mek, crypto.mek_file, settings.server.data_dir)))
    if kms_keys:
        providers.append(await open_kms_provider(kms_keys, metrics))
    return KeyProviders(providers)


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
    SHUTDOWN_TIMEOUT_S − SHUTDOWN_DRAIN_DELAY_S − 5 s (at least 1 s) to finish their current
    jobs (they went on working during the delay)."""
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
            drain_timeout_s=max(1.0, svc.settings.server.shutdown_timeout_s
                                - svc.settings.server.shutdown_drain_delay_s - 5)))
    log.info("job reconciler started; job workers on: %s", ", ".join(queues) or "no queue yet")


async def open_metrics_port(stack: AsyncExitStack, svc: Services, port: int
                            ) -> list[tuple[str, int]]:
    """The metrics port on HOST:``port`` (``/metrics`` and ``/health`` only), until the
    stack closes; returns its addresses."""
    from innera.app import MetricsPortRouter
    from innera.http.metrics_port import serve_metrics_port

    addresses: list[tuple[str, int]] = await stack.enter_async_context(supervised(
        serve_metrics_port, MetricsPortRouter(svc), svc.settings.server.host, port))
    log.info("metrics listening on %s", ", ".join(f"http://{h}:{p}" for h, p in addresses))
    return addresses


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
        metrics_port = settings.observability.metrics_port
        # 3. then /metrics off the public port (stopped after the workers' drain)
        metrics_addresses = ([] if metrics_port is None
                             else await open_metrics_port(stack, svc, metrics_port))
        # 4. the pub/sub listener feeding the WebSocket hub, and the active-user counter
        # (both stopped after the HTTP drain)
        await stack.enter_async_context(supervised(run_listener, svc.redis, svc.hub))
        svc.metrics.watch_active_users(svc.active_user_counter.counts)
        await stack.enter_async_context(supervised(
            svc.active_user_counter.run, settings.observability.active_users_interval_s))
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
                    on_started(Started(svc, addresses, metrics_addresses))
                await lifecycle.shutdown_requested.wait()
                await drain_delay(settings.server.shutdown_drain_delay_s)
                log.info("shutting down: listeners closed, draining requests")
                lifecycle.draining.set()
                closed = await svc.hub.close_all(*SERVER_RESTARTING)
                log.info("closed %d WebSocket(s) with 4000 Server restarting", closed)
        log.info("HTTP drained; stopping workers, Redis, the DB pool and embedded servers")
    return EXIT_OK


async def drain_delay(seconds: float) -> None:
    """Readiness already answers 503 (the signal set ``shutdown_requested``); serve on, as
    before, for ``seconds``: an orchestrator without layer-7 retries (a Kubernetes Service, a
    TCP balancer) keeps sending new connections for a moment after it was told to stop the
    instance, and those are served instead of refused. A second signal still exits at once
    (:func:`watch_signals`)."""
    if seconds <= 0:
        log.info("shutting down: readiness 503")
        return
    log.info("shutting down: readiness 503; still serving for %gs (SHUTDOWN_DRAIN_DELAY_S) "
             "before the drain", seconds)
    await trio.sleep(seconds)


async def run_worker_process(
    settings: Settings,
    *,
    on_started: Callable[[Services], None] | None = None,
) -> int:
    """``innera worker``: the services (no public HTTP, no pub/sub listener), the metrics
    port (METRICS_PORT, else 9091), the reconciler and the job workers, until a signal.
    Returns the exit code."""
    async with process_services(settings) as (stack, svc):
        port = settings.observability.metrics_port
        await open_metrics_port(stack, svc, WORKER_METRICS_PORT if port is None else port)
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


async def check_pool_sizing(pool: Pool, db: DatabaseSettings) -> None:
    """The spec's sizing rule: pool max × instances ≤ max_connections − 10. Not with
    DATABASE_MIGRATION_URL: the pool then goes through a pooler (PgBouncer), whose own pool
    size, not DB_POOL_MAX, bounds the server connections (README, "Behind PgBouncer")."""
    if db.migration_url is not None:
        log.info("DATABASE_MIGRATION_URL is set: the pool is taken to go through a pooler; "
                 "size the pooler's pool against max_connections (DB_POOL_MAX is not checked)")
        return
    limit = await max_connections(pool)
    wanted = db.pool_max * db.instances
    if wanted > limit - 10:
        log.warning(
            "DB_POOL_MAX=%d × INNERA_INSTANCES=%d = %d exceeds PostgreSQL max_connections=%d "
            "minus 10 reserved; lower DB_POOL_MAX to at most %d",
            db.pool_max, db.instances, wanted, limit,
            max(1, (limit - 10) // db.instances),
        )


def open_storage(storage: StorageSettings, *, url_key: bytes, local_dir: Path | None,
                 public_url: str | None = None) -> Storage:
    """The local disk under ``local_dir`` when given (the embedded default), else S3 (or
    compatible); ``url_key`` signs the local store's upload and download URLs, which are
    absolute on ``public_url`` (PUBLIC_URL) when it is set."""
    if local_dir is not None:
        return LocalStorage(local_dir, url_key=url_key, base_url=public_url)
    return S3Storage(
        bucket=storage.s3_bucket,
        endpoint=storage.s3_endpoint,
        region=storage.s3_region,
        access_key_id=storage.s3_access_key_id,
        secret_access_key=storage.s3_secret_access_key,
    )
