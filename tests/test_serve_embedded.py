"""``innera serve`` on a machine with nothing configured: the embedded default."""

from __future__ import annotations

import http.client
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.timeout(120)

CONFIG_VARS = ("DATABASE_URL", "REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER",
               "S3_ENDPOINT", "NODE_ENV", "INNERA_ENV", "JWT_SECRET", "INNERA_MEK")


def _ready_within(url: str, seconds: float) -> float:
    u = urlsplit(url)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
            conn.request("GET", "/health/ready")
            if conn.getresponse().status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/health/ready not 200 within {seconds}s")


def test_cold_start_with_nothing_configured_is_ready_within_10s_and_reuses_its_data(
    spawn_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    environ = {k: "" for k in CONFIG_VARS} | {
        "INNERA_DATA_DIR": str(tmp_path / "var"), "HOST": "127.0.0.1", "PORT": "0"}
    t0 = time.monotonic()
    sp = spawn_server(environ, timeout_s=30)
    _ready_within(sp.url, 10)
    cold = time.monotonic() - t0
    assert cold < 10, f"cold start took {cold:.1f}s"
    assert (tmp_path / "var" / "attachments").is_dir()
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.proc.wait(30) == 0, sp.lines()

    t0 = time.monotonic()
    sp2 = spawn_server(environ, timeout_s=30)
    _ready_within(sp2.url, 10)
    out_lines = sp2.lines()
    assert "0001" not in out_lines.split("migrations applied:")[-1].split("\n")[0]
    sp2.proc.send_signal(signal.SIGTERM)
    assert sp2.proc.wait(30) == 0
    # no embedded server is left running for this data dir
    leftovers = [p for p in os.listdir("/proc") if p.isdigit()
                 and str(tmp_path) in _cmdline(p)]
    assert not leftovers


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_production_refuses_the_embedded_default(spawn_server, tmp_path: Path  # type: ignore[no-untyped-def]
                                                 ) -> None:
    environ = {k: "" for k in CONFIG_VARS} | {"INNERA_ENV": "production",
                                              "INNERA_DATA_DIR": str(tmp_path)}
    with pytest.raises(RuntimeError) as info:
        spawn_server(environ, timeout_s=15)
    assert "DATABASE_URL is required when INNERA_ENV=production" in str(info.value)
