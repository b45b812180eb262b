"""The Flask/Quart extension: reads the config once and installs the session interface."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

from .config import parse_settings
from .engine import Engine
from .index import revoke

__all__ = ["Session", "revoke_sessions", "revoke_sessions_async"]


class Session:
    """Server-side, multi-store sessions for a ``flask.Flask`` or ``quart.Quart`` app.

    ``Session(app)``, or ``ext = Session()`` then ``ext.init_app(app)``. The stores come from
    ``app.config["SESSION_CONFIG"]`` (see the README), or from Flask-Session's
    ``SESSION_TYPE`` keys; without either, one signed cookie holds the session, as in Flask.
    """

    def __init__(self, app: Any = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Validate the app's session config and take over its session interface."""
        settings = parse_settings(app.config, instance_path=app.instance_path)
        engine = Engine(settings.stores, refresh_each_request=settings.refresh_each_request,
                        permanent=settings.permanent)
        if _is_quart(app):
            from .adapters.quart import QuartSessionInterface
            from .backends.base import close_loop_clients

            app.session_interface = QuartSessionInterface(engine)
            # Clients were opened lazily on the serving loop: close them before it ends.
            app.after_serving(close_loop_clients)
        else:
            from .adapters.flask import FlaskSessionInterface
            from .bridge import get_bridge

            app.session_interface = FlaskSessionInterface(engine, get_bridge())
        app.extensions["asyncsessions"] = engine
        cli = getattr(app, "cli", None)
        if cli is not None and hasattr(cli, "add_command"):
            from .cli import sessions_command

            # ``flask sessions ...`` / ``quart sessions ...``
            cli.add_command(sessions_command(app, engine, quart=_is_quart(app)))


def revoke_sessions(app: Any, **values: Any) -> int:
    """Log out everywhere: delete every session whose indexed field has this value.

    ``revoke_sessions(app, user_id=42)`` deletes, in every store, each session that a store
    with ``index_by=["user_id"]`` lists under 42 (and that still holds 42), and returns how
    many there were. One field per call. Callable
    from Flask views, scripts and commands; in async code (Quart views, ASGI) await
    :func:`revoke_sessions_async` instead (Starlette/FastAPI: pass ``request.app``).
    """
    from .bridge import get_bridge

    engine = _engine(app)
    return get_bridge().run(partial(revoke, engine, values))


async def revoke_sessions_async(app: Any, **values: Any) -> int:
    """:func:`revoke_sessions` on the running event loop."""
    return await revoke(_engine(app), values)


def _engine(app: Any) -> Engine:
    # Flask and Quart keep it in app.extensions; the ASGI middleware in Starlette's app.state.
    extensions = getattr(app, "extensions", None)
    engine = extensions.get("asyncsessions") if isinstance(extensions, dict) else getattr(
        getattr(app, "state", None), "asyncsessions", None)
    if not isinstance(engine, Engine):
        raise RuntimeError("no asyncsessions engine for this app: call Session(app), or add "
                           "SessionMiddleware (it registers at the app's startup)")
    return engine


def _is_quart(app: Any) -> bool:
    quart = sys.modules.get("quart")
    return quart is not None and isinstance(app, quart.Quart)
