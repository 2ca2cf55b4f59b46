"""``GET /health`` (liveness) and ``GET /health/ready`` (readiness).

Readiness follows the IETF health-check draft (``application/health+json``): every dependency
gets a ``<component>:responseTime`` entry. The checks run concurrently, each under its own
deadline, so readiness answers within about a second even when a dependency hangs. While the
process drains, readiness answers 503 at once so load balancers stop sending traffic.

The storage check (an S3 ``HeadBucket``, or a probe file on local disk) is shared: probes
within :data:`~innera.observability.readiness.SHARED_CHECK_TTL_S` (1 s) of it get the same
observation (``observedValue`` and ``time`` included), and concurrent probes wait for the one
in flight, so readiness probes cannot be used to multiply calls to the bucket
(:mod:`innera.observability.readiness`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Blueprint, Response

from innera.api.context import json_response, services
from innera.api.operation import PlainOperation, declare_plain
from innera.db.health import check_db_health
from innera.observability.readiness import Observation, observe
from innera.redis import check_redis_health

blueprint = Blueprint("health", __name__)
log = logging.getLogger("innera.health")

CHECK_TIMEOUT_S = 1.0
HEALTH_JSON = "application/health+json"

#: the body of both answers (the IETF health-check draft's shape)
HEALTH_SCHEMA = {"type": "object", "required": ["status"], "properties": {
    "status": {"enum": ["pass", "fail"]},
    "output": {"type": "string"},
    "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {
        "type": "object", "properties": {
            "componentType": {"type": "string"}, "observedValue": {"type": "number"},
            "observedUnit": {"const": "ms"}, "status": {"enum": ["pass", "fail"]},
            "time": {"type": "string"}, "output": {"type": "string"}}}}},
}}

declare_plain(PlainOperation(
    "GET", "/health", operation_id="getHealth", tag="operations", summary="Liveness",
    description="200 while the process runs; no dependency is checked.",
    responses={200: ("The process runs", HEALTH_JSON, HEALTH_SCHEMA)}))
declare_plain(PlainOperation(
    "GET", "/health/ready", operation_id="getReadiness", tag="operations",
    summary="Readiness: PostgreSQL, Redis and storage answer",
    description="Each dependency is checked under a 1 s deadline (the storage check is shared "
                "for 1 s); 503 when one fails or while the process drains.",
    responses={200: ("Ready", HEALTH_JSON, HEALTH_SCHEMA),
               503: ("A dependency failed its check, or the server is draining", HEALTH_JSON,
                     HEALTH_SCHEMA)}))


@blueprint.get("/health")
async def liveness() -> Response:
    return json_response({"status": "pass"}, content_type=HEALTH_JSON)


@blueprint.get("/health/ready")
async def readiness() -> Response:
    svc = services()
    if svc.lifecycle.shutdown_requested.is_set():  # from the signal on, the delay included
        body = {"status": "fail", "output": "draining: the server is shutting down", "checks": {}}
        return json_response(body, 503, content_type=HEALTH_JSON)

    async def storage_ok() -> bool:
        try:
            await svc.storage.check_health()
        except Exception as exc:
            log.warning("storage health check failed: %s", exc)
            return False
        return True

    probes: dict[str, tuple[str, Callable[[], Awaitable[Observation]]]] = {
        "postgres:responseTime": ("datastore", lambda: observe(
            lambda: check_db_health(svc.db, CHECK_TIMEOUT_S), CHECK_TIMEOUT_S)),
        "redis:responseTime": ("datastore", lambda: observe(
            lambda: check_redis_health(svc.redis, CHECK_TIMEOUT_S), CHECK_TIMEOUT_S)),
        "storage:responseTime": ("component", lambda: svc.storage_check.observe(
            storage_ok, CHECK_TIMEOUT_S)),
    }
    checks: dict[str, list[dict[str, Any]]] = {}

    async def run(name: str, component: str,
                  probe: Callable[[], Awaitable[Observation]]) -> None:
        seen = await probe()
        ok = seen.ok
        entry: dict[str, Any] = {
            "componentType": component,
            "observedValue": seen.elapsed_ms,
            "observedUnit": "ms",
            "status": "pass" if ok else "fail",
            "time": seen.time,
        }
        if not ok:
            entry["output"] = "unreachable or timed out"
        checks[name] = [entry]

    async with trio.open_nursery() as nursery:
        for name, (component, probe) in probes.items():
            nursery.start_soon(run, name, component, probe)

    passed = all(entry[0]["status"] == "pass" for entry in checks.values())
    body = {"status": "pass" if passed else "fail", "checks": dict(sorted(checks.items()))}
    return json_response(body, 200 if passed else 503, content_type=HEALTH_JSON)
