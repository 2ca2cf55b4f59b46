# syntax=docker/dockerfile:1
# innera API image. Production dependencies only (no `dev`, no `embedded` extra): the
# container talks to real PostgreSQL / Redis / S3 given by DATABASE_URL, REDIS_URL, S3_*.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY innera ./innera
COPY workers ./workers
RUN pip install --no-cache-dir .


FROM python:3.11-slim-bookworm AS runtime

RUN groupadd --system --gid 10001 innera \
 && useradd --system --uid 10001 --gid innera --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin innera \
 && mkdir -p /app/var \
 && chown -R innera:innera /app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INNERA_DATA_DIR=/app/var

EXPOSE 3000

# The image has no curl: probe /health with the standard library.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=3).status == 200 else 1)"]

USER innera

# Exec form, no shell wrapper: innera is PID 1 and receives SIGTERM directly. innera handles
# SIGTERM/SIGINT itself (graceful shutdown, SHUTDOWN_TIMEOUT_S hard deadline); keep the
# orchestrator's grace period above that deadline (compose: stop_grace_period 40s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["innera"]
CMD ["serve"]
