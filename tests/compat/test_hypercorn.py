"""innera/compat/hypercorn.py against the installed Hypercorn: the version is one it was
written for, the range matches pyproject.toml, and every internal name it relies on still
exists with the shape it uses, so an upgrade fails here, naming what changed."""

from __future__ import annotations

import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from innera.compat import UnsupportedVersion
from innera.compat.hypercorn import SUPPORTED, connection_server

ROOT = Path(__file__).resolve().parents[2]
REVIEW = "review innera/compat/hypercorn.py"


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_installed_version_is_supported() -> None:
    assert SUPPORTED.check() == version("hypercorn")


def test_the_range_is_the_one_pyproject_pins() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"hypercorn\b", d)]
    assert pins == [f"hypercorn>={SUPPORTED.lowest},<{SUPPORTED.below}"]


def test_another_minor_version_is_refused_naming_the_module() -> None:
    with pytest.raises(UnsupportedVersion, match=r"innera/compat/hypercorn\.py"):
        SUPPORTED.check("0.19.0")


def test_the_per_connection_server_has_the_shape_overridden() -> None:
    assert _parameters(TCPServer.__init__) == [
        "self", "app", "config", "context", "state", "stream"], REVIEW
    assert _parameters(TCPServer.run) == ["self"], REVIEW
    for name, parameters in (("_read_data", ["self"]), ("protocol_send", ["self", "event"])):
        method = getattr(TCPServer, name, None)
        assert inspect.iscoroutinefunction(method), f"TCPServer.{name} is gone: {REVIEW}"
        assert _parameters(method) == parameters, f"TCPServer.{name} changed: {REVIEW}"
    # run() ends with _read_data(), which is where the connection's task waits
    assert "await self._read_data()" in inspect.getsource(TCPServer.run), REVIEW
    # the protocol is made in run(); __init__ only declares it
    assert "self.protocol: ProtocolWrapper" in inspect.getsource(TCPServer.__init__), REVIEW


def test_the_attributes_used_exist_on_a_server() -> None:
    server = TCPServer(None, Config(), WorkerContext(None), ConnectionState({}), None)
    assert isinstance(server.send_lock, trio.Lock), f"TCPServer.send_lock changed: {REVIEW}"
    assert inspect.iscoroutinefunction(server.idle_task.stop), \
        f"TCPServer.idle_task.stop changed: {REVIEW}"
    assert hasattr(server, "stream"), f"TCPServer.stream is gone: {REVIEW}"
    assert inspect.iscoroutinefunction(ProtocolWrapper.handle), \
        f"ProtocolWrapper.handle changed: {REVIEW}"
    assert _parameters(ProtocolWrapper.handle) == ["self", "event"], REVIEW


def test_the_events_worker_context_and_app_wrapper_have_the_shape_used() -> None:
    assert issubclass(RawData, Event) and issubclass(Closed, Event), REVIEW
    assert RawData(data=b"x").data == b"x", f"RawData changed: {REVIEW}"
    Closed()
    assert _parameters(WorkerContext.__init__) == ["self", "max_requests"], REVIEW
    assert _parameters(wrap_app) == ["app", "wsgi_max_body_size", "mode"], REVIEW
    assert isinstance(Config().wsgi_max_body_size, int), REVIEW


async def test_a_connection_is_served() -> None:
    """The per-connection server built here answers a request over a real socket pair."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = Config()
    config.accesslog = None
    serve = connection_server(app, config, 10.0)
    server_side, client_side = trio.socket.socketpair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, trio.SocketStream(server_side))
        client = trio.SocketStream(client_side)
        await client.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        received = b""
        with trio.fail_after(10):
            while chunk := await client.receive_some():
                received += chunk
        await client.aclose()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"\r\n\r\nok")
