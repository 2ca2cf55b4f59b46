"""What Quart-trio itself costs per request, called in process with no server and no I/O:
one trivial route (a constant JSON body) on stock Quart-trio, then with innera's trims
(``TrimmedQuart`` from ``innera/api/framework.py``, ``InneraRequest`` from ``innera/app.py``).

    .venv/bin/python bench/quart_overhead.py [N]

Prints CPU µs per request for each (time.process_time over N requests after 200 warm-up).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import trio
from quart import Response
from quart_trio import QuartTrio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from innera.api.framework import TrimmedQuart
from innera.app import InneraRequest
from innera.http.fast import HANGUP_EXTENSION

SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
         "scheme": "http", "path": "/v1/entries/abc", "raw_path": b"/v1/entries/abc",
         "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
         "server": ("127.0.0.1", 2),
         "headers": [(b"host", b"x"), (b"authorization", b"Bearer xyz")],
         "extensions": {HANGUP_EXTENSION: {}}}  # as innera's fast server sends it


def make_app(trimmed: bool) -> QuartTrio:
    app = TrimmedQuart("bench") if trimmed else QuartTrio("bench")
    if trimmed:
        app.request_class = InneraRequest
        app.config["RESPONSE_TIMEOUT"] = None  # innera's setting: the server bounds sends

    @app.get("/v1/entries/<entry_id>")
    async def read(entry_id: str) -> Response:
        return Response(b'{"a":1}', content_type="application/json")

    return app


async def per_request_us(app: QuartTrio, n: int) -> float:
    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()  # a GET's body is never read; disconnect never comes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        pass

    for _ in range(200):
        await app(SCOPE, receive, send)
    started = time.process_time()
    for _ in range(n):
        await app(SCOPE, receive, send)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    for trimmed in (False, True):
        label = "innera's trims" if trimmed else "stock Quart-trio"
        print(f"{label:<18} {trio.run(per_request_us, make_app(trimmed), n):7.1f} µs per request")


if __name__ == "__main__":
    main()
