"""The ASGI middleware itself: its two spellings, websockets, lifespan, failures, a real uvicorn.

The behaviour suite runs through Starlette and FastAPI as it does through Flask and Quart
(tests/apps.py); these tests cover what only the middleware does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import fastapi
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from apps import starlette_app, uvicorn_serving
from asyncsessions import Backend, NullSession, Record, SessionBackendError, Write
from asyncsessions.adapters.asgi import SessionMiddleware
from asyncsessions.backends.base import LoopClients
from test_lost_updates import call


class MemoryStore(Backend):
    """Records in a dict, behind a client opened per event loop as the real stores' are."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.events: list[tuple[str, int]] = []
        self.fail_writes = False
        self.fail_loads = False
        self.writes = 0
        self._clients: LoopClients[object] = LoopClients(self._open, self._close)

    def _open(self) -> object:
        self.events.append(("opened", id(asyncio.get_running_loop())))
        return object()

    async def _close(self, client: object) -> None:
        self.events.append(("closed", id(asyncio.get_running_loop())))

    async def load(self, key: str, *, touch: bool) -> Record | None:
        self._clients.get()
        if self.fail_loads:
            raise ConnectionError("the store is down")
        return self.records.get(key)

    async def store(self, key: str, write: Write) -> bool:
        self._clients.get()
        self.writes += 1
        if self.fail_writes:
            raise ConnectionError("the store is down")
        record = self.records.get(key)
        if record is None and not write.create:
            return False
        fields = {} if write.create or record is None else dict(record.fields)
        fields.update(write.changed)
        for name in write.removed:
            fields.pop(name, None)
        if not fields:
            self.records.pop(key, None)
        else:
            kept = record.permanent if record is not None else False
            self.records[key] = Record(fields, kept if write.permanent is None else write.permanent)
        return True

    async def delete(self, key: str) -> None:
        self.records.pop(key, None)


async def show(request: Request) -> Response:
    return PlainTextResponse(json.dumps(dict(request.session), sort_keys=True))


async def put(request: Request) -> Response:
    request.session.update(await request.json())
    return PlainTextResponse("ok")


ROUTES = [Route("/show", show), Route("/put", put, methods=["POST"])]
ROUTED = [  # the CSRF token in its own signed cookie, everything else on the server
    {"cookie_name": "csrf", "session_fields": ["csrf_token"]},
    {"cookie_name": "data", "session_type": "filesystem", "session_fields": "auto"},
]


def routed(tmp_path: Path) -> list[dict[str, Any]]:
    return [ROUTED[0], {**ROUTED[1], "directory": str(tmp_path / "sessions")}]


def fastapi_with_middleware(**options: Any) -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.get("/show")
    async def show_(request: fastapi.Request) -> Response:
        return await show(request)

    @app.post("/put")
    async def put_(request: fastapi.Request) -> Response:
        return await put(request)

    app.add_middleware(SessionMiddleware, **options)
    return app


@pytest.mark.parametrize("form", ["middleware_list", "add_middleware", "fastapi"])
def test_both_spellings_route_fields_to_their_stores(form: str, tmp_path: Path) -> None:
    options = {"config": routed(tmp_path), "secret_key": "s3cret"}
    app: Any
    if form == "middleware_list":
        app = Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, **options)])
    elif form == "add_middleware":
        app = Starlette(routes=ROUTES)
        app.add_middleware(SessionMiddleware, **options)
    else:
        app = fastapi_with_middleware(**options)
    with TestClient(app) as client:
        reply = client.post("/put", json={"csrf_token": "t", "user_id": 42})
        assert sorted(h.split("=")[0] for h in reply.headers.get_list("set-cookie")) == [
            "csrf", "data"]
        assert reply.headers["vary"] == "Cookie"
        assert client.get("/show").text == '{"csrf_token": "t", "user_id": 42}'
    [record] = (tmp_path / "sessions").iterdir()
    assert b"user_id" in record.read_bytes()
    assert b"csrf_token" not in record.read_bytes()


def test_defaults_one_signed_cookie_named_session() -> None:
    app = Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, secret_key="k")])
    with TestClient(app) as client:
        client.post("/put", json={"a": 1})
        assert list(client.cookies) == ["session"]
        assert client.get("/show").text == '{"a": 1}'


def test_options_reach_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    middleware = SessionMiddleware(
        show, config=[{"cookie_name": "s"}], secret_key="new", secret_key_fallbacks=["old"],
        permanent_lifetime=timedelta(seconds=1234), refresh_each_request=False,
    )
    assert middleware.engine.stores[0].permanent_lifetime == 1234
    assert middleware.engine.refresh is False
    assert middleware.secret_keys == ("old", "new")  # itsdangerous' order: current last
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'clinet'.*did you mean 'client'"):
        SessionMiddleware(show, config=[{"cookie_name": "s", "session_type": "redis",
                                         "clinet": None}])
    # A filesystem store without a directory keeps its files under ./instance.
    monkeypatch.chdir(tmp_path)
    app = Starlette(routes=ROUTES, middleware=[Middleware(
        SessionMiddleware, config=[{"cookie_name": "fs", "session_type": "filesystem"}])])
    with TestClient(app) as client:
        client.post("/put", json={"a": 1})
    assert len(list((tmp_path / "instance" / "asyncsessions" / "fs").iterdir())) == 1


def test_secret_key_rotation_through_fallbacks() -> None:
    def client(key: str, *fallbacks: str, cookie: str | None = None) -> TestClient:
        made = TestClient(Starlette(routes=ROUTES, middleware=[Middleware(
            SessionMiddleware, secret_key=key, secret_key_fallbacks=fallbacks)]))
        if cookie is not None:  # under the domain the jar gives the app's own cookies
            made.cookies.set("session", cookie, domain="testserver.local")
        return made

    with client("old") as old:
        old.post("/put", json={"user": "ada"})
        cookie = old.cookies["session"]
    with client("new", "old", cookie=cookie) as rotated:
        assert rotated.get("/show").text == '{"user": "ada"}'
        rotated.post("/put", json={"more": 1})  # the write signs with the current key
        cookie = rotated.cookies["session"]
    with client("new", cookie=cookie) as new:
        assert new.get("/show").text == '{"more": 1, "user": "ada"}'


def test_no_secret_key_is_a_null_session() -> None:
    seen: list[Any] = []

    async def write(request: Request) -> Response:
        seen.append(request.session)
        try:
            request.session["a"] = 1
        except RuntimeError as exc:
            return PlainTextResponse(f"raised: {exc}")
        return PlainTextResponse("no error")

    app = Starlette(routes=[*ROUTES, Route("/write", write, methods=["POST"])],
                    middleware=[Middleware(SessionMiddleware)])  # a signed cookie, no key
    with TestClient(app) as client:
        reply = client.post("/write")
        assert reply.text.startswith("raised: The session is unavailable because no secret key")
        assert "set-cookie" not in reply.headers
        assert client.get("/show").text == "{}"
    assert isinstance(seen[0], NullSession)


def test_server_side_stores_need_no_secret_key() -> None:
    app = Starlette(routes=ROUTES, middleware=[Middleware(
        SessionMiddleware, config=[{"cookie_name": "sid", "session_type": MemoryStore()}])])
    with TestClient(app) as client:
        client.post("/put", json={"a": 1})
        assert client.get("/show").text == '{"a": 1}'


@pytest.mark.parametrize(("theirs", "sent"), [
    (None, "Cookie"),
    ("Accept-Encoding", "Accept-Encoding, Cookie"),
    ("cookie", "cookie"),
    ("*", "*"),
])
def test_vary_joins_the_apps_own(theirs: str | None, sent: str) -> None:
    async def page(request: Request) -> Response:
        request.session.get("a")
        return PlainTextResponse("ok", headers={"Vary": theirs} if theirs else None)

    app = Starlette(routes=[Route("/page", page)],
                    middleware=[Middleware(SessionMiddleware, secret_key="k")])
    with TestClient(app) as client:
        assert client.get("/page").headers.get_list("vary") == [sent]


def failing_app(store: MemoryStore) -> Starlette:
    async def stream(request: Request) -> Response:
        request.session["a"] = 1

        async def chunks() -> AsyncIterator[bytes]:
            while True:  # without end: the failed save must stop it
                store.events.append(("chunk", 0))
                yield b"x"
                await asyncio.sleep(0)

        return StreamingResponse(chunks())

    async def untouched(request: Request) -> Response:
        return PlainTextResponse("fine")

    return Starlette(
        routes=[*ROUTES, Route("/stream", stream, methods=["POST"]),
                Route("/untouched", untouched)],
        middleware=[Middleware(SessionMiddleware, config=[
            {"cookie_name": "sid", "session_type": store}])],
        # The README's mapping: it answers failed loads; a failed write is still a 500.
        exception_handlers={SessionBackendError: lambda r, e: PlainTextResponse("down", 503)},
    )


def test_failed_write_runs_once_and_reaches_the_server_as_itself() -> None:
    store = MemoryStore()
    store.fail_writes = True
    with (TestClient(failing_app(store)) as client,
          pytest.raises(SessionBackendError, match="'sid': store failed: ConnectionError")):
        client.post("/put", json={"a": 1})
    assert store.writes == 1
    with TestClient(failing_app(store), raise_server_exceptions=False) as client:
        reply = client.post("/put", json={"a": 1})
    assert (reply.status_code, reply.text) == (500, "Internal Server Error")
    assert "set-cookie" not in reply.headers
    assert store.writes == 2


def test_failed_write_stops_a_streaming_response() -> None:
    store = MemoryStore()
    store.fail_writes = True
    with TestClient(failing_app(store), raise_server_exceptions=False) as client:
        reply = client.post("/stream")
    assert reply.status_code == 500
    assert store.writes == 1
    assert store.events.count(("chunk", 0)) == 1


def test_failed_load_raises_in_the_endpoint_only_when_used() -> None:
    store = MemoryStore()
    with TestClient(failing_app(store)) as client:
        client.post("/put", json={"a": 1})
        store.fail_loads = True
        reply = client.get("/show")
        assert (reply.status_code, reply.text) == (503, "down")  # the app's handler
        assert client.get("/untouched").text == "fine"


def test_websocket_sees_the_session_and_saves_changes() -> None:
    store = MemoryStore()
    finished = threading.Event()

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(dict(websocket.session))
        websocket.session["said"] = await websocket.receive_text()
        await websocket.close()

    app = Starlette(routes=[*ROUTES, WebSocketRoute("/ws", ws)], middleware=[Middleware(
        SessionMiddleware, config=[{"cookie_name": "sid", "session_type": store}])])

    async def served(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope["type"] == "websocket":
            finished.set()  # the save ran: the test client cancels the app once it leaves

    with TestClient(served) as client:
        client.post("/put", json={"user": "ada"})
        with client.websocket_connect("/ws") as socket_:
            assert socket_.receive_json() == {"user": "ada"}
            socket_.send_text("hello")
            assert finished.wait(10)
        assert client.get("/show").text == '{"said": "hello", "user": "ada"}'
        # Without a cookie there is no response to carry a new one: nothing is stored.
        finished.clear()
        client.cookies.clear()
        with client.websocket_connect("/ws") as socket_:
            assert socket_.receive_json() == {}
            socket_.send_text("lost")
            assert finished.wait(10)
    assert len(store.records) == 1


def test_lifespan_shutdown_closes_clients_after_the_app() -> None:
    store = MemoryStore()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.events.append(("app shut down", id(asyncio.get_running_loop())))

    app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=[Middleware(
        SessionMiddleware, config=[{"cookie_name": "sid", "session_type": store}])])
    with TestClient(app) as client:
        client.post("/put", json={"a": 1})
        assert client.get("/show").text == '{"a": 1}'
        [(opened, loop)] = store.events
        assert opened == "opened"
    assert store.events == [("opened", loop), ("app shut down", loop), ("closed", loop)]


# -- a real server --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["filesystem", "redis", "memcache"])
def test_uvicorn_concurrent_requests_of_one_session_keep_every_field(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from app_fixtures import store_config

    config = {"SESSION_CONFIG": [
        {"cookie_name": "csrf", "session_fields": ["csrf_token"]},
        {"cookie_name": "sid", **store_config(request, kind, tmp_path), "session_fields": "auto"},
    ]}
    with uvicorn_serving(starlette_app(config).asgi) as port:
        status, _, cookies = call(port, "POST", "/set", {"start": 0, "csrf_token": "t"})
        assert status == 200
        assert set(cookies) == {"csrf", "sid"}
        with ThreadPoolExecutor(30) as pool:
            results = list(pool.map(
                lambda i: call(port, "POST", "/set", {f"k{i}": i}, cookies)[0], range(30)))
        assert results == [200] * 30
        _, shown, _ = call(port, "GET", "/show", cookies=cookies)
    assert set(shown) == {"start", "csrf_token"} | {f"k{i}" for i in range(30)}


def test_exported_lazily_and_without_starlette() -> None:
    # Flask and Quart apps never import the ASGI adapter, and the adapter needs no Starlette.
    code = (
        "import sys, asyncsessions\n"
        "assert 'asyncsessions.adapters.asgi' not in sys.modules\n"
        "from asyncsessions import SessionMiddleware\n"
        "from asyncsessions.adapters import asgi\n"
        "assert SessionMiddleware is asgi.SessionMiddleware\n"
        "assert 'SessionMiddleware' in asyncsessions.__all__\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('starlette', 'fastapi')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
