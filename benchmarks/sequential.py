"""The sequential baseline: the same stores and engine, each store op awaited in turn.

This is what flask-session-plus does (one store after another). It exists only in the
benchmark, by overriding :meth:`asyncsessions.engine.Engine.run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asyncsessions.engine import Engine, Op


class SequentialEngine(Engine):
    """An engine that awaits every op one after another instead of in a task group."""

    async def run(self, ops: Sequence[Op]) -> None:
        """Run the ops in order; failures are recorded on each op, as in ``Engine.run``."""
        for op in ops:
            await self._run_one(op)


def make_sequential(app: Any) -> None:
    """Swap the engine of an app set up with ``asyncsessions.Session`` for a sequential one."""
    engine: Engine = app.extensions["asyncsessions"]
    sequential = SequentialEngine(engine.stores, refresh_each_request=engine.refresh)
    app.session_interface.engine = sequential
    app.extensions["asyncsessions"] = sequential
