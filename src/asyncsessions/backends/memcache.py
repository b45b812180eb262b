"""Memcached store: one item per session, appended to under CAS, expiry refreshed on the read.

A load remembers the record it parsed with its CAS token, so that the write usually following
in the same request is a single append (or ``cas``, or token-conditional ``md``) over it.
Several servers share the keys by rendezvous hashing, as pymemcache's ``HashClient`` places
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import random
import socket
import struct
import threading
import time
import unicodedata
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import aiomcache
from aiomcache.pool import Connection

from ..errors import SessionConfigWarning
from ..serialization import split_fields
from . import flask_session
from .base import ClientBackend, Record, Write, bound_by_deadline, call_deadline

__all__ = ["MemcacheBackend"]

T = TypeVar("T")

# The earlier layout's record fields beside the session's own (read, never written).
_TTL = "\0ttl"
_PERMANENT = "\0p"
# The first header of a record in this layout (see the class docstring).
_LAYOUT = "as1"
# An append is cheaper than a rewrite until the record holds more dead bytes than live ones:
# then it is rewritten whole, so a record never grows past about twice its live size.
_SLACK = 1024
# Or until it holds as many appends as live fields, and at least this many: each is a header
# every load parses (~5 µs, about what a field costs), so a load costs at most about twice
# its fields' parse, where small changes to a big session would otherwise pile up by the
# thousand (measured: 1,000 on a 100 KB record made a load 5.5 ms, 0.08 ms without them).
_MIN_APPENDS = 32
# memcached reads an exptime over 30 days as a Unix time, not as seconds from now.
_MAX_RELATIVE = 30 * 86400
# memcached keeps expiry times in 32 bits: later ones wrap around or are refused.
_MAX_EXPTIME = 2**31 - 1
_TRIES = 20
_MAX_BACKOFF = 0.05  # seconds
# ``md <key> C<token>``: deleted, gone already, or written since the token was read.
_DELETE_REPLIES: dict[bytes, bool | None] = {b"HD": True, b"NF": False, b"EX": None}
# Bounds on the items loads remember for the stores that follow them (per backend).
_REMEMBER_ITEMS = 4096
_REMEMBER_BYTES = 8 * 1024 * 1024  # of item values


class _Item(NamedTuple):
    value: bytes
    flags: int
    cas: int  # 0 unless fetched with gets or gats


class _Stored(NamedTuple):
    ttl: int
    permanent: bool
    fields: dict[str, bytes]
    #: Bytes of the item, dead entries included (what an append adds to).
    size: int = 0
    #: Written in this layout, so it can take an append (the earlier one's JSON cannot).
    appendable: bool = True
    #: Appends the record holds (headers after the first).
    appends: int = 0


class _Loaded(NamedTuple):
    """A record as parsed, the CAS token of the item it came from, and whether the read
    restarted its expiry (so the write that follows need not)."""

    stored: _Stored
    cas: int
    touched: bool


class _Remembered:
    """Records as loads parsed them, by key, for the store that usually follows in the request.

    The backend sees no requests, so this is a bounded map instead: a read-only request's
    record stays until later loads push it out, oldest first, past ``max_items`` records or
    ``max_bytes`` of items. ``take`` removes the record it returns, so each is used at most
    once. A record is kept with the CAS token of the item it was parsed from: a write merges
    into exactly the record whose token it presents. Locked, as Flask's bridge runs loops on
    several threads.
    """

    def __init__(self, max_items: int = _REMEMBER_ITEMS, max_bytes: int = _REMEMBER_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: dict[str, _Loaded] = {}  # oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, loaded: _Loaded) -> None:
        with self._lock:
            self._pop(key)
            if loaded.stored.size > self.max_bytes:
                return
            self._items[key] = loaded
            self.bytes += loaded.stored.size
            while len(self._items) > self.max_items or self.bytes > self.max_bytes:
                self._pop(next(iter(self._items)))

    def take(self, key: str) -> _Loaded | None:
        with self._lock:
            return self._pop(key)

    def _pop(self, key: str) -> _Loaded | None:
        loaded = self._items.pop(key, None)
        if loaded is not None:
            self.bytes -= loaded.stored.size
        return loaded


class _Blocking:
    """One blocking socket to a memcached server, for commands awaited outside any loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def send(self, data: bytes, deadline: float | None) -> None:
        self._bound(deadline)
        self.sock.sendall(data)

    def readline(self, deadline: float | None) -> bytes:
        """The next line, ``\r\n`` included."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill(deadline)
        return self._take(end + 2)

    def readexactly(self, size: int, deadline: float | None) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        return self._take(size)

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _fill(self, deadline: float | None) -> None:
        self._bound(deadline)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("memcached closed the connection")
        self.buffer += data

    def _bound(self, deadline: float | None) -> None:
        bound_by_deadline(self.sock, deadline, "memcached")

    def close(self) -> None:
        self.sock.close()


class _Client(aiomcache.Client):
    """aiomcache's connection pool, with the commands sessions need (``gats`` included).

    Awaited outside any event loop (a client of one thread: see ``runs_without_loop`` in
    :mod:`.base`), a command is a blocking exchange on a socket of its own instead, bounded
    by :func:`~.base.call_deadline`.

    aiomcache returns a connection to its pool when a command is cancelled before its
    reply is read (aio-libs/aiomcache#489): the next command then reads that stale reply,
    and a stale ``STORED`` taken for a ``cas`` answer loses a write silently. A store's
    ``timeout`` cancels commands, so here an interrupted connection is closed instead.
    """

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        conn = await self._pool.acquire()
        try:
            yield conn
        except BaseException:
            # The pool closes a connection whose reader has an exception when it is released.
            conn.reader.set_exception(ConnectionAbortedError("memcached command interrupted"))
            raise
        finally:
            self._pool.release(conn)

    async def fetch(self, command: bytes, key: bytes) -> _Item | None:
        """The item ``command`` (``gets`` or ``gats <exptime>``) returns for ``key``."""
        self._validate_key(key)
        request = b"%s %s\r\n" % (command, key)
        if asyncio._get_running_loop() is None:
            return self._exchange(request, lambda conn, deadline: _read_item(
                key, conn.readline(deadline), lambda size: conn.readexactly(size, deadline),
                lambda: conn.readline(deadline)))
        async with self._connection() as conn:
            conn.writer.write(request)
            header = await conn.reader.readline()
            if header == b"END\r\n":
                return None
            data = await conn.reader.readexactly(_item_size(key, header))
            return _item(key, header, data, await conn.reader.readline())

    async def call(self, line: bytes, data: bytes | None = None, *, then: bytes = b"") -> bytes:
        """Send one command (and its data block); the one-line reply.

        ``then``: a second command line sent in the same round trip; its one-line reply is
        read and dropped (it is a ``touch`` whose outcome the first reply already tells).
        """
        payload = b"%s\r\n" % line if data is None else b"%s\r\n%s\r\n" % (line, data)
        request = payload + b"%s\r\n" % then if then else payload
        if asyncio._get_running_loop() is None:
            return self._exchange(request, lambda conn, deadline: _one_line(
                conn.readline(deadline), conn.readline(deadline) if then else None))
        async with self._connection() as conn:
            conn.writer.write(request)
            await conn.writer.drain()
            reply = await conn.reader.readline()
            return _one_line(reply, await conn.reader.readline() if then else None)

    _blocking: _Blocking | None = None

    def _exchange(self, request: bytes, read: Callable[[_Blocking, float | None], T]) -> T:
        """The blocking exchange (outside any loop): ``request`` sent, ``read`` its reply.

        A reused socket the server closed while idle is replaced and the request sent once
        more (every command here is safe to repeat: a conditional write that landed is
        refused the second time, and a refused write is settled by reading again).
        """
        deadline = call_deadline()
        for attempt in (0, 1):
            fresh = self._blocking is None
            if fresh:
                self._blocking = self._connect_blocking(deadline)
            conn = self._blocking
            assert conn is not None
            try:
                conn.send(request, deadline)
                return read(conn, deadline)
            except (ConnectionError, aiomcache.ClientException) as exc:
                self._drop_blocking()
                if fresh or attempt or isinstance(exc, aiomcache.ClientException):
                    raise
            except BaseException:
                self._drop_blocking()  # a reply may still be owed on it
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect_blocking(self, deadline: float | None) -> _Blocking:
        timeout = 5.0 if deadline is None else max(0.001, deadline - time.monotonic())
        sock = socket.create_connection((self._pool._host, self._pool._port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Blocking(sock)

    def _drop_blocking(self) -> None:
        conn, self._blocking = self._blocking, None
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        self._drop_blocking()
        if asyncio._get_running_loop() is not None:
            await super().close()


def _item_size(key: bytes, header: bytes) -> int:
    """The data block's size (``\r\n`` included) a ``VALUE`` header announces."""
    terms = header.split()
    if len(terms) not in (4, 5) or terms[:2] != [b"VALUE", key] or not terms[3].isdigit():
        raise _unexpected(header)
    return int(terms[3]) + 2


def _item(key: bytes, header: bytes, data: bytes, end: bytes) -> _Item:
    if end != b"END\r\n":
        raise _unexpected(end)
    terms = header.split()
    return _Item(data[:-2], int(terms[2]), int(terms[4]) if len(terms) == 5 else 0)


def _read_item(key: bytes, header: bytes, read: Callable[[int], bytes],
               readline: Callable[[], bytes]) -> _Item | None:
    if header == b"END\r\n":
        return None
    data = read(_item_size(key, header))
    return _item(key, header, data, readline())


def _one_line(reply: bytes, then: bytes | None) -> bytes:
    """A command's reply line, without its ``\r\n``; ``then``: the reply line of the
    command sent with it, if any (only checked to be whole)."""
    if not reply.endswith(b"\r\n"):
        raise _unexpected(reply)
    if then is not None and not then.endswith(b"\r\n"):
        raise _unexpected(b"")
    return reply[:-2]


class _Servers:
    """One event loop's clients, one per server; a key's server by rendezvous hashing."""

    def __init__(self, clients: Sequence[_Client], nodes: Sequence[str]) -> None:
        self.clients = tuple(clients)
        self.nodes = tuple(nodes)

    def for_key(self, key: str) -> _Client:
        if len(self.clients) == 1:
            return self.clients[0]
        return self.clients[_rendezvous(self.nodes, key)]


class MemcacheBackend(flask_session.ReadsFlaskSession, ClientBackend[_Servers]):
    """Sessions in memcached, through ``aiomcache`` (memcached 1.6 or later).

    The servers: ``host`` and ``port`` (default ``127.0.0.1:11211``); or ``servers``, a list
    of ``(host, port)`` pairs or ``"host:port"`` strings; or ``client``, whose servers are
    read: an ``aiomcache.Client`` (its pool settings are reused too), a pymemcache
    ``Client``, ``PooledClient`` or ``HashClient`` (its TLS context is reused), or a
    python-memcached ``memcache.Client``. Each event loop gets one aiomcache client per
    server; outside any loop (a Flask request of one op: the store ``runs_without_loop``
    unless its client brings TLS settings) each thread gets a blocking socket per server.
    aiomcache's default pool is 2 connections per loop and server: pass an
    ``aiomcache.Client`` with a larger ``pool_size`` for a busy Quart app.

    With several servers, each key lives on one of them, chosen by rendezvous (highest
    random weight) hashing with MurmurHash3 over ``"host:port-key"``, exactly as pymemcache's
    ``HashClient`` (Flask-Session's memcached client) chooses: a server added or removed
    moves only the keys it gains or loses, and a key Flask-Session stored through a
    ``HashClient`` of the same servers is found where it is. A server that is down fails the
    requests whose sessions live on it (the store's ``on_error``); the others go on.
    python-memcached spreads keys by CRC32 modulo instead, so the sessions it stored on
    several servers are found only where the two agree (warned about at ``init_app``).

    Each session is one item with client flags 0: a header line, the JSON array
    ``["as1", ttl, permanent, name, size, name, size, …]``, then the fields' values back to
    back, each ``size`` bytes; a write may append further entries, a header line
    ``[name, size, …]`` (size -1: the field was removed) and their values, and the last entry
    of a name wins. So a load cuts the values out by their sizes without decoding any (the
    engine decodes the fields a request reads), and a write that changes one field of a large
    session sends about that field. Records of the earlier layout, one JSON object of the
    fields plus ``"\\u0000ttl"`` and ``"\\u0000p"``, are still read; their next write rewrites
    them in this one. Every write is conditional on a CAS token, so concurrent requests that
    change different fields all survive, and none undoes another's delete:

    - A new id's record is written with ``add``. Should an item be there all the same (another
      client's, under this key), it is replaced whole through ``gets`` and ``cas``.
    - An update merges the changed and removed fields into the record it read and appends
      the entries that differ with the meta command ``ms <key> MA C<token>`` (append, only
      while the token matches; memcached 1.6). It first tries the record the request's load
      read (``gats``/``gets`` return its CAS token; the backend remembers a few thousand such
      records, see ``_Remembered``); if another request wrote in between, that fails and the
      write falls back to ``gets``, merge, append, backing off a random moment after each
      conflict, up to 20 times. A merge always starts from the very item whose token the write
      presents. No item (a logout or ``regenerate()`` deleted it, or it expired), the append
      or ``cas`` finding none, or an item this store did not write: the session is gone,
      nothing is written and ``store`` returns ``False``.
    - The record is written whole, with ``cas``, instead of appended to when the append
      would leave it holding more dead entries than live bytes (so it stays under about
      twice its live size, and a load's cost with it) or more appends (each a header a
      load parses) than it has fields and 32, when it is in the earlier layout, when
      the write sets the permanent flag (an append cannot change an item's expiry), and when
      memcached refuses the append as too large.
    - A merge that leaves no field deletes the item with the meta command ``md <key>
      C<token>``, which deletes only while the token still matches (memcached 1.6): a field
      another request ``cas``-ed in meanwhile changed the token, so the delete is refused and
      the merge over that request's item keeps the record.
    - A write that does not set the permanent flag keeps the stored flag and TTL, and the
      item lives its own TTL from now: an append keeps the item's expiry, which the request's
      refreshing load restarted; after a load that did not, or over a record read by
      ``gets``, a ``touch`` sent with the append restarts it.

    An item this store did not write (Flask-Session's msgpack, a client's flagged pickle,
    damaged JSON) or an item left without fields (as earlier versions emptied records) reads
    as no session, the former with a warning. With ``reads_flask_session``, an item of
    client flags 0 in Flask-Session's msgpack or JSON is read as a foreign record; the
    session's first write replaces it (``add`` refused, then ``gets`` and ``cas``). Its
    expiry is its own, except that a refreshing read's ``gats`` (which takes the expiry
    before the item is read) restarts it with the shortest TTL the store uses: under a
    Flask-Session config that is its lifetime, as Flask-Session's own refresh on every
    request did. Writes never use ``set``: memcached drops the old item when a ``set`` is
    refused as too large, while a refused ``cas`` or ``add`` leaves it.

    TTLs over 30 days are sent as absolute Unix times, as memcached requires, so they rely
    on the app's and memcached's clocks agreeing.

    The sliding refresh is ``gats`` (get and touch, with the CAS token, one round trip),
    which takes the new expiry up front, before the record, which holds its own TTL, has been
    read. So the backend refreshes with the shortest TTL it has written or read, then
    corrects a record whose TTL differs with a ``touch`` (which leaves the CAS token as it
    is). Guessing the shortest makes a failed correction err towards expiring early. The
    value is never rewritten by a refresh. That ``touch`` is not conditional: a request that
    changes the session's permanence between this load's ``gats`` and ``touch`` has its new
    expiry replaced by the old TTL until the session's next load refreshes it.

    Round trips per request, for a session with the shortest lifetime in use (browser
    sessions, or every session if all are permanent); one more ``touch`` for a longer-lived
    one or before this process has seen any record (``gets`` + ``touch`` then):

    - read-only: 1 (``gats``);
    - writing: 2 (``gats``, then the append, ``cas`` or ``md``), 4 (``gats``, append refused,
      ``gets``, append and ``touch``) when another request wrote the session in between, more
      while conflicts go on;
    - writing a new session (no load): 1 (``add``);
    - a write whose load's record is no longer remembered (pushed out, or taken by a
      concurrent request of the same session in this process): 3 (``gats``, ``gets``, append
      and ``touch``).
    """

    max_key_length = 250  # memcached's limit; keys may hold no whitespace or control characters
    may_evict = True  # an LRU cache: a full server drops records before they expire

    def __init__(
        self, *, client: Any = None, host: str | None = None, port: int | None = None,
        servers: Sequence[tuple[str, int] | str] | None = None,
    ) -> None:
        super().__init__()
        given = "client" if client is not None else "servers" if servers is not None else None
        if client is not None and servers is not None:
            raise ValueError("give client or servers, not both")
        if given is not None and (host is not None or port is not None):
            raise ValueError(f"give {given} or host/port, not both")
        options: dict[str, Any] = {}
        if client is not None:
            addresses, options = _servers_of(client)
        elif servers is not None:
            addresses = _servers_option(servers)
        else:
            addresses = [_checked("127.0.0.1" if host is None else host,
                                  11211 if port is None else port)]
        #: The servers, as given; keys are spread over them by rendezvous hashing.
        self.servers: tuple[tuple[str, int], ...] = tuple(addresses)
        self.host: str = addresses[0][0]
        self.port: int = addresses[0][1]
        self.location = "memcached://" + ",".join(_address(h, p) for h, p in addresses)
        self._nodes = tuple(f"{h}:{p}" for h, p in addresses)  # pymemcache's node names
        self._options = options
        # The blocking sockets speak plain TCP; a TLS client's settings keep to the loop.
        self.runs_without_loop = not options.get("conn_args")
        self._guess: int | None = None  # the TTL gats refreshes with (see the class docstring)
        self._remembered = _Remembered()

    def check_key_prefix(self, prefix: str) -> None:
        for char in prefix:
            if char.isspace() or unicodedata.category(char) == "Cc":
                raise ValueError(
                    f"memcached keys cannot hold whitespace or control characters: "
                    f"{char!r} in {prefix!r}"
                )
        super().check_key_prefix(prefix)

    def _new_client(self) -> _Servers:
        return _Servers([_Client(h, p, **self._options) for h, p in self.servers], self._nodes)

    async def _close_client(self, client: _Servers) -> None:
        await asyncio.gather(*(c.close() for c in client.clients), return_exceptions=True)

    @staticmethod
    def _close_thread_client(client: _Servers) -> None:
        for each in client.clients:  # a thread's client: blocking sockets only
            each._drop_blocking()

    async def load(self, key: str, *, touch: bool) -> Record | None:
        client = self.client.for_key(key)
        name = key.encode()
        guess = self._guess if touch else None
        command = b"gets" if guess is None else b"gats %d" % _exptime(guess)
        item = await client.fetch(command, name)
        stored = None
        if item is not None:
            try:
                stored = _parse(item)
            except ValueError as exc:
                if self.reads_flask_session and not item.flags:
                    self._remembered.take(key)
                    return flask_session.read(self, key, item.value)
                self.unreadable(key, str(exc))  # left as it is: a write replaces it
        if item is None or stored is None or not stored.fields:
            self._remembered.take(key)
            return None
        if touch and stored.ttl != guess:
            reply = await client.call(b"touch %s %d" % (name, _exptime(stored.ttl)))
            if reply not in (b"TOUCHED", b"NOT_FOUND"):
                raise _unexpected(reply)
        self._learn(stored.ttl)
        # Parsed once per request: the write merges into this copy, the caller gets its own.
        self._remembered.put(key, _Loaded(stored, item.cas, touch))
        return Record(dict(stored.fields), stored.permanent)

    async def store(self, key: str, write: Write) -> bool:
        client = self.client.for_key(key)
        name = key.encode()
        # Taken whatever the write: a load's record serves the write of its own request only.
        loaded = self._remembered.take(key)
        if write.create:
            return await self._create(client, name, write)
        # First, no read: the record this request loaded, under the token it was loaded with.
        if loaded is not None:
            done = await self._merge(client, name, loaded, write)
            if done is not None:
                return done
        for attempt in range(_TRIES):
            done = await self._merge(client, name, _fetched(await client.fetch(b"gets", name)),
                                     write)
            if done is not None:
                return done
            # Another request wrote in between: let the contenders spread out, then merge again.
            await _back_off(attempt)
        raise RuntimeError(
            f"session record not written: other requests kept writing it ({_TRIES} cas attempts)"
        )

    async def _merge(
        self, client: _Client, name: bytes, loaded: _Loaded | None, write: Write
    ) -> bool | None:
        """Apply ``write`` over ``loaded``, conditional on its CAS token.

        True if applied, False if the record is gone (nothing written), None if ``loaded`` is
        no longer what is stored (merge again over what is).
        """
        if loaded is None:
            return False  # deleted, expired or another client's item: never resurrected
        stored = loaded.stored
        if not stored.fields:
            return False  # emptied (earlier versions left such records): no session
        fields = dict(stored.fields)
        fields.update(write.changed)
        removed = [field for field in write.removed if fields.pop(field, None) is not None]
        if not fields:
            # A delete conditional on the token: a field another request cas-ed in since
            # changes the token, so this fails and the merge over its item keeps the record.
            reply = await client.call(b"md %s C%d" % (name, loaded.cas))
            if reply == b"ERROR":
                raise aiomcache.ClientException(
                    "memcached does not know the meta delete command (md): "
                    "asyncsessions needs memcached 1.6 or later"
                )
            if reply not in _DELETE_REPLIES:
                raise _unexpected(reply)
            return _DELETE_REPLIES[reply]
        if write.permanent is None:
            permanent, ttl = stored.permanent, stored.ttl
        else:
            assert write.ttl is not None  # checked by store
            permanent, ttl = write.permanent, write.ttl
        self._learn(ttl)
        if write.permanent is None and stored.appendable:
            done = await self._append(client, name, loaded, write.changed, removed, fields)
            if done is not _Rewrite.WHOLE:
                return done
        reply = await _put(client, b"cas", name, fields, permanent, ttl, cas=loaded.cas)
        if reply == b"EXISTS":
            return None
        return reply == b"STORED"  # NOT_FOUND: deleted or expired since the item was read

    async def _append(
        self, client: _Client, name: bytes, loaded: _Loaded, changed: Mapping[str, bytes],
        removed: Sequence[str], fields: dict[str, bytes],
    ) -> bool | _Rewrite | None:
        """Append the write's entries to the record, conditional on its CAS token.

        Like :meth:`_merge`'s answers, or :class:`_Rewrite` when the record should be written whole
        instead (it would hold more dead bytes than live ones, or grow too large): ``WHOLE``.
        """
        stored = loaded.stored
        delta = _entries(changed, removed)
        if (stored.appends >= max(_MIN_APPENDS, len(fields))
                or stored.size + len(delta) > 2 * sum(map(len, fields.values())) + _SLACK):
            return _Rewrite.WHOLE
        # An append keeps the item's expiry: a load that refreshed it restarted it already,
        # otherwise a touch in the same round trip restarts it (one the append's refusal
        # makes moot: the merge that follows touches again).
        then = b"" if loaded.touched else b"touch %s %d" % (name, _exptime(stored.ttl))
        reply = await client.call(b"ms %s %d MA C%d" % (name, len(delta), loaded.cas), delta,
                                  then=then)
        if reply == b"HD":
            return True
        if reply == b"EX":
            return None
        if reply in (b"NS", b"NF"):
            return False  # deleted or expired since the item was read
        if reply.startswith(b"SERVER_ERROR object too large"):
            return _Rewrite.WHOLE  # the dead entries may be what does not fit
        if reply == b"ERROR" or reply.startswith(b"CLIENT_ERROR"):
            raise aiomcache.ClientException(
                f"memcached refused the meta set command (ms): {reply[:200]!r}; "
                "asyncsessions needs memcached 1.6 or later"
            )
        raise _unexpected(reply)

    async def _create(self, client: _Client, name: bytes, write: Write) -> bool:
        """Write the record of a new id: ``add``, or replace the item found under it."""
        fields = dict(write.changed)
        for field in write.removed:
            fields.pop(field, None)
        if not fields:
            return True  # nothing to create
        assert write.permanent is not None  # see Write
        assert write.ttl is not None
        permanent, ttl = write.permanent, write.ttl
        self._learn(ttl)
        item: _Item | None = None
        for attempt in range(_TRIES):
            # A new id has no record of ours: an item under it is another client's, replaced
            # whole (through cas all the same, so that a concurrent write is not overwritten).
            cas = None if item is None else item.cas
            reply = await _put(client, b"add" if cas is None else b"cas", name, fields,
                               permanent, ttl, cas=cas)
            if reply == b"STORED":
                return True
            if reply == b"EXISTS":
                await _back_off(attempt)
            item = await client.fetch(b"gets", name)
        raise RuntimeError(
            f"session record not written: other clients kept writing it ({_TRIES} attempts)"
        )

    async def delete(self, key: str) -> None:
        self._remembered.take(key)
        reply = await self.client.for_key(key).call(b"delete " + key.encode())
        if reply not in (b"DELETED", b"NOT_FOUND"):
            raise _unexpected(reply)

    async def expires_at(self, key: str) -> float | None:
        # Meta get with only the remaining TTL: no value, and no touch.
        reply = await self.client.for_key(key).call(b"mg %s t" % key.encode())
        if reply == b"EN":
            return None
        terms = reply.split()
        left = next((t[1:] for t in terms[1:] if t.startswith(b"t")), None)
        if terms[:1] != [b"HD"] or left is None or not left.lstrip(b"-").isdigit():
            raise _unexpected(reply)
        return None if int(left) < 0 else time.time() + int(left)  # -1: never expires

    def _learn(self, ttl: int) -> None:
        # A plain read-modify-write: a lost update across threads only costs a touch.
        if self._guess is None or ttl < self._guess:
            self._guess = ttl


class _Rewrite(enum.Enum):
    """An append's answer: write the record whole instead."""

    WHOLE = 0


def _exptime(ttl: int) -> int:
    if ttl < 1:
        raise ValueError(f"ttl must be at least 1 second, not {ttl}")  # 0 means never expire
    return ttl if ttl <= _MAX_RELATIVE else int(time.time()) + ttl


def _header(entries: list[Any]) -> bytes:
    # ASCII JSON: no raw line break, so the header ends at the first one.
    return json.dumps(entries, separators=(",", ":")).encode() + b"\n"


def _record(fields: Mapping[str, bytes], permanent: bool, ttl: int) -> bytes:
    """A whole record: its header, then the values back to back."""
    entries: list[Any] = [_LAYOUT, ttl, permanent]
    for field, value in fields.items():
        entries += (field, len(value))
    return _header(entries) + b"".join(fields.values())


def _entries(changed: Mapping[str, bytes], removed: Sequence[str]) -> bytes:
    """What an append adds: a header of names and sizes (-1: removed), then the values."""
    entries: list[Any] = []
    for field, value in changed.items():
        entries += (field, len(value))
    for field in removed:
        entries += (field, -1)
    return _header(entries) + b"".join(changed.values())


async def _put(
    client: _Client, verb: bytes, name: bytes, fields: dict[str, bytes], permanent: bool,
    ttl: int, *, cas: int | None = None,
) -> bytes:
    """``add`` or ``cas`` the record; memcached's reply (``STORED``, ``EXISTS``, …)."""
    blob = _record(fields, permanent, ttl)
    line = b"%s %s 0 %d %d" % (verb, name, _exptime(ttl), len(blob))
    reply = await client.call(line if cas is None else b"%s %d" % (line, cas), blob)
    if reply.startswith(b"SERVER_ERROR object too large"):
        raise ValueError(
            f"session record of {len(blob)} bytes refused by memcached as too large "
            "(items are limited to 1 MB unless memcached runs with -I); "
            "the stored record is unchanged"
        )
    if reply not in (b"STORED", b"EXISTS", b"NOT_FOUND", b"NOT_STORED"):
        raise _unexpected(reply)
    return reply


async def _back_off(attempt: int) -> None:
    pause = random.uniform(0, min(_MAX_BACKOFF, 0.001 * 2**attempt))
    if asyncio._get_running_loop() is None:
        time.sleep(pause)  # a request thread's own blocking write (runs_without_loop)
    else:
        await asyncio.sleep(pause)


def _fetched(item: _Item | None) -> _Loaded | None:
    """A write's merge base: the item ``gets`` read, or ``None`` if it is no record of ours."""
    if item is None:
        return None
    try:
        return _Loaded(_parse(item), item.cas, touched=False)
    except ValueError:
        return None  # another client's item: no session of ours, left as it is


def _parse(item: _Item) -> _Stored:
    """The record in ``item``; ``ValueError`` saying why if it is none this store wrote."""
    if item.flags:
        # pymemcache and python-memcached flag the encodings they add, such as pickles.
        raise ValueError(f"client flags {item.flags}, another client's encoding")
    if item.value[:1] == b"{":
        return _parse_json(item.value)
    try:
        return _parse_entries(item.value)
    except RecursionError:
        raise ValueError("not a record: a header nested too deeply") from None


def _parse_entries(value: bytes) -> _Stored:
    """A record of this layout: each header's sizes cut the values out, none is decoded."""
    fields: dict[str, bytes] = {}
    ttl: Any = None
    permanent: Any = None
    pos, end = 0, len(value)
    headers = 0
    while pos < end:
        headers += 1
        newline = value.find(b"\n", pos)
        if newline < 0:
            raise ValueError("not a record: a header without its end")
        entries = json.loads(value[pos:newline])
        if type(entries) is not list:
            raise ValueError("not a record: a header that is not a list")
        if pos == 0:
            if len(entries) < 3 or entries[0] != _LAYOUT:
                raise ValueError("not a record: no layout mark")
            ttl, permanent = entries[1], entries[2]
            entries = entries[3:]
        if len(entries) % 2:
            raise ValueError("not a record: a name without its size")
        pos = newline + 1
        for i in range(0, len(entries), 2):
            field, size = entries[i], entries[i + 1]
            if type(field) is not str or type(size) is not int or size < -1:
                raise ValueError("not a record: an entry that is no name and size")
            if size < 0:
                fields.pop(field, None)
            elif pos + size > end:
                raise ValueError("not a record: a value cut short")
            else:
                fields[field] = value[pos:pos + size]
                pos += size
    if type(ttl) is not int or not 1 <= ttl <= _MAX_EXPTIME - int(time.time()):
        # A ttl memcached cannot take as an expiry would make the load's touch fail.
        raise ValueError(f"ttl {str(ttl)[:30]!r} is no lifetime memcached can keep")
    if type(permanent) is not bool:
        raise ValueError(f"permanent flag {str(permanent)[:30]!r} is not true or false")
    return _Stored(ttl, permanent, fields, end, appends=headers - 1)


def _parse_json(value: bytes) -> _Stored:
    """A record of the earlier layout (one JSON object): read, and rewritten at its next write."""
    try:
        fields = split_fields(value)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise ValueError(f"not a JSON object of fields: {exc}") from None
    ttl, permanent = fields.pop(_TTL, None), fields.pop(_PERMANENT, None)
    if ttl is None or permanent is None:
        raise ValueError("no ttl or permanent flag")
    # A ttl memcached cannot take as an expiry would make the load's touch fail.
    if not ttl.isdigit() or not 1 <= int(ttl) <= _MAX_EXPTIME - int(time.time()):
        raise ValueError(f"ttl {ttl[:30]!r} is no lifetime memcached can keep")
    if permanent not in (b"true", b"false"):
        raise ValueError(f"permanent flag {permanent[:30]!r} is not true or false")
    return _Stored(int(ttl), permanent == b"true", fields, len(value), appendable=False)


def _unexpected(reply: bytes) -> aiomcache.ClientException:
    if not reply:
        return aiomcache.ClientException("memcached closed the connection")
    return aiomcache.ClientException(f"unexpected reply from memcached: {reply[:200]!r}")


def _checked(host: Any, port: Any, what: str = "") -> tuple[str, int]:
    """``(host, port)``, or the ``TypeError``/``ValueError`` naming what is wrong."""
    if not isinstance(host, str):
        raise TypeError(f"{what}host must be a str like '127.0.0.1', not {type(host).__name__}")
    if not host:
        raise ValueError(f"{what}host must not be empty")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"{what}port must be an int like 11211, not {type(port).__name__}")
    if not 0 < port < 65536:
        raise ValueError(f"{what}port must be 1-65535, not {port}")
    return host, port


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _distinct(addresses: list[tuple[str, int]], what: str) -> list[tuple[str, int]]:
    if not addresses:
        raise ValueError(f"{what} names no server")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"{what} names a server twice")
    return addresses


def _servers_option(servers: Any) -> list[tuple[str, int]]:
    """The ``servers`` option: ``(host, port)`` pairs or ``"host:port"`` strings."""
    if isinstance(servers, (str, bytes)) or not isinstance(servers, Sequence):
        raise TypeError('servers must be a list like [("10.0.0.1", 11211), ("10.0.0.2", 11211)]')
    addresses = []
    for server in servers:
        if isinstance(server, str):
            host, colon, port = server.rpartition(":")
            if not colon or not port.isdigit() or not host:
                raise ValueError(f"servers: {server!r} is not 'host:port'")
            server = (host.removeprefix("[").removesuffix("]"), int(port))
        if not isinstance(server, tuple) or len(server) != 2:
            raise TypeError(f"servers: {server!r} is not a (host, port) pair")
        addresses.append(_checked(*server, what="servers: "))
    return _distinct(addresses, "servers")


def _servers_of(client: Any) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The servers a memcached client of aiomcache, pymemcache or python-memcached talks to,
    and the aiomcache options that carry its settings over."""
    kind = f"{type(client).__module__}.{type(client).__qualname__}"
    if isinstance(client, aiomcache.FlagClient):
        pool = client._pool
        return [(pool._host, pool._port)], {
            "pool_size": pool._maxsize, "pool_minsize": pool._minsize,
            "conn_args": pool.conn_args}
    module = type(client).__module__.partition(".")[0]
    if module == "pymemcache":
        if getattr(client, "key_prefix", b""):
            raise ValueError(
                f"client: this {kind} has a key_prefix of its own; drop it and set "
                "key_prefix on the store instead (the same keys, and the same servers)"
            )
        hasher = getattr(client, "hasher", None)
        if isinstance(getattr(client, "clients", None), dict) and hasher is not None:
            # HashClient: every server it was given (dead ones are still in .clients).
            if type(hasher).__name__ != "RendezvousHash" or getattr(hasher, "seed", 0) != 0:
                raise ValueError(
                    f"client: this {kind} places keys with {type(hasher).__name__}; "
                    "asyncsessions places them as pymemcache's default RendezvousHash does"
                )
            specs = [getattr(c, "server", None) for c in client.clients.values()]
        else:
            specs = [getattr(client, "server", None)]
        addresses = []
        for spec in specs:
            if not (isinstance(spec, tuple) and len(spec) == 2):
                raise ValueError(
                    f"client: {spec!r} is no (host, port) server; aiomcache speaks TCP only"
                )
            addresses.append(_checked(*spec, what="client: "))
        tls = getattr(client, "tls_context", None)
        return _distinct(addresses, "client"), {"conn_args": {"ssl": tls}} if tls else {}
    hosts = getattr(client, "servers", None)
    if module == "memcache" and isinstance(hosts, list):  # python-memcached: [_Host, …]
        addresses = []
        for server in hosts:
            if getattr(server, "family", socket.AF_INET) not in (socket.AF_INET, socket.AF_INET6):
                raise ValueError(
                    f"client: {getattr(server, 'address', server)!r} is no (host, port) "
                    "server; aiomcache speaks TCP only"
                )
            addresses.append(_checked(getattr(server, "ip", None), getattr(server, "port", None),
                                      what="client: "))
        addresses = _distinct(addresses, "client")
        if len(addresses) > 1:
            warnings.warn(
                "client: python-memcached spreads keys over its servers by CRC32 modulo, "
                "asyncsessions by rendezvous hashing (as pymemcache's HashClient does): the "
                "live sessions it stored on another server than asyncsessions picks read as "
                "no session, once",
                SessionConfigWarning, stacklevel=2,
            )
        return addresses, {}
    raise TypeError(
        "client must be an aiomcache.Client, a pymemcache Client, PooledClient or HashClient, "
        'or a python-memcached memcache.Client, e.g. aiomcache.Client("127.0.0.1", 11211) '
        '(or give servers=[("127.0.0.1", 11211), …]), '
        f"not {kind}"
    )


def _murmur3_32(data: bytes) -> int:
    """MurmurHash3 (x86, 32 bits, seed 0), as pymemcache's ``murmur3_32`` computes it."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h1 = 0
    rounded = len(data) & ~3
    for (k1,) in struct.iter_unpack("<I", data[:rounded]):
        k1 = (k1 * c1) & mask
        k1 = ((k1 << 15) | (k1 >> 17)) & mask
        h1 ^= (k1 * c2) & mask
        h1 = ((h1 << 13) | (h1 >> 19)) & mask
        h1 = (h1 * 5 + 0xE6546B64) & mask
    tail = data[rounded:]
    if tail:
        k1 = int.from_bytes(tail, "little")
        k1 = (k1 * c1) & mask
        k1 = ((k1 << 15) | (k1 >> 17)) & mask
        h1 ^= (k1 * c2) & mask
    h1 ^= len(data)
    h1 ^= h1 >> 16
    h1 = (h1 * 0x85EBCA6B) & mask
    h1 ^= h1 >> 13
    h1 = (h1 * 0xC2B2AE35) & mask
    return h1 ^ (h1 >> 16)


@functools.lru_cache(maxsize=1024)  # a request's load and write: hashed once (~20 µs a server)
def _rendezvous(nodes: tuple[str, ...], key: str) -> int:
    """The index of ``key``'s server: pymemcache's ``RendezvousHash.get_node``.

    The highest hash of ``"node-key"`` wins, a tie going to the greater node name.
    pymemcache hashes the text's code points, each cut to its low byte.
    """
    def score(index: int) -> tuple[int, str]:
        text = f"{nodes[index]}-{key}"
        try:
            data = text.encode("latin-1")  # the same bytes, when every code point fits one
        except UnicodeEncodeError:
            data = bytes(ord(c) & 0xFF for c in text)
        return _murmur3_32(data), nodes[index]

    return max(range(len(nodes)), key=score)
