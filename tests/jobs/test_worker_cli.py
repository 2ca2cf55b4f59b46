"""``INNERA_WORKERS`` and the ``innera worker`` process."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from innera.config import ConfigError, load_settings
from tests.fixtures.server import ROOT, server_environ

pytestmark = pytest.mark.timeout(60)


def test_innera_workers_parses() -> None:
    assert load_settings({}).server.workers is True
    assert load_settings({"INNERA_WORKERS": "0"}).server.workers is False
    assert load_settings({"INNERA_WORKERS": "1"}).server.workers is True
    assert load_settings({"INNERA_WORKERS": "0"}).masked()["INNERA_WORKERS"] == "0"
    with pytest.raises(ConfigError, match="INNERA_WORKERS='many' is not a boolean"):
        load_settings({"INNERA_WORKERS": "many"})


class Output:
    """The process' output, read from the raw pipe (a buffered ``readline`` could hold
    lines the selector no longer reports as readable)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.lines: list[str] = []
        self.partial = b""

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout_s: float) -> bool:
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        seen = len(self.lines)
        while True:
            if any(text in line for line in self.lines[seen:]):
                return True
            if time.monotonic() > deadline:
                return False
            if not sel.select(timeout=0.2):
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return False
            *complete, self.partial = (self.partial + chunk).split(b"\n")
            self.lines += [line.decode(errors="replace") for line in complete]


def test_innera_worker_starts_and_stops_on_sigterm(database_url: str, redis_url: str,
                                                   tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NODE_ENV"}
    # METRICS_PORT=0: a free port (unset, the worker takes 9091)
    env.update(server_environ(database_url, redis_url, tmp_path, METRICS_PORT="0"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "innera.cli", "worker"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    output = Output(proc)
    try:
        assert output.wait_for("innera worker running", 30), output
        assert not any("innera listening on" in line for line in output.lines)  # no API
        assert any("metrics listening on" in line for line in output.lines)
        assert any("job reconciler started" in line for line in output.lines)
        proc.send_signal(signal.SIGTERM)
        assert output.wait_for("shutdown complete", 30), output
        assert proc.wait(15) == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
