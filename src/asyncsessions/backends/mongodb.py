"""MongoDB store: one document per session, written field by field, expiry checked on load."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any, TypeAlias, TypeGuard, TypeVar

import pymongo
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.collection import Collection
from pymongo.errors import PyMongoError
from pymongo.results import DeleteResult, UpdateResult

from . import flask_session
from .base import ClientBackend, Record, Write, call_deadline

__all__ = ["MongoDBBackend"]

logger = logging.getLogger(__name__)

AsyncClient = pymongo.AsyncMongoClient[dict[str, Any]]
Document = dict[str, Any]
T = TypeVar("T")

# '.' would nest, a leading '$' reads as an operator and NUL ends a BSON key; escaping '%'
# too keeps the mapping reversible. An empty name, which no escaped name can be, is "%".
_ESCAPES = {ord(char): f"%{ord(char):02X}" for char in "%.$\0"}
_ESCAPED = re.compile("%(25|2E|24|00)")
_EMPTY = "%"
# Every name _escape() writes, for Python's re and the server's PCRE alike: the lookahead ends
# the text where PCRE's "$" would also accept a final newline.
_STORED_NAME = r"^(?:%|(?:[^%.$\x00]|%(?:25|2E|24|00))+)(?![\s\S])"
_STORED_NAME_RE = re.compile(_STORED_NAME)

_PROJECTION = {"f": 1, "permanent": 1, "ttl": 1, "touched": 1}
# The last date a datetime holds; an absurd ttl's index date stops there.
_LAST_TIMESTAMP = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()
_BAD_DB_CHARS = frozenset(' ./\\"$\0')
# PyMongo waits 30 s by default for a server to appear, far past a store's timeout (5 s by
# default), so a server that is down would read as a timeout, not as the driver's error.
_SERVER_SELECTION_MS = 2000
# Lifetimes loads read, by key, for the write that usually follows in the request.
_REMEMBER_TTLS = 4096


class _Blocking:
    """A sync PyMongo collection behind the async methods this store's requests call.

    For Flask requests run without an event loop (``runs_without_loop`` in base.py): each
    coroutine completes without suspending, its operation bounded by the op's deadline
    with PyMongo's own ``timeout()``, so a server that hangs is a ``TimeoutError`` as on a
    loop.
    """

    def __init__(self, collection: Collection[Document]) -> None:
        self._collection = collection
        self.full_name = collection.full_name

    def _bounded(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline = call_deadline()
        left = None if deadline is None else deadline - time.monotonic()
        try:
            if left is not None and left <= 0:
                raise TimeoutError
            with pymongo.timeout(left):
                return method(*args, **kwargs)
        except (TimeoutError, PyMongoError) as exc:
            if isinstance(exc, PyMongoError) and not exc.timeout:
                raise
            raise TimeoutError("MongoDB did not answer in time") from exc

    async def find_one(self, filter: Document, **kwargs: Any) -> Document | None:
        return self._bounded(self._collection.find_one, filter, **kwargs)

    async def find_one_and_update(
        self, filter: Document, update: Document, **kwargs: Any
    ) -> Document | None:
        return self._bounded(self._collection.find_one_and_update, filter, update, **kwargs)

    async def update_one(self, filter: Document, update: Document) -> UpdateResult:
        return self._bounded(self._collection.update_one, filter, update)

    async def replace_one(self, filter: Document, replacement: Document, *,
                          upsert: bool) -> UpdateResult:
        return self._bounded(self._collection.replace_one, filter, replacement, upsert=upsert)

    async def delete_one(self, filter: Document) -> DeleteResult:
        return self._bounded(self._collection.delete_one, filter)

    async def delete_many(self, filter: Document) -> DeleteResult:
        return self._bounded(self._collection.delete_many, filter)

    async def create_index(self, key: str, **kwargs: Any) -> str:
        return self._bounded(self._collection.create_index, key, **kwargs)

    async def close(self) -> None:
        self._collection.database.client.close()


Sessions: TypeAlias = "AsyncCollection[Document] | _Blocking"


class MongoDBBackend(flask_session.ReadsFlaskSession, ClientBackend[AsyncClient | _Blocking]):
    """Sessions in a MongoDB collection, through PyMongo's ``AsyncMongoClient``.

    ``client`` may be a ``pymongo.AsyncMongoClient``, a Motor ``AsyncIOMotorClient`` or a
    sync ``pymongo.MongoClient``: each event loop gets an ``AsyncMongoClient`` built from the
    same constructor arguments (Motor's too: its sync delegate holds them, and PyMongo's
    async client replaces Motor, which is deprecated), and outside any loop (a Flask
    request of one op) all threads share one sync ``MongoClient`` built from them.
    Otherwise ``url``, default ``mongodb://127.0.0.1:27017``, with
    ``serverSelectionTimeoutMS=2000`` unless the URL sets one (so a server that is down
    fails with PyMongo's error inside the store's timeout). Sessions go to
    ``db``.``collection``.

    One document per session::

        {"_id": key, "f": {escaped name: JSON text}, "permanent": 0 | 1, "ttl": seconds,
         "touched": Unix time, "expires_at": Unix time, "expires": date}

    Field names are percent-escaped (``%``, ``.``, ``$``, NUL) and values kept as strings,
    so nothing is converted. A document of any other shape (another library's, or damaged)
    reads as no session, with a warning, and is left as it is; only a new session's write
    replaces it. A new session is one ``replace_one`` (upsert). Any other write sets
    the changed fields and unsets the removed ones, so concurrent requests that change
    different fields all survive, and applies only to a live record of this store's shape,
    so a record deleted, expired or replaced meanwhile is left alone: after a load in this
    process (the usual request) it is one ``update_one`` filtered on the lifetime the load
    read; otherwise, or if that matched nothing, one ``find_one_and_update`` whose filter
    checks the record's shape and liveness on the server. A write that removed the last
    field then deletes the record if it is still empty.

    A session is live while ``now < touched + ttl``; ``ttl`` is stored because a permanent
    session's differs and only the record knows which it has. A read is one ``find_one``
    and never writes, except that a refreshing read more than half-way through the lifetime
    restarts it (``touched`` and the TTL-index date) with one ``update_one``, which skips a
    record that expired or was written meanwhile. MongoDB's TTL index (on ``expires``,
    ``expireAfterSeconds=0``, created at the first write unless ``create_index=False``) only
    cleans up: a write that keeps the flag cannot compute the stored ``ttl`` into a date (an
    update pipeline can, but not on every server that speaks the protocol), so ``expires``
    is written as ``now + 1.5 * ttl``, mirrored by the number ``expires_at``, and a write
    that finds it before its own new expiry moves it on with a second update, at most once
    per ``ttl / 2`` (a write after a load knows the ttl and sets both in its one update).
    Dead records linger up to ``ttl / 2`` (plus the monitor's minute) but are never read.
    Times come from the app servers' clocks.

    With ``reads_flask_session``, a key with no record of this store is looked up as
    Flask-Session keeps it in the same collection, ``{"id": key, "val": msgpack or JSON,
    "expiration": date}``, live while ``expiration`` (UTC) is ahead; it is read as a foreign
    record and left to its own TTL index. A new record's write and a delete also delete
    Flask-Session's document of that key (one more round trip), so a replaced session never
    comes back; a sparse index on ``id``, created with the TTL index, keeps those lookups
    off a collection scan (Flask-Session made none).
    """

    def __init__(
        self,
        *,
        client: Any = None,
        url: str | None = None,
        db: str = "asyncsessions",
        collection: str = "sessions",
        create_index: bool = True,
    ) -> None:
        super().__init__()
        if client is not None and url is not None:
            raise ValueError("give client or url, not both")
        if url is not None:
            _check_url(url)
        _check_db(db)
        _check_collection(collection)
        if not isinstance(create_index, bool):
            raise TypeError("create_index must be True or False")
        self.db = db
        self.collection = collection
        self._index_pending = create_index
        settings = _settings(client, url)
        # Results are read as plain dicts whatever document_class the user's client has.
        self._kwargs = {**settings, "document_class": dict}
        self.location = f"{_servers(settings)}/{db}.{collection}"
        self._ttls = _Ttls()

    # A Flask request of one op calls this store outside any event loop: PyMongo's sync
    # client, one for all threads as Flask-Session's, then saves the async client's and the
    # loop's cost per call (measured: ~0.2-0.5 ms per op on the test server).
    runs_without_loop = True
    shares_client_outside_loops = True

    def _new_client(self) -> AsyncClient | _Blocking:
        if asyncio._get_running_loop() is None:
            return _Blocking(pymongo.MongoClient(**self._kwargs)[self.db][self.collection])
        return pymongo.AsyncMongoClient(**self._kwargs)

    async def _close_client(self, client: AsyncClient | _Blocking) -> None:
        # The base class looks for aclose(), which this client answers with a database.
        await client.close()

    def _sessions(self) -> Sessions:
        client = self.client
        if isinstance(client, _Blocking):
            return client
        return client[self.db][self.collection]

    def _loop_sessions(self) -> AsyncCollection[Document]:
        """The CLI's collection: it always runs in an event loop."""
        client = self.client
        assert not isinstance(client, _Blocking)
        return client[self.db][self.collection]

    async def load(self, key: str, *, touch: bool) -> Record | None:
        sessions = self._sessions()
        now = time.time()
        doc = await sessions.find_one({"_id": key}, projection=_PROJECTION)
        if doc is None:
            if self.reads_flask_session:
                return await self._load_flask_session(sessions, key)
            return None
        try:
            record = _record(doc)
        except _NotOurs as exc:
            self.unreadable(key, str(exc))
            return None
        touched, ttl = doc["touched"], doc["ttl"]
        if not touched + ttl > now:
            return None
        self._ttls.put(key, ttl)
        if touch and now - touched > ttl / 2:
            # Skipped if the record expired or was written (and so restarted) meanwhile.
            await sessions.update_one(
                {"_id": key, "ttl": ttl, "touched": {"$gt": now - ttl, "$lt": now - ttl / 2}},
                {"$set": {"touched": now, **_expiry(now, ttl)}},
            )
        return record

    async def _load_flask_session(
        self, sessions: Sessions, key: str
    ) -> Record | None:
        """Flask-Session's document of ``key``, if it is live."""
        doc = await sessions.find_one({"id": key}, projection={"_id": 0, "val": 1, "expiration": 1})
        if doc is None:
            return None
        expiration, value = doc.get("expiration"), doc.get("val")
        if isinstance(expiration, str):
            # A date as text: what some servers that speak MongoDB's protocol (nx-27017, the
            # test server) keep when an update $sets a date on a document already there.
            with contextlib.suppress(ValueError):
                expiration = datetime.fromisoformat(expiration)
        if not isinstance(expiration, datetime) or not isinstance(value, (bytes, str)):
            self.unreadable(key, "a document with an id, but no date expiration or no val")
            return None
        if expiration.tzinfo is None:  # Flask-Session wrote datetime.utcnow() + lifetime
            expiration = expiration.replace(tzinfo=timezone.utc)
        if expiration <= datetime.now(timezone.utc):
            return None
        return flask_session.read(self, key, value.encode() if isinstance(value, str) else value)

    async def store(self, key: str, write: Write) -> bool:
        sessions = self._sessions()
        now = time.time()
        if write.create:
            written = await _create(sessions, key, write, now)
            if self.reads_flask_session:
                # Flask-Session's document of a session rewritten here: never read again.
                await sessions.delete_many({"id": key})
        else:
            ttl = self._ttls.take(key)
            written = ttl is not None and await _update_loaded(sessions, key, write, now, ttl)
            written = written or await _update(sessions, key, write, now)
        if written and self._index_pending:
            self._index_pending = False
            await _create_ttl_index(sessions, flask_session_ids=self.reads_flask_session)
        return written

    # -- the CLI's (see base.py) ---------------------------------------------------------------

    purges_expired = True  # what the TTL index has not deleted yet, or all without one

    async def count(self, prefix: str) -> int | None:
        live = {"$cond": [_OURS, _alive(time.time()), False]}
        return await self._loop_sessions().count_documents({**_under(prefix), "$expr": live})

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        sessions = self._loop_sessions()
        if dry_run:
            found = await sessions.count_documents(_dead(prefix, time.time()))
            if found:
                yield found
            return
        while True:
            ids = [doc["_id"] async for doc in sessions.find(
                _dead(prefix, time.time()), projection={"_id": 1}, limit=batch)]
            if not ids:
                return
            # Again, with the clock of now: a record revived meanwhile stays.
            result = await sessions.delete_many(
                {"$and": [{"_id": {"$in": ids}}, _dead(prefix, time.time())]})
            if result.deleted_count:
                yield result.deleted_count
            if len(ids) < batch:
                return

    async def expires_at(self, key: str) -> float | None:
        doc = await self._loop_sessions().find_one({"_id": key}, projection=_PROJECTION)
        if doc is None:
            return None
        try:
            _record(doc)
        except _NotOurs:
            return None
        expires = float(doc["touched"] + doc["ttl"])
        return expires if expires > time.time() else None

    async def delete(self, key: str) -> None:
        self._ttls.take(key)
        if self.reads_flask_session:
            await self._sessions().delete_many({"$or": [{"_id": key}, {"id": key}]})
        else:
            await self._sessions().delete_one({"_id": key})


async def _create(
    sessions: Sessions, key: str, write: Write, now: float
) -> bool:
    assert write.permanent is not None  # see Write
    assert write.ttl is not None
    if not write.changed:
        await sessions.delete_one({"_id": key})  # a record without fields is none
        return True
    # A new id: whatever is under it is another program's, replaced whole. The _id is in
    # the replacement too: some servers take it only from there when they insert.
    await sessions.replace_one({"_id": key}, {
        "_id": key, "f": {_escape(name): _text(value) for name, value in write.changed.items()},
        **_flag(write.permanent, write.ttl, now),
    }, upsert=True)
    return True


async def _update_loaded(
    sessions: Sessions, key: str, write: Write, now: float, ttl: int
) -> bool:
    """The write of a request whose load read the record with lifetime ``ttl``: one update.

    Knowing the lifetime, the filter is plain fields on the ``_id`` index, where
    :func:`_update`'s computes liveness and checks every field name server-side (which
    costs a slow server more than the round trip), and the TTL-index date is set in the same
    update. The load checked this very document; one that kept its ``ttl`` and is live
    is one of ours. ``False``: not applied (emptied, gone, or its lifetime changed
    meanwhile), for :func:`_update` to settle.
    """
    if write.removed and not write.changed:
        return False  # it may empty the record: the general path deletes it in the same step
    update = _update_document(write, now, {"touched": now, **_expiry(now, ttl)})
    # No type checks beyond the numbers': they cost nx-27017 0.5 ms of a 1.3 ms update.
    result = await sessions.update_one(
        {"_id": key, "ttl": ttl, "touched": {"$gt": now - ttl}}, update)
    return result.matched_count == 1


def _update_document(write: Write, now: float, touch: Document) -> Document:
    """``$set``/``$unset`` of ``write``; ``touch`` restarts the lifetime when the flag stays."""
    values = {_path(name): _text(value) for name, value in write.changed.items()}
    if write.permanent is None or write.ttl is None:  # (both or neither: see Write)
        update: Document = {"$set": {**values, **touch}}
    else:
        update = {"$set": {**values, **_flag(write.permanent, write.ttl, now)}}
    if write.removed:
        update["$unset"] = {_path(name): "" for name in write.removed}
    return update


async def _update(
    sessions: Sessions, key: str, write: Write, now: float
) -> bool:
    update = _update_document(write, now, {"touched": now})
    emptying = bool(write.removed) and not write.changed
    doc = await sessions.find_one_and_update(
        {"$and": [{"_id": key}, {"$expr": {"$cond": [_OURS, _alive(now), False]}}]},
        update,
        projection={"f": 1, "ttl": 1, "expires_at": 1} if emptying else {"ttl": 1, "expires_at": 1},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return False  # deleted, expired or not ours: nothing to update
    if emptying and doc.get("f") == {}:
        # Only while still empty: a field another request added meanwhile keeps it alive.
        await sessions.delete_one({"$and": [{"_id": key}, _NO_FIELDS]})
    elif write.permanent is None:
        ttl, expires_at = doc["ttl"], doc.get("expires_at")
        if not _is_number(expires_at) or expires_at < now + ttl:
            # Skipped if a write changed the ttl meanwhile: it set its own expiry.
            await sessions.update_one({"_id": key, "ttl": ttl}, {"$set": _expiry(now, ttl)})
    return True


def _settings(client: Any, url: str | None) -> dict[str, Any]:
    """The constructor arguments of an ``AsyncMongoClient`` like ``client``."""
    if client is None:
        settings: dict[str, Any] = {"host": url or "mongodb://127.0.0.1:27017"}
        if "serverselectiontimeoutms=" not in settings["host"].lower():
            settings["serverSelectionTimeoutMS"] = _SERVER_SELECTION_MS
        return settings
    # Motor's clients wrap a sync MongoClient; looked up by duck typing so Motor stays optional.
    delegate = getattr(client, "delegate", None)
    if not isinstance(client, pymongo.AsyncMongoClient) and isinstance(
        delegate, pymongo.MongoClient
    ):
        client = delegate
    if isinstance(client, (pymongo.AsyncMongoClient, pymongo.MongoClient)):
        # What PyMongo's own _duplicate() reuses: hosts, URL options, credentials, listeners.
        return dict(client._init_kwargs)
    raise TypeError(
        "client must be pymongo.AsyncMongoClient, e.g. "
        "pymongo.AsyncMongoClient(host='127.0.0.1', port=27017), "
        f"not {type(client).__qualname__}"
    )


def _servers(settings: dict[str, Any]) -> str:
    """The servers ``settings`` connect to, as a URL without credentials or options."""
    host, port = settings.get("host") or "localhost", settings.get("port") or 27017
    scheme = "mongodb"
    seeds: list[str] = []
    for item in [host] if isinstance(host, str) else list(host):
        if "://" in item:
            scheme, _, rest = item.partition("://")
            seeds += re.split("[/?]", rest, maxsplit=1)[0].rpartition("@")[2].split(",")
        else:
            seeds.append(item)
    # SRV names and socket paths take no port.
    bare = scheme == "mongodb+srv"
    return f"{scheme}://" + ",".join(
        seed if bare or seed.endswith(".sock") or re.search(r":\d+$", seed)
        else f"{seed}:{port}" for seed in seeds
    )


# Error messages never quote the value nor spell out the URL scheme (it contains "db"):
# config blames the first option whose name appears in the message.


def _check_url(url: Any) -> None:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if not url.startswith(("mongodb:", "mongodb+srv:")):
        raise ValueError("url must be a MongoDB URI (its scheme is missing or wrong)")


def _check_db(db: Any) -> None:
    if not isinstance(db, str):
        raise TypeError(f"db must be a str, not {type(db).__name__}")
    if not db or _BAD_DB_CHARS & set(db):
        raise ValueError("db must be a non-empty name without space . / \\ \" $ or NUL")


def _check_collection(collection: Any) -> None:
    if not isinstance(collection, str):
        raise TypeError(f"collection must be a str, not {type(collection).__name__}")
    if not collection or "$" in collection or "\0" in collection or (
        collection.startswith(".") or collection.endswith(".")
    ):
        raise ValueError("collection must be a non-empty name without $ or NUL, "
                         "not starting or ending with '.'")


def _escape(name: str) -> str:
    return name.translate(_ESCAPES) or _EMPTY


def _path(name: str) -> str:
    return "f." + _escape(name)


def _name(stored: str) -> str:
    if stored == _EMPTY:
        return ""
    return _ESCAPED.sub(lambda match: chr(int(match[1], 16)), stored)


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_type(path: str, *bson_types: str) -> Document:
    return {"$in": [{"$type": path}, list(bson_types)]}


# The records _record() reads, for the filter of an update: it never merges into another.
_OURS: Document = {"$and": [
    _has_type("$ttl", "int", "long"), {"$gt": ["$ttl", 0]},
    _has_type("$touched", "int", "long", "double"),
    _has_type("$permanent", "int", "long"), {"$in": ["$permanent", [0, 1]]},
    {"$cond": [
        _has_type("$f", "object"),
        {"$allElementsTrue": [{"$map": {
            "input": {"$objectToArray": "$f"},
            "in": {"$and": [
                _has_type("$$this.v", "string"),
                {"$regexMatch": {"input": "$$this.k", "regex": _STORED_NAME}},
            ]},
        }}]},
        False,
    ]},
]}
_NO_FIELDS: Document = {"$expr": {"$eq": ["$f", {"$literal": {}}]}}


def _under(prefix: str) -> Document:
    """Documents whose (string) ``_id`` starts with ``prefix``, on the ``_id`` index."""
    return {"_id": {"$regex": "^" + re.escape(prefix)}}


def _dead(prefix: str, now: float) -> Document:
    """This store's records under ``prefix`` that have expired."""
    return {**_under(prefix), "$expr": {"$cond": [_OURS, {"$not": [_alive(now)]}, False]}}


def _alive(now: float) -> Document:
    # Only where _OURS holds: $add fails on anything but numbers.
    return {"$gt": [{"$add": ["$touched", "$ttl"]}, now]}


class _Ttls:
    """Lifetimes of the records loads read, by key, each taken by the write that follows.

    Bounded (oldest first out): a read-only request's entry stays until later loads push it
    out. Locked, as Flask's bridge runs loops on several threads.
    """

    def __init__(self, max_items: int = _REMEMBER_TTLS) -> None:
        self.max_items = max_items
        self._ttls: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, key: str, ttl: int) -> None:
        with self._lock:
            self._ttls.pop(key, None)
            self._ttls[key] = ttl
            if len(self._ttls) > self.max_items:
                del self._ttls[next(iter(self._ttls))]

    def take(self, key: str) -> int | None:
        with self._lock:
            return self._ttls.pop(key, None)


class _NotOurs(Exception):
    """A document this store did not write; the message says what gave it away."""


def _record(doc: Document) -> Record:
    """The session in ``doc``, live or not; :class:`_NotOurs` if it is not a record."""
    touched, ttl, permanent = doc.get("touched"), doc.get("ttl"), doc.get("permanent")
    if not _is_number(touched):
        raise _NotOurs("touched is not a time")
    if not (_is_int(ttl) and ttl > 0):
        raise _NotOurs("ttl is not a positive whole number")
    if not (_is_int(permanent) and permanent in (0, 1)):
        raise _NotOurs("permanent is not 0 or 1")
    stored = doc.get("f")
    if not isinstance(stored, dict):
        raise _NotOurs("f is not a document")
    fields: dict[str, bytes] = {}
    for name, value in stored.items():
        if not isinstance(value, str):
            raise _NotOurs("a value in f is not a string")
        if not _STORED_NAME_RE.match(name):
            raise _NotOurs("a name in f is not escaped")
        fields[_name(name)] = value.encode("utf-8")
    return Record(fields, permanent == 1)


def _flag(permanent: bool, ttl: int, now: float) -> Document:
    return {"permanent": int(permanent), "ttl": ttl, "touched": now, **_expiry(now, ttl)}


def _expiry(now: float, ttl: int) -> Document:
    expires_at = now + ttl + ttl / 2
    expires = datetime.fromtimestamp(min(expires_at, _LAST_TIMESTAMP), timezone.utc)
    return {"expires_at": expires_at, "expires": expires}


async def _create_ttl_index(
    sessions: Sessions, *, flask_session_ids: bool = False
) -> None:
    try:
        await sessions.create_index("expires", expireAfterSeconds=0)
    except PyMongoError as exc:
        # Sessions still expire on load; only the clean-up of dead ones is missing.
        logger.warning(
            "could not create the TTL index on %s.expires (%s); expired sessions stay "
            "until deleted: create it with expireAfterSeconds=0, or pass create_index=False",
            sessions.full_name, exc,
        )
    if flask_session_ids:
        try:
            await sessions.create_index("id", sparse=True)  # only Flask-Session's have an id
        except PyMongoError as exc:
            logger.warning(
                "could not create an index on %s.id (%s); looking up Flask-Session's "
                "sessions scans the collection: create one (sparse=True)",
                sessions.full_name, exc,
            )
