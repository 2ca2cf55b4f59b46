"""LOG_FORMAT: JSON lines for machines, structlog's console renderer for a developer's
terminal (the default there), the same redaction in both; and coredis' retry chatter at
debug. Servers are real ``innera serve`` subprocesses, on a pipe or on a pseudo-terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from innera.observability.logging import CENSOR, configure_logging, resolve_log_format
from innera.redis import Redis
from tests.fixtures.server import ROOT, server_environ

pytestmark = pytest.mark.timeout(90)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handler: put pytest's back afterwards."""
    root, coredis = logging.getLogger(), logging.getLogger("coredis")
    handlers, level, filters = root.handlers[:], root.level, coredis.filters[:]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        coredis.filters[:] = filters


def test_auto_is_console_on_a_terminal_outside_production_else_json() -> None:
    terminal, pipe = _Terminal(), io.StringIO()
    assert resolve_log_format("auto", production=False, stream=terminal) == "console"
    assert resolve_log_format("auto", production=True, stream=terminal) == "json"
    assert resolve_log_format("auto", production=False, stream=pipe) == "json"
    # an explicit choice always wins
    assert resolve_log_format("console", production=True, stream=pipe) == "console"
    assert resolve_log_format("json", production=False, stream=terminal) == "json"


def _request(url: str, path: str, body: dict[str, object] | None = None,
             headers: dict[str, str] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, headers={
        "content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else {}


def test_console_format_is_for_people_and_redacts_like_json(
    spawn_server, database_url: str, redis_url: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    sp = spawn_server(server_environ(database_url, redis_url, tmp_path, LOG_LEVEL="debug",
                                     LOG_FORMAT="console"))
    secrets = {"authorization": "Bearer SECRET-AUTH-1", "x-reauth-token": "SECRET-REAUTH-2"}
    _request(sp.url, "/_test/echo", {"password": "SECRET-PASSWORD-3",
                                     "nested": {"refreshToken": "SECRET-REFRESH-4"},
                                     "email": "secret-email-5@example.com"}, secrets)
    session = _request(sp.url, "/v1/auth/signup", {"email": "console@example.com",
                                                   "password": "SECRET-SIGNUP-6"})
    sp.proc.send_signal(signal.SIGTERM)
    sp.proc.wait(15)
    output = sp.lines() + "\n" + sp.read_rest()

    for value in ("SECRET-AUTH-1", "SECRET-REAUTH-2", "SECRET-PASSWORD-3", "SECRET-REFRESH-4",
                  "secret-email-5@example.com", "SECRET-SIGNUP-6", "console@example.com",
                  str(session["accessToken"]), str(session["refreshToken"])):
        assert value not in output, f"{value} leaked into the console log"
    assert CENSOR in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert not any(line.startswith("{") for line in lines), "JSON lines in console format"
    assert not ANSI.search(output), "colours on a pipe"
    # one line per event: time, [level], message, [logger], then key=value pairs
    completed = [line for line in lines if "request completed" in line]
    assert completed and all(re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[info\s*\] request "
                                      r"completed\s+\[innera\.request\]", line)
                             for line in completed), completed
    assert any("innera listening on http://" in line for line in lines)


def test_a_terminal_gets_coloured_console_lines_by_default(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """``./scripts/serve`` in a terminal: no LOG_FORMAT, stdout a (pseudo-)terminal."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NODE_ENV", "LOG_FORMAT")}
    environ.update(server_environ(database_url, redis_url, tmp_path / "data"))
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "innera.cli", "serve"], cwd=ROOT,
                            env=environ, stdin=subprocess.DEVNULL, stdout=secondary,
                            stderr=secondary)
    os.close(secondary)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while b"innera listening on" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    output += os.read(primary, 65536)
                except OSError:  # the process exited: the terminal is gone
                    break
    finally:
        proc.kill()
        proc.wait(10)
        os.close(primary)
    text = output.decode(errors="replace")
    assert "innera listening on" in text, text
    assert ANSI.search(text), "no colours on a terminal"
    plain = ANSI.sub("", text)
    assert not any(line.startswith("{") for line in plain.splitlines()), plain
    assert re.search(r"\[info\s*\] innera listening on http://", plain), plain


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
async def test_coredis_retry_chatter_is_debug(redis: Redis, restore_logging: None,
                                              level: str, shown: bool) -> None:
    """A script unknown to the server: coredis gets NOSCRIPT, logs its retry, loads the
    script and runs it again. That is routine: debug, not info. Other coredis lines stay."""
    stream = io.StringIO()
    configure_logging(level, stream, log_format="json")
    marker = f"retry-test-{uuid.uuid4().hex}"  # a script no server has seen yet
    script = redis.client.register_script(f"return '{marker}'")
    assert await script(keys=[], args=[]) == marker
    logging.getLogger("coredis").warning("a real coredis warning")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    retries = [line for line in lines if line["msg"].startswith("Retry attempt")]
    if shown:
        assert retries and all(line["level"] == "debug" for line in retries), lines
        assert "No matching script" in retries[0]["msg"]
    else:
        assert retries == [], retries
    assert any(line["msg"] == "a real coredis warning" and line["level"] == "warn"
               for line in lines)
