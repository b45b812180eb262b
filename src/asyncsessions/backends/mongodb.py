"""MongoDB store: one document per session, written field by field, expiry refreshed on the read."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import Any, TypeGuard

import pymongo
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from .base import ClientBackend, Record

__all__ = ["MongoDBBackend"]

logger = logging.getLogger(__name__)

AsyncClient = pymongo.AsyncMongoClient[dict[str, Any]]
Document = dict[str, Any]

# '.' would nest, a leading '$' reads as an operator and NUL ends a BSON key; escaping '%'
# too keeps the mapping reversible. An empty name, which no escaped name can be, is "%".
_ESCAPES = {ord(char): f"%{ord(char):02X}" for char in "%.$\0"}
_ESCAPED = re.compile("%(25|2E|24|00)")
_EMPTY = "%"

_PROJECTION = {"f": 1, "permanent": 1, "ttl": 1, "touched": 1, "expires_at": 1}
_BAD_DB_CHARS = frozenset(' ./\\"$\0')


class MongoDBBackend(ClientBackend[AsyncClient]):
    """Sessions in a MongoDB collection, through PyMongo's ``AsyncMongoClient``.

    ``client`` may be a ``pymongo.AsyncMongoClient``, a Motor ``AsyncIOMotorClient`` or a
    sync ``pymongo.MongoClient``: each event loop gets an ``AsyncMongoClient`` built from the
    same constructor arguments (Motor's too: its sync delegate holds them, and PyMongo's
    async client replaces Motor, which is deprecated). Otherwise ``url``, default
    ``mongodb://127.0.0.1:27017``. Sessions go to ``db``.``collection``.

    One document per session::

        {"_id": key, "f": {escaped name: JSON text}, "permanent": 0 | 1, "ttl": seconds,
         "touched": Unix time, "expires_at": Unix time, "expires": date}

    Field names are percent-escaped (``%``, ``.``, ``$``, NUL) and values kept as strings,
    so nothing is converted. A write is one ``update_one`` (``$set`` the changed fields,
    ``$unset`` the removed ones, upsert): concurrent requests that change different fields
    both survive.

    A session is live while ``now < touched + ttl``; ``ttl`` is stored because a permanent
    session's differs and only the record knows which it has. A refreshing read is one
    ``find_one_and_update`` whose filter checks liveness with ``$expr`` (so an expired record
    is never revived) and which sets ``touched`` to now. MongoDB's TTL index (on ``expires``,
    ``expireAfterSeconds=0``, created at the first write unless ``create_index=False``) only
    cleans up: no update operator can add the stored ``ttl`` to the time (an update pipeline
    can, but not on every server that speaks the protocol), so ``expires`` is written as
    ``now + 1.5 * ttl``, mirrored by the number ``expires_at``, and a read that finds it
    before its own new expiry moves it on with a second update, at most once per ``ttl / 2``.
    Dead records linger up to ``ttl / 2`` (plus the monitor's minute) but are never read.
    Times come from the app servers' clocks.
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
        self._make = _cloner(_settings(client, url))

    def _new_client(self) -> AsyncClient:
        return self._make()

    async def _close_client(self, client: AsyncClient) -> None:
        # The base class looks for aclose(), which this client answers with a database.
        await client.close()

    def _sessions(self) -> AsyncCollection[Document]:
        return self.client[self.db][self.collection]

    async def load(self, key: str, *, touch: bool) -> Record | None:
        sessions = self._sessions()
        now = time.time()
        if not touch:
            return _record(await sessions.find_one({"_id": key}, projection=_PROJECTION), now)
        doc = await sessions.find_one_and_update(
            {"$and": [{"_id": key}, _live_at(now)]},
            {"$set": {"touched": now}},
            projection=_PROJECTION,
        )
        record = _record(doc, now)
        if record is not None and doc is not None:
            ttl = doc["ttl"]
            expires_at = doc.get("expires_at")
            if not _is_number(expires_at) or expires_at < now + ttl:
                # Skipped if a write changed the ttl meanwhile: it set its own expiry.
                await sessions.update_one({"_id": key, "ttl": ttl}, {"$set": _expiry(now, ttl)})
        return record

    async def store(
        self,
        key: str,
        changed: Mapping[str, bytes],
        removed: Collection[str],
        *,
        permanent: bool,
        ttl: int,
    ) -> None:
        sessions = self._sessions()
        now = time.time()
        values = {_path(name): value.decode("utf-8") for name, value in changed.items()}
        update: Document = {
            "$set": {**values, "permanent": int(permanent), "ttl": ttl, "touched": now,
                     **_expiry(now, ttl)},
        }
        if removed:
            update["$unset"] = {_path(name): "" for name in removed}
        await sessions.update_one({"_id": key}, update, upsert=True)
        if self._index_pending:
            self._index_pending = False
            await _create_ttl_index(sessions)

    async def delete(self, key: str) -> None:
        await self._sessions().delete_one({"_id": key})


def _settings(client: Any, url: str | None) -> dict[str, Any]:
    """The constructor arguments of an ``AsyncMongoClient`` like ``client``."""
    if client is None:
        return {"host": url or "mongodb://127.0.0.1:27017"}
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


def _cloner(settings: dict[str, Any]) -> Callable[[], AsyncClient]:
    # Results are read as plain dicts whatever document_class the user's client has.
    kwargs = {**settings, "document_class": dict}

    def clone() -> AsyncClient:
        return pymongo.AsyncMongoClient(**kwargs)

    return clone


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


def _path(name: str) -> str:
    return "f." + (name.translate(_ESCAPES) or _EMPTY)


def _name(stored: str) -> str:
    if stored == _EMPTY:
        return ""
    return _ESCAPED.sub(lambda match: chr(int(match[1], 16)), stored)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _live_at(now: float) -> Document:
    """A filter for records alive at ``now``; one with odd types (not ours) never matches."""
    # $cond evaluates only the branch taken, so $add never sees a non-number.
    numbers = {"$and": [{"$isNumber": "$touched"}, {"$isNumber": "$ttl"}]}
    alive = {"$gt": [{"$add": ["$touched", "$ttl"]}, now]}
    return {"$expr": {"$cond": [numbers, alive, False]}}


def _record(doc: Document | None, now: float) -> Record | None:
    """The session in ``doc``, or ``None`` if there is none, it expired or it is not ours."""
    if doc is None:
        return None
    touched, ttl = doc.get("touched"), doc.get("ttl")
    if not (_is_number(touched) and _is_number(ttl)) or touched + ttl <= now:
        return None
    stored = doc.get("f")
    fields: dict[str, bytes] = {}
    for name, value in (stored.items() if isinstance(stored, dict) else ()):
        # Anything but text is not ours: bytes go to the engine, which drops what it can't
        # read (and removes it at the next write); other types are left out.
        if isinstance(value, str):
            fields[_name(name)] = value.encode("utf-8")
        elif isinstance(value, bytes):
            fields[_name(name)] = value
    return Record(fields, doc.get("permanent") == 1)


def _expiry(now: float, ttl: int) -> Document:
    expires_at = now + ttl + ttl / 2
    return {"expires_at": expires_at,
            "expires": datetime.fromtimestamp(expires_at, timezone.utc)}


async def _create_ttl_index(sessions: AsyncCollection[Document]) -> None:
    try:
        await sessions.create_index("expires", expireAfterSeconds=0)
    except PyMongoError as exc:
        # Sessions still expire on load; only the clean-up of dead ones is missing.
        logger.warning(
            "could not create the TTL index on %s.expires (%s); expired sessions stay "
            "until deleted: create it with expireAfterSeconds=0, or pass create_index=False",
            sessions.full_name, exc,
        )
