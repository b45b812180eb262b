"""A loopback TCP proxy that adds round-trip latency and counts request/response exchanges.

It runs in its own process (so its threads never compete with the measured code for the
GIL), one listening port per upstream server, on 127.0.0.1 only. Each direction of each
connection has a reader thread and a writer thread: the reader stamps every chunk with
``now + RTT/2`` and queues it, the writer sleeps until that time and sends it, so ordering is
kept and both directions are delayed by half the round trip. ``time.sleep`` is precise to tens
of microseconds on Linux, unlike asyncio timers (rounded up to the millisecond by epoll).

Bytes the clients send are counted per upstream too (everything written towards the server,
protocol framing included). Round trips are counted per upstream as *exchanges*: a
client→server chunk that arrives after the server last sent something (or first on its
connection) starts a new exchange. A pipelined batch of commands sent in one go is one
exchange; two commands each awaiting its reply are two. Concurrent exchanges on different
connections are counted separately even though they overlap in time. Connection set-up is
not delayed and not counted (the benchmark warms every pool first). On HTTP/2 upstreams
(Firestore's gRPC) only client chunks holding a HEADERS or DATA frame count (not
PING/SETTINGS acknowledgements or WINDOW_UPDATEs); streams multiplexed on one connection may
still share an exchange. Driver background traffic (e.g. PyMongo's heartbeats) would add to
the counts: give each app its own upstream names.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import socket
import statistics
import sys
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

HOST = "127.0.0.1"
_CHUNK = 256 * 1024
_PR_SET_TIMERSLACK = 29


class _Link:
    """The state one proxied connection shares between its two directions."""

    def __init__(self, *, http2: bool) -> None:
        self.awaiting_request = True
        self.http2 = http2
        # HTTP/2 client-side frame parser: the connection preface, then 9-byte frame headers.
        self.preface_left = 24
        self.frame_left = 0
        self.header = b""

    def starts_request(self, data: bytes) -> bool:
        """Whether client bytes hold a request: any bytes, or for HTTP/2 a HEADERS or DATA
        frame (PING and SETTINGS acknowledgements or WINDOW_UPDATEs are no requests)."""
        if not self.http2:
            return True
        found = False
        i = min(self.preface_left, len(data))
        self.preface_left -= i
        while i < len(data):
            if self.frame_left:
                step = min(self.frame_left, len(data) - i)
                self.frame_left -= step
                i += step
                continue
            need = 9 - len(self.header)
            self.header += data[i:i + need]
            i += need
            if len(self.header) < 9:
                break
            self.frame_left = int.from_bytes(self.header[:3], "big")
            found = found or self.header[3] in (0x0, 0x1)  # DATA, HEADERS
            self.header = b""
        return found


class _Direction:
    """One direction of one connection: a reader thread and a delaying writer thread."""

    def __init__(self, src: socket.socket, dst: socket.socket, *, request: bool, index: int,
                 link: _Link, shared: _Shared) -> None:
        self.src, self.dst, self.request, self.index = src, dst, request, index
        self.link, self.shared = link, shared
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.cond = threading.Condition()  # guards the queue and every send to dst
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        data: bytes | None = b""
        try:
            while data is not None:
                data = self.src.recv(_CHUNK) or None
                if data is not None:
                    self._account(data)
                delay = self.shared.delays[self.index] / 2
                with self.cond:
                    if delay <= 0 and not self.queue and data is not None:
                        self.dst.sendall(data)  # no delay, nothing queued: send now, in order
                        continue
                    self.queue.append((time.monotonic() + delay, data))
                    self.cond.notify()
        except OSError:
            with self.cond:
                self.queue.append((0.0, None))
                self.cond.notify()

    def _account(self, data: bytes) -> None:
        if not self.request:
            self.link.awaiting_request = True
            return
        with self.shared.lock:
            self.shared.sent[self.index] += len(data)
        if self.link.starts_request(data) and self.link.awaiting_request:
            self.link.awaiting_request = False
            with self.shared.lock:
                self.shared.counts[self.index] += 1

    def _write(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                due = self.queue[0][0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.cond:
                _, data = self.queue.popleft()
                try:
                    if data is None:
                        with contextlib.suppress(OSError):
                            self.dst.shutdown(socket.SHUT_WR)
                        return
                    self.dst.sendall(data)
                except OSError:
                    for sock in (self.src, self.dst):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return


class _Shared:
    def __init__(self, delays: Any, counts: Any, sent: Any) -> None:
        self.delays = delays
        self.counts = counts
        self.sent = sent
        self.lock = threading.Lock()


def _accept(listener: socket.socket, index: int, upstream: int, shared: _Shared,
            http2: bool) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection((HOST, upstream), timeout=10)
        except OSError:
            client.close()
            continue
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(http2=http2)
        _Direction(client, server, request=True, index=index, link=link, shared=shared)
        _Direction(server, client, request=False, index=index, link=link, shared=shared)


def _precise_sleep() -> None:
    """Linux wakes sleepers up to 50 µs late by default (timer slack): ask for 1 ns."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


def _serve(upstreams: list[int], http2: list[bool], delays: Any, counts: Any, sent: Any,
           control: multiprocessing.connection.Connection) -> None:
    """The proxy process: listen, report the ports, run until the parent says stop."""
    sys.setswitchinterval(0.0002)
    _precise_sleep()
    shared = _Shared(delays, counts, sent)
    ports = []
    for index, upstream in enumerate(upstreams):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen(256)
        ports.append(listener.getsockname()[1])
        threading.Thread(target=_accept, args=(listener, index, upstream, shared, http2[index]),
                         daemon=True).start()
    control.send(ports)
    with contextlib.suppress(EOFError, OSError):
        control.recv()


class LatencyProxy:
    """Proxies for named upstream ports; ``set_rtt`` applies to all, counts are per name.

    Names in ``http2`` speak HTTP/2 (gRPC): only HEADERS and DATA frames count as requests.
    """

    def __init__(self, upstreams: Mapping[str, int], *, http2: Collection[str] = ()) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.names = list(upstreams)
        self._delays = ctx.Array("d", len(self.names), lock=False)
        self._counts = ctx.Array("q", len(self.names), lock=False)
        self._sent = ctx.Array("q", len(self.names), lock=False)
        self._control, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve,
            args=(list(upstreams.values()), [n in http2 for n in self.names], self._delays,
                  self._counts, self._sent, child),
            name="bench-latency-proxy", daemon=True,
        )
        self._process.start()
        if not self._control.poll(30):
            self.close()
            raise RuntimeError("the latency proxy did not start")
        ports: list[int] = self._control.recv()
        self.ports = dict(zip(self.names, ports, strict=True))

    def set_rtt(self, ms: float) -> None:
        """Delay each direction of every proxied connection by ``ms / 2`` milliseconds."""
        for i in range(len(self.names)):
            self._delays[i] = ms / 1000.0

    def count(self, *names: str) -> int:
        """Exchanges counted so far on the named upstreams (all if none named)."""
        wanted = names or tuple(self.names)
        return sum(self._counts[self.names.index(n)] for n in wanted)

    def sent(self, *names: str) -> int:
        """Bytes clients sent to the named upstreams so far (all if none named)."""
        wanted = names or tuple(self.names)
        return sum(self._sent[self.names.index(n)] for n in wanted)

    def close(self) -> None:
        """Stop the proxy process."""
        with contextlib.suppress(OSError):
            self._control.send("stop")
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def measure_rtt(port: int, samples: int = 30) -> float:
    """Median seconds for a redis PING/PONG through ``port`` (the floor of one exchange)."""
    times = []
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(samples):
            started = time.perf_counter()
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                reply += chunk
            times.append(time.perf_counter() - started)
    return statistics.median(times)
