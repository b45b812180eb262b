"""cachelib store: a session as one JSON value in any cachelib cache, off the event loop."""

from __future__ import annotations

import copy
import os
import pickle
import re
import threading
import time
from typing import IO, Any, NamedTuple

from cachelib import BaseCache, FileSystemCache, MemcachedCache, NullCache

from ..serialization import join_fields, split_fields
from .base import Backend, Record, Write, run_blocking

__all__ = ["CacheLibBackend"]

# Record fields beside the session's own; session keys can never start with NUL.
_TTL = "\0ttl"
_PERMANENT = "\0p"
_WRITTEN = "\0t"  # Unix time of the last write, for the expiry and the sliding refresh
# A sliding refresh rewrites the record (cachelib has no touch), once it is this old: a tenth
# of its lifetime or a minute, whichever is shorter.
_REFRESH_FRACTION = 10
_REFRESH_AT_MOST = 60.0
_LOCK_STRIPES = 64
# FileSystemCache keeps its file count as an int pickled by pickle.dumps (protocol 2+: the
# opcode K, M, J or LONG1, framed when long enough). It is read by matching exactly those
# bytes: nothing this store reads is ever unpickled.
_COUNT = re.compile(
    rb"\x80[\x02-\x05](?:\x95.{8})?(?:K(.)|M(..)|J(.{4})|\x8a(.)(.*))\.", re.DOTALL)


class CacheLibBackend(Backend):
    """Sessions in a `cachelib <https://cachelib.readthedocs.io>`_ cache (``client``).

    Any cache with a serializer will do: ``SimpleCache``, ``FileSystemCache``,
    ``RedisCache``, ``ValkeyCache``, ``MongoDbCache``, ``DynamoDbCache``, ``UWSGICache``.
    Each call runs in a worker thread, as cachelib's clients block.

    **Concurrent requests can lose updates.** cachelib has no compare-and-set, no
    conditional write and no touch, so a write is a read, a merge and a ``set``. This store
    serializes those steps per session inside one process, so there (and always with
    ``SimpleCache``, which lives in one process) concurrent writes of different fields all
    survive and a write never brings back a session that a logout deleted. Between
    processes or machines sharing a cache (a ``FileSystemCache`` directory, a Redis server)
    nothing can: a write racing another write of the same session can undo that write's
    changes, and a write racing a logout or ``regenerate()`` can bring the deleted session
    back until it expires. Where that matters use the ``filesystem``, ``redis``,
    ``memcache`` or ``mongodb`` store, which merge atomically.

    Each session is one value ``{"\\u0000ttl": 86400, "\\u0000p": false, "\\u0000t":
    1700000000.0, field: value, …}`` that this store serializes itself. The client is used
    through a copy of it whose serializer passes those bytes through unread, so nothing
    this store reads is ever unpickled, whoever wrote it: a value of another program (such
    as Flask-Session's pickles) reads as no session, with a warning, and is left as it is.
    The copy shares the client's connections and storage. ``MemcachedCache`` is refused:
    its memcached drivers unpickle what they read themselves.

    A record expires ``ttl`` seconds after its last write. As a refresh is a rewrite, a
    read rewrites the record only once it is a tenth of its lifetime or a minute old,
    whichever comes first: most read-only requests write nothing, and a session expires
    between its lifetime less that much and its whole lifetime after its last request.

    cachelib's own limits apply: ``SimpleCache`` is per process and evicts beyond its
    ``threshold``; ``FileSystemCache`` evicts the records nearest to expiry beyond its
    ``threshold`` and removes expired files only then, so with ``threshold=0`` (which keeps
    every session) expired files stay until something else removes them.
    """

    merges_fields = False

    def __init__(self, *, client: BaseCache | None = None) -> None:
        if client is None:
            raise ValueError(
                "client is required: a cachelib cache, e.g. "
                "cachelib.FileSystemCache('/var/lib/app/sessions', threshold=0)"
            )
        if not isinstance(client, BaseCache):
            raise TypeError(
                f"client must be a cachelib cache (cachelib.BaseCache), "
                f"not {type(client).__module__}.{type(client).__qualname__}"
            )
        if isinstance(client, MemcachedCache):
            raise TypeError(
                "client: cachelib's MemcachedCache is refused, as its memcached driver "
                "unpickles what it reads; use session_type 'memcache' for memcached"
            )
        if type(client) in (BaseCache, NullCache):
            raise TypeError("client keeps nothing: use session_type 'null' for no sessions")
        if getattr(client, "serializer", None) is None:
            raise TypeError(
                f"client: {type(client).__qualname__} has no serializer, so asyncsessions "
                "cannot keep it from unpickling what it reads"
            )
        cache = copy.copy(client)
        try:
            cache.serializer = _Verbatim()  # type: ignore[attr-defined]
        except AttributeError:
            raise TypeError(
                f"client: the serializer of {type(client).__qualname__} cannot be replaced"
            ) from None
        self._cache: Any = cache
        self._locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))
        self.location = _location(client)

    async def load(self, key: str, *, touch: bool) -> Record | None:
        try:
            stored = await run_blocking(self._load, key, touch)
        except _Unreadable as exc:
            self.unreadable(key, str(exc))
            return None
        return None if stored is None else Record(stored.fields, stored.permanent)

    async def store(self, key: str, write: Write) -> bool:
        # A snapshot: the caller's loop goes on while the thread runs.
        write = Write(dict(write.changed), tuple(write.removed), write.permanent, write.ttl,
                      create=write.create)
        return await run_blocking(self._store, key, write)

    async def delete(self, key: str) -> None:
        await run_blocking(self._delete, key)

    async def expires_at(self, key: str) -> float | None:
        return await run_blocking(self._expires_at, key)

    # -- in a worker thread -------------------------------------------------------------------

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[hash(key) % _LOCK_STRIPES]

    def _read(self, key: str) -> _Stored | None:
        """The live record under ``key``; ``_Unreadable`` for a value this store did not write."""
        stored = _parse(self._cache.get(key))
        if stored is None or stored.written + stored.ttl <= time.time() or not stored.fields:
            return None
        return stored

    def _expires_at(self, key: str) -> float | None:
        try:
            stored = _parse(self._cache.get(key))
        except _Unreadable:
            return None
        return None if stored is None else stored.written + stored.ttl

    def _load(self, key: str, touch: bool) -> _Stored | None:
        if not touch:
            return self._read(key)
        with self._lock(key):
            stored = self._read(key)
            if stored is not None:
                age = time.time() - stored.written
                if age >= min(stored.ttl / _REFRESH_FRACTION, _REFRESH_AT_MOST):
                    self._put(key, stored.fields, stored.permanent, stored.ttl)
        return stored

    def _store(self, key: str, write: Write) -> bool:
        with self._lock(key):
            if write.create:
                fields: dict[str, bytes] = {}
                permanent, ttl = write.permanent, write.ttl
                assert permanent is not None
                assert ttl is not None
            else:
                try:
                    stored = self._read(key)
                except _Unreadable:
                    return False  # not a record of ours (the load logged it): left as it is
                if stored is None:
                    return False  # deleted (logout, regenerate) or expired: never resurrected
                fields = stored.fields
                if write.permanent is None or write.ttl is None:
                    permanent, ttl = stored.permanent, stored.ttl
                else:
                    permanent, ttl = write.permanent, write.ttl
            fields.update(write.changed)
            for name in write.removed:
                fields.pop(name, None)
            if fields:
                self._put(key, fields, permanent, ttl)
            elif not write.create:
                self._remove(key)
        return True

    def _delete(self, key: str) -> None:
        with self._lock(key):
            self._remove(key)

    def _put(self, key: str, fields: dict[str, bytes], permanent: bool, ttl: int) -> None:
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1 second, not {ttl}")  # 0: never expire
        blob = join_fields({_TTL: b"%d" % ttl, _PERMANENT: b"true" if permanent else b"false",
                            _WRITTEN: repr(time.time()).encode(), **fields})
        if not self._cache.set(key, blob, timeout=ttl):
            raise RuntimeError(
                f"{type(self._cache).__name__} did not store the session record "
                "(cachelib logs why)"
            )

    def _remove(self, key: str) -> None:
        cache = self._cache
        # Some caches answer False for a key that was not there: only one still there failed.
        if not cache.delete(key) and cache.has(key):
            raise RuntimeError(
                f"{type(cache).__name__} did not delete the session record (cachelib logs why)"
            )


class _Stored(NamedTuple):
    ttl: int
    permanent: bool
    written: float
    fields: dict[str, bytes]


class _Unreadable(Exception):
    """A value under a record's key that this store did not write (the message says why)."""


def _parse(value: Any) -> _Stored | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, str)):
        raise _Unreadable(f"a {type(value).__name__}, not a serialized record")
    try:
        fields = split_fields(value)
    except ValueError as exc:  # a pickle, another program's JSON, a damaged value
        raise _Unreadable(f"not a JSON object of fields: {exc}") from None
    ttl, permanent = fields.pop(_TTL, b""), fields.pop(_PERMANENT, None)
    written = fields.pop(_WRITTEN, b"")
    if not ttl.isdigit() or int(ttl) < 1:
        raise _Unreadable(f"ttl {ttl[:30]!r} is no lifetime")
    if permanent not in (b"true", b"false"):
        raise _Unreadable("no permanent flag")
    try:
        when = float(written)
    except ValueError:
        raise _Unreadable("no time of writing") from None
    return _Stored(int(ttl), permanent == b"true", when, fields)


class _Verbatim:
    """A cachelib serializer that stores this store's bytes as they are and never unpickles.

    ``dumps``/``loads`` serve the caches that keep bytes (Redis, Mongo, …), ``dump``/``load``
    ``FileSystemCache``'s files.
    """

    def dumps(self, value: Any, *args: Any, **kwargs: Any) -> bytes:
        if not isinstance(value, bytes):
            raise TypeError(f"only serialized records are stored, not {type(value).__name__}")
        return value

    def loads(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        return value  # bytes as stored (None for a miss): parsed by the store, never unpickled

    def dump(self, value: Any, f: IO[bytes], *args: Any, **kwargs: Any) -> None:
        if type(value) is int:
            # FileSystemCache's own file count (with a threshold), kept as cachelib keeps it.
            pickle.dump(value, f)
        else:
            f.write(self.dumps(value))

    def load(self, f: IO[bytes], *args: Any, **kwargs: Any) -> Any:
        data = f.read()
        count = _COUNT.fullmatch(data)
        if count is None:
            return data
        # FileSystemCache's file count, which applies its threshold.
        small, medium, signed, size, long = count.groups()
        if size is not None:
            if len(long) != size[0]:
                return data
            return int.from_bytes(long, "little", signed=True)
        raw = small or medium or signed
        return int.from_bytes(raw, "little", signed=raw is signed)


def _location(client: BaseCache) -> str:
    """Where ``client`` keeps its values, for errors and to refuse two stores on one place."""
    kind = type(client).__name__
    if isinstance(client, FileSystemCache):
        path = getattr(client, "_path", None)
        if isinstance(path, str):
            return f"cachelib {kind} {os.path.abspath(path)}"
    redis = getattr(client, "_write_client", None)  # RedisCache, ValkeyCache
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", None)
    if isinstance(kwargs, dict):
        prefix = getattr(client, "key_prefix", "")
        where = (f"unix://{kwargs['path']}" if kwargs.get("path") else
                 f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}")
        return f"cachelib {kind} {where}/{kwargs.get('db', 0)}" + (
            f" prefix {prefix!r}" if isinstance(prefix, str) and prefix else "")
    # Nothing to name the server by: the object itself (so two stores sharing it collide).
    return f"cachelib {kind} at 0x{id(client):x}"
