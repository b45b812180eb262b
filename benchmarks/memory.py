"""Memory: a gunicorn worker's RSS over many requests of many sessions, and idle loops' cost.

*Growth*: one gunicorn gthread worker serves the Flask app on one redis store (as the
throughput scenario does). Client threads first create 1,000 distinct sessions (``/setup``),
then cycle through them, three read-only requests (``GET /read``) for each writing one
(``POST /write-one``). The worker reports its RSS (``/_bench/stats``) after 10,000 and after
100,000 requests (and in between); target 6 is the ratio of the two. The clients are plain
keep-alive sockets with pre-built requests, so the worker, not the client, sets the pace.

*Idle loops*: the Flask bridge keeps one idle event loop per thread that was ever in a
session hook at once, each holding its own store connections. The worker reports how many it
holds after the run and what CPU it burns idle; a separate process
(``python -m benchmarks.memory loops PORT N``) opens N loops with a connected redis client
each, at once, and reports the memory (RSS and Python heap) and file descriptors per loop.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .load import ROOT, Target, start_app_server
from .servers import HOST

SESSIONS = 1000
FULL_CHECKPOINTS = (10_000, 25_000, 50_000, 100_000)
QUICK_CHECKPOINTS = (2_000, 10_000)
IDLE_SECONDS = 3.0
LOOPS = 32


class _Conn:
    """One keep-alive HTTP/1.1 connection that sends pre-built requests."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, request: bytes) -> tuple[int, list[bytes], bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            headers.append(line)
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def _request(method: str, path: str, cookie: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: bench", b"Content-Length: 0"]
    if cookie:
        lines.append(b"Cookie: " + cookie)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _cookie(headers: list[bytes]) -> bytes:
    pairs = [line.split(b":", 1)[1].strip().split(b";", 1)[0] for line in headers
             if line.lower().startswith(b"set-cookie:")]
    return b"; ".join(pairs)


def _stats(port: int) -> dict[str, Any]:
    conn = _Conn(port)
    try:
        status, _, body = conn.send(_request("GET", "/_bench/stats"))
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"/_bench/stats: HTTP {status}")
    stats: dict[str, Any] = json.loads(body)
    return stats


def drive(port: int, *, clients: int, sessions: int, checkpoints: tuple[int, ...],
          log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Create ``sessions`` sessions, then run requests; the worker's stats at each checkpoint
    (total measured requests across clients)."""
    per_client = [sessions // clients + (i < sessions % clients) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []
    marks = [0, *checkpoints]

    def work(index: int) -> None:
        conn = _Conn(port)
        try:
            requests = []
            for _ in range(per_client[index]):
                status, headers, body = conn.send(_request("GET", "/setup"))
                cookie = _cookie(headers)
                if status != 200 or not cookie:
                    raise RuntimeError(f"/setup: HTTP {status} {body[:200]!r}")
                requests.append((_request("GET", "/read", cookie),
                                 _request("POST", "/write-one", cookie)))
            barrier.wait()
            done = 0
            for lo, hi in itertools.pairwise(marks):
                share = (hi - lo) // clients + (index < (hi - lo) % clients)
                for _ in range(share):
                    read, write = requests[done % len(requests)]
                    status, _, body = conn.send(write if done % 4 == 3 else read)
                    if status != 200:
                        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                    done += 1
                barrier.wait()
                barrier.wait()  # the stats are taken in between
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    points = []
    try:
        barrier.wait()  # every session created
        started = time.perf_counter()
        points.append({"requests": 0, "seconds": 0.0, **_stats(port)})
        log(f"  {sessions} sessions created: worker RSS {points[0]['rss_kib'] / 1024:.1f} MiB")
        for mark in checkpoints:
            barrier.wait()
            point = {"requests": mark, "seconds": time.perf_counter() - started,
                     **_stats(port)}
            points.append(point)
            log(f"  after {mark:,} requests ({point['seconds']:.0f} s): worker RSS "
                f"{point['rss_kib'] / 1024:.1f} MiB, {point['idle_loops']} idle loops, "
                f"{point['fds']} fds, {point['threads']} threads")
            barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join(60)
    if errors:
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or errors)[0]
    return points


def idle_cpu(port: int, seconds: float) -> float:
    """CPU seconds per second the worker spends while no request comes."""
    before = _stats(port)
    time.sleep(seconds)
    after = _stats(port)
    return float(after["cpu_s"] - before["cpu_s"]) / seconds


def loop_cost(redis_port: int, loops: int) -> dict[str, Any]:
    """Run ``python -m benchmarks.memory loops`` in a fresh process; its JSON answer."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "loops", str(redis_port), str(loops)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loop cost probe failed: {out.stderr[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_memory(redis_port: int, workdir: Path, *, clients: int, quick: bool,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The growth measurement and the idle loops' cost."""
    checkpoints = QUICK_CHECKPOINTS if quick else FULL_CHECKPOINTS
    target = Target("Flask", "gunicorn", "asyncsessions")
    server = start_app_server(target, redis_port, clients, workdir)
    try:
        points = drive(server.port, clients=clients, sessions=SESSIONS,
                       checkpoints=checkpoints, log=log)
        cpu = idle_cpu(server.port, IDLE_SECONDS)
    finally:
        server.stop()
    log(f"  worker idle: {cpu * 1000:.2f} ms CPU per s")
    loops = loop_cost(redis_port, LOOPS)
    log(f"  one idle bridge loop with its redis connection: {loops['rss_kib_per_loop']:.0f} KiB "
        f"RSS, {loops['heap_kib_per_loop']:.1f} KiB Python heap, "
        f"{loops['fds_per_loop']:.1f} fds")
    return {"sessions": SESSIONS, "clients": clients, "checkpoints": list(checkpoints),
            "points": points, "idle_cpu": cpu, "idle_seconds": IDLE_SECONDS, "loops": loops,
            "mix": "3 read-only : 1 write-one"}


# -- the idle loops probe (its own process) --------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _probe(redis_port: int, loops: int) -> dict[str, Any]:
    import gc
    import os
    import tracemalloc

    from asyncsessions.backends.redis import RedisBackend
    from asyncsessions.bridge import Bridge

    backend = RedisBackend(url=f"redis://{HOST}:{redis_port}/0")
    bridge = Bridge()
    gate = threading.Barrier(loops)

    async def held() -> None:
        await backend.load("asyncsessions-bench:none", touch=False)
        gate.wait()  # blocks this thread's loop only: every loop is in use at once

    def worker() -> None:
        bridge.run(held)

    def wave() -> None:
        threads = [threading.Thread(target=worker) for _ in range(loops)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # Imports, thread stacks and allocator arenas grow once: not the loops' cost. Those loops
    # are closed with their bridge, and the same number opened again is what is measured.
    wave()
    bridge.close()
    bridge = Bridge()
    gc.collect()
    idle_before = len(bridge._idle)
    rss0, fds0 = _rss_kib(), len(os.listdir("/proc/self/fd"))
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    wave()
    gc.collect()
    heap1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rss1, fds1 = _rss_kib(), len(os.listdir("/proc/self/fd"))
    opened = len(bridge._idle) - idle_before
    started = time.process_time()
    time.sleep(1.0)
    idle_cpu = time.process_time() - started
    bridge.close()
    return {"loops": opened, "rss_kib_per_loop": (rss1 - rss0) / max(1, opened),
            "heap_kib_per_loop": (heap1 - heap0) / 1024 / max(1, opened),
            "fds_per_loop": (fds1 - fds0) / max(1, opened), "idle_cpu_s_per_s": idle_cpu}


if __name__ == "__main__":
    if sys.argv[1:2] != ["loops"]:
        raise SystemExit("usage: python -m benchmarks.memory loops REDIS_PORT N")
    print(json.dumps(_probe(int(sys.argv[2]), int(sys.argv[3]))))
