"""Test apps for Flask, Quart, Starlette and FastAPI with the same routes, and one sync driver.

Starlette and FastAPI apps run the ASGI middleware; the driver gives them the bits of Flask's
app API the behaviour tests use (``secret_key``, ``register_error_handler``, ``extensions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.cookies import SimpleCookie
from typing import Any

import fastapi
import flask
import httpx2
import pytest
import quart
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.local import LocalProxy

from asyncsessions import Session
from asyncsessions.adapters.asgi import SessionMiddleware
from asyncsessions.backends.base import close_loop_clients

#: The frameworks served by the ASGI middleware.
ASGI = ("starlette", "fastapi")
#: Where Flask and Quart put the test apps' instance folder (the filesystem store's default).
INSTANCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instance")


def _show(session: Any) -> dict[str, Any]:
    return {k: repr(v) for k, v in dict(session).items()}


def _apply(session: Any, action: str, args: dict[str, Any]) -> None:
    if action == "set":
        session.update(args)
    elif action == "del":
        for key in args:
            session.pop(key, None)
    elif action == "append":
        for key, value in args.items():
            session[key].append(value)  # nested mutation, no session.modified
    elif action == "clear":
        session.clear()
    elif action == "permanent":
        session.permanent = bool(args.get("value", True))
    elif action == "regenerate":
        session.regenerate()
        session.update(args)
    elif action == "touch":
        session.get("anything")


def flask_app(config: dict[str, Any], **extra: Any) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "test secret"
    app.config.update(config)
    Session(app)

    @app.route("/show")
    def show() -> Any:
        return flask.jsonify(_show(flask.session))

    @app.route("/none")
    def none() -> str:
        return "no session used"

    @app.post("/<action>")
    def act(action: str) -> Any:
        _apply(flask.session, action, flask.request.get_json(silent=True) or {})
        return flask.jsonify(_show(flask.session))

    for name, view in extra.items():
        app.add_url_rule(f"/{name}", name, view, methods=["GET", "POST"])
    return app


def quart_app(config: dict[str, Any], **extra: Any) -> quart.Quart:
    app = quart.Quart(__name__)
    app.secret_key = "test secret"
    app.config.update(config)
    Session(app)

    @app.route("/show")
    async def show() -> Any:
        return _show(quart.session)

    @app.route("/none")
    async def none() -> str:
        return "no session used"

    @app.post("/<action>")
    async def act(action: str) -> Any:
        _apply(quart.session, action, (await quart.request.get_json(silent=True)) or {})
        return _show(quart.session)

    for name, view in extra.items():
        app.add_url_rule(f"/{name}", name, view, methods=["GET", "POST"])
    return app


# -- Starlette and FastAPI ----------------------------------------------------------------------

#: The request an extra view runs for: what its ``session`` proxy reads.
_request: contextvars.ContextVar[Request] = contextvars.ContextVar("request")
#: ``flask.session``'s counterpart for views registered on a Starlette or FastAPI test app.
asgi_session: Any = LocalProxy(_request, "session")
asgi_request: Any = LocalProxy(_request)
_log = logging.getLogger("tests.apps")

#: Flask's app settings and the middleware option each is (SESSION_COOKIE_* are per store).
_OPTIONS = {"SESSION_REFRESH_EACH_REQUEST": "refresh_each_request",
            "PERMANENT_SESSION_LIFETIME": "permanent_lifetime",
            "SECRET_KEY_FALLBACKS": "secret_key_fallbacks"}
_COOKIE_KEYS = {f"SESSION_COOKIE_{k.upper()}": f"cookie_{k}"
                for k in ("domain", "path", "httponly", "secure", "samesite", "partitioned")}


def middleware_options(config: dict[str, Any]) -> dict[str, Any]:
    """The middleware's options for a Flask app config (the behaviour tests write those)."""
    options: dict[str, Any] = {"secret_key": "test secret", "instance_path": INSTANCE_PATH}
    cookie: dict[str, Any] = {}
    for key, value in config.items():
        if key in _OPTIONS:
            options[_OPTIONS[key]] = value
        elif key in _COOKIE_KEYS:
            cookie[_COOKIE_KEYS[key]] = value
        elif key not in ("SESSION_CONFIG", "SESSION_COOKIE_NAME"):
            pytest.skip(f"{key} is a Flask app setting the ASGI middleware has no option for")
    entries = config.get("SESSION_CONFIG")
    if entries is None and (cookie or "SESSION_COOKIE_NAME" in config):
        entries = [{"cookie_name": config.get("SESSION_COOKIE_NAME") or "session"}]
    if entries is not None:
        # Flask's SESSION_COOKIE_* are the defaults of each store's cookie_* keys.
        options["config"] = [{**cookie, **e} if isinstance(e, dict) else e for e in entries]
    return options


class FlaskJSON(JSONResponse):
    """JSON with ``\\u`` escapes, as ``flask.jsonify`` writes it (a lone surrogate is no UTF-8)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body()) or {}
    except ValueError:
        return {}  # Flask's get_json(silent=True)


def _as_response(result: Any) -> Response:
    """A Flask view's return value as a Starlette response."""
    if isinstance(result, Response):
        return result
    status = 200
    if isinstance(result, tuple):
        result, status = result
    if isinstance(result, dict):
        return FlaskJSON(result, status)
    return PlainTextResponse(result, status)


def _endpoint(view: Callable[[], Any]) -> Callable[[Request], Awaitable[Response]]:
    """A Flask-style view (no arguments, the session through a proxy) as an endpoint."""
    async def endpoint(request: Request) -> Response:
        token = _request.set(request)
        try:
            result = view()
            if inspect.isawaitable(result):
                result = await result
        finally:
            _request.reset(token)
        return _as_response(result)

    return endpoint


async def _log_error(request: Request, exc: Exception) -> Response:
    # Flask and Quart log an unhandled exception once; Starlette leaves that to the server.
    _log.error("Exception on %s [%s]", request.url.path, request.method, exc_info=exc)
    return PlainTextResponse("Internal Server Error", 500)


def starlette_app(config: dict[str, Any], **extra: Any) -> AsgiApp:
    """The test routes on Starlette, the middleware in its ``middleware`` list."""
    async def show(request: Request) -> Response:
        return FlaskJSON(_show(request.session))

    async def none(request: Request) -> Response:
        return PlainTextResponse("no session used")

    async def act(request: Request) -> Response:
        _apply(request.session, request.path_params["action"], await _json(request))
        return FlaskJSON(_show(request.session))

    middleware = Middleware(SessionMiddleware, **middleware_options(config))
    routes = [
        Route("/show", show), Route("/none", none),
        # Before "/{action}": Starlette takes the first route that matches, Flask the static.
        *(Route(f"/{name}", _endpoint(view), methods=["GET", "POST"], name=name)
          for name, view in extra.items()),
        Route("/{action}", act, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[middleware],
                    exception_handlers={Exception: _log_error})
    return AsgiApp(app, middleware)


def fastapi_app(config: dict[str, Any], **extra: Any) -> AsgiApp:
    """The test routes on FastAPI, the middleware added with ``add_middleware``."""
    app = fastapi.FastAPI(exception_handlers={Exception: _log_error})

    # Responses made here: FastAPI's own serializer cannot write a lone surrogate either.
    @app.get("/show")
    async def show(request: fastapi.Request) -> Response:
        return FlaskJSON(_show(request.session))

    @app.get("/none")
    async def none() -> Response:
        return PlainTextResponse("no session used")

    for name, view in extra.items():
        app.add_api_route(f"/{name}", _endpoint(view), methods=["GET", "POST"], name=name)

    @app.post("/{action}")
    async def act(action: str, request: fastapi.Request) -> Response:
        _apply(request.session, action, await _json(request))
        return FlaskJSON(_show(request.session))

    app.add_middleware(SessionMiddleware, **middleware_options(config))
    return AsgiApp(app, app.user_middleware[0])


def asgi_app(framework: str, config: dict[str, Any], **extra: Any) -> AsgiApp:
    return (starlette_app if framework == "starlette" else fastapi_app)(config, **extra)


def app_client() -> httpx2.AsyncClient:
    """A client into the app serving the current request (Flask's ``current_app.test_client``).

    For views that send a request of their own while theirs is in flight (tests/test_races.py).
    """
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=_request.get().app),
                              base_url="https://testserver")


class AsgiApp:
    """A Starlette or FastAPI app with the part of Flask's app API the tests use."""

    def __init__(self, app: Starlette, middleware: Middleware) -> None:
        self.asgi = app
        self._options = middleware.kwargs
        self.build()

    def build(self) -> None:
        # Now rather than at the first request, as Flask reads its config at Session(app):
        # a bad config or a config warning shows where the app is made.
        self.asgi.middleware_stack = None
        self.asgi.middleware_stack = stack = self.asgi.build_middleware_stack()
        while not isinstance(stack, SessionMiddleware):
            stack = stack.app  # type: ignore[attr-defined]
        self.middleware = stack

    @property
    def secret_key(self) -> Any:
        return self._options.get("secret_key")

    @secret_key.setter
    def secret_key(self, value: Any) -> None:
        self._options["secret_key"] = value
        self.build()

    @property
    def extensions(self) -> dict[str, Any]:
        return {"asyncsessions": self.middleware.engine}

    def register_error_handler(self, exc: type[Exception], handler: Callable[[Any], Any]) -> None:
        async def respond(request: Request, error: Exception) -> Response:
            return _as_response(handler(error))

        self.asgi.add_exception_handler(exc, respond)
        self.build()


class AsgiClient(TestClient):
    """Starlette's test client on one loop for all requests, with Quart's session_transaction."""

    def __init__(self, app: AsgiApp) -> None:
        # https: the tests' Secure cookies come back; server errors answer 500 as in Flask.
        super().__init__(app.asgi, base_url="https://testserver", raise_server_exceptions=False)
        self.wrapped = app
        self.__enter__()  # lifespan startup; one portal (loop) until close()

    @contextlib.asynccontextmanager
    async def session_transaction(self) -> AsyncIterator[Any]:
        """The session of the client's cookies, saved into them on exit (Quart's helper)."""
        middleware = self.wrapped.middleware
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.cookies.jar)
        session = await middleware.open_session(
            {"type": "http", "headers": [(b"cookie", cookie.encode())]})
        yield session
        headers: list[tuple[bytes, bytes]] = []
        await middleware.save_session(session, headers)
        self.cookies.extract_cookies(httpx2.Response(
            200, headers=headers, request=httpx2.Request("GET", self.base_url)))


class PortalLoop:
    """``run_until_complete`` on the ASGI test client's loop, as the tests call it for Quart."""

    def __init__(self, client: AsgiClient) -> None:
        self.client = client

    def run_until_complete(self, awaitable: Awaitable[Any]) -> Any:
        assert self.client.portal is not None
        return self.client.portal.call(_awaited, awaitable)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


@contextlib.contextmanager
def uvicorn_serving(app: Any) -> Iterator[int]:
    """``app`` behind uvicorn (lifespan on) in a thread, on a free loopback port."""
    import uvicorn  # only the real-server tests need it

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
    assert not thread.is_alive()


class Reply:
    def __init__(self, status: int, body: bytes, cookies: list[str], headers: Any) -> None:
        self.status = status
        self.body = body
        self.set_cookies = cookies
        self.headers = headers

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self, name: str) -> SimpleCookie | None:
        for header in self.set_cookies:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            if name in jar:
                return jar
        return None


class Driver:
    """Drives any framework's test client synchronously, keeping cookies between calls."""

    def __init__(self, framework: str, config: dict[str, Any], **extra: Any) -> None:
        self.framework = framework
        self.loop: Any
        if framework == "flask":
            self.app: Any = flask_app(config, **extra)
            self.client: Any = self.app.test_client()
            self.loop = None
        elif framework in ASGI:
            self.app = asgi_app(framework, config, **extra)
            self.client = AsgiClient(self.app)
            self.loop = PortalLoop(self.client)
        else:
            self.app = quart_app(config, **extra)
            self.client = self.app.test_client()
            self.loop = asyncio.new_event_loop()

    def request(self, method: str, path: str, data: Any = None,
                headers: dict[str, str] | None = None) -> Reply:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if data is not None:
            kwargs["json"] = data
        if self.framework in ASGI:
            # Header values as UTF-8 and JSON with \u escapes, as Werkzeug's test client sends
            # them (httpx: ASCII headers, and UTF-8 JSON that a lone surrogate cannot be).
            headers = {k: v.encode() for k, v in (headers or {}).items()}
            content = None
            if data is not None:
                headers["Content-Type"] = b"application/json"
                content = json.dumps(data)
            r = self.client.request(method, path, headers=headers, content=content)
            return Reply(r.status_code, r.content, r.headers.get_list("set-cookie"), r.headers)
        if self.loop is None:
            r = self.client.open(path, method=method, **kwargs)
            return Reply(r.status_code, r.get_data(), r.headers.getlist("Set-Cookie"), r.headers)
        return self.loop.run_until_complete(self._quart(method, path, kwargs))

    async def _quart(self, method: str, path: str, kwargs: dict[str, Any]) -> Reply:
        r = await self.client.open(path, method=method, **kwargs)
        return Reply(r.status_code, await r.get_data(), r.headers.getlist("Set-Cookie"),
                     r.headers)

    def get(self, path: str = "/show", **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, action: str, data: Any = None, **kw: Any) -> Reply:
        return self.request("POST", "/" + action, data, **kw)

    def show(self) -> dict[str, Any]:
        reply = self.get()
        assert reply.status == 200, reply.body
        return dict(reply.json)

    def cookies(self) -> dict[str, str]:
        if self.framework == "flask":
            return {c.key: c.value for c in self.client._cookies.values()}
        if self.framework in ASGI:
            return {c.name: c.value for c in self.client.cookies.jar}
        return {c.name: c.value for c in self.client.cookie_jar}

    def set_cookie(self, name: str, value: str) -> None:
        if self.framework == "flask":
            self.client.set_cookie(name, value)
        elif self.framework in ASGI:
            self.delete_cookie(name)  # one cookie of that name, as the other clients keep
            # The domain the jar files the app's cookies under (a dotless host gets ".local").
            self.client.cookies.set(name, value, domain="testserver.local")
        else:
            self.client.set_cookie("localhost", name, value)

    def delete_cookie(self, name: str) -> None:
        if self.framework == "flask":
            self.client.delete_cookie(name)
        elif self.framework in ASGI:
            for cookie in [c for c in self.client.cookies.jar if c.name == name]:
                self.client.cookies.jar.clear(cookie.domain, cookie.path, cookie.name)
        else:
            self.client.delete_cookie("localhost", name)

    def close(self) -> None:
        if self.framework in ASGI:
            self.client.__exit__(None, None, None)  # lifespan shutdown closes the clients
        elif self.loop is not None:
            self.loop.run_until_complete(close_loop_clients())
            self.loop.close()


def driver_factory(framework: str) -> Callable[..., Driver]:
    made: list[Driver] = []

    def make(config: dict[str, Any], **extra: Any) -> Driver:
        driver = Driver(framework, config, **extra)
        made.append(driver)
        return driver

    make.made = made  # type: ignore[attr-defined]
    make.framework = framework  # type: ignore[attr-defined]
    make.session_proxy = {"flask": flask.session, "quart": quart.session}.get(  # type: ignore[attr-defined]
        framework, asgi_session)
    # Starlette and FastAPI only: the request an extra view runs for, and a client into its app.
    make.request_proxy = asgi_request  # type: ignore[attr-defined]
    make.app_client = app_client  # type: ignore[attr-defined]
    make.view = lambda fn: _as_async(fn) if framework == "quart" else fn  # type: ignore[attr-defined]
    return make


def _as_async(view: Callable[[], Any]) -> Callable[[], Any]:
    async def wrapper() -> Any:
        return view()

    wrapper.__name__ = view.__name__
    return wrapper
