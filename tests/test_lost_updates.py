"""Concurrent requests of one session through real servers: no request's change is lost."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from werkzeug.serving import make_server

from apps import asgi_app, flask_app, quart_app, uvicorn_serving
from servers import free_port

SERVER_STORES = ["filesystem", "redis", "redis_cluster", "memcache", "mongodb", "firestore"]


@contextmanager
def serving(framework: str, config: dict[str, Any]) -> Iterator[int]:
    """The app behind a real server on a free loopback port: werkzeug, hypercorn or uvicorn."""
    if framework in ("starlette", "fastapi"):
        with uvicorn_serving(asgi_app(framework, config).asgi) as port:
            yield port
        return
    if framework == "flask":
        server = make_server("127.0.0.1", 0, flask_app(config), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_port
        finally:
            server.shutdown()
            thread.join()
        return
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    app = quart_app(config)
    port = free_port()
    hc = Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.accesslog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    async def main() -> None:
        await serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while True:  # hypercorn listens a moment after its startup hooks ran
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "hypercorn did not start"
            time.sleep(0.05)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        loop.close()


def call(port: int, method: str, path: str, body: Any = None,
         cookies: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    reply = conn.getresponse()
    data = reply.read()
    set_cookies = {}
    for header in reply.headers.get_all("Set-Cookie") or []:
        name, _, rest = header.partition("=")
        set_cookies[name] = rest.split(";", 1)[0]
    conn.close()
    return reply.status, json.loads(data) if data else None, set_cookies


@pytest.fixture(params=SERVER_STORES)
def server_store(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    from app_fixtures import store_config

    return store_config(request, str(request.param), tmp_path)


def test_fifty_concurrent_requests_keep_every_key(framework: str, server_store: Any) -> None:
    config = {"SESSION_CONFIG": [{"cookie_name": "sid", **server_store}]}
    with serving(framework, config) as port:
        status, _, cookies = call(port, "POST", "/set", {"start": 0})
        assert status == 200
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(
                lambda i: call(port, "POST", "/set", {f"k{i}": i}, cookies)[0], range(50)
            ))
        assert results == [200] * 50
        _, shown, _ = call(port, "GET", "/show", cookies=cookies)
    assert set(shown) == {"start"} | {f"k{i}" for i in range(50)}


def test_concurrent_writes_to_one_key_end_with_one_value(
    framework: str, server_store: Any
) -> None:
    config = {"SESSION_CONFIG": [{"cookie_name": "sid", **server_store}]}
    values = [{"n": i, "payload": "x" * (i * 50)} for i in range(20)]
    with serving(framework, config) as port:
        _, _, cookies = call(port, "POST", "/set", {"other": 1})
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda v: call(port, "POST", "/set", {"same": v}, cookies), values))
        _, shown, _ = call(port, "GET", "/show", cookies=cookies)
    assert shown["other"] == "1"
    assert shown["same"] in {repr(v) for v in values}
