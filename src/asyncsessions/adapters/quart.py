"""Quart's session interface: the engine runs on Quart's own event loop, no bridge."""

from __future__ import annotations

from typing import Any

from quart import Quart
from quart.sessions import SessionInterface
from quart.wrappers import BaseRequestWebsocket

from ..engine import Engine
from ..session import MultiStoreSession, NullSession
from . import secret_keys

__all__ = ["QuartSessionInterface"]


class QuartSessionInterface(SessionInterface):
    """Opens and saves multi-store sessions for a ``quart.Quart`` app."""

    null_session_class = NullSession  # type: ignore[assignment]

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def open_session(
        self, app: Quart, request: BaseRequestWebsocket
    ) -> MultiStoreSession:
        plan = self.engine.plan_open(request.cookies, secret_keys(app))
        if plan.ops:
            await self.engine.run(plan.ops)
        return self.engine.finish_open(plan)

    def regenerate(self, session: MultiStoreSession) -> None:
        """Flask-Session's ``app.session_interface.regenerate(session)``."""
        session.regenerate()

    async def save_session(self, app: Quart, session: Any, response: Any) -> None:
        # Not ours (open_session failed, another interface), or the framework's error path
        # calling again after this save failed: a failed write runs once.
        if not isinstance(session, MultiStoreSession) or session.saved:
            return
        session.saved = True
        plan = self.engine.plan_save(
            session, secret_keys(app), can_set_cookies=response is not None
        )
        if plan.ops:
            await self.engine.run(plan.ops)
        self.engine.finish_save(plan, response)
