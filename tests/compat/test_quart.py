"""innera/compat/quart.py: the installed Quart and Quart-trio are ones it was written for,
and every internal it relies on is still there with the shape used."""

from __future__ import annotations

import inspect

from quart import g, request
from quart.asgi import ASGIHTTPConnection
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from innera.compat import quart as compat


def test_the_installed_versions_are_supported() -> None:
    compat.SUPPORTED.check()
    compat.SUPPORTED_TRIO.check()


def test_normalise_path_strips_the_root_path_or_refuses() -> None:
    assert list(inspect.signature(compat.normalise_path).parameters) == ["path", "root_path"]
    assert compat.normalise_path("/api/v1/x", "/api") == "/v1/x"
    assert compat.normalise_path("/other", "/api") == " "  # matches no route: a 404


def test_the_connection_hooks_quart_trio_calls_are_still_there() -> None:
    for name, params in (("_create_request_from_scope", ["self", "send"]),
                         ("_send_response", ["self", "send", "response"]),
                         ("_send_push_promise", ["self", "send", "path", "headers"])):
        method = getattr(ASGIHTTPConnection, name)
        assert list(inspect.signature(method).parameters) == params, name
    assert issubclass(compat.HTTPConnectionBase, TrioASGIHTTPConnection)
    # Quart-trio's own __call__ and handle_request go through the private names
    source = inspect.getsource(TrioASGIHTTPConnection)
    assert "self._create_request_from_scope(send)" in source
    assert "self._send_response(send, response)" in source


async def test_the_globals_are_reached_through_their_proxies() -> None:
    app = QuartTrio("compat")
    seen: dict[str, object] = {}

    @app.get("/")
    async def index() -> str:
        seen["g"], seen["request"] = compat.current_g(), compat.current_request()
        seen["proxied"] = (g._get_current_object(), request._get_current_object())
        return "ok"

    response = await app.test_client().get("/")
    assert response.status_code == 200
    assert (seen["g"], seen["request"]) == seen["proxied"]
    assert seen["request"].path == "/"  # type: ignore[attr-defined]


async def test_the_connection_base_serves_a_request_through_the_public_names() -> None:
    calls: list[str] = []

    class Traced(compat.HTTPConnectionBase):
        def create_request(self, send: object) -> object:
            calls.append("create_request")
            request = super().create_request(send)
            assert callable(self.push_promise_sender(send))
            return request

        async def send_response(self, send: object, response: object) -> None:
            calls.append("send_response")
            await super().send_response(send, response)

    app = QuartTrio("compat")
    app.asgi_http_class = Traced  # type: ignore[assignment]

    @app.get("/")
    async def index() -> str:
        return "ok"

    response = await app.test_client().get("/")
    assert response.status_code == 200 and await response.get_data() == b"ok"
    assert calls == ["create_request", "send_response"]
