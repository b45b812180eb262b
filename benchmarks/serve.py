"""Serve one benchmark app on a real HTTP server, in its own process (used by ``load``).

``python -m benchmarks.serve SERVER LIB PORT REDIS_PORT THREADS`` where SERVER is
``werkzeug`` or ``gunicorn`` (Flask, threaded) or ``hypercorn`` (Quart). SIGTERM stops it.

Flask apps also answer ``GET /_bench/stats``: the serving process's RSS, CPU time, open
files, threads and the bridge's idle loops (the memory scenario reads them).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import threading
from typing import Any

from .apps import HOST, Endpoints, build_flask, build_quart


def process_stats() -> dict[str, Any]:
    """What the memory scenario reads of the process serving the app."""
    rss_kib = 0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    times = os.times()
    from asyncsessions import bridge

    pool = getattr(bridge, "_bridge", None)
    idle = getattr(pool, "_idle", None)
    return {
        "pid": os.getpid(), "rss_kib": rss_kib, "cpu_s": times.user + times.system,
        "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
        "idle_loops": None if idle is None else len(idle), "gc_objects": len(gc.get_objects()),
    }


def _add_stats(app: Any) -> None:
    @app.get("/_bench/stats")
    def stats() -> Any:
        return app.response_class(json.dumps(process_stats()), mimetype="application/json")


def _werkzeug(app: Any, port: int) -> None:
    from werkzeug.serving import WSGIRequestHandler, make_server

    class KeepAlive(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one server thread per client connection

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    server = make_server(HOST, port, app, threaded=True, request_handler=KeepAlive)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


def _gunicorn(app: Any, port: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    options = {"bind": f"{HOST}:{port}", "workers": 1, "worker_class": "gthread",
               "threads": threads, "keepalive": 60, "accesslog": None, "loglevel": "warning"}

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Application().run()


def _hypercorn(app: Any, port: int) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 60

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)

    asyncio.run(main())


def main(argv: list[str]) -> None:
    """Build the app named on the command line and serve it until SIGTERM."""
    server, lib, port, redis_port, threads = argv
    endpoints = Endpoints(redis=int(redis_port))
    if server == "hypercorn":
        _hypercorn(build_quart(lib, endpoints), int(port))
    elif server in ("gunicorn", "werkzeug"):
        app = build_flask(lib, "redis", endpoints)
        _add_stats(app)
        if server == "gunicorn":
            _gunicorn(app, int(port), int(threads))
        else:
            _werkzeug(app, int(port))
    else:
        raise SystemExit(f"unknown server {server!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
