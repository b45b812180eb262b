"""Test apps for Flask and Quart with the same routes, and one sync driver for both."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any

import flask
import quart

from asyncsessions import Session
from asyncsessions.backends.base import close_loop_clients


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
    """Drives either framework's test client synchronously, keeping cookies between calls."""

    def __init__(self, framework: str, config: dict[str, Any], **extra: Any) -> None:
        self.framework = framework
        if framework == "flask":
            self.app: Any = flask_app(config, **extra)
            self.client: Any = self.app.test_client()
            self.loop: asyncio.AbstractEventLoop | None = None
        else:
            self.app = quart_app(config, **extra)
            self.client = self.app.test_client()
            self.loop = asyncio.new_event_loop()

    def request(self, method: str, path: str, data: Any = None,
                headers: dict[str, str] | None = None) -> Reply:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if data is not None:
            kwargs["json"] = data
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
        return {c.name: c.value for c in self.client.cookie_jar}

    def set_cookie(self, name: str, value: str) -> None:
        if self.framework == "flask":
            self.client.set_cookie(name, value)
        else:
            self.client.set_cookie("localhost", name, value)

    def delete_cookie(self, name: str) -> None:
        if self.framework == "flask":
            self.client.delete_cookie(name)
        else:
            self.client.delete_cookie("localhost", name)

    def close(self) -> None:
        if self.loop is not None:
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
    make.session_proxy = flask.session if framework == "flask" else quart.session  # type: ignore[attr-defined]
    make.view = lambda fn: fn if framework == "flask" else _as_async(fn)  # type: ignore[attr-defined]
    return make


def _as_async(view: Callable[[], Any]) -> Callable[[], Any]:
    async def wrapper() -> Any:
        return view()

    wrapper.__name__ = view.__name__
    return wrapper
