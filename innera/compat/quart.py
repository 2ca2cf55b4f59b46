"""The Quart and Quart-trio internals innera relies on (imported by
``innera/api/framework.py``, the trimmed Quart-trio app).

- ``quart.asgi._normalise_path(path, root_path)``: a request path relative to the ASGI
  ``root_path`` (``" "``, which no route matches, when outside it): :func:`normalise_path`.
- Quart-trio's ``TrioASGIHTTPConnection`` (one per HTTP request) calls its private
  ``_create_request_from_scope(send)`` and ``_send_response(send, response)``, and Quart's
  request takes ``partial(self._send_push_promise, send)``. :class:`HTTPConnectionBase`
  routes the first two through public names a subclass overrides (``create_request``,
  ``send_response``) and hands out the third (``push_promise_sender``).
- Quart's ``g`` and ``request`` are werkzeug ``LocalProxy`` objects over Quart's context
  variables: :data:`current_g` and :data:`current_request` return the objects behind them
  (:func:`innera.compat.werkzeug.proxy_target`).

``tests/compat/test_quart.py`` checks that each exists with the shape used; re-run it and
``tests/test_framework.py`` before widening :data:`SUPPORTED` / :data:`SUPPORTED_TRIO` (and
the pins in ``pyproject.toml``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from quart import g, request
from quart.asgi import _normalise_path
from quart_trio.asgi import TrioASGIHTTPConnection

from innera.compat import Supported
from innera.compat.werkzeug import proxy_target

__all__ = ["SUPPORTED", "SUPPORTED_TRIO", "HTTPConnectionBase", "current_g", "current_request",
           "normalise_path"]

SUPPORTED = Supported("quart", "0.20", "0.23", "innera/compat/quart.py")
SUPPORTED_TRIO = Supported("quart-trio", "0.12", "0.13", "innera/compat/quart.py")

#: ``(path, root_path) -> path``: the request path below the ASGI ``root_path``
normalise_path: Callable[[str, str], str] = _normalise_path

#: the current request's ``g`` (Quart's app-context globals), without the proxy per attribute
current_g: Callable[[], Any] = proxy_target(g)
#: the current request object, without the proxy per attribute
current_request: Callable[[], Any] = proxy_target(request)


class HTTPConnectionBase(TrioASGIHTTPConnection):
    """Quart-trio's per-request ASGI connection with its private hooks under public names:
    a subclass overrides :meth:`create_request` and :meth:`send_response`, never the private
    methods Quart-trio calls."""

    def create_request(self, send: Any) -> Any:
        """The request object for this connection's scope (Quart's
        ``_create_request_from_scope``)."""
        return super()._create_request_from_scope(send)

    async def send_response(self, send: Any, response: Any) -> None:
        """Send ``response`` over ``send`` (Quart's ``_send_response``)."""
        await super()._send_response(send, response)

    def push_promise_sender(self, send: Any) -> Callable[[str, Any], Awaitable[None]]:
        """What Quart's request takes as ``send_push_promise``."""
        return partial(self._send_push_promise, send)

    def _create_request_from_scope(self, send: Any) -> Any:
        return self.create_request(send)

    async def _send_response(self, send: Any, response: Any) -> None:
        await self.send_response(send, response)
