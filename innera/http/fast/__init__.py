"""innera's Trio-native HTTP/1.1 + WebSocket server: the ``fast`` implementation of
:func:`innera.http.serve_http` (``INNERA_HTTP_SERVER=fast``). What it does, its limits and
the layout of its modules: :mod:`innera.http.fast.server`.

Exported: :func:`serve_http`, and :data:`HANGUP_EXTENSION`, the http scope's extension saying
the server cancels a request whose client hung up (:mod:`innera.http.fast.hangups`).
"""

from innera.http.fast.hangups import EXTENSION as HANGUP_EXTENSION
from innera.http.fast.server import serve_http

__all__ = ["HANGUP_EXTENSION", "serve_http"]
