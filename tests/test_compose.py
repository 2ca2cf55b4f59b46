"""The container files: docker-compose.yml against the Compose schema and the spec's contract,
and the Dockerfile's shape (parsed as text; no Docker engine is needed)."""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
MONITORING_COMPOSE = ROOT / "conf" / "prometheus" / "compose.monitoring.yml"
DOCKERFILE = ROOT / "Dockerfile"
#: the Compose specification's JSON schema as check-jsonschema ships it
#: (``check-jsonschema --builtin-schema vendor.compose-spec``): nothing outside the repository
#: and its dev dependencies is read
SCHEMA_PACKAGE, SCHEMA_NAME = "check_jsonschema.builtin_schemas.vendor", "compose-spec.json"


def compose_errors(document: Any) -> list[str]:
    """What the Compose schema finds wrong with ``document`` (a parsed compose file)."""
    schema = json.loads(
        (importlib.resources.files(SCHEMA_PACKAGE) / SCHEMA_NAME).read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(document), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]

#: The programs each image of the compose files is known to ship, for its healthcheck (no
#: Docker engine here: each entry says where it is known from).
IMAGE_COMMANDS: dict[str, frozenset[str]] = {
    # Alpine images: busybox (sh, wget) and the server's own client programs.
    "postgres:16-alpine": frozenset({"sh", "wget", "postgres", "psql", "pg_isready"}),
    "redis:7-alpine": frozenset({"sh", "wget", "redis-server", "redis-cli"}),
    # MinIO's release Dockerfile copies minio and mc into every image. curl is not listed:
    # it left the image with RELEASE.2023-11-01 (minio/minio#18373, #18389) and what came
    # back in 2024 (minio/minio#19383, "only available for amd64 builds for now") is a static
    # binary downloaded at build time for some architectures only.
    "minio/minio:RELEASE.2025-02-18T16-25-55Z": frozenset({"minio", "mc"}),
    "minio/mc:RELEASE.2025-02-18T00-47-29Z": frozenset({"mc", "sh"}),
    # our Dockerfile: python:3.11-slim (Debian: no curl, no wget)
    "build: .": frozenset({"python", "sh", "innera"}),
    # The Prometheus projects' images are built FROM quay.io/prometheus/busybox (wget).
    "prom/prometheus:v2.53.0": frozenset({"sh", "wget", "prometheus", "promtool"}),
    "prom/alertmanager:v0.27.0": frozenset({"sh", "wget", "alertmanager", "amtool"}),
    "prom/node-exporter:v1.8.2": frozenset({"sh", "wget", "node_exporter"}),
    # Grafana's image is Alpine-based (busybox wget).
    "grafana/grafana:11.2.0": frozenset({"sh", "wget", "grafana", "grafana-cli"}),
}

SPEC_IMAGES = {
    "postgres": "postgres:16-alpine",
    "redis": "redis:7-alpine",
    "minio": "minio/minio:RELEASE.2025-02-18T16-25-55Z",
    "createbuckets": "minio/mc:RELEASE.2025-02-18T00-47-29Z",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _duration_s(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_validates_against_schema(compose: dict[str, Any]) -> None:
    errors = compose_errors(compose)
    assert not errors, "\n".join(errors)
    # and the schema does find mistakes
    assert compose_errors({"services": {"api": {"image": 5, "restart": ["always"]}}})
    assert compose_errors({"services": {"api": {"imag": "x"}}})


def test_services_and_images_follow_spec(compose: dict[str, Any], services: dict) -> None:
    assert set(services) == {*SPEC_IMAGES, "api"}
    for name, image in SPEC_IMAGES.items():
        assert services[name]["image"] == image
    assert set(compose["volumes"]) == {"pgdata", "redisdata", "miniodata"}


def test_postgres(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert pg["environment"] == {
        "POSTGRES_DB": "innera",
        "POSTGRES_USER": "innera",
        "POSTGRES_PASSWORD": "innera_dev",
    }
    assert pg["ports"] == ["5432:5432"]
    assert pg["healthcheck"]["test"] == ["CMD-SHELL", "pg_isready -U innera"]
    assert pg["mem_limit"] == "512m"
    words = _words(pg["command"])
    assert words[0] == "postgres"
    assert "max_connections=100" in words and "shared_buffers=256MB" in words


def test_redis_requires_password_and_persists(services: dict[str, Any]) -> None:
    redis = services["redis"]
    words = _words(redis["command"])
    assert words[0] == "redis-server"
    assert words[words.index("--requirepass") + 1] == "devpassword"
    assert words[words.index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "-a", "devpassword", "ping"]
    assert redis["ports"] == ["6379:6379"]
    assert "redisdata:/data" in redis["volumes"]


def test_minio(services: dict[str, Any]) -> None:
    minio = services["minio"]
    assert minio["ports"] == ["9000:9000", "9001:9001"]
    assert _words(minio["command"]) == ["server", "/data", "--console-address", ":9001"]
    # MinIO's documented readiness check, with the mc every minio/minio image ships (see
    # IMAGE_COMMANDS): not curl, which the image does not reliably have
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]


def test_healthchecks_use_a_command_their_image_ships() -> None:
    """A healthcheck whose program is missing from the image never passes: the service stays
    "unhealthy" and everything that waits for it (the api waits for minio) never starts.
    Every service with a healthcheck, in docker-compose.yml and the monitoring profile, runs
    a program that IMAGE_COMMANDS says its image has; a new image needs its entry there."""
    checked = []
    for path in (COMPOSE, MONITORING_COMPOSE):
        for name, service in yaml.safe_load(path.read_text(encoding="utf-8"))["services"].items():
            test = service.get("healthcheck", {}).get("test")
            if not test:
                continue
            image = service.get("image") or "build: ."
            assert image in IMAGE_COMMANDS, (
                f"{path.name}: {name}: no entry for {image!r} in IMAGE_COMMANDS: find out "
                "which programs that image ships before relying on one in a healthcheck")
            kind, *argv = [test] if isinstance(test, str) else test
            if kind == "CMD-SHELL":
                program = "sh"
                argv = shlex.split(argv[0])
                assert argv[0] in IMAGE_COMMANDS[image], (name, argv[0])
            else:
                assert kind == "CMD", (name, test)
                program = argv[0]
            assert program in IMAGE_COMMANDS[image], (
                f"{path.name}: {name}: the healthcheck runs {program!r}, which {image} does "
                f"not ship (it has {sorted(IMAGE_COMMANDS[image])})")
            checked.append(name)
    assert {"postgres", "redis", "minio", "api", "node-exporter"} <= set(checked)


def test_createbuckets_creates_versioned_bucket(services: dict[str, Any]) -> None:
    cb = services["createbuckets"]
    assert cb["depends_on"]["minio"]["condition"] == "service_healthy"
    script = cb["entrypoint"] if isinstance(cb["entrypoint"], str) else " ".join(cb["entrypoint"])
    assert "mc alias set local http://minio:9000 minioadmin minioadmin" in script
    assert "mc mb --ignore-existing local/innera-attachments" in script
    assert "mc version enable local/innera-attachments" in script
    assert script.index("mc mb") < script.index("mc version enable")


def test_createbuckets_expires_noncurrent_versions(services: dict[str, Any]) -> None:
    """Deleted objects (attachments, expired export archives) do not live on as noncurrent
    versions: they expire a day later, and the rules are replaced (not added again) on every
    run of the service."""
    entrypoint = services["createbuckets"]["entrypoint"]
    script = entrypoint if isinstance(entrypoint, str) else " ".join(entrypoint)
    steps = [s.strip() for s in script.split(";")]
    add = "mc ilm rule add --noncurrent-expire-days 1 local/innera-attachments"
    assert add in steps
    assert "mc ilm rule add --expire-delete-marker local/innera-attachments" in steps
    reset = next(s for s in steps if s.startswith("mc ilm rule rm --all --force "))
    assert "local/innera-attachments" in reset and reset.endswith("|| true")
    assert script.index("mc version enable") < script.index(reset) < script.index(add)


def test_api_depends_on_healthy_services(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["build"] == "."
    assert api["ports"] == ["3000:3000"]
    assert api["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
        "createbuckets": {"condition": "service_completed_successfully"},
    }
    assert api["restart"] == "unless-stopped"


def test_api_environment(services: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in services["api"]["environment"].items()}
    assert env["INNERA_ENV"] == "development"
    assert env["DATABASE_URL"] == "postgresql://innera:innera_dev@postgres:5432/innera"
    assert env["REDIS_URL"] == "redis://:devpassword@redis:6379"
    assert env["S3_ENDPOINT"] == "http://minio:9000"
    assert env["S3_BUCKET"] == "innera-attachments"
    assert env["S3_REGION"] == "us-east-1"
    assert env["S3_ACCESS_KEY_ID"] == env["S3_SECRET_ACCESS_KEY"] == "minioadmin"
    assert len(env["JWT_SECRET"]) >= 32
    assert env["INNERA_MEK"]
    assert (env["HOST"], env["PORT"], env["LOG_LEVEL"]) == ("0.0.0.0", "3000", "info")


def test_api_healthcheck_and_shutdown_grace(services: dict[str, Any]) -> None:
    api = services["api"]
    test = api["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    assert "http://127.0.0.1:3000/health" in " ".join(test)
    # Above SHUTDOWN_TIMEOUT_S=30: innera's own deadline must fire before Docker's SIGKILL.
    assert _duration_s(api["stop_grace_period"]) > 30


# --- Dockerfile ----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    result = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def test_dockerfile_is_multi_stage() -> None:
    froms = [args for kw, args in _instructions() if kw == "FROM"]
    assert len(froms) >= 2
    assert all(args.startswith("python:3.11-slim") for args in froms)


def test_dockerfile_runs_innera_as_non_root_in_exec_form() -> None:
    instructions = _instructions()
    keywords = [kw for kw, _ in instructions]
    entrypoint_at = keywords.index("ENTRYPOINT")
    users = [args for kw, args in instructions[:entrypoint_at] if kw == "USER"]
    assert users, "no USER instruction before ENTRYPOINT"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "USER" not in keywords[entrypoint_at:], "USER changes after ENTRYPOINT"
    entrypoint = json.loads(instructions[entrypoint_at][1])
    assert isinstance(entrypoint, list) and entrypoint[0] == "innera"
    cmd = [args for kw, args in instructions if kw == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["serve"]


def test_dockerfile_healthcheck_hits_health() -> None:
    checks = [args for kw, args in _instructions() if kw == "HEALTHCHECK"]
    assert len(checks) == 1 and "/health" in checks[0]


def test_dockerfile_installs_no_dev_extra() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "[dev]" not in text
    assert "[embedded]" not in text
    runs = " ".join(args for kw, args in _instructions() if kw == "RUN")
    assert "pip install --no-cache-dir ." in runs
