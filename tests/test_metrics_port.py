"""The metrics port (METRICS_PORT): ``innera worker``'s only listener, and ``innera serve``'s
way to take /metrics off the public port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from innera.config import load_settings
from innera.http.metrics_port import MAX_CONNECTIONS
from tests.fixtures.accounts import signup
from tests.fixtures.server import ROOT, server_environ, start_server
from tests.test_http import assert_error
from tests.test_observability import samples

pytestmark = pytest.mark.timeout(90)

_LISTENING = re.compile(r"metrics listening on (http://[\d.]+:\d+)")


@dataclass
class WorkerProcess:
    """A running ``innera worker`` subprocess and what it printed so far."""

    proc: trio.Process
    output: list[str] = field(default_factory=list)
    metrics_url: str | None = None
    #: set at the "metrics listening" line, or when the output ends without one
    listening: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)

    def text(self) -> str:
        return "\n".join(self.output)


async def _read_output(worker: WorkerProcess) -> None:
    assert worker.proc.stdout is not None
    partial = b""
    try:
        while chunk := await worker.proc.stdout.receive_some(65536):
            *lines, partial = (partial + chunk).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                worker.output.append(line)
                found = _LISTENING.search(line)
                if found and worker.metrics_url is None:
                    worker.metrics_url = found.group(1)
                    worker.listening.set()
    finally:
        worker.listening.set()
        worker.ended.set()


@asynccontextmanager
async def innera_worker(environ: dict[str, str], *, wait_listening: bool = True
                        ) -> AsyncIterator[WorkerProcess]:
    """``innera worker`` with ``environ``; SIGTERM (then SIGKILL past a deadline) at the end.
    With ``wait_listening``, yields once its metrics port listens."""
    env = {k: v for k, v in os.environ.items() if k != "NODE_ENV"}
    env.update(environ)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "innera.cli", "worker"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    worker = WorkerProcess(proc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_output, worker)
        try:
            if wait_listening:
                with trio.move_on_after(30):
                    await worker.listening.wait()
                assert worker.metrics_url is not None, f"no metrics port:\n{worker.text()}"
            yield worker
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(20):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                with trio.move_on_after(5):
                    await worker.ended.wait()
            nursery.cancel_scope.cancel()


def metric(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


async def test_a_worker_process_serves_the_metrics_of_the_jobs_it_ran(
        nursery: trio.Nursery, database_url: str, redis_url: str, tmp_path: Path) -> None:
    """The supported split: the API with INNERA_WORKERS=0, the jobs in ``innera worker``.
    An export submitted through the API runs in the worker, and the worker's metrics port
    shows it; the API's /metrics does not (it ran nothing)."""
    data_dir = tmp_path / "data"  # shared: the local store, the generated keys
    api = await start_server(nursery, load_settings(
        server_environ(database_url, redis_url, data_dir, INNERA_WORKERS="0")))
    async with api.client, innera_worker(server_environ(
            database_url, redis_url, data_dir, METRICS_PORT="0")) as worker:
        assert not any("innera listening on" in line for line in worker.output)  # no API
        account = await signup(api.client)
        r = await api.client.post("/v1/exports", headers=account.auth)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        async with httpx.AsyncClient(base_url=worker.metrics_url, timeout=10) as scrape:
            with trio.fail_after(30):
                while True:
                    job = (await api.client.get(f"/v1/exports/{job_id}",
                                                headers=account.auth)).json()
                    assert job["status"] != "failed", job
                    if job["status"] == "completed":
                        break
                    await trio.sleep(0.05)
            r = await scrape.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            assert metric(r.text, "innera_jobs_processed_total",
                          queue="export-jobs", outcome="completed") == 1
            assert metric(r.text, "innera_job_duration_seconds_count", queue="export-jobs") == 1
            # the alert's counters are there from start-up
            assert metric(r.text, "innera_account_deletion_jobs_failed_total") == 0
            assert metric(r.text, "innera_push_notifications_failed_total",
                          reason="rejected") == 0
            assert metric(r.text, "innera_key_rotation_progress") == 0
            # the worker counts no active users (it authenticates nobody)
            assert "innera_active_users" not in r.text
            health = await scrape.get("/health")
            assert (health.status_code, health.json()) == (200, {"status": "pass"})
            assert_error(await scrape.get("/v1/exports"), 404, "not_found")
            assert_error(await scrape.post("/metrics"), 405, "method_not_allowed")
        api_metrics = (await api.client.get("/metrics")).text
        assert metric(api_metrics, "innera_jobs_processed_total",
                      queue="export-jobs", outcome="completed") == 0
    assert worker.proc.returncode == 0, worker.text()
    assert any("shutdown complete" in line for line in worker.output)


async def test_serve_with_a_metrics_port_answers_metrics_there_only(
        nursery: trio.Nursery, server_settings: dict[str, str]) -> None:
    srv = await start_server(nursery, load_settings({
        **server_settings, "METRICS_PORT": "0", "METRICS_TOKEN": "scrape-token-" + "x" * 20}))
    (host, port), *_ = srv.started.metrics_addresses
    assert port != srv.started.addresses[0][1]
    async with srv.client, httpx.AsyncClient(base_url=f"http://{host}:{port}",
                                             timeout=10) as scrape:
        auth = {"authorization": "Bearer scrape-token-" + "x" * 20}
        # the public port: /metrics is gone (with or without the token), /health stays
        assert_error(await srv.client.get("/metrics", headers=auth), 404, "not_found")
        assert_error(await srv.client.get("/metrics", headers={"origin": "https://a.example"}),
                     404, "not_found")
        assert (await srv.client.get("/health")).status_code == 200
        # the metrics port: the token still applies
        refused = await scrape.get("/metrics")
        assert_error(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"] == "Bearer"
        r = await scrape.get("/metrics", headers=auth)
        assert r.status_code == 200
        assert metric(r.text, "http_requests_total", method="GET", route="__unknown__",
                      status_code="404") == 2  # the public port's two refusals
        assert metric(r.text, "innera_db_pool_max") == 5
        assert (await scrape.head("/health")).status_code == 200
    await srv.stop()


async def test_the_metrics_port_holds_a_bounded_number_of_connections(
        nursery: trio.Nursery, database_url: str, redis_url: str, tmp_path: Path) -> None:
    """Always innera's fast server, whatever INNERA_HTTP_SERVER says: not parametrised."""
    srv = await start_server(nursery, load_settings(server_environ(
        database_url, redis_url, tmp_path / "data", METRICS_PORT="0")))
    host, port = srv.started.metrics_addresses[0]
    held = [socket.create_connection((host, port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = socket.create_connection((host, port), timeout=5)
        with extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
            # closed as it was accepted: end of stream, or a reset
            try:
                assert await trio.to_thread.run_sync(extra.recv, 1024) == b""
            except ConnectionResetError:
                pass
        held.pop().close()
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as scrape:
            with trio.fail_after(10):  # the server notices the closed connection, then admits
                while True:
                    try:
                        if (await scrape.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
    finally:
        for sock in held:
            sock.close()
    await srv.client.aclose()
    await srv.stop()


async def test_a_metrics_port_in_use_stops_the_worker_naming_the_variable(
        database_url: str, redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with innera_worker(server_environ(database_url, redis_url, tmp_path / "data",
                                                METRICS_PORT=str(port)),
                                 wait_listening=False) as worker:
            with trio.fail_after(30):
                await worker.proc.wait()
                await worker.ended.wait()
    assert worker.proc.returncode == 1, worker.text()
    assert f"METRICS_PORT={port}: cannot listen on 127.0.0.1:{port}" in worker.text()
    assert "Traceback" not in worker.text()
