"""Runs the engine's coroutines from Flask's synchronous session hooks.

Design: a pool of idle event loops, each run *in the calling thread* until the call's task
is done (as ``loop.run_until_complete`` does, one loop turn shorter). A request thread takes
any idle loop, runs its session I/O on it and gives it back; the store clients live per loop
(:class:`~.backends.base.LoopClients`), so their connection pools are reused across requests
and threads.

Why not one loop thread per process: measured on this project's 2-core machines, a hop to
another thread's loop costs ~95-160 µs, about one loopback Redis round trip, twice per
writing request; ``run_until_complete`` on a reused loop costs ~10 µs. Why not one loop per
thread: thread-per-request servers (werkzeug's ``threaded=True``) would then open a loop and
a connection pool per request. The pool holds as many loops as threads were ever in a
session hook at once (capped: extra loops are closed when given back).

A calling thread that already runs a loop cannot run another, so such calls (rare: WSGI apps
are called from threads without loops) go to one shared loop thread instead. After
``os.fork()`` the child drops the parent's loops and connections unused and starts afresh;
at exit every idle loop closes its clients, then itself.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .backends.base import CLOSE_TIMEOUT, close_loop_clients, close_thread_clients

__all__ = ["Bridge", "get_bridge"]

T = TypeVar("T")

#: Idle loops kept for reuse; more concurrent threads than this still work, their loops close.
MAX_IDLE_LOOPS = 64


class _LoopThread:
    """One event loop running forever in a daemon thread, for callers inside a running loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="asyncsessions-bridge", daemon=True
        )
        self.thread.start()

    def run(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(factory(), self.loop).result()

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        done = asyncio.run_coroutine_threadsafe(_shutdown_loop(), self.loop)
        try:
            done.result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


async def _shutdown_loop() -> None:
    await close_loop_clients()
    # A driver whose close gave up (its server already gone) may leave background tasks;
    # cancel them as asyncio's own runner does, so closing the loop destroys no pending task.
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    if leftovers:
        await asyncio.wait(leftovers, timeout=CLOSE_TIMEOUT)
    await asyncio.get_running_loop().shutdown_asyncgens()


class Bridge:
    """Sync entry point to async session I/O (see the module docstring for the design)."""

    def __init__(self) -> None:
        self._idle: collections.deque[asyncio.AbstractEventLoop] = collections.deque()
        self._lock = threading.Lock()  # guards _loop_thread creation and closing
        self._loop_thread: _LoopThread | None = None
        self._closed = False
        self._executor = _SharedExecutor(max_workers=4, thread_name_prefix="asyncsessions-io")
        # Loops and clients inherited across fork: kept referenced, never used or closed in
        # the child (their sockets belong to the parent's connections).
        self._inherited: list[object] = []

    def run(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine ``factory()`` makes and return its result."""
        if asyncio._get_running_loop() is not None:
            return self._shared_thread().run(factory)
        try:
            loop = self._idle.pop()  # deque pop/append are atomic: no lock on the hot path
        except IndexError:
            loop = self._new_loop()
        try:
            return _run_until_complete(loop, factory())
        finally:
            if self._closed or len(self._idle) >= MAX_IDLE_LOOPS:
                _close_loop(loop)
            else:
                self._idle.append(loop)

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        # Drivers resolve names and such in the loop's default executor; one shared pool
        # keeps those threads bounded however many loops the pool holds.
        loop.set_default_executor(self._executor)
        return loop

    def _shared_thread(self) -> _LoopThread:
        with self._lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
            return self._loop_thread

    def close(self) -> None:
        """Close every idle loop and the shared thread, clients first."""
        self._closed = True
        while True:
            try:
                loop = self._idle.pop()
            except IndexError:
                break
            _close_loop(loop)
        with self._lock:
            if self._loop_thread is not None:
                self._loop_thread.close()
                self._loop_thread = None
        self._executor.close()
        close_thread_clients()  # those of stores that ran without a loop

    def _after_fork_in_child(self) -> None:
        self._inherited += [*self._idle, self._loop_thread]
        self._idle = collections.deque()
        self._lock = threading.Lock()
        # The parent's executor threads do not exist here.
        self._executor = _SharedExecutor(max_workers=4, thread_name_prefix="asyncsessions-io")
        self._loop_thread = None


class _SharedExecutor(ThreadPoolExecutor):
    """The default executor of every pooled loop; closing one loop must not shut it down."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Ignored: ``loop.close()`` calls it, but other loops still use this pool."""

    def close(self) -> None:
        super().shutdown(wait=False)


def _run_until_complete(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run_until_complete(coro)``, one turn of the loop shorter (~6 µs of ~20).

    The task stops the loop as it finishes, where ``run_until_complete`` stops it from a
    done callback, which takes one more turn (a ``select`` and a pass over the ready queue).
    """
    async def main() -> T:
        try:
            return await coro
        finally:
            loop.stop()

    task = loop.create_task(main())
    try:
        loop.run_forever()
    except BaseException:  # a KeyboardInterrupt, say, in the middle of the I/O
        if not task.done():
            # Wound up here, or a later call on this pooled loop would resume it (and be
            # stopped by its finally).
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_forever()
        elif not task.cancelled():
            task.exception()  # raised here already: not "never retrieved" when collected
        raise
    if not task.done():
        raise RuntimeError("Event loop stopped before the session I/O completed.")
    return task.result()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_until_complete(_shutdown_loop())
    finally:
        loop.close()


_bridge: Bridge | None = None
_bridge_lock = threading.Lock()


def get_bridge() -> Bridge:
    """The process's bridge, created on first use."""
    global _bridge
    if _bridge is None:
        with _bridge_lock:
            if _bridge is None:
                _bridge = Bridge()
                atexit.register(_bridge.close)
    return _bridge


def _after_fork_in_child() -> None:
    global _bridge_lock
    _bridge_lock = threading.Lock()
    if _bridge is not None:
        _bridge._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
