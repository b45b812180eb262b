"""A minimal pipelined RESP2 client for one redis server, on one asyncio connection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import Any

import redis.exceptions as errors

from .base import bound_by_deadline, call_deadline

try:
    import hiredis
except ImportError:  # pragma: no cover - the redis extra (redis[hiredis]) always brings it
    hiredis = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "RespClient"]

#: Whether hiredis, which parses replies and packs commands here, is installed.
AVAILABLE = hiredis is not None

# Error replies as redis-py raises them (its parser is private); others are ResponseError.
_ERRORS: dict[str, type[errors.RedisError]] = {
    "NOSCRIPT": errors.NoScriptError, "NOAUTH": errors.AuthenticationError,
    "WRONGPASS": errors.AuthenticationError, "NOPERM": errors.NoPermissionError,
    "READONLY": errors.ReadOnlyError, "LOADING": errors.BusyLoadingError,
    "OOM": errors.OutOfMemoryError, "EXECABORT": errors.ExecAbortError,
}
_CLOSED = "Connection closed by the client."


def _error(reply: str) -> Exception:
    code, _, rest = reply.partition(" ")
    kind = _ERRORS.get(code)
    return kind(rest) if kind else errors.ResponseError(rest if code == "ERR" else reply)


class _Protocol(asyncio.Protocol):
    """One connection: replies come back in the order commands went out, so a FIFO of
    futures pairs them, and a caller that gives up keeps its place until its reply is read."""

    transport: asyncio.Transport

    def __init__(self, stalled_after: float) -> None:
        self.reader = hiredis.Reader(replyError=_error)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.lost = asyncio.get_running_loop().create_future()
        self.failure: str | None = None
        self.stalled_after = stalled_after
        self.heard = 0.0  # last data from the server, or when it began to owe a reply

    def usable(self) -> bool:
        return self.failure is None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        # asyncio sets NODELAY too, but latency rests on it; keepalive, as in redis-py's default.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        return self.send_all((args,))[0]

    def send_all(self, commands: tuple[tuple[Any, ...], ...]) -> list[asyncio.Future[Any]]:
        """Queue a future per command and write them all at once (one segment, one trip)."""
        # Packed before queueing: a bad argument must not cost a slot.
        packed = b"".join([hiredis.pack_command(args) for args in commands])
        if not self.pending:
            self.heard = time.monotonic()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.pending.extend(futures)
        self.transport.write(packed)
        return futures

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if not self.pending:
                    self.fail("redis sent a reply no command asked for")
                    return
                future = self.pending.popleft()
                if future.done():
                    continue  # its caller gave up; the reply is dropped in its turn
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(f"unreadable reply from redis: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail("Connection closed by server." if exc is None else f"Connection lost: {exc}")
        if not self.lost.done():
            self.lost.set_result(None)

    def gave_up(self) -> None:
        """A caller was cancelled while its reply was pending (a store timeout, a client gone):
        its place in the FIFO keeps later replies paired right, so a healthy connection stays
        up for the other callers, and only one silent for ``stalled_after`` is dropped."""
        if self.pending and time.monotonic() - self.heard >= self.stalled_after:
            self.fail(f"no reply from redis for {self.stalled_after:g} s")

    def fail(self, reason: str) -> None:
        """Drop the connection; every caller still waiting gets a ConnectionError."""
        if self.failure is None:
            self.failure = reason
        self.transport.abort()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(errors.ConnectionError(reason))


class _Blocking:
    """One blocking socket to the server, for commands awaited outside any event loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = hiredis.Reader(replyError=_error)

    def exchange(self, packed: bytes, count: int, deadline: float | None) -> list[Any]:
        """Send ``packed`` (``count`` commands); their replies, error replies as objects."""
        self._bound(deadline)
        self.sock.sendall(packed)
        replies: list[Any] = []
        while True:
            while len(replies) < count and (reply := self.reader.gets()) is not False:
                replies.append(reply)
            if len(replies) == count:
                return replies
            self._bound(deadline)
            data = self.sock.recv(65536)
            if not data:
                raise errors.ConnectionError("Connection closed by server.")
            self.reader.feed(data)

    def _bound(self, deadline: float | None) -> None:
        bound_by_deadline(self.sock, deadline, "redis")

    def close(self) -> None:
        self.sock.close()


class RespClient:
    """Commands to one redis server over one pipelined TCP connection, for one event loop.

    Concurrent callers share the connection: each command is written at once and gets the
    reply in its turn. It opens at the first command (after AUTH, SELECT, CLIENT SETNAME) and
    is replaced once lost. A command whose reused connection turns out closed (server restart,
    idle timeout) is sent once more, as redis-py retries: send only commands safe to repeat.

    Awaited outside any event loop (a client of one thread: see ``runs_without_loop`` in
    :mod:`.base`), a command is a blocking exchange on a socket of its own, bounded by
    :func:`~.base.call_deadline`, and completes without suspending.
    """

    def __init__(self, host: str = "localhost", port: int = 6379, *, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 client_name: str | None = None, connect_timeout: float = 5.0,
                 stalled_after: float = 1.0) -> None:
        if not AVAILABLE:
            raise RuntimeError("RespClient needs hiredis: pip install 'redis[hiredis]'")
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.stalled_after = stalled_after
        self._hello: list[tuple[Any, ...]] = []
        if password is not None:
            self._hello.append(("AUTH", password) if username is None
                               else ("AUTH", username, password))
        if db:
            self._hello.append(("SELECT", db))
        if client_name:
            self._hello.append(("CLIENT", "SETNAME", client_name))
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()
        self._blocking: _Blocking | None = None

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """Send one command; its reply (bytes, int, list, None), or its error raised."""
        if asyncio._get_running_loop() is None:
            (reply,) = self._exchange((args,))
            if isinstance(reply, errors.RedisError):
                raise reply
            return reply
        protocol = self._protocol
        if protocol is None or not protocol.usable():
            return await self._call(await self._connect(), args)
        try:
            return await self._call(protocol, args)
        except errors.ConnectionError:
            if protocol.failure is _CLOSED:
                raise  # closed on purpose: the command fails rather than reopen it
            return await self._call(await self._connect(), args)

    async def execute_all(self, *commands: tuple[str | bytes | int | float, ...]) -> list[Any]:
        """Send several commands at once (one round trip); their replies in order, an error
        reply as its exception object instead of raised."""
        if asyncio._get_running_loop() is None:
            return self._exchange(commands)
        protocol = self._protocol
        if protocol is None or not protocol.usable():
            return await self._call_all(await self._connect(), commands)
        try:
            return await self._call_all(protocol, commands)
        except errors.ConnectionError:
            if protocol.failure is _CLOSED:
                raise
            return await self._call_all(await self._connect(), commands)

    async def _call_all(self, protocol: _Protocol, commands: tuple[tuple[Any, ...], ...]
                        ) -> list[Any]:
        futures = protocol.send_all(commands)
        replies: list[Any] = []
        try:
            for future in futures:
                try:
                    replies.append(await future)
                except errors.ConnectionError:
                    raise
                except errors.RedisError as exc:  # an error reply: the connection is fine
                    replies.append(exc)
        except asyncio.CancelledError:
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()
            protocol.gave_up()
            raise
        return replies

    def _exchange(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """The blocking exchange (outside any loop); a reused socket found closed is
        replaced and the commands sent once more."""
        packed = b"".join([hiredis.pack_command(args) for args in commands])
        deadline = call_deadline()
        conn = self._blocking
        if conn is not None:
            try:
                return conn.exchange(packed, len(commands), deadline)
            except (ConnectionError, errors.ConnectionError):
                self._drop_blocking()  # closed by the server while idle: once more, anew
            except BaseException:
                self._drop_blocking()  # no telling which replies are still to come
                raise
        conn = self._blocking = self._open_blocking(deadline)
        try:
            return conn.exchange(packed, len(commands), deadline)
        except BaseException as exc:
            self._drop_blocking()
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                where = f"{self.host}:{self.port}"
                raise errors.ConnectionError(f"Error talking to {where}: {exc}") from exc
            raise

    def _open_blocking(self, deadline: float | None) -> _Blocking:
        where = f"{self.host}:{self.port}"
        timeout = self.connect_timeout
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except TimeoutError:
            raise errors.TimeoutError(f"Timeout connecting to {where}") from None
        except OSError as exc:
            raise errors.ConnectionError(f"Error connecting to {where}: {exc}") from exc
        conn = _Blocking(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._hello:
                packed = b"".join([hiredis.pack_command(args) for args in self._hello])
                for reply in conn.exchange(packed, len(self._hello), deadline):
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_blocking(self) -> None:
        conn, self._blocking = self._blocking, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Close the connection; callers still waiting fail, and a later command reconnects."""
        self._drop_blocking()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.fail(_CLOSED)
            await protocol.lost  # the socket is closed by then: nothing left to warn about

    async def _call(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        future = protocol.send(args)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.exception()  # answered as we were cancelled: mark the outcome as seen
            protocol.gave_up()
            raise

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is not None and self._protocol.usable():
                return self._protocol  # another caller connected meanwhile
            where = f"{self.host}:{self.port}"
            try:
                self._protocol = await asyncio.wait_for(self._open(), self.connect_timeout)
            except asyncio.TimeoutError:
                raise errors.TimeoutError(f"Timeout connecting to {where}") from None
            except OSError as exc:
                raise errors.ConnectionError(f"Error connecting to {where}: {exc}") from exc
            return self._protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: _Protocol(self.stalled_after), self.host, self.port
        )
        # Pipelined: one round trip for them all; gather reads every outcome, so none is lost.
        hello = [protocol.send(command) for command in self._hello]
        try:
            for outcome in await asyncio.gather(*hello, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            protocol.fail("connection setup failed")
            raise
        return protocol
