"""The server CPU per socket of one broadcast, by the way each socket is written: innera's
hub, Socket and fast-server WebSocket/Transport objects over real loopback TCP sockets, in
one process, without the rest of the server (no HTTP, no Redis), so the write paths compare
directly.

    .venv/bin/python bench/ws_write_paths.py [--sockets 9000] [--rounds 7]

The clients are a child process on CPU 1 reading every socket with one ``epoll`` loop; the
server side runs on CPU 0. Each round writes one ~60-byte event to every socket, per path:

- ``send loop``: ``socket.send`` of the frame in a plain loop (the system call alone: the
  floor; on loopback it includes the receiving side's TCP processing);
- ``hub, direct``: ``Hub.deliver`` with :attr:`Socket.direct` = the fast server's
  ``send_nowait`` (innera now): one loop in the caller's task, no task switch;
- ``hub, queue + writer (Transport)``: ``Hub.deliver`` queueing on each socket's channel, a
  writer task per socket sending through ``WebSocket.send`` → ``Transport.send_all`` (innera
  before: a channel hop and a task switch per socket);
- ``hub, queue + writer (SocketStream)``: the same with the writer calling
  ``trio.SocketStream.send_all`` (Trio's stream, as Hypercorn writes).

CPU = the process's ``schedstat`` nanoseconds over the round (until the last writer is done),
per socket; the median of the rounds, the paths alternated within each round.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from innera.http.fast import websocket as fast_ws  # noqa: E402
from innera.http.fast.server import current_settings  # noqa: E402
from innera.http.fast.transport import Transport  # noqa: E402
from innera.observability.metrics import Metrics  # noqa: E402
from innera.realtime.hub import Hub, Socket  # noqa: E402

USER = "user"


def cpu_ns() -> int:
    return int(Path("/proc/self/schedstat").read_text().split()[0])


def clients(port: int, n: int, ready: int) -> None:
    """The child: ``n`` connections read until the parent closes them."""
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {1})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    epoll = select.epoll()
    for s in socks:
        s.setblocking(False)
        epoll.register(s.fileno(), select.EPOLLIN)
    os.write(ready, b"x")
    open_ = n
    while open_:
        for fd, _ in epoll.poll():
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, ConnectionResetError):
                continue
            if not data:
                epoll.unregister(fd)
                open_ -= 1
    os._exit(0)


class Paths:
    def __init__(self, servers: list[socket.socket]) -> None:
        self.servers = servers
        settings = current_settings()
        self.metrics = Metrics()
        self.sessions = []
        for s in servers:
            session = fast_ws.WebSocket(settings, Transport(s, 10.0), b"", b"")
            session.state = fast_ws._CONNECTED  # as after the handshake
            self.sessions.append(session)
        self.streams = [trio.SocketStream(trio.socket.from_stdlib_socket(s.dup()))
                        for s in servers]

    def hub(self, direct: bool) -> Hub:
        hub = Hub(self.metrics)
        sockets: dict[Socket, None] = {}
        for session in self.sessions:
            sock = Socket(USER, hub=hub)
            sock.direct = session.send_nowait if direct else None
            sockets[sock] = None
        hub._by_user[USER] = sockets
        return hub

    async def writers(self, nursery: trio.Nursery, hub: Hub, stream: bool, done: list[int],
                      all_done: list[trio.Event]) -> None:
        for sock, session, s in zip(hub.sockets_of(USER), self.sessions, self.streams,
                                    strict=False):
            nursery.start_soon(self.writer, sock, session, s, stream, done, all_done)

    @staticmethod
    async def writer(sock: Socket, session: fast_ws.WebSocket, s: trio.SocketStream,
                     stream: bool, done: list[int], all_done: list[trio.Event]) -> None:
        while True:
            message = await sock.outbox.receive()
            assert message is not None
            if stream:
                await s.send_all(fast_ws._text_frame(message))
            else:
                await session.send({"type": "websocket.send", "text": message})
            sock.sent()
            done[0] -= 1
            if not done[0]:
                all_done[0].set()


async def run(servers: list[socket.socket], rounds: int) -> dict[str, list[float]]:
    paths = Paths(servers)
    n = len(servers)
    results: dict[str, list[float]] = {}
    direct_hub = paths.hub(direct=True)
    queue_hub, stream_hub = paths.hub(direct=False), paths.hub(direct=False)
    done, all_done = [0], [trio.Event()]
    # hub.sockets_of is a frozenset: the writers pair sockets with sessions by its order
    async with trio.open_nursery() as nursery:
        await paths.writers(nursery, queue_hub, False, done, all_done)
        await paths.writers(nursery, stream_hub, True, done, all_done)
        await trio.sleep(0.2)
        for r in range(rounds):
            for name in ("send loop", "hub, direct", "hub, queue + writer (Transport)",
                         "hub, queue + writer (SocketStream)"):
                await trio.sleep(0.3)  # the clients have read the last round
                text = f'{{"type":"job.progress","data":{{"round":{r},"path":"{name[:4]}"}}}}'
                done[0], all_done[0] = n, trio.Event()
                start = cpu_ns()
                if name == "send loop":
                    frame = fast_ws._text_frame(text)
                    for s in servers:
                        s.send(frame)
                elif name == "hub, direct":
                    direct_hub.deliver(USER, text)
                else:
                    hub = queue_hub if "Transport" in name else stream_hub
                    hub.deliver(USER, text)
                    await all_done[0].wait()
                results.setdefault(name, []).append((cpu_ns() - start) / n / 1000)
        nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=9000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        listener.close()
        clients(port, args.sockets, ready_w)
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {0})
    servers = []
    for _ in range(args.sockets):
        s, _ = listener.accept()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        servers.append(s)
    os.read(ready_r, 1)
    try:
        results = trio.run(run, servers, args.rounds)
    finally:
        for s in servers:
            s.close()
        os.waitpid(pid, 0)
    floor = statistics.median(results["send loop"])
    print(f"{args.sockets} sockets, {args.rounds} rounds: server CPU µs per socket (median; "
          "each round)")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<38}{median:>7.2f}  ({median - floor:+.2f} over the send loop)   "
              + " ".join(f"{v:.1f}" for v in values))


if __name__ == "__main__":
    main()
