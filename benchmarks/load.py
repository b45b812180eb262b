"""Requests per second of apps under real HTTP servers, driven by keep-alive client threads."""

from __future__ import annotations

import http.client
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import HOST, Server, free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    """One app under one HTTP server."""

    framework: str  # "Flask" or "Quart"
    server: str  # "werkzeug", "gunicorn" or "hypercorn"
    lib: str  # "asyncsessions", "flask-session", "quart-session"

    @property
    def label(self) -> str:
        return f"{self.framework} {self.lib} ({self.server})"


@dataclass
class Throughput:
    """Requests per second of each round, per target and scenario."""

    rounds: dict[tuple[Target, str], list[float]] = field(default_factory=dict)

    def rps(self, target: Target, scenario: str) -> float:
        return statistics.median(self.rounds[(target, scenario)])

    def ratio(self, ours: Target, peer: Target, scenario: str) -> float:
        """Median over rounds of ours ÷ peer, each pair measured back to back."""
        pairs = zip(self.rounds[(ours, scenario)], self.rounds[(peer, scenario)], strict=True)
        return statistics.median(a / b for a, b in pairs)


class AppServer(Server):
    """``python -m benchmarks.serve`` for one target, run from the repository root."""

    ready_timeout = 60.0

    def __init__(self, target: Target, redis_port: int, threads: int, workdir: Path) -> None:
        port = free_port()
        self.name = f"{target.server}-{target.lib}"
        argv = [sys.executable, "-m", "benchmarks.serve", target.server, target.lib, str(port),
                str(redis_port), str(threads)]
        super().__init__(argv, workdir, port, cwd=ROOT)

    def is_ready(self) -> bool:
        url = f"http://{self.host}:{self.port}/nosession"
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)


def start_app_server(target: Target, redis_port: int, threads: int, workdir: Path) -> Server:
    """Start ``python -m benchmarks.serve`` for ``target`` and wait until it answers."""
    server = AppServer(target, redis_port, threads, workdir)
    server.start()
    return server


class _Client:
    """One keep-alive connection with its own cookie jar."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str) -> None:
        headers = {"Content-Length": "0"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.conn.request(method, path, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {body[:300]!r}")
        for header in response.headers.get_all("Set-Cookie") or ():
            name, _, rest = header.partition("=")
            value, _, attributes = rest.partition(";")
            if "max-age=0" in attributes.lower() or "1970" in attributes:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value


def run_load(port: int, method: str, path: str, *, clients: int, warmup: float,
             duration: float) -> float:
    """Requests per second with ``clients`` concurrent keep-alive connections."""
    window: dict[str, float] = {}
    counts = [0] * clients
    errors: list[BaseException] = []

    def set_window() -> None:
        window["measure"] = time.perf_counter() + warmup
        window["end"] = window["measure"] + duration

    barrier = threading.Barrier(clients, action=set_window)

    def work(index: int) -> None:
        client = _Client(port)
        try:
            client.request("GET", "/setup")
            barrier.wait()
            while time.perf_counter() < window["measure"]:
                client.request(method, path)
            done = 0
            while time.perf_counter() < window["end"]:
                client.request(method, path)
                done += 1
            counts[index] = done
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            client.conn.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(warmup + duration + 60)
    if errors:
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or errors)[0]
    return sum(counts) / duration


def measure_throughput(
    pairs: Sequence[tuple[Target, Target]], ports: dict[Target, int],
    scenarios: Sequence[tuple[str, str, str]], *, rounds: int, clients: int, warmup: float,
    duration: float, log: Any = print,
) -> Throughput:
    """Each round measures ours and its peer back to back (order alternating between rounds)
    for every scenario, so that load from elsewhere on the machine hits both alike."""
    result = Throughput()
    for round_no in range(rounds):
        for key, method, path in scenarios:
            for pair in pairs:
                for target in pair if round_no % 2 == 0 else reversed(pair):
                    rps = run_load(ports[target], method, path, clients=clients,
                                   warmup=warmup, duration=duration)
                    result.rounds.setdefault((target, key), []).append(rps)
                    log(f"  round {round_no + 1}: {target.label} {key}: {rps:,.0f} req/s")
    return result
