"""The store contract, and what stores share: the per-event-loop client cache, log lines.

There are two kinds of store. A *cookie store* (:class:`ClientSideBackend`) keeps the
session in its cookie: it encodes and decodes, and does no I/O. A *server-side store*
(:class:`Backend`) keeps records under ``key = key_prefix + session id`` and implements three
coroutines, which the engine runs concurrently with other stores' and bounds by ``timeout``:

``load(key, touch=...) -> Record | None``
    The record, or ``None`` when there is none: absent, expired (a store whose server
    deletes lazily checks the expiry itself), or not readable as one of ours (another
    library's value under the same key, a damaged or hand-edited record). An unreadable
    record is reported with :meth:`Store.unreadable` and left as it is: a read never
    changes or deletes what it cannot read. A store that can read another library's live
    record (Flask-Session's) returns it with ``foreign=True``; the engine then rewrites it
    whole, in the store's own format, at the session's next write. With ``touch``, the
    record's expiry restarts from now with the lifetime the record was written with, in the
    same round trip where the store allows it.

``store(key, write) -> bool``
    Apply one request's :class:`Write` to one record, atomically with respect to every
    other ``store`` of that key:

    * ``write.changed`` fields are set and ``write.removed`` fields dropped; fields the
      write does not name are kept, so concurrent requests that change *different* fields
      all survive.
    * ``write.create`` is true for a new id: the record is created. Otherwise the request
      loaded the record, and the write applies only if it still exists: a record that a
      concurrent logout or ``regenerate()`` deleted (or that expired) is not resurrected;
      ``store`` writes nothing and returns ``False``, and the engine sends no cookie for it.
    * ``write.permanent`` and ``write.ttl`` are ``None`` when the request did not change
      the permanent flag: the stored flag is kept and the expiry restarts with the record's
      own lifetime, so a concurrent request that changed the flag is not undone. Otherwise
      both are stored and the record lives ``ttl`` seconds from now.
    * A write that leaves no field deletes the record, in the same atomic step: a field
      another request added in that instant keeps the record alive.

    A foreign or unreadable record under the key is replaced, never merged with.

``delete(key)``
    Remove the record; a missing record is not an error.

Values are opaque bytes (UTF-8 JSON text from :mod:`asyncsessions.serialization`) and field
names are ``str`` not starting with NUL (so a store may keep its own metadata under names
that do), checked by the engine before any store sees them.

Optional, for the ``flask sessions`` command (:mod:`asyncsessions.cli`); the defaults mean
"not supported" and are always safe:

``count(prefix) -> int | None``
    How many live records have keys starting with ``prefix``; ``None`` (the default): the
    store cannot count cheaply.

``expires_at(key) -> float | None``
    When the record under ``key`` expires (Unix time), without touching it; ``None`` (the
    default): no such record, or the store cannot tell.

``purge(prefix, *, batch, dry_run)`` (an async iterator of ``int``)
    Remove expired records, at most ``batch`` per step, yielding how many each step removed
    (``dry_run``: would remove, nothing changes, possibly counted in one step). Only records
    still expired when deleted go. A store may also remove expired records of other
    prefixes at its location: they are dead whatever their key. ``purges_expired = False``
    (the default): the store has no purge (its server expires records natively, or its own
    cleanup deletes them).

Without an event loop: a store whose ``runs_without_loop`` is true may be called by Flask's
bridge outside any event loop, for a request whose plan is that one op (no loop, task or
wake-up: a blocking socket's round trip). Its coroutines must then complete without ever
suspending, doing blocking I/O bounded by :func:`call_deadline`; :attr:`ClientBackend.client`
is then a client of the calling thread (or of all threads, with
``shares_client_outside_loops``). Inside a loop they run as usual.

Errors: a store raises whatever its driver raises when the server fails (unreachable,
refused, too large); the engine turns it into :class:`~asyncsessions.SessionBackendError`
naming the store and its :attr:`Store.location`. Settings are checked in ``__init__`` (raise
``TypeError``/``ValueError``; the config names the entry and key), never at the first
request. A store that cannot keep different fields of concurrent requests (it has no
atomic update or compare-and-set) says so with ``merges_fields = False`` and in its docs.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

import anyio.to_thread

__all__ = [
    "Backend",
    "ClientBackend",
    "ClientSideBackend",
    "LoopClients",
    "Record",
    "Store",
    "Write",
    "bound_by_deadline",
    "call_deadline",
    "close_loop_clients",
    "close_thread_clients",
    "masked",
    "run_blocking",
    "run_without_loop",
]

logger = logging.getLogger("asyncsessions")

C = TypeVar("C")
T = TypeVar("T")

#: Seconds a client may take to close before it is abandoned.
CLOSE_TIMEOUT = 2.0
#: Length of a session id (``secrets.token_urlsafe(32)``); keys are ``key_prefix + id``.
ID_LENGTH = 43


@dataclass(frozen=True, slots=True)
class Record:
    """What a store holds for one session: serialized fields and the permanent flag."""

    fields: dict[str, bytes]
    permanent: bool = False
    #: Read from another library's format (a live Flask-Session record): the next write
    #: replaces it whole in this store's own format (``create=True`` with every field).
    foreign: bool = False


@dataclass(frozen=True, slots=True)
class Write:
    """One request's change to one record (see the module docstring for the semantics)."""

    changed: Mapping[str, bytes]
    removed: Collection[str] = ()
    #: ``None``: the request did not change the flag; keep the stored one and its lifetime.
    permanent: bool | None = None
    ttl: int | None = None
    #: A new id: create the record. ``False``: update it only if it still exists.
    create: bool = False

    def __post_init__(self) -> None:
        # Checked once here, so no store has to: a flag without its lifetime, or a new
        # record without either, is a bug in the caller.
        if self.permanent is not None and self.ttl is None:
            raise ValueError("a write that sets the permanent flag needs its ttl")
        if self.create and self.permanent is None:
            raise ValueError("a new record needs its permanent flag and ttl")


class Store:
    """What both kinds of store share: a name, settings checks, and log lines."""

    #: Longest key the store accepts, in bytes (``None``: no limit worth checking).
    max_key_length: ClassVar[int | None] = None
    #: The store's cookie name, set by :meth:`bind` (used in log lines and errors).
    name: str = ""
    #: Where the records live (``"redis://127.0.0.1:6379/0"``), for errors; two stores of
    #: one app with the same location and key prefix are refused. ``None``: nowhere shared.
    location: str | None = None
    #: Also read the live records Flask-Session >= 0.7 left under this store's keys (set by
    #: ``read_flask_session``, on by default for Flask-Session's ``SESSION_TYPE`` config);
    #: stores that can read them return them as ``Record(..., foreign=True)``.
    reads_flask_session: bool = False

    def bind(self, *, name: str, instance_path: str) -> None:
        """Called once at ``init_app`` with the store's cookie name and the app's paths.

        Overrides must call ``super().bind(...)``.
        """
        self.name = name

    def check_key_prefix(self, prefix: str) -> None:
        """Raise ``ValueError`` at ``init_app`` if ``prefix + id`` is no valid key here."""
        limit = self.max_key_length
        if limit is not None and len(prefix.encode("utf-8")) + ID_LENGTH > limit:
            raise ValueError(f"too long: keys must fit in {limit} bytes")

    def unreadable(self, key: str, reason: str) -> None:
        """Log a record this library cannot read; ``load`` then returns ``None`` for it."""
        logger.warning(
            "session store %r: unreadable record %r read as no session (%s)",
            self.name, masked(key), reason,
        )

    async def close(self) -> None:
        """Release what the store holds outside any event loop."""


class Backend(Store, ABC):
    """A server-side store: records under ``key_prefix + session id``, async I/O."""

    #: Whether concurrent writes of different fields all survive (see the module docstring).
    merges_fields: ClassVar[bool] = True
    #: Whether records may vanish before they expire (a cache under memory pressure): such a
    #: store cannot keep a session index (``index_by``).
    may_evict: ClassVar[bool] = False
    #: Whether the coroutines below complete outside an event loop (see the module docstring).
    runs_without_loop: bool = False

    @abstractmethod
    async def load(self, key: str, *, touch: bool) -> Record | None:
        """The record under ``key``; ``None`` if absent, expired or unreadable."""

    @abstractmethod
    async def store(self, key: str, write: Write) -> bool:
        """Apply ``write``; ``False`` if the record it updates no longer exists."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the record under ``key``; a missing record is not an error."""

    # -- optional, for the CLI (see the module docstring) --------------------------------------

    #: Whether :meth:`purge` removes anything (``False``: the server expires records itself).
    purges_expired: ClassVar[bool] = False

    async def count(self, prefix: str) -> int | None:
        """Live records under ``prefix``; ``None``: this store cannot count them cheaply."""
        return None

    async def expires_at(self, key: str) -> float | None:
        """When the record under ``key`` expires (Unix time); ``None``: absent or unknown."""
        return None

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        """Remove expired records, ``batch`` at most per step, yielding each step's count."""
        if False:  # pragma: no cover - an async generator that yields nothing
            yield 0


class ClientSideBackend(Store, ABC):
    """A cookie store: the session travels in its cookie, encoded and decoded, no I/O."""

    @abstractmethod
    def encode(self, fields: Mapping[str, bytes], *, permanent: bool,
               secret_keys: Sequence[str | bytes]) -> str:
        """The cookie value holding ``fields``."""

    @abstractmethod
    def decode(
        self, value: str, *, max_age: int, secret_keys: Sequence[str | bytes]
    ) -> tuple[Record, float] | None:
        """The record in a cookie value and when it was encoded (Unix time).

        ``None`` if the value was tampered with, is older than ``max_age`` or is malformed.
        """


def masked(key: str) -> str:
    """``key`` for a log line: the prefix and the id's first characters, never the whole id.

    An id is a credential even where it is unusable, and logs travel further than stores.
    """
    return key[: len(key) - ID_LENGTH + 4] + "…" if len(key) >= ID_LENGTH else key


#: When the op a store runs outside an event loop must be done (``time.monotonic()``).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "asyncsessions_deadline", default=None)


def call_deadline() -> float | None:
    """When the current op run outside an event loop must end (``time.monotonic()``);
    ``None`` inside a loop, where the engine's timeout bounds it instead."""
    return _deadline.get()


def bound_by_deadline(sock: Any, deadline: float | None, server: str) -> None:
    """Give a blocking socket what is left until ``deadline``; ``TimeoutError`` if nothing."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{server} did not answer in time")
        sock.settimeout(left)


def run_without_loop(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """Run ``coro`` to its end on this thread with no event loop, within ``seconds``.

    For stores that declare ``runs_without_loop``: a coroutine that suspends (it waited for
    a loop) is closed and this raises ``RuntimeError``.
    """
    token = _deadline.set(time.monotonic() + seconds)
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    finally:
        _deadline.reset(token)
    coro.close()
    raise RuntimeError("a store that runs without an event loop waited for one")


class LoopClients(Generic[C]):
    """One client per running event loop, created on first use and closed with the loop.

    Async drivers bind their connections to the loop that opened them, so a client made on
    one loop must never be used on another (Flask's bridge runs several loops; Quart test
    apps start a new loop per test). Outside any loop (a store that ``runs_without_loop``)
    each thread gets its own client, closed once the thread has ended (checked as clients
    are made), at :func:`close_thread_clients`, or when these clients are collected (an
    app dropped, as test suites do: nothing is left unclosed), and dropped unused after
    ``os.fork()``; with ``shared_outside_loops`` all threads share one (a thread-safe
    client with a pool of its own). ``thread_closer`` closes those clients; it must not
    refer to the store, since it may run once the store is gone (without it they are
    closed with ``closer`` and only at the first two points).
    """

    def __init__(
        self,
        factory: Callable[[], C],
        closer: Callable[[C], Coroutine[Any, Any, None]],
        *,
        thread_closer: Callable[[C], None] | None = None,
        shared_outside_loops: bool = False,
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._thread_closer = thread_closer
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, C] = (
            weakref.WeakKeyDictionary()
        )
        #: Clients made outside any loop, each with its closer (run once), by thread.
        self._by_thread: dict[int, tuple[weakref.ref[threading.Thread], C, Callable[[], Any]]] = {}
        self._shares = shared_outside_loops
        self._shared: tuple[C, Callable[[], Any]] | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()  # for making and closing thread clients, not using them
        _all_loop_clients.add(self)

    def get(self) -> C:
        """The client of the running loop (of the calling thread, outside any loop)."""
        loop = asyncio._get_running_loop()
        if loop is None:
            return self._thread_client()
        client = self._clients.get(loop)
        if client is None:
            client = self._factory()
            self._clients[loop] = client
            _closers.setdefault(loop, []).append(self._close_on)
        return client

    async def _close_on(self, loop: asyncio.AbstractEventLoop) -> None:
        client = self._clients.pop(loop, None)
        if client is not None:
            await self._closer(client)

    def _thread_client(self) -> C:
        if self._pid != os.getpid():
            # Forked: the parent's connections are its own (closing our copies of their
            # sockets would not end them, using them would; some drivers say goodbye).
            for _, _, close in self._by_thread.values():
                _forget(close)
            if self._shared is not None:
                _forget(self._shared[1])
            self._by_thread, self._pid, self._lock = {}, os.getpid(), threading.Lock()
            self._shared = None
        if self._shares:
            return self._shared_client()
        current = threading.current_thread()
        entry = self._by_thread.get(threading.get_ident())
        if entry is not None and entry[0]() is current:
            return entry[1]
        ended = []
        with self._lock:
            for ident, (thread, _, close) in list(self._by_thread.items()):
                alive = thread()
                if alive is None or not alive.is_alive():  # idents are reused once it ended
                    del self._by_thread[ident]
                    ended.append(close)
            client = self._factory()
            self._by_thread[threading.get_ident()] = (
                weakref.ref(current), client, self._closing(client))
        for close in ended:
            close()
        return client

    def _shared_client(self) -> C:
        shared = self._shared
        if shared is None:
            with self._lock:
                shared = self._shared
                if shared is None:
                    client = self._factory()
                    shared = self._shared = (client, self._closing(client))
        return shared[0]

    def _closing(self, client: C) -> Callable[[], Any]:
        """What closes ``client`` (made outside any loop), once; at the latest when these
        clients are collected or the process exits."""
        if self._thread_closer is None:
            return lambda: self._close_now(client)
        return weakref.finalize(self, _close_quietly, self._thread_closer, client)

    def close_threads(self) -> None:
        """Close every thread's client (outside any event loop)."""
        with self._lock:
            closers = [close for _, _, close in self._by_thread.values()]
            if self._shared is not None:
                closers.append(self._shared[1])
            self._by_thread, self._shared = {}, None
        for close in closers:
            close()

    def _close_now(self, client: C) -> None:
        try:
            run_without_loop(self._closer(client), CLOSE_TIMEOUT)
        except Exception:
            logger.debug("closing a store client failed", exc_info=True)


def _close_quietly(closer: Callable[[C], None], client: C) -> None:
    try:
        closer(client)
    except Exception:
        logger.debug("closing a store client failed", exc_info=True)


def _forget(close: Callable[[], Any]) -> None:
    if isinstance(close, weakref.finalize):
        close.detach()


def close_client_without_loop(client: Any) -> None:
    """Close a client made outside any event loop: its ``aclose()`` or ``close()``."""
    close: Any = getattr(client, "aclose", None) or getattr(client, "close", None)
    if close is not None:
        result = close()
        if isinstance(result, Coroutine):
            run_without_loop(result, CLOSE_TIMEOUT)


_all_loop_clients: weakref.WeakSet[LoopClients[Any]] = weakref.WeakSet()


def close_thread_clients() -> None:
    """Close the clients threads made outside any event loop (at the bridge's close)."""
    for clients in list(_all_loop_clients):
        clients.close_threads()


_closers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, list[Callable[[asyncio.AbstractEventLoop], Awaitable[None]]]
] = weakref.WeakKeyDictionary()


async def close_loop_clients() -> None:
    """Close every client that was opened on the running loop (before the loop closes)."""
    loop = asyncio.get_running_loop()
    # All at once and bounded: a broken connection must not stop the others closing, and a
    # server that is gone must not hold up the process's exit (some drivers say goodbye).
    await asyncio.gather(
        *(asyncio.wait_for(close(loop), CLOSE_TIMEOUT) for close in _closers.pop(loop, [])),
        return_exceptions=True,
    )


class ClientBackend(Backend, Generic[C]):
    """A backend talking to a server through an async client kept per event loop."""

    #: Outside any event loop, one client for all threads instead of one per thread.
    shares_client_outside_loops: ClassVar[bool] = False

    def __init__(self) -> None:
        self._clients: LoopClients[C] = LoopClients(
            self._new_client, self._close_client, thread_closer=self._close_thread_client,
            shared_outside_loops=self.shares_client_outside_loops,
        )

    @property
    def client(self) -> C:
        """The client for the running loop."""
        return self._clients.get()

    @abstractmethod
    def _new_client(self) -> C:
        """A fresh client for the running loop (from settings or cloned from the user's)."""

    #: Closes a client made outside any event loop. Static: it may run once the store
    #: itself is gone (see :class:`LoopClients`).
    _close_thread_client: Callable[[C], None] = staticmethod(close_client_without_loop)

    async def _close_client(self, client: C) -> None:
        close: Any = getattr(client, "aclose", None) or getattr(client, "close", None)
        if close is not None:
            result = close()
            if isinstance(result, Awaitable):
                await result


async def run_blocking(func: Callable[..., T], *args: Any) -> T:
    """Run blocking ``func(*args)`` in a worker thread without blocking the event loop.

    On asyncio this is the loop's default executor (bounded and shared by the Flask bridge's
    loops); anyio's worker threads end with each bridge call's root task, so they would be
    started anew on every request.
    """
    loop = asyncio._get_running_loop()
    if loop is not None:
        return await loop.run_in_executor(None, func, *args)
    return await anyio.to_thread.run_sync(func, *args)
