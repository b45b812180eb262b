"""ASGI middleware for Starlette and FastAPI: ``request.session`` over the same engine.

A pure ASGI middleware (``BaseHTTPMiddleware`` would run the app in a task of its own and
pass every response through a stream): the engine runs in the request's task on the server's
loop, no bridge. The session is opened before the app runs and saved when the app sends
``http.response.start``, the last moment its cookies can still be added.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from datetime import timedelta
from typing import Any

from werkzeug.http import dump_cookie
from werkzeug.sansio.http import parse_cookie

from ..backends.base import close_loop_clients
from ..config import parse_config
from ..engine import Engine
from ..session import MultiStoreSession

__all__ = ["SessionMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class SessionMiddleware:
    """Multi-store sessions for an ASGI app: ``request.session`` in Starlette and FastAPI.

    ``Middleware(SessionMiddleware, config=[...], secret_key=...)`` in the app's middleware
    list, or ``app.add_middleware(SessionMiddleware, config=[...], secret_key=...)``. Options:

    ``config``
        The ``SESSION_CONFIG`` entries, one per store, as for Flask (see the README). ``None``:
        one signed cookie named ``session`` holds the whole session.
    ``secret_key``, ``secret_key_fallbacks``
        Flask's ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS`` (older keys still accepted on
        read, for rotation). Without a key, a config whose stores sign gives a
        ``NullSession``: empty to read, ``RuntimeError`` on the first change.
    ``permanent_lifetime``
        Flask's ``PERMANENT_SESSION_LIFETIME``, the default ``session_permanent_lifetime``.
    ``refresh_each_request``
        Flask's ``SESSION_REFRESH_EACH_REQUEST``: a permanent session's expiry slides.
    ``instance_path``
        Where a ``filesystem`` store without ``directory`` keeps its files
        (``<instance_path>/asyncsessions/<cookie_name>``); default ``./instance``.

    A store that fails to load (``on_error="raise"``) makes the session raise
    ``SessionBackendError`` where the endpoint uses it: an exception handler can answer 503.
    A failed write is tried once and reaches the server as itself: a 500.

    Websockets see the session too; when the handler returns, its changes are saved to the
    stores that already have a cookie. Clients opened on the server's loop are closed at
    lifespan shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: Sequence[Mapping[str, Any]] | None = None,
        secret_key: str | bytes | None = None,
        secret_key_fallbacks: Sequence[str | bytes] = (),
        permanent_lifetime: int | float | timedelta = timedelta(days=31),
        refresh_each_request: bool = True,
        instance_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.app = app
        # parse_config reads Flask's app settings: the same validation and defaults as there.
        settings: dict[str, Any] = {"PERMANENT_SESSION_LIFETIME": permanent_lifetime}
        if config is not None:
            settings["SESSION_CONFIG"] = config
        path = os.fspath(instance_path) if instance_path is not None else os.path.join(
            os.getcwd(), "instance")
        self.engine = Engine(parse_config(settings, instance_path=path),
                             refresh_each_request=refresh_each_request)
        self.secret_keys: tuple[str | bytes, ...] = (
            (*secret_key_fallbacks, secret_key) if secret_key else ()
        )
        self._published = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if not self._published:
            # Starlette puts its app in every scope: revoke_sessions_async(request.app, ...)
            # finds the engine there.
            state = getattr(scope.get("app"), "state", None)
            if state is not None:
                state.asyncsessions = self.engine
            self._published = True
        if kind == "lifespan":
            await self.app(scope, receive, _closing_clients(send))
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        session = await self.open_session(scope)
        scope["session"] = session
        if kind == "websocket":
            await self.app(scope, receive, send)
            await self.save_session(session, None)
            return
        failure: Exception | None = None

        async def send_with_cookies(message: Message) -> None:
            nonlocal failure
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                try:
                    await self.save_session(session, headers)
                except Exception as exc:
                    # Raised once the app returns: raised here, it would pass through the
                    # app's exception handlers, which take the response as started (Starlette
                    # then turns a handled error into a RuntimeError).
                    failure = exc
                    return
                message = {**message, "headers": headers}
            elif failure is not None:
                if message.get("more_body"):
                    raise failure  # a stream would otherwise run on into nowhere
                return
            await send(message)

        await self.app(scope, receive, send_with_cookies)
        if failure is not None:
            raise failure  # the server's error response (a 500): the save ran once

    async def open_session(self, scope: Scope) -> MultiStoreSession:
        """The session of an http or websocket scope, loaded from its cookies."""
        plan = self.engine.plan_open(_cookies(scope), self.secret_keys)
        if plan.ops:
            await self.engine.run(plan.ops)
        return self.engine.finish_open(plan)

    async def save_session(self, session: MultiStoreSession, headers: Headers | None) -> None:
        """Write what changed; add ``Set-Cookie`` and ``Vary`` to ``headers``.

        ``headers`` is ``None`` after a websocket, which has no response to carry cookies.
        """
        plan = self.engine.plan_save(session, self.secret_keys,
                                     can_set_cookies=headers is not None)
        if plan.ops:
            await self.engine.run(plan.ops)
        self.engine.finish_save(plan, None if headers is None else _Response(headers))


def _cookies(scope: Scope) -> Mapping[str, str]:
    # Every Cookie header as one, parsed by Werkzeug as for Flask and Quart: the same header
    # names the same session whatever the framework. Bytes that are not UTF-8 match no id.
    header = b";".join(value for name, value in scope.get("headers", ()) if name == b"cookie")
    return parse_cookie(header.decode("utf-8", "replace"))


def _closing_clients(send: Send) -> Send:
    async def send_after_closing(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            # After the app's own shutdown, before the server may close the loop the stores'
            # clients were opened on.
            await close_loop_clients()
        await send(message)

    return send_after_closing


class _Response:
    """What ``Engine.finish_save`` writes to: ASGI headers, cookies spelled as by Werkzeug."""

    def __init__(self, headers: Headers) -> None:
        self.headers = headers
        self.vary = _Vary(headers)

    def set_cookie(self, key: str, value: str = "", **options: Any) -> None:
        self.headers.append((b"set-cookie", dump_cookie(key, value, **options).encode("latin-1")))

    def delete_cookie(self, key: str, **options: Any) -> None:
        self.set_cookie(key, expires=0, max_age=0, **options)


class _Vary:
    def __init__(self, headers: Headers) -> None:
        self.headers = headers

    def add(self, token: str) -> None:
        """Name ``token`` once, in the app's own ``Vary`` header if it set one."""
        found = [i for i, (name, _) in enumerate(self.headers) if name.lower() == b"vary"]
        known = {t.strip().lower() for i in found for t in self.headers[i][1].split(b",")}
        value = token.encode("latin-1")
        if value.lower() in known or b"*" in known:
            return
        if found:
            name, old = self.headers[found[0]]
            self.headers[found[0]] = (name, old + b", " + value)
        else:
            self.headers.append((b"vary", value))
