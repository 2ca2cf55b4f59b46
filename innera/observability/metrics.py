"""The Prometheus registry of one innera process, and every metric it exposes.

Names are a contract (dashboards and alert rules in ``conf/`` are written against them):
route metrics keep fastify-metrics' names, business metrics the spec's. Every metric a later
feature feeds exists from start-up, with each known label combination initialised at 0 (a
counter first seen at 1 never shows in ``increase()``). No label ever carries a user id, a
raw path or another unbounded value.

One :class:`Metrics` object owns one ``CollectorRegistry``; nothing registers in
prometheus-client's global registry, so tests get a fresh registry per server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUEUES = ("push-notifications", "import-jobs", "export-jobs", "account-deletion", "key-rotation")
JOB_OUTCOMES = ("completed", "failed", "retried")
CRYPTO_OPERATIONS = ("encrypt", "decrypt")
UNKNOWN_ROUTE = "__unknown__"

# fastify-metrics' defaults plus 2, 2.5, 30: the p95 > 2 s and p99 > 5 s alerts need finite
# buckets above their thresholds (histogram_quantile never exceeds the top finite bucket).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30)
SEARCH_BUCKETS = (0.1, 0.5, 1, 2, 5, 10)
JOB_BUCKETS = (0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# PostgreSQL statements: most take a millisecond or two; the top buckets catch scans and locks.
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _PoolCollector(Collector):
    """DB pool gauges, read from ``pool.stats()`` at scrape time (no polling loop)."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        for key, help_text in (
            ("active", "DB connections in use"),
            ("idle", "DB connections open and idle"),
            ("waiting", "Requests waiting for a DB connection"),
            ("max", "Most DB connections the pool may open"),
        ):
            yield GaugeMetricFamily(f"innera_db_pool_{key}", help_text, value=stats[key])

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    """Every metric of the process, registered in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self.http_duration = Histogram(
            "http_request_duration_seconds", "HTTP request duration in seconds",
            ["method", "route", "status_code"], buckets=HTTP_BUCKETS, registry=r)
        self.http_requests = Counter(
            "http_requests_total", "Total HTTP requests",
            ["method", "route", "status_code"], registry=r)
        #: (method, route, status) → the two series' children, looked up once
        self._request_children: dict[tuple[str, str | None, int], tuple[Any, Any]] = {}

        self.entries_created = Counter(
            "innera_entries_created_total", "Total entries created", registry=r)
        self.search_duration = Histogram(
            "innera_search_duration_seconds", "Search operation latency",
            buckets=SEARCH_BUCKETS, registry=r)
        self.ws_connections = Gauge(
            "innera_ws_connections_active", "Active WebSocket connections", registry=r)
        self.ws_slow_closed = Counter(
            "innera_ws_slow_clients_closed_total",
            "WebSockets closed with 1013 because their outbound queue was full", registry=r)
        self.redis_errors = Counter(
            "innera_redis_errors_total", "Redis connection errors", registry=r)
        self.push_sent = Counter(
            "innera_push_notifications_sent_total", "Push notifications delivered", registry=r)
        self.push_failed = Counter(
            "innera_push_notifications_failed_total",
            "Push notifications not delivered, by reason: unregistered (the provider says the "
            "token is dead; the device is removed), rejected (other 4xx), unreachable (still "
            "failing on the last attempt)", ["reason"], registry=r)
        for reason in ("unregistered", "rejected", "unreachable"):
            self.push_failed.labels(reason=reason)
        self.crypto_errors = Counter(
            "innera_crypto_errors_total", "Encryption/decryption errors", ["operation"],
            registry=r)
        self.key_service_errors = Counter(
            "innera_key_service_errors_total",
            "AWS KMS calls failed for want of the service (unreachable, throttled, key "
            "disabled, access denied …): 503 key_service_unavailable", ["operation", "code"],
            registry=r)
        self.account_deletion_failed = Counter(
            "innera_account_deletion_jobs_failed_total", "Account deletion jobs failed",
            registry=r)
        self.key_rotation_progress = Gauge(
            "innera_key_rotation_progress", "Key rotation progress (0..1)", registry=r)
        self.jobs_processed = Counter(
            "innera_jobs_processed_total", "Jobs processed", ["queue", "outcome"], registry=r)
        self.job_duration = Histogram(
            "innera_job_duration_seconds", "Job duration in seconds", ["queue"],
            buckets=JOB_BUCKETS, registry=r)
        self.jobs_waiting = Gauge(
            "innera_jobs_waiting", "Jobs waiting in the queue", ["queue"], registry=r)

        for operation in CRYPTO_OPERATIONS:
            self.crypto_errors.labels(operation=operation)
        for queue in QUEUES:
            self.job_duration.labels(queue=queue)
            self.jobs_waiting.labels(queue=queue)
            for outcome in JOB_OUTCOMES:
                self.jobs_processed.labels(queue=queue, outcome=outcome)

        self._init_query_metrics(r)

    # --- named queries -------------------------------------------------------------------
    # Every SQL statement innera runs has a static name given at its call site
    # (``conn.execute(sql, params, name="entries.read")``, innera/db/cursor.py), so the
    # ``name`` label is bounded by the code (tests/db/test_query_names.py collects them).

    def _init_query_metrics(self, r: CollectorRegistry) -> None:
        self.db_query_duration = Histogram(
            "innera_db_query_duration_seconds",
            "PostgreSQL statement duration by query name (from the call to the last row)",
            ["name"], buckets=QUERY_BUCKETS, registry=r)
        self.db_query_errors = Counter(
            "innera_db_query_errors_total",
            "PostgreSQL statements that failed, by query name (any database error, "
            "constraint violations included)", ["name"], registry=r)
        #: name → the two series' children, made together on a name's first statement (so
        #: the error counter starts at 0 before its first increment)
        self._query_children: dict[str, tuple[Any, Any]] = {}

    def observe_query(self, name: str, seconds: float, failed: bool) -> None:
        """One statement named ``name`` ran for ``seconds`` (and raised, when ``failed``):
        the pool hands this to every connection (``Pool(on_query=...)``)."""
        children = self._query_children.get(name)
        if children is None:
            children = (self.db_query_duration.labels(name), self.db_query_errors.labels(name))
            self._query_children[name] = children
        children[0].observe(seconds)
        if failed:
            children[1].inc()

    def watch_pool(self, pool: Any) -> None:
        """Expose the pool's gauges (``pool.stats()`` is read at each scrape)."""
        self.registry.register(_PoolCollector(pool.stats))

    def record_redis_error(self, exc: BaseException) -> None:
        self.redis_errors.inc()

    def observe_request(self, method: str, route: str | None, status: int, seconds: float
                        ) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:  # labels() takes a lock and builds its key: once per series
            labels = (method, route or UNKNOWN_ROUTE, str(status))
            children = (self.http_duration.labels(*labels), self.http_requests.labels(*labels))
            self._request_children[key] = children
        children[0].observe(seconds)
        children[1].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- active users (counted by innera/auth/active_user_counter.py) ---------------------

    def watch_active_users(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Expose ``innera_active_users{window}`` from ``counts()`` (window → distinct
        users), read at each scrape. Registered only by the process that counts them
        (``innera serve``), so no other process exports a false 0."""
        self.registry.register(_ActiveUsersCollector(counts))


class _ActiveUsersCollector(Collector):
    """``innera_active_users``: the last counts of the process' active-user counter (kept
    in memory, recounted from Redis periodically; nothing is asked of Redis at scrape time).
    A window not counted yet (Redis unreachable since start-up) has no sample."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "innera_active_users",
            "Distinct users who made an authenticated request on any instance, by window: "
            "1d (the current UTC day so far), 7d and 30d (that many UTC days up to today)",
            labels=["window"])
        for window, value in self.counts().items():
            family.add_metric([window], value)
        yield family

    def describe(self) -> Iterable[Metric]:
        return []
