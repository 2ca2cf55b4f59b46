"""Quart-trio, trimmed for innera's endpoint path.

Each trim removes per-request work that innera's configuration never needs and that showed
in py-spy profiles of the server under load (``bench/http_load.py --sample``); what a route,
a hook or an error handler sees is Quart's behaviour unchanged. :class:`TrimmedQuart` is the
app class; ``innera/app.py`` builds innera's app on it.

This module is the one importer of :mod:`innera.compat.quart` and :mod:`innera.compat.werkzeug`
(the Quart, Quart-trio and Werkzeug internals the trims rely on); what the request pipeline
needs of them (:data:`current_g`, :data:`current_request`, :func:`extend_headers`) it takes
from here.

- :class:`BodylessFastPath`: a request without a body runs in the server's task, not in a
  nursery of two, when the server cancels it if the client hangs up; requests are built with
  :class:`~innera.compat.werkzeug.RequestHeaders` (werkzeug's, without an exception raised
  and caught per missing header); a body held in memory is sent as one message.
- :class:`RouteMap`: the per-request URL adapter is made without the host work innera has no
  use for (no ``SERVER_NAME``, subdomains or host matching: routes match on method and path).
- :class:`NoSessions`: no cookie session (clients send bearer tokens).
- ``ensure_async`` remembers its answer per function (Quart asks it for every hook, view
  and session call of every request, and it inspects the function's code flags each time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import trio
from quart.routing import QuartMap
from quart.sessions import NullSession, SessionInterface
from quart.utils import encode_headers
from quart.wrappers.response import DataBody
from quart_trio import QuartTrio
from werkzeug.routing import MapAdapter

from innera.compat.quart import (
    HTTPConnectionBase,
    current_g,
    current_request,
    normalise_path,
)
from innera.compat.werkzeug import RequestHeaders, extend_headers
from innera.http.fast import HANGUP_EXTENSION

__all__ = ["BodylessFastPath", "NoSessions", "RequestHeaders", "RouteMap", "TrimmedQuart",
           "current_g", "current_request", "extend_headers", "header_pairs"]


class BodylessFastPath(HTTPConnectionBase):
    """Quart-trio runs each request as a nursery of two tasks: one feeds the body in and then
    waits for ``http.disconnect`` (to cancel the other if the client leaves), the other runs
    the app. A request that has no body (no ``Content-Length`` above 0, no
    ``Transfer-Encoding``: every GET and most DELETEs) has nothing to feed; when the server
    itself cancels the request of a client that hangs up (the scope's
    ``innera.cancelled_on_hangup`` extension: innera's fast server), nothing is left for the
    second task to do, so the app runs in the server's task with no nursery. Otherwise
    (Hypercorn) Quart-trio's way is kept."""

    async def __call__(self, receive: Any, send: Any) -> None:
        if HANGUP_EXTENSION in self.scope.get("extensions", ()) \
                and not _has_body(self.scope["headers"]):
            request = self.create_request(send)
            request.body.set_complete()
            response = await self.app.handle_request(request)
            timeout = getattr(response, "timeout", Ellipsis)
            if timeout is Ellipsis:
                timeout = self.app.config["RESPONSE_TIMEOUT"]
            if timeout is None:  # innera's setting: the server bounds its sends
                await self.send_response(send, response)
            else:
                with trio.move_on_after(timeout):
                    await self.send_response(send, response)
        else:
            await super().__call__(receive, send)

    def create_request(self, send: Any) -> Any:
        """Quart's, with :class:`RequestHeaders` filled in one step (the servers have
        already refused header values holding CR or LF, which werkzeug checks per add)."""
        scope, config = self.scope, self.app.config
        headers = RequestHeaders.from_pairs(header_pairs(scope))
        if scope["http_version"] < "1.1" and "host" not in headers:
            extend_headers(headers, [("Host", config["SERVER_NAME"] or "")])
        path = scope["path"]
        if path[:1] != "/":
            path = urlparse(path).path
        root_path = scope.get("root_path", "")
        if root_path:
            path = normalise_path(path, root_path)
        return self.app.request_class(
            scope["method"], scope["scheme"], path, scope["query_string"], headers,
            root_path, scope["http_version"],
            max_content_length=config["MAX_CONTENT_LENGTH"],
            body_timeout=config["BODY_TIMEOUT"],
            send_push_promise=self.push_promise_sender(send), scope=scope)

    async def send_response(self, send: Any, response: Any) -> None:
        """A body held in memory (every JSON answer) goes as one final body message; Quart
        iterates it into a body message and an empty last one."""
        body = getattr(response, "response", None)
        if not isinstance(body, DataBody):  # files, streams
            await super().send_response(send, response)
            return
        data = body.data
        if (body.begin, body.end) != (0, len(data)):  # a Range request
            data = data[body.begin:body.end]
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": encode_headers(response.headers)})
        await send({"type": "http.response.body", "body": data, "more_body": False})


def header_pairs(scope: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A request's headers as the framework's request holds them: title-case names, the
    peer's address first as ``Remote-Addr``."""
    pairs = [("Remote-Addr", (scope.get("client") or ["<local>"])[0])]
    pairs += [(name.decode("latin1").title(), value.decode("latin1"))
              for name, value in scope["headers"]]
    return pairs


class NoSessions(SessionInterface):
    """innera has no cookie sessions (clients send bearer tokens): every request gets the one
    null session, instead of Quart building a serializer-less one per request."""

    null = NullSession()

    async def open_session(self, app: Any, request: Any) -> NullSession:
        return self.null

    async def save_session(self, app: Any, session: Any, response: Any) -> None:
        return None


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


class RouteMap(QuartMap):
    """Quart's map binds a URL adapter per request by comparing the request's host with
    ``SERVER_NAME`` to find a subdomain, then werkzeug IDNA-encodes the host. With no
    ``SERVER_NAME``, no subdomains and no host matching (innera's configuration) the subdomain
    is always ``""`` and the host only ever appears in a redirect's URL; so an ASCII host is
    taken as it is (lower-cased, without the scheme's default port) and anything else goes
    Quart's way."""

    def bind_to_request(self, request: Any, subdomain: str | None, server_name: str | None
                        ) -> MapAdapter:
        host = request.host.lower()
        if server_name is not None or subdomain is not None or self.host_matching \
                or self.default_subdomain or not host.isascii():
            return super().bind_to_request(request, subdomain, server_name)
        scheme = request.scheme
        if (scheme in ("http", "ws") and host.endswith(":80")) or (
                scheme in ("https", "wss") and host.endswith(":443")):
            host = host.rpartition(":")[0]
        return MapAdapter(self, host, request.root_path or "/", "", scheme, request.path,
                          request.method, request.query_string.decode())


class TrimmedQuart(QuartTrio):
    """QuartTrio with the trims above."""

    asgi_http_class = BodylessFastPath  # type: ignore[assignment]
    session_interface = NoSessions()
    url_map_class = RouteMap

    #: functions ensure_async has answered (hooks, views, handlers: a fixed set; a function
    #: made per request, as ``after_this_request`` takes, is bounded by the clearing)
    _ASYNC_REMEMBERED = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async_funcs: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_async(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._async_funcs[func]
        except (KeyError, TypeError):  # TypeError: not hashable
            pass
        wrapped = super().ensure_async(func)
        try:
            if len(self._async_funcs) >= self._ASYNC_REMEMBERED:
                self._async_funcs.clear()
            self._async_funcs[func] = wrapped
        except TypeError:
            pass
        return wrapped
