"""The Flask bridge's own cost: open+save with a no-op store, bridge vs the bare minimum.

Three ways to run the same engine coroutines from the request thread are compared:

* ``bridge``: asyncsessions' bridge (what ``FlaskSessionInterface`` uses);
* ``direct``: ``loop.run_until_complete`` on one loop owned by the calling thread, the
  cheapest possible way (the reference of target 4);
* ``hop``: ``asyncio.run_coroutine_threadsafe`` to a loop in another thread (for context).

Measured twice: the I/O step alone (the same ``engine.run(ops)`` coroutine for a load and a
store op), and a whole ``open_session`` + ``save_session`` through the interface.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from asyncsessions import Backend, Record, Write

T = TypeVar("T")


class NoopStore(Backend):
    """A server-side store whose I/O does nothing (and never suspends)."""

    async def load(self, key: str, *, touch: bool) -> Record | None:
        return Record({"user_id": b"42", "n": b"0"})

    async def store(self, key: str, write: Write) -> bool:
        return True

    async def delete(self, key: str) -> None:
        return None


class DirectBridge:
    """``loop.run_until_complete`` on a loop reused by the calling thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return self.loop.run_until_complete(factory())

    def close(self) -> None:
        self.loop.close()


class HopBridge:
    """A hop to a loop running in another thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(factory(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class BridgeResult:
    """Median seconds per call, per way, for the I/O step and for open+save."""

    io: dict[str, float]
    open_save: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"io": self.io, "open_save": self.open_save}


def measure_bridge(iterations: int, rounds: int) -> BridgeResult:
    """``rounds * iterations`` calls per way, interleaved; medians of per-call times."""
    from flask import Flask

    from asyncsessions import Session
    from asyncsessions.adapters.flask import FlaskSessionInterface
    from asyncsessions.ids import new_id

    app = Flask("bench_bridge")
    app.secret_key = "bridge"
    app.config["SESSION_CONFIG"] = [{"cookie_name": "s", "session_type": NoopStore()}]
    Session(app)
    ours = app.session_interface
    assert isinstance(ours, FlaskSessionInterface)
    engine = ours.engine
    ways: dict[str, Any] = {"bridge": ours.bridge, "direct": DirectBridge(), "hop": HopBridge()}
    interfaces = {name: FlaskSessionInterface(engine, way) for name, way in ways.items()}
    interfaces["bridge"] = ours
    io: dict[str, list[float]] = {name: [] for name in ways}
    open_save: dict[str, list[float]] = {name: [] for name in ways}
    cookie = f"s={new_id()}"
    try:
        with app.test_request_context("/", headers={"Cookie": cookie}):
            from flask import request

            opening = engine.plan_open(request.cookies, (app.secret_key,))
            load_ops = opening.ops
            ours.bridge.run(partial(engine.run, load_ops))
            session = engine.finish_open(opening)
            session["n"] = 1
            store_ops = engine.plan_save(session, (app.secret_key,)).ops
            if not (load_ops and store_ops):
                raise RuntimeError("the no-op store must be loaded and written")
            total = rounds * iterations
            for i in range(total):
                # Call by call, alternating, so that noise on the machine hits both alike.
                for name in ("bridge", "direct") if i % 2 else ("direct", "bridge"):
                    io[name].append(_time_io(ways[name], engine, load_ops, store_ops))
                    open_save[name].append(
                        _time_open_save(app, request, interfaces[name], i)
                    )
            # Apart: the loop thread finishing its iteration would slow the next call down.
            for i in range(total):
                io["hop"].append(_time_io(ways["hop"], engine, load_ops, store_ops))
                open_save["hop"].append(_time_open_save(app, request, interfaces["hop"], i))
    finally:
        ways["direct"].close()
        ways["hop"].close()
    return BridgeResult(
        {k: statistics.median(v) for k, v in io.items()},
        {k: statistics.median(v) for k, v in open_save.items()},
    )


def _time_io(way: Any, engine: Any, load_ops: list[Any], store_ops: list[Any]) -> float:
    started = time.perf_counter()
    way.run(partial(engine.run, load_ops))
    way.run(partial(engine.run, store_ops))
    return time.perf_counter() - started


def _time_open_save(app: Any, request: Any, interface: Any, i: int) -> float:
    response = app.response_class()
    started = time.perf_counter()
    session = interface.open_session(app, request)
    session["n"] = i + 2
    interface.save_session(app, session, response)
    return time.perf_counter() - started
