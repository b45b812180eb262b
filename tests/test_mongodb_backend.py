"""Tests for the MongoDB session store, over the wire against nx-27017.

nx-27017 speaks MongoDB's wire protocol but differs in ways these tests keep clear of:
``$set`` on an existing document stores a datetime as a string and a bool as an int (so the
store reads only numbers and strings back, and tests plant odd types with ``insert_one``), it
rounds doubles to about 10 µs (so an equality filter on a stored time misses: the store
filters times by range), ``list_indexes`` names the TTL index its own way, it ignores ``_id``
beside a top-level ``$expr`` (the store puts both in an ``$and``), an upserting
``replace_one`` takes ``_id`` from the replacement only (the store puts it in both), the query
``{"f": {}}`` matches any ``f`` (the store compares with ``$expr``), ``$in`` in ``$expr``
finds ``true`` in ``[0, 1]``, ``$set`` under an ``f`` that is no document is silently dropped
where MongoDB fails, it allows ``$expr`` in an upsert's filter where MongoDB refuses it, it has
no update pipelines, and with ``--db memory`` it runs no TTL monitor, so deletion by the index
is MongoDB's to test; expiry on load is tested here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from apps import Driver
from asyncsessions.backends.base import Record, Write, close_loop_clients, masked
from asyncsessions.backends.mongodb import MongoDBBackend
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from servers import MongoServer

pytestmark = pytest.mark.server("mongodb")

DB = "asyncsessions"


class Commands(monitoring.CommandListener):
    """Records the name of every command a client sends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


@pytest.fixture
def collection() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def key() -> str:
    return "session:" + secrets.token_urlsafe(32)


@pytest.fixture
def probe(mongo_server: MongoServer, collection: str) -> Iterator[Any]:
    """The store's collection through a sync client, to inspect and tamper with documents."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server.url)
    yield client[DB][collection]
    client.close()


@pytest.fixture
async def backend(mongo_server: MongoServer, collection: str) -> AsyncIterator[MongoDBBackend]:
    yield MongoDBBackend(url=mongo_server.url, collection=collection)
    await close_loop_clients()


@pytest.fixture
async def watched(
    mongo_server: MongoServer, collection: str
) -> AsyncIterator[tuple[MongoDBBackend, Commands]]:
    """A backend on a user client with command monitoring, which the per-loop clone keeps."""
    commands = Commands()
    client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(
        mongo_server.url, event_listeners=[commands]
    )
    yield MongoDBBackend(client=client, collection=collection), commands
    await close_loop_clients()
    await client.close()


def create(fields: dict[str, bytes], *, permanent: bool = False, ttl: int = 60) -> Write:
    return Write(fields, (), permanent, ttl, create=True)


@pytest.mark.anyio
async def test_odd_field_names_round_trip_escaped(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    names = ["a.b", "...", "$where", "a$b", "%", "%2E", "%25", "", "nul\0inside", "ключ 🙂",
             "$", "x.$y%", "line\n", "%\n"]
    fields = {name: str(i).encode() for i, name in enumerate(names)}
    await backend.store(key, create(fields))
    assert await backend.load(key, touch=True) == Record(fields)
    stored = probe.find_one({"_id": key})["f"]
    assert len(stored) == len(names)
    assert not [name for name in stored if "." in name or "\0" in name or name.startswith("$")]
    assert stored["ключ 🙂"] == str(names.index("ключ 🙂"))  # readable when nothing is odd
    # The server's check of the names lets every escaped one through to the update.
    assert await backend.store(key, Write({}, ["a.b", "$where", ""])) is True
    remaining = {n: v for n, v in fields.items() if n not in ("a.b", "$where", "")}
    assert await backend.load(key, touch=False) == Record(remaining)


@pytest.mark.anyio
async def test_document_holds_text_and_numbers(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    await backend.store(key, create(
        {"n": b"1", "when": b'{" d":["2024-01-02T03:04:05.000006"]}'}, permanent=True, ttl=500
    ))
    before = time.time()
    assert await backend.store(key, Write({"n": b"2"}, (), True, 500)) is True
    doc = probe.find_one({"_id": key})
    assert doc["f"] == {"n": "2", "when": '{" d":["2024-01-02T03:04:05.000006"]}'}
    assert doc["permanent"] == 1
    assert doc["ttl"] == 500
    assert doc["touched"] >= before - 0.001
    assert doc["expires_at"] >= doc["touched"] + 500
    # A date on MongoDB; nx-27017 turns a date $set into an existing document into a string.
    assert "expires" in doc


@pytest.mark.anyio
async def test_concurrent_updates_keep_every_field(
    mongo_server: MongoServer, collection: str, key: str
) -> None:
    # Two backends with their own clients stand in for two worker processes.
    backends = [MongoDBBackend(url=mongo_server.url, collection=collection) for _ in range(2)]
    await backends[0].store(key, create({"base": b"0"}))

    async def set_field(i: int) -> None:
        assert await backends[i % 2].store(key, Write({f"f{i}": str(i).encode()}))

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(set_field, i)
    record = await backends[0].load(key, touch=False)
    assert record == Record({"base": b"0", **{f"f{i}": str(i).encode() for i in range(60)}})
    await close_loop_clients()


@pytest.mark.anyio
async def test_expired_record_is_neither_read_nor_revived(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    await backend.store(key, create({"a": b"1"}, ttl=100))
    past = time.time() - 101
    probe.update_one({"_id": key}, {"$set": {"touched": past}})
    assert await backend.load(key, touch=False) is None
    assert await backend.load(key, touch=True) is None
    assert await backend.store(key, Write({"a": b"2"})) is False
    assert await backend.store(key, Write({"a": b"2"}, (), True, 600)) is False
    doc = probe.find_one({"_id": key})
    assert doc["touched"] == pytest.approx(past, abs=0.001)
    assert doc["f"] == {"a": "1"}


@pytest.mark.anyio
async def test_a_read_restarts_the_lifetime_only_past_half_of_it(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any
) -> None:
    backend, commands = watched
    await backend.store(key, create({"a": b"1"}, permanent=True, ttl=1000))
    commands.take()
    for touch in (False, True):
        assert await backend.load(key, touch=touch) == Record({"a": b"1"}, permanent=True)
        assert commands.take() == ["find"]
    # 600 of 1000 s gone: a refreshing read restarts it, a plain one does not.
    earlier = time.time() - 600
    probe.update_one({"_id": key}, {"$set": {"touched": earlier}})
    assert await backend.load(key, touch=False) == Record({"a": b"1"}, permanent=True)
    assert commands.take() == ["find"]
    before = time.time()
    assert await backend.load(key, touch=True) == Record({"a": b"1"}, permanent=True)
    assert commands.take() == ["find", "update"]
    doc = probe.find_one({"_id": key})
    assert doc["touched"] >= before - 0.001
    assert doc["expires_at"] >= doc["touched"] + 1000
    assert await backend.load(key, touch=True) is not None
    assert commands.take() == ["find"]  # fresh again


@pytest.mark.anyio
async def test_write_keeping_the_flag_moves_the_index_date_only_when_it_lags(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any
) -> None:
    backend, commands = watched
    await backend.store(key, create({"a": b"1"}, ttl=1000))
    commands.take()
    assert await backend.store(key, Write({"b": b"2"})) is True
    assert commands.take() == ["findAndModify"]
    # Written 600 s ago: the index date (1.5 * ttl after the write) falls before the new
    # expiry of now + ttl, so the write moves it on.
    now = time.time()
    probe.update_one({"_id": key}, {"$set": {"touched": now - 600, "expires_at": now + 900}})
    assert await backend.store(key, Write({"c": b"3"})) is True
    assert commands.take() == ["findAndModify", "update"]
    doc = probe.find_one({"_id": key})
    assert doc["expires_at"] >= doc["touched"] + 1000
    assert (doc["ttl"], doc["permanent"]) == (1000, 0)
    assert await backend.store(key, Write({"d": b"4"})) is True
    assert commands.take() == ["findAndModify"]  # moved far enough for the next ttl / 2


@pytest.mark.anyio
@pytest.mark.parametrize("flag", [None, True])
async def test_write_after_a_load_is_one_update_that_also_moves_the_index_date(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any, flag: bool | None
) -> None:
    backend, commands = watched
    await backend.store(key, create({"a": b"1", "gone": b"0"}, ttl=1000))
    now = time.time()
    probe.update_one({"_id": key}, {"$set": {"touched": now - 600, "expires_at": now + 900}})
    assert await backend.load(key, touch=False) is not None
    commands.take()
    write = Write({"b": b"2"}, ["gone"], flag, None if flag is None else 5000)
    assert await backend.store(key, write) is True
    assert commands.take() == ["update"]
    doc = probe.find_one({"_id": key})
    assert doc["f"] == {"a": "1", "b": "2"}
    assert (doc["ttl"], doc["permanent"]) == ((1000, 0) if flag is None else (5000, 1))
    assert doc["touched"] >= now - 0.001
    assert doc["expires_at"] >= doc["touched"] + doc["ttl"]


@pytest.mark.anyio
@pytest.mark.parametrize("meanwhile", ["lifetime changed", "logged out", "expired"])
async def test_write_after_a_load_leaves_what_changed_meanwhile_to_the_checked_update(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any, meanwhile: str
) -> None:
    backend, commands = watched
    await backend.store(key, create({"a": b"1"}, ttl=1000))
    assert await backend.load(key, touch=False) is not None
    if meanwhile == "lifetime changed":  # another request made the session permanent
        probe.update_one({"_id": key}, {"$set": {"ttl": 50000, "permanent": 1}})
    elif meanwhile == "logged out":
        probe.delete_one({"_id": key})
    else:
        probe.update_one({"_id": key}, {"$set": {"touched": time.time() - 1001}})
    commands.take()
    written = await backend.store(key, Write({"b": b"2"}))
    assert commands.take()[:2] == ["update", "findAndModify"]
    assert written is (meanwhile == "lifetime changed")
    doc = probe.find_one({"_id": key})
    if meanwhile == "lifetime changed":
        assert (doc["f"], doc["ttl"], doc["permanent"]) == ({"a": "1", "b": "2"}, 50000, 1)
    elif meanwhile == "logged out":
        assert doc is None  # never resurrected
    else:
        assert doc["f"] == {"a": "1"}  # an expired record is not revived


@pytest.mark.anyio
async def test_expires_at_is_touched_plus_ttl_without_touching(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    assert await backend.expires_at(key) is None
    await backend.store(key, create({"a": b"1"}, ttl=1000))
    earlier = time.time() - 600
    probe.update_one({"_id": key}, {"$set": {"touched": earlier}})
    assert await backend.expires_at(key) == pytest.approx(earlier + 1000)
    assert probe.find_one({"_id": key})["touched"] == pytest.approx(earlier)  # not refreshed
    probe.update_one({"_id": key}, {"$set": {"touched": earlier - 500}})
    assert await backend.expires_at(key) is None  # expired: no session


@pytest.mark.anyio
async def test_a_server_that_is_down_fails_within_the_store_timeout() -> None:
    backend = MongoDBBackend(url="mongodb://127.0.0.1:1")
    started = time.monotonic()
    try:
        with pytest.raises(ServerSelectionTimeoutError):
            await backend.load("k", touch=False)
    finally:
        await close_loop_clients()
    assert time.monotonic() - started < 4  # the engine's default timeout is 5 s
    # A URL that says how long to wait is followed.
    given = MongoDBBackend(url="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
    started = time.monotonic()
    try:
        with pytest.raises(ServerSelectionTimeoutError):
            await given.load("k", touch=False)
    finally:
        await close_loop_clients()
    assert time.monotonic() - started < 1.5


@pytest.mark.anyio
async def test_lagging_date_is_left_to_a_write_that_changed_the_ttl(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    await backend.store(key, create({"a": b"1"}, ttl=1000))
    now = time.time()
    probe.update_one({"_id": key}, {"$set": {"expires_at": now + 10}})

    real_find = AsyncCollection.find_one_and_update

    async def store_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
        doc = await real_find(self, *args, **kwargs)
        probe.update_one({"_id": key}, {"$set": {"ttl": 50000, "expires_at": now + 75000}})
        return doc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AsyncCollection, "find_one_and_update", store_meanwhile)
        assert await backend.store(key, Write({"b": b"2"})) is True
    assert probe.find_one({"_id": key})["expires_at"] == pytest.approx(now + 75000, abs=0.01)


@pytest.mark.anyio
async def test_emptying_deletes_the_record_unless_a_field_came_meanwhile(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    await backend.store(key, create({"a": b"1", "b": b"2"}))
    assert await backend.store(key, Write({}, ["a", "b"])) is True
    assert probe.find_one({"_id": key}) is None

    await backend.store(key, create({"a": b"1"}))
    real_find = AsyncCollection.find_one_and_update

    async def add_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
        doc = await real_find(self, *args, **kwargs)
        probe.update_one({"_id": key}, {"$set": {"f.c": "3"}})  # another request's field
        return doc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AsyncCollection, "find_one_and_update", add_meanwhile)
        assert await backend.store(key, Write({}, ["a"])) is True
    assert await backend.load(key, touch=False) == Record({"c": b"3"})


@pytest.mark.anyio
async def test_ttl_index_is_created_once_on_first_write(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any
) -> None:
    backend, commands = watched
    await backend.store(key, create({"a": b"0"}))
    for i in range(1, 3):
        await backend.store(key, Write({"a": str(i).encode()}))
    assert commands.take().count("createIndexes") == 1
    ttl_indexes = [ix for ix in probe.list_indexes() if dict(ix["key"]) == {"expires": 1}]
    assert [ix["expireAfterSeconds"] for ix in ttl_indexes] == [0]


@pytest.mark.anyio
async def test_ttl_index_can_be_left_out(
    mongo_server: MongoServer, collection: str, key: str, probe: Any
) -> None:
    backend = MongoDBBackend(url=mongo_server.url, collection=collection, create_index=False)
    await backend.store(key, create({"a": b"1"}))
    assert [dict(ix["key"]) for ix in probe.list_indexes()] == [{"_id": 1}]
    await close_loop_clients()


@pytest.mark.anyio
async def test_ttl_index_failure_is_logged_not_raised(
    backend: MongoDBBackend, key: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> str:
        raise OperationFailure("not authorized to execute command createIndexes", 13)

    monkeypatch.setattr(AsyncCollection, "create_index", refuse)
    with caplog.at_level(logging.WARNING, "asyncsessions.backends.mongodb"):
        await backend.store(key, create({"a": b"1"}))
        await backend.store(key, Write({"a": b"2"}))
    [warning] = [r.message for r in caplog.records if "TTL index" in r.message]  # tried once
    assert "not authorized" in warning
    assert await backend.load(key, touch=True) == Record({"a": b"2"})


MISSING = object()


def ours(**changes: Any) -> dict[str, Any]:
    """A record of this store's shape with ``changes`` (MISSING: the field left out)."""
    doc = {"f": {"a": '"x"'}, "permanent": 0, "ttl": 600, "touched": time.time(), **changes}
    return {k: v for k, v in doc.items() if v is not MISSING}


# Documents this store did not write: another library's, and records of this store's shape
# with one thing wrong. Tests insert them whole, which keeps their types on nx-27017 too.
FOREIGN: dict[str, dict[str, Any]] = {
    "Flask-Session 0.8": {"id": new_id(), "val": b"\x80\x04\x95pickle",
                          "expiration": datetime.now(timezone.utc) + timedelta(hours=1)},
    "f not a map": {"f": "not a map"},
    "f a list": ours(f=[{"a": '"x"'}]),
    "no f": ours(f=MISSING),
    "ttl a string": ours(ttl="600"),
    "ttl negative": ours(ttl=-600),
    "ttl None": ours(ttl=None),
    "ttl a bool": ours(ttl=True),
    "ttl a dict": ours(ttl={"s": 600}),
    "ttl a fraction": ours(ttl=600.5),
    "touched a string": ours(touched="now"),
    "touched None": ours(touched=None),
    "touched a bool": ours(touched=True),
    "permanent a bool": ours(permanent=True),
    "permanent 2": ours(permanent=2),
    "value a number": ours(f={"a": 5}),
    "value bytes": ours(f={"a": b"\x80\x04\x95pickle"}),
    "value a document": ours(f={"a": {"x": "1"}}),
    "name badly escaped": ours(f={"a%41": '"x"'}),
    "name with a bare %": ours(f={"100%": '"x"'}),
    "name escaped in lower case": ours(f={"a%2eb": '"x"'}),
}


@pytest.mark.anyio
async def test_foreign_documents_read_as_no_session_and_only_a_new_session_replaces_them(
    backend: MongoDBBackend, probe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend.bind(name="sid", instance_path="")
    for case, data in FOREIGN.items():
        key = "session:" + new_id()
        probe.insert_one({"_id": key, **data})
        before = probe.find_one({"_id": key})
        caplog.clear()
        with caplog.at_level(logging.WARNING, "asyncsessions"):
            assert await backend.load(key, touch=False) is None, case
            assert await backend.load(key, touch=True) is None, case
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, case
        assert f"'sid': unreadable record {masked(key)!r}" in warnings[0].getMessage(), case
        # Neither a read nor an update from a request that loaded it touches it.
        assert await backend.store(key, Write({"b": b"1"}, ["a"])) is False, case
        assert await backend.store(key, Write({"b": b"1"}, (), True, 600)) is False, case
        assert probe.find_one({"_id": key}) == before, case
        # A new session under that key replaces it whole.
        assert await backend.store(key, create({"b": b"1"}, ttl=60)) is True, case
        doc = probe.find_one({"_id": key})
        assert set(doc) == {"_id", "f", "permanent", "ttl", "touched", "expires_at",
                            "expires"}, case
        assert (doc["f"], doc["permanent"], doc["ttl"]) == ({"b": "1"}, 0, 60), case
        assert await backend.load(key, touch=True) == Record({"b": b"1"}), case


@pytest.mark.parametrize("case", ["Flask-Session 0.8", "f not a map", "ttl a string",
                                  "value a number"])
def test_foreign_document_is_a_fresh_session_with_a_warning(
    make_driver: Any, mongo_server: MongoServer, probe: Any, collection: str, case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = make_driver({"SESSION_CONFIG": [{
        "cookie_name": "sid", "session_type": "mongodb", "url": mongo_server.url,
        "collection": collection, "key_prefix": "app:",
    }]})
    sid = new_id()
    probe.insert_one({"_id": "app:" + sid, **FOREIGN[case]})
    before = probe.find_one({"_id": "app:" + sid})
    d.set_cookie("sid", sid)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        reply = d.get()
    assert (reply.status, reply.json) == (200, {})
    assert f"unreadable record {masked('app:' + sid)!r}" in caplog.text
    assert d.post("set", {"user": "ada"}).status == 200
    new = d.cookies()["sid"]
    assert new != sid  # a fresh session, never the foreign document's id
    assert probe.find_one({"_id": "app:" + new})["f"] == {"user": '"ada"'}
    assert d.show() == {"user": "'ada'"}
    assert probe.find_one({"_id": "app:" + sid}) == before  # left as it was


@pytest.mark.anyio
async def test_motor_client(mongo_server: MongoServer, collection: str, key: str) -> None:
    motor: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(mongo_server.url)
    backend = MongoDBBackend(client=motor, collection=collection)
    await backend.store(key, create({"a": b"1"}))
    assert await backend.load(key, touch=True) == Record({"a": b"1"})
    assert isinstance(backend.client, pymongo.AsyncMongoClient)  # Motor's settings, PyMongo's I/O
    await close_loop_clients()
    motor.close()


@pytest.mark.anyio
async def test_sync_client_is_adapted(mongo_server: MongoServer, collection: str,
                                      key: str) -> None:
    # Raw documents on the user's client do not reach the store, which reads plain dicts.
    sync: pymongo.MongoClient[Any] = pymongo.MongoClient(
        mongo_server.host, mongo_server.port, connect=False, document_class=RawBSONDocument
    )
    backend = MongoDBBackend(client=sync, collection=collection)
    await backend.store(key, create({"a": b"1"}))
    assert await backend.load(key, touch=True) == Record({"a": b"1"})
    assert await backend.client.address == (mongo_server.host, mongo_server.port)
    await close_loop_clients()
    sync.close()


def test_one_client_per_event_loop(mongo_server: MongoServer, collection: str,
                                   key: str) -> None:
    backend = MongoDBBackend(url=mongo_server.url, collection=collection)

    async def use() -> tuple[Record | None, Any]:
        await backend.store(key, create({"a": b"1"}))
        try:
            return await backend.load(key, touch=True), backend.client
        finally:
            await close_loop_clients()

    first, second = asyncio.run(use()), asyncio.run(use())
    assert first[0] == second[0] == Record({"a": b"1"})
    assert first[1] is not second[1]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("client", object(), r"'client': client must be pymongo\.AsyncMongoClient, e\.g\. "
                             r"pymongo\.AsyncMongoClient\(host='127\.0\.0\.1', port=27017\)"),
        ("url", 27017, "'url': url must be a str"),
        ("url", "redis://127.0.0.1", "'url': url must be a MongoDB URI"),
        ("db", "my.db", "'db': db must be a non-empty name without"),
        ("db", "", "'db': db must be a non-empty name"),
        ("collection", "", "'collection': collection must be a non-empty name"),
        ("collection", "a$b", "'collection': collection must be a non-empty name without"),
        ("collection", 5, "'collection': collection must be a str"),
        ("create_index", "no", "'create_index': create_index must be True or False"),
    ],
)
def test_bad_options_name_the_key(option: str, value: Any, message: str) -> None:
    # db first: its name is inside every other option's message, but is never blamed for them.
    entry = {"cookie_name": "s", "session_type": "mongodb", "db": "ok", option: value}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] " + message):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path="/tmp")


def test_client_and_url_together_are_refused(mongo_server: MongoServer) -> None:
    client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(
        mongo_server.url, connect=False
    )
    with pytest.raises(ValueError, match="give client or url, not both"):
        MongoDBBackend(client=client, url=mongo_server.url)


@pytest.mark.parametrize(("options", "location"), [
    ({}, "mongodb://127.0.0.1:27017/asyncsessions.sessions"),
    ({"url": "mongodb://ada:secret@h1,h2:7/?replicaSet=r", "db": "d", "collection": "c"},
     "mongodb://h1:27017,h2:7/d.c"),
    ({"url": "mongodb+srv://ada:secret@cluster.example.net/?tls=true"},
     "mongodb+srv://cluster.example.net/asyncsessions.sessions"),
    ({"client": pymongo.MongoClient("h", 8, username="ada", password="secret", connect=False)},
     "mongodb://h:8/asyncsessions.sessions"),
], ids=["default", "url", "srv", "client"])
def test_location_names_servers_db_and_collection_never_credentials(
    options: dict[str, Any], location: str
) -> None:
    assert MongoDBBackend(**options).location == location


@pytest.mark.parametrize("framework", ["flask", "quart"])
def test_through_the_app(framework: str, mongo_server: MongoServer, probe: Any,
                         collection: str) -> None:
    config = {"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": "mongodb", "url": mongo_server.url,
         "collection": collection, "key_prefix": "app:", "session_fields": ["user", "cart"]},
        {"cookie_name": "rest", "session_fields": "auto"},
    ]}
    driver = Driver(framework, config)
    try:
        driver.post("set", {"user": "zoë", "cart": [1, 2], "theme": "dark"})
        assert driver.show() == {"user": "'zoë'", "cart": "[1, 2]", "theme": "'dark'"}
        key = "app:" + driver.cookies()["sid"]
        assert probe.find_one({"_id": key})["f"] == {"user": '"zoë"', "cart": "[1,2]"}
        driver.post("append", {"cart": 3})  # nested mutation is saved without .modified
        driver.post("del", {"user": 1})
        driver.post("permanent")
        doc = probe.find_one({"_id": key})
        assert doc["f"] == {"cart": "[1,2,3]"}
        assert doc["permanent"] == 1
        assert doc["ttl"] == 31 * 86400
        # A planted value that is no JSON is dropped on load and removed by the next write.
        probe.update_one({"_id": key}, {"$set": {"f.user": "gASVpickle"}})
        assert driver.show() == {"cart": "[1, 2, 3]", "theme": "'dark'"}
        driver.post("set", {"theme": "light"})
        assert probe.find_one({"_id": key})["f"] == {"cart": "[1,2,3]"}
        driver.post("del", {"cart": 1})
        assert probe.find_one({"_id": key}) is None  # no fields left: the record is deleted
    finally:
        driver.close()


@pytest.mark.parametrize("framework", ["flask", "quart"])
def test_read_only_request_is_one_round_trip_and_no_write(
    framework: str, mongo_server: MongoServer, collection: str
) -> None:
    commands = Commands()
    client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(
        mongo_server.url, event_listeners=[commands], connect=False
    )
    driver = Driver(framework, {"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": "mongodb", "client": client,
         "collection": collection, "key_prefix": "rt:"},
    ]})
    try:
        driver.post("set", {"a": 1})
        commands.take()
        for _ in range(3):
            assert driver.show() == {"a": "1"}
        assert commands.take() == ["find"] * 3
    finally:
        driver.close()
