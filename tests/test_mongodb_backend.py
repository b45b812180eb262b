"""Tests for the MongoDB session store, over the wire against nx-27017.

nx-27017 speaks MongoDB's wire protocol but differs in ways these tests keep clear of:
``$set`` on an existing document stores a datetime as a string and a bool as an int (so the
store reads only numbers and strings back), it rounds doubles to about 10 µs, ``list_indexes``
names the TTL index its own way, it ignores ``_id`` beside a top-level ``$expr`` (the store
puts both in an ``$and``), it has no update pipelines, and with ``--db memory`` it runs no TTL
monitor, so deletion by the index is MongoDB's to test; expiry on load is tested here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure

from apps import Driver
from asyncsessions.backends.base import Record, close_loop_clients
from asyncsessions.backends.mongodb import MongoDBBackend
from asyncsessions.config import parse_config
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
def anyio_backend() -> str:
    return "asyncio"


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


@pytest.mark.anyio
async def test_round_trip(backend: MongoDBBackend, key: str) -> None:
    fields = {"user_id": b"42", "name": '"Zoë"'.encode(), "cart": b'[{"sku":"a.b","n":2}]'}
    await backend.store(key, fields, (), permanent=True, ttl=60)
    assert await backend.load(key, touch=False) == Record(fields, permanent=True)
    assert await backend.load(key, touch=True) == Record(fields, permanent=True)
    assert await backend.load(key + "x", touch=False) is None
    assert await backend.load(key + "x", touch=True) is None


@pytest.mark.anyio
async def test_odd_field_names_round_trip_escaped(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    names = ["a.b", "...", "$where", "a$b", "%", "%2E", "%25", "", "nul\0inside", "ключ 🙂",
             "$", "x.$y%"]
    fields = {name: str(i).encode() for i, name in enumerate(names)}
    await backend.store(key, fields, (), permanent=False, ttl=60)
    assert await backend.load(key, touch=True) == Record(fields)
    stored = probe.find_one({"_id": key})["f"]
    assert len(stored) == len(names)
    assert not [name for name in stored if "." in name or "\0" in name or name.startswith("$")]
    assert stored["ключ 🙂"] == str(names.index("ключ 🙂"))  # readable when nothing is odd
    await backend.store(key, {}, ["a.b", "$where", ""], permanent=False, ttl=60)
    remaining = {n: v for n, v in fields.items() if n not in ("a.b", "$where", "")}
    assert await backend.load(key, touch=False) == Record(remaining)


@pytest.mark.anyio
async def test_document_holds_text_and_numbers(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    await backend.store(key, {"n": b"1", "when": b'{" d":["2024-01-02T03:04:05.000006"]}'},
                        (), permanent=True, ttl=500)
    before = time.time()
    await backend.store(key, {"n": b"2"}, (), permanent=True, ttl=500)
    doc = probe.find_one({"_id": key})
    assert doc["f"] == {"n": "2", "when": '{" d":["2024-01-02T03:04:05.000006"]}'}
    assert doc["permanent"] == 1
    assert doc["ttl"] == 500
    assert doc["touched"] >= before - 0.001
    assert doc["expires_at"] >= doc["touched"] + 500
    # A date on MongoDB; nx-27017 turns a date $set into an existing document into a string.
    assert "expires" in doc


@pytest.mark.anyio
async def test_removed_fields_and_permanent_flag(backend: MongoDBBackend, key: str) -> None:
    await backend.store(key, {"a": b"1", "b": b"2"}, (), permanent=True, ttl=60)
    await backend.store(key, {"c": b"3"}, ["a", "missing"], permanent=False, ttl=60)
    assert await backend.load(key, touch=False) == Record({"b": b"2", "c": b"3"})
    await backend.delete(key)
    await backend.delete(key)  # a missing record is no error
    assert await backend.load(key, touch=True) is None


@pytest.mark.anyio
async def test_concurrent_stores_keep_every_field(
    mongo_server: MongoServer, collection: str, key: str
) -> None:
    # Two backends with their own clients stand in for two worker processes.
    backends = [MongoDBBackend(url=mongo_server.url, collection=collection) for _ in range(2)]

    async def set_field(i: int) -> None:
        await backends[i % 2].store(key, {f"f{i}": str(i).encode()}, (), permanent=False,
                                    ttl=60)

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(set_field, i)
    record = await backends[0].load(key, touch=False)
    assert record == Record({f"f{i}": str(i).encode() for i in range(60)})
    await close_loop_clients()


@pytest.mark.anyio
async def test_expiry_is_checked_on_load(backend: MongoDBBackend, key: str) -> None:
    await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=1)
    assert await backend.load(key, touch=False) == Record({"a": b"1"})
    await anyio.sleep(1.1)
    assert await backend.load(key, touch=False) is None
    assert await backend.load(key, touch=True) is None


@pytest.mark.anyio
async def test_expired_record_is_not_revived_by_a_read(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=100)
    past = time.time() - 101
    probe.update_one({"_id": key}, {"$set": {"touched": past}})
    assert await backend.load(key, touch=True) is None
    assert await backend.load(key, touch=True) is None  # the first read did not touch it
    assert probe.find_one({"_id": key})["touched"] == pytest.approx(past, abs=0.001)


@pytest.mark.anyio
async def test_refreshing_read_is_one_round_trip(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any
) -> None:
    backend, commands = watched
    await backend.store(key, {"a": b"1"}, (), permanent=True, ttl=3600)
    earlier = time.time() - 600
    probe.update_one({"_id": key}, {"$set": {"touched": earlier}})
    commands.take()
    before = time.time()
    assert await backend.load(key, touch=True) == Record({"a": b"1"}, permanent=True)
    assert commands.take() == ["findAndModify"]
    assert probe.find_one({"_id": key})["touched"] >= before - 0.001  # expiry restarted
    probe.update_one({"_id": key}, {"$set": {"touched": earlier}})
    assert await backend.load(key, touch=False) == Record({"a": b"1"}, permanent=True)
    assert commands.take() == ["find"]
    assert probe.find_one({"_id": key})["touched"] == pytest.approx(earlier, abs=0.001)


@pytest.mark.anyio
async def test_read_moves_the_ttl_index_date_only_when_it_lags(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any
) -> None:
    backend, commands = watched
    await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=1000)
    now = time.time()
    # Written 600 s ago: the index date (1.5 * ttl after the write) falls before the new
    # expiry of now + ttl, so the read moves it on.
    probe.update_one({"_id": key}, {"$set": {"touched": now - 600, "expires_at": now + 900}})
    commands.take()
    assert await backend.load(key, touch=True) == Record({"a": b"1"})
    assert commands.take() == ["findAndModify", "update"]
    doc = probe.find_one({"_id": key})
    assert doc["expires_at"] >= doc["touched"] + 1000
    assert await backend.load(key, touch=True) == Record({"a": b"1"})
    assert commands.take() == ["findAndModify"]  # moved far enough for the next ttl / 2


@pytest.mark.anyio
async def test_lagging_date_is_left_to_a_write_that_changed_the_ttl(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=1000)
    now = time.time()
    probe.update_one({"_id": key}, {"$set": {"expires_at": now + 10}})

    real_find = AsyncCollection.find_one_and_update

    async def store_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
        doc = await real_find(self, *args, **kwargs)
        probe.update_one({"_id": key}, {"$set": {"ttl": 50000, "expires_at": now + 75000}})
        return doc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AsyncCollection, "find_one_and_update", store_meanwhile)
        await backend.load(key, touch=True)
    assert probe.find_one({"_id": key})["expires_at"] == pytest.approx(now + 75000, abs=0.01)


@pytest.mark.anyio
async def test_ttl_index_is_created_once_on_first_write(
    watched: tuple[MongoDBBackend, Commands], key: str, probe: Any
) -> None:
    backend, commands = watched
    for i in range(3):
        await backend.store(key, {"a": str(i).encode()}, (), permanent=False, ttl=60)
    assert commands.take().count("createIndexes") == 1
    ttl_indexes = [ix for ix in probe.list_indexes() if dict(ix["key"]) == {"expires": 1}]
    assert [ix["expireAfterSeconds"] for ix in ttl_indexes] == [0]


@pytest.mark.anyio
async def test_ttl_index_can_be_left_out(
    mongo_server: MongoServer, collection: str, key: str, probe: Any
) -> None:
    backend = MongoDBBackend(url=mongo_server.url, collection=collection, create_index=False)
    await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=60)
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
        await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=60)
        await backend.store(key, {"a": b"2"}, (), permanent=False, ttl=60)
    [warning] = [r.message for r in caplog.records if "TTL index" in r.message]  # tried once
    assert "not authorized" in warning
    assert await backend.load(key, touch=True) == Record({"a": b"2"})


@pytest.mark.anyio
async def test_garbage_does_not_break_a_load(
    backend: MongoDBBackend, key: str, probe: Any
) -> None:
    # A document another library wrote under the key (Flask-Session pickled into "val").
    probe.insert_one({"_id": key, "val": b"\x80\x04\x95pickle", "expiration": 0})
    assert await backend.load(key, touch=False) is None
    assert await backend.load(key, touch=True) is None
    probe.replace_one({"_id": key}, {"_id": key, "touched": "now", "ttl": True, "f": {"a": "1"}})
    assert await backend.load(key, touch=False) is None
    assert await backend.load(key, touch=True) is None
    # Planted values beside ours: text and bytes reach the engine, which drops what it can't
    # read; other types are skipped.
    probe.delete_one({"_id": key})
    await backend.store(key, {"ok": b"1"}, (), permanent=False, ttl=60)
    probe.update_one({"_id": key}, {"$set": {
        "f.pickled": b"\x80\x04\x95pickle", "f.text": "not json", "f.number": 5,
        "f.nested": {"x": "1"}, "permanent": "yes",
    }})
    expected = Record({"ok": b"1", "pickled": b"\x80\x04\x95pickle", "text": b"not json"})
    assert await backend.load(key, touch=False) == expected
    assert await backend.load(key, touch=True) == expected
    probe.update_one({"_id": key}, {"$set": {"f": "not a document"}})
    assert await backend.load(key, touch=True) == Record({})


@pytest.mark.anyio
async def test_motor_client(mongo_server: MongoServer, collection: str, key: str) -> None:
    motor: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(mongo_server.url)
    backend = MongoDBBackend(client=motor, collection=collection)
    await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=60)
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
    await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=60)
    assert await backend.load(key, touch=True) == Record({"a": b"1"})
    assert await backend.client.address == (mongo_server.host, mongo_server.port)
    await close_loop_clients()
    sync.close()


def test_one_client_per_event_loop(mongo_server: MongoServer, collection: str,
                                   key: str) -> None:
    backend = MongoDBBackend(url=mongo_server.url, collection=collection)

    async def use() -> tuple[Record | None, Any]:
        await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=60)
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
        # A planted pickle is dropped on load and removed by the next write.
        probe.update_one({"_id": key}, {"$set": {"f.user": b"\x80\x04\x95pickle"}})
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
        assert commands.take() == ["findAndModify"] * 3
    finally:
        driver.close()
