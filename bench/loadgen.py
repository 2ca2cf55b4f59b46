"""One HTTP load-generator process (started by ``bench/http_load.py`` and
``bench/mixed_load.py``, one per ``--procs``).

    .venv/bin/python bench/loadgen.py SPEC.json CONNECTIONS

SPEC: ``{"host", "port", "server_pid", "warmup_s", "duration_s", "timeout_s", "requests":
[raw HTTP/1.1 request text, ...]}``, optionally ``"labels"`` (one per request: latencies and
errors are then also kept per label, e.g. per route of a mixed workload) and ``"watch"``
(``{name: [pid, ...]}``: other processes whose CPU time over the measurement is reported per
name, e.g. the server's PostgreSQL backends and its Redis). ``CONNECTIONS`` keep-alive
connections (raw ``trio.SocketStream``, responses parsed by ``httptools``) each send the next
request when the previous response is complete (closed loop), cycling through the
pre-rendered requests from their own offset; an ``@KEY@`` in a request becomes a key unique to
this process and request (``Idempotency-Key``). Latencies of the requests sent after the
warm-up go into a preallocated array. Errors: non-2xx statuses (by status), ``timeout`` (no
complete response within ``timeout_s``; the connection is dropped), ``reset`` (connection
refused, reset or closed mid-response), ``parse`` (a malformed response).

Prints one JSON object: ``{"count", "seconds", "errors": {kind: n}, "latencies_us": [...],
"server_cpu", "own_cpu", "server_cpu_s", "watch_cpu_s", "by_label"}`` (``seconds``: end of
the warm-up → the last response; ``*_cpu``: CPU time of the server process (from ``/proc``)
and of this one over that window, as a share of one core; ``server_cpu_s``: the server's CPU
seconds in that window; ``watch_cpu_s``: ``{name: CPU seconds of its pids in that window}``;
``by_label``: ``{label: {"count", "errors", "latencies_us"}}``, empty without ``labels``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import httptools
import trio

CAPACITY = 2_000_000  # latencies kept per process; beyond it requests are counted only
KEY = b"@KEY@"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_times(pid: int) -> tuple[float, float, float]:
    return cpu_s(pid), time.process_time(), time.perf_counter()


def cpu_s_of(pids: list[int]) -> float:
    """CPU seconds of ``pids`` summed; a process gone meanwhile counts 0 (its last figures
    are lost: watch long-lived processes, such as pooled PostgreSQL backends)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Response:
    """httptools callbacks for one response at a time."""

    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


class Load:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.host, self.port, self.server_pid = spec["host"], spec["port"], spec["server_pid"]
        self.timeout_s = spec["timeout_s"]
        self.requests = [r.encode() for r in spec["requests"]]
        self.labels: list[str] | None = spec.get("labels")
        self.watch: dict[str, list[int]] = spec.get("watch", {})
        # per label: latencies (µs) and errors of the measured requests
        self.by_label: dict[str, tuple[array[int], Counter[str]]] = {
            label: (array("q"), Counter()) for label in set(self.labels or ())}
        self.prefix = uuid.uuid4().hex[:12].encode()
        self.sent = 0
        self.latencies = array("d", bytes(8 * CAPACITY))
        self.count = 0
        self.errors: Counter[str] = Counter()
        now = time.perf_counter()
        self.measure_from = now + spec["warmup_s"]
        self.until = self.measure_from + spec["duration_s"]
        self.last = self.measure_from
        self.cpu_window: list[tuple[float, float, float]] = []
        self.watch_window: list[dict[str, float]] = []

    def next_request(self, index: int) -> bytes:
        raw = self.requests[index % len(self.requests)]
        if KEY in raw:
            self.sent += 1
            raw = raw.replace(KEY, b"%s-%d" % (self.prefix, self.sent))
        return raw

    async def connection(self, offset: int) -> None:
        index = offset
        while time.perf_counter() < self.until:
            try:
                with trio.fail_after(self.timeout_s):
                    stream = await trio.open_tcp_stream(self.host, self.port)
            except (OSError, trio.TooSlowError) as exc:
                self.errors["timeout" if isinstance(exc, trio.TooSlowError) else "reset"] += 1
                await trio.sleep(0.05)  # a refused connect: no busy loop
                continue
            async with stream:
                await self.requests_on(stream, index)
            index += 7

    async def requests_on(self, stream: trio.SocketStream, index: int) -> None:
        """Closed-loop requests on one connection until the end, a close or an error."""
        response = Response()
        parser = httptools.HttpResponseParser(response)
        while time.perf_counter() < self.until:
            request, sent = self.next_request(index), index
            index += 1
            response.complete = False
            started = time.perf_counter()
            try:
                with trio.move_on_after(self.timeout_s) as scope:
                    await stream.send_all(request)
                    while not response.complete:
                        data = await stream.receive_some(65536)
                        if not data:
                            raise trio.BrokenResourceError("closed mid-response")
                        parser.feed_data(data)
            except (OSError, trio.BrokenResourceError):
                self.errors["reset"] += 1
                return
            except httptools.HttpParserError:
                self.errors["parse"] += 1
                return
            if scope.cancelled_caught:
                self.errors["timeout"] += 1
                return
            done = time.perf_counter()
            if started >= self.measure_from:
                if self.count < CAPACITY:
                    self.latencies[self.count] = done - started
                self.count += 1
                self.last = max(self.last, done)
                status = parser.get_status_code()
                if not 200 <= status < 300:
                    self.errors[str(status)] += 1
                if self.labels is not None:
                    latencies, errors = self.by_label[
                        self.labels[sent % len(self.labels)]]
                    latencies.append(round((done - started) * 1e6))
                    if not 200 <= status < 300:
                        errors[str(status)] += 1
            if not parser.should_keep_alive():
                return

    async def run(self, connections: int) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(self.connection, i * 7919)
            await trio.sleep(max(0.0, self.measure_from - time.perf_counter()))
            self.cpu_window.append(cpu_times(self.server_pid))
            self.watch_window.append(self.watched_cpu_s())
        self.cpu_window.append(cpu_times(self.server_pid))
        self.watch_window.append(self.watched_cpu_s())

    def watched_cpu_s(self) -> dict[str, float]:
        return {name: cpu_s_of(pids) for name, pids in self.watch.items()}

    def report(self) -> dict[str, Any]:
        kept = min(self.count, CAPACITY)
        (server0, own0, wall0), (server1, own1, wall1) = self.cpu_window
        return {"count": self.count, "seconds": max(self.last - self.measure_from, 1e-9),
                "errors": dict(self.errors),
                "latencies_us": [round(v * 1e6) for v in self.latencies[:kept]],
                "server_cpu": (server1 - server0) / (wall1 - wall0),
                "own_cpu": (own1 - own0) / (wall1 - wall0),
                "server_cpu_s": server1 - server0,
                "watch_cpu_s": {name: self.watch_window[1][name] - self.watch_window[0][name]
                                for name in self.watch},
                "by_label": {label: {"count": len(latencies), "errors": dict(errors),
                                     "latencies_us": latencies.tolist()}
                             for label, (latencies, errors) in self.by_label.items()}}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    load = Load(spec)
    trio.run(load.run, int(sys.argv[2]))
    json.dump(load.report(), sys.stdout)


if __name__ == "__main__":
    main()
