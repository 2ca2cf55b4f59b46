"""Serving the ASGI app. Everything HTTP-server specific lives in this package, behind one
function, so the server can be swapped (Hypercorn now; a Trio-native server later)::

    addresses = await nursery.start(serve_http, asgi_app, host, port, stop_accepting)

``serve_http`` listens, calls ``task_status.started(addresses)``, and serves until
``stop_accepting`` is set. Then it closes its listeners at once (new connections are
refused), lets in-flight requests finish, answers requests that still arrive on open
keep-alive connections with ``Connection: close``, and returns when the last connection
has ended. The caller bounds that drain with its shutdown deadline.
"""

from innera.http.hypercorn import serve_http

__all__ = ["serve_http"]
