"""The contract every session store implements, and the per-event-loop client cache."""

from __future__ import annotations

import asyncio
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import anyio.to_thread

__all__ = [
    "Backend",
    "ClientBackend",
    "ClientSideBackend",
    "LoopClients",
    "Record",
    "close_loop_clients",
    "masked",
    "run_blocking",
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


class Backend(ABC):
    """An async session store addressed by key (``key_prefix + session id``).

    Values are opaque bytes produced by :mod:`asyncsessions.serialization`; a backend never
    interprets them. ``ttl`` is the lifetime in seconds the record gets from now on.
    """

    #: Client-side stores keep the data in the cookie itself and do no I/O.
    client_side: ClassVar[bool] = False
    #: Longest key the store accepts, in bytes (``None``: no limit worth checking).
    max_key_length: ClassVar[int | None] = None

    #: The store's cookie name, set by :meth:`bind` (used in log lines and errors).
    name: str = ""

    def bind(self, *, name: str, instance_path: str) -> None:
        """Called once at ``init_app`` with the store's cookie name and the app's paths.

        Overrides must call ``super().bind(...)``.
        """
        self.name = name

    def unreadable(self, key: str, reason: str) -> None:
        """Log a record this library cannot read; ``load`` then returns ``None`` for it.

        Records another library left (a Redis string where a hash belongs, a document of
        another shape) or that were damaged read as no session, never as an error; the next
        write replaces them.
        """
        logger.warning(
            "session store %r: unreadable record %r read as no session (%s)",
            self.name, masked(key), reason,
        )

    def check_key_prefix(self, prefix: str) -> None:
        """Raise ``ValueError`` at ``init_app`` if ``prefix + id`` is no valid key here."""
        limit = self.max_key_length
        if limit is not None and len(prefix.encode("utf-8")) + ID_LENGTH > limit:
            raise ValueError(f"too long: keys must fit in {limit} bytes")

    @abstractmethod
    async def load(self, key: str, *, touch: bool) -> Record | None:
        """The record under ``key``, or ``None`` if absent or expired.

        With ``touch`` the store's expiry restarts from now, in the same round trip where
        the store allows it.
        """

    @abstractmethod
    async def store(
        self,
        key: str,
        changed: Mapping[str, bytes],
        removed: Collection[str],
        *,
        permanent: bool,
        ttl: int,
    ) -> None:
        """Write ``changed`` fields, drop ``removed`` ones, and set the expiry to ``ttl``."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the record under ``key``; a missing record is not an error."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds outside any event loop."""


def masked(key: str) -> str:
    """``key`` for a log line: the prefix and the id's first characters, never the whole id.

    An id is a credential even where it is unusable, and logs travel further than stores.
    """
    return key[: len(key) - ID_LENGTH + 4] + "…" if len(key) >= ID_LENGTH else key


class LoopClients(Generic[C]):
    """One client per running event loop, created on first use and closed with the loop.

    Async drivers bind their connections to the loop that opened them, so a client made on
    one loop must never be used on another (Flask's bridge runs several loops; Quart test
    apps start a new loop per test).
    """

    def __init__(
        self, factory: Callable[[], C], closer: Callable[[C], Awaitable[None]]
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, C] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> C:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
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

    def __init__(self) -> None:
        self._clients: LoopClients[C] = LoopClients(self._new_client, self._close_client)

    @property
    def client(self) -> C:
        """The client for the running loop."""
        return self._clients.get()

    @abstractmethod
    def _new_client(self) -> C:
        """A fresh client for the running loop (from settings or cloned from the user's)."""

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


class ClientSideBackend(Backend):
    """A store that keeps the session in its cookie: encoding and decoding, no I/O."""

    client_side = True

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

    async def load(self, key: str, *, touch: bool) -> Record | None:
        raise TypeError("a client-side store is read with decode()")

    async def store(self, key: str, changed: Mapping[str, bytes], removed: Collection[str],
                    *, permanent: bool, ttl: int) -> None:
        raise TypeError("a client-side store is written with encode()")

    async def delete(self, key: str) -> None:
        raise TypeError("a client-side store is deleted by clearing its cookie")
