"""A loopback Sentry endpoint for benchmarks: accepts every envelope a Sentry SDK posts and
counts them, so ``innera serve`` can run with a DSN (and tracing) without a Sentry.

    .venv/bin/python bench/sentry_sink.py [--port 9411]
    SENTRY_DSN=http://key@127.0.0.1:9411/1 SENTRY_TRACES_SAMPLE_RATE=0.1 \\
        .venv/bin/python bench/http_load.py ...

Answers 200 ``{}`` at once (a stdlib threaded server: it must not be the bottleneck, nor
add latency to the SDK's sending thread). Prints the envelopes and the transactions and
spans in them every 10 s and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"envelopes": 0, "transactions": 0, "spans": 0, "events": 0, "bytes": 0}
lock = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        transactions = spans = events = 0
        lines = body.split(b"\n")
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            kind = json.loads(header or b"{}").get("type")
            if kind == "transaction":
                transactions += 1
                spans += len(json.loads(payload).get("spans", []))
            elif kind == "event":
                events += 1
        with lock:
            counts["envelopes"] += 1
            counts["transactions"] += transactions
            counts["spans"] += spans
            counts["events"] += events
            counts["bytes"] += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def report() -> None:
    with lock:
        print(json.dumps(counts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9411)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Sink)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(10):
            report()

    threading.Thread(target=tick, daemon=True).start()
    print(f"sentry sink: SENTRY_DSN=http://key@127.0.0.1:{args.port}/1", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stop.set()
        report()


if __name__ == "__main__":
    main()
