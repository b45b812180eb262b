"""Quart's session interface: the engine runs on Quart's own event loop, no bridge."""

from __future__ import annotations

from typing import Any

from quart import Quart
from quart.sessions import SessionInterface
from quart.wrappers import BaseRequestWebsocket

from ..engine import Engine
from ..session import MultiStoreSession
from . import secret_keys

__all__ = ["QuartSessionInterface"]


class QuartSessionInterface(SessionInterface):
    """Opens and saves multi-store sessions for a ``quart.Quart`` app."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def open_session(
        self, app: Quart, request: BaseRequestWebsocket
    ) -> MultiStoreSession:
        states, ops = self.engine.plan_open(request.cookies, secret_keys(app))
        if ops:
            await self.engine.run(ops)
        return self.engine.finish_open(states, ops)

    async def save_session(self, app: Quart, session: Any, response: Any) -> None:
        if not isinstance(session, MultiStoreSession):
            return
        plan = self.engine.plan_save(
            session, secret_keys(app), can_set_cookies=response is not None
        )
        if plan.ops:
            await self.engine.run(plan.ops)
        self.engine.finish_save(plan, response)
