"""innera's Trio-native HTTP/1.1 + WebSocket server: the ``fast`` implementation of
:func:`innera.http.serve_http` (``INNERA_HTTP_SERVER=fast``). What it does, its limits and
the layout of its modules: :mod:`innera.http.fast.server`.

Exported: :func:`serve_http`; :data:`HANGUP_EXTENSION`, the http scope's extension saying
the server cancels a request whose client hung up (:mod:`innera.http.fast.hangups`); and
:data:`SEND_NOWAIT_EXTENSION`, the websocket scope's extension writing a message without a
task switch when the socket's buffer has room, with its :data:`FLUSH` message type and the
``WROTE_*`` answers (:mod:`innera.http.fast.websocket`).
"""

from innera.http.fast.hangups import EXTENSION as HANGUP_EXTENSION
from innera.http.fast.server import serve_http
from innera.http.fast.websocket import (
    FLUSH,
    SEND_NOWAIT_EXTENSION,
    WROTE_ALL,
    WROTE_NOTHING,
    WROTE_PART,
)

__all__ = ["FLUSH", "HANGUP_EXTENSION", "SEND_NOWAIT_EXTENSION", "WROTE_ALL", "WROTE_NOTHING",
           "WROTE_PART", "serve_http"]
