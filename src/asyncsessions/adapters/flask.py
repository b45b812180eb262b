"""Flask's session interface: plans in the request thread, store I/O through the bridge."""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface

from ..bridge import Bridge
from ..engine import Engine
from ..session import MultiStoreSession, NullSession
from . import secret_keys

__all__ = ["FlaskSessionInterface"]


class FlaskSessionInterface(SessionInterface):
    """Opens and saves multi-store sessions for a ``flask.Flask`` app."""

    null_session_class = NullSession  # type: ignore[assignment]

    def __init__(self, engine: Engine, bridge: Bridge) -> None:
        self.engine = engine
        self.bridge = bridge

    def open_session(self, app: Flask, request: Request) -> MultiStoreSession:
        plan = self.engine.plan_open(request.cookies, secret_keys(app))
        # A config with only client-side stores never reaches an event loop, nor does one
        # op on a store that runs without one.
        if plan.ops and not self.engine.run_without_loop(plan.ops):
            self.bridge.run(partial(self.engine.run, plan.ops))
        return self.engine.finish_open(plan)

    def regenerate(self, session: MultiStoreSession) -> None:
        """Flask-Session's ``app.session_interface.regenerate(session)``."""
        session.regenerate()

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        # Not ours (open_session failed, another interface), or the framework's error path
        # calling again after this save failed: a failed write runs once.
        if not isinstance(session, MultiStoreSession) or session.saved:
            return
        session.saved = True  # open_session failed, or another interface made this session
        plan = self.engine.plan_save(session, secret_keys(app))
        if plan.ops and not self.engine.run_without_loop(plan.ops):
            self.bridge.run(partial(self.engine.run, plan.ops))
        self.engine.finish_save(plan, response)
