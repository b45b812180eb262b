"""The store contract (``asyncsessions/backends/base.py``), checked on every server-side store.

Each test calls one store directly (``load``, ``store``, ``delete``) on an event loop of its
own, against the real server, and runs once per store type. What a store keeps on its server
is looked at through a *probe* of its own client (a raw redis client, memcached's text
protocol, PyMongo, Firestore's sync client, the file, raw SQL over a sync SQLAlchemy engine,
the cachelib cache's file read as raw bytes, Elasticsearch's REST API, boto3 for DynamoDB,
Datastore's sync client), never through the store under test.

The tests that wait for records to expire share one timeline for all the selected stores
(``timeline``), so the suite sleeps about five seconds once instead of once per store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app_fixtures import SERVER_STORES, store_config, unreachable
from asyncsessions.backends.base import Backend, Record, Write, close_loop_clients, masked
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from storekit import v

T = TypeVar("T")

KINDS = SERVER_STORES
_SERVER = {"redis": "redis", "redis_cluster": "redis", "memcache": "memcached",
           "mongodb": "mongodb", "firestore": "firestore",
           "sqlalchemy_postgresql": "postgresql", "sqlalchemy_mysql": "mariadb",
           "peewee_postgresql": "postgresql", "elasticsearch": "opensearch",
           "dynamodb": "dynamodb", "datastore": "datastore"}

#: Bound on any one store call: a hang fails the test instead of stalling the run.
OP_TIMEOUT = 20.0
#: How soon a store pointed at a closed port must fail.
DOWN_LIMIT = 5.0
#: In every foreign value: what a write replacing it must leave no trace of.
MARKER = b"FOREIGN"
#: Flask-Session 0.8's msgpack for {"_permanent": True, "user_id": "FOREIGN"}.
FOREIGN_MSGPACK = b"\x82\xaa_permanent\xc3\xa7user_id\xa7" + MARKER


@pytest.fixture(params=[
    pytest.param(k, marks=[pytest.mark.server(_SERVER[k])] if k in _SERVER else [])
    for k in KINDS
])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(entry: dict[str, Any], instance_path: Path) -> Backend:
    """The store that ``init_app`` would make from a ``SESSION_CONFIG`` entry."""
    [config] = parse_config({"SESSION_CONFIG": [{"cookie_name": "sid", **entry}]},
                            instance_path=str(instance_path))
    backend = config.backend
    assert isinstance(backend, Backend)
    return backend


# -- probes: the server's view of a key, around the store under test ----------------------------


class Probe:
    """Raw access to where a store keeps ``key``: plant another program's value, dump it."""

    def plant(self, key: str) -> None:
        raise NotImplementedError

    def dump(self, key: str) -> Any:
        """What the server holds under ``key``, comparable; ``None`` for nothing."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileProbe(Probe):
    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _path(self, key: str) -> str:
        path: str = self.backend._path(key)
        return path

    def plant(self, key: str) -> None:
        # What cachelib's FileSystemCache (Flask-Session's) writes: an expiry, then a pickle.
        path = self._path(key)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "wb") as file:
            file.write(b"\xff\xff\xff\x7f\x80\x04\x95" + MARKER + b"\x94.")

    def dump(self, key: str) -> Any:
        try:
            with open(self._path(key), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None


class RedisProbe(Probe):
    def __init__(self, entry: dict[str, Any]) -> None:
        import redis

        self.client: Any = (redis.RedisCluster if entry.get("cluster") else redis.Redis).from_url(
            entry["url"]
        )

    def plant(self, key: str) -> None:
        self.client.set(key, FOREIGN_MSGPACK, ex=600)  # Flask-Session keeps a msgpack string

    def dump(self, key: str) -> Any:
        kind = self.client.type(key).decode()
        if kind == "none":
            return None
        if kind == "string":
            return kind, self.client.get(key)
        if kind == "hash":
            return kind, self.client.hgetall(key)
        return kind, self.client.dump(key)

    def close(self) -> None:
        self.client.close()


class MemcacheProbe(Probe):
    def __init__(self, entry: dict[str, Any]) -> None:
        self.address = (entry["host"], entry["port"])

    def _call(self, payload: bytes) -> list[bytes]:
        with socket.create_connection(self.address, timeout=5) as sock:
            sock.sendall(payload)
            reader = sock.makefile("rb")
            lines = [reader.readline().rstrip(b"\r\n")]
            if lines[0].startswith(b"VALUE "):
                size = int(lines[0].split()[3])
                lines.append(reader.read(size + 2)[:-2])
                lines.append(reader.readline().rstrip(b"\r\n"))
            return lines

    def plant(self, key: str) -> None:
        # Flask-Session 0.8 keeps msgpack under client flags 0.
        command = b"set %s 0 600 %d\r\n%s\r\n" % (key.encode(), len(FOREIGN_MSGPACK),
                                                   FOREIGN_MSGPACK)
        assert self._call(command) == [b"STORED"]

    def dump(self, key: str) -> Any:
        lines = self._call(b"gets %s\r\n" % key.encode())
        if lines == [b"END"]:
            return None
        _, _, flags, _, cas = lines[0].split()
        # The CAS token too: a read that wrote the item back unchanged still changed it.
        return int(flags), lines[1], int(cas)


class MongoProbe(Probe):
    def __init__(self, entry: dict[str, Any], backend: Any) -> None:
        import pymongo

        self.client: Any = pymongo.MongoClient(entry["url"], serverSelectionTimeoutMS=5000)
        self.collection = self.client[backend.db][backend.collection]

    def plant(self, key: str) -> None:
        # Flask-Session's document shape, under the key this store would use.
        self.collection.replace_one({"_id": key}, {"_id": key, "id": key, "val": FOREIGN_MSGPACK},
                                    upsert=True)

    def dump(self, key: str) -> Any:
        return self.collection.find_one({"_id": key})

    def close(self) -> None:
        self.client.close()


class FirestoreProbe(Probe):
    def __init__(self, entry: dict[str, Any]) -> None:
        from google.cloud import firestore

        self.client: Any = firestore.Client(project=entry["project"])

    def _document(self, key: str) -> Any:
        # Test keys (a plain prefix and an id) need none of the store's id escaping.
        assert "/" not in key
        assert "%" not in key
        return self.client.collection("sessions").document(key)

    def plant(self, key: str) -> None:
        self._document(key).set({
            "id": key, "val": FOREIGN_MSGPACK,
            "expiration": datetime.now(timezone.utc) + timedelta(minutes=10),
        })

    def dump(self, key: str) -> Any:
        snapshot = self._document(key).get()
        if not snapshot.exists:
            return None
        return snapshot.to_dict(), snapshot.update_time

    def close(self) -> None:
        self.client.close()


#: The sync DB-API driver a probe's engine uses, per SQLAlchemy backend name.
_SYNC_DRIVERS = {"postgresql": "psycopg2", "mysql": "pymysql", "mariadb": "pymysql",
                 "sqlite": "pysqlite"}


class SqlProbe(Probe):
    """Raw SQL over a sync SQLAlchemy engine of the probe's own, in autocommit."""

    def __init__(self, url: Any) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.dialect: str = url.get_backend_name()
        self.engine: Any = sa.create_engine(
            url.set(drivername=f"{self.dialect}+{_SYNC_DRIVERS[self.dialect]}"),
            isolation_level="AUTOCOMMIT",
        )

    def quote(self, name: str) -> str:
        quoted: str = self.engine.dialect.identifier_preparer.quote(name)
        return quoted

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            result = conn.execute(self.sa.text(sql), params)
            return [tuple(row) for row in result.all()] if result.returns_rows else []

    def close(self) -> None:
        self.engine.dispose()


class SQLAlchemyProbe(SqlProbe):
    """The SQLAlchemy store's table: one row per session, its fields in a JSON object."""

    def __init__(self, backend: Any) -> None:
        super().__init__(backend.url)
        self.table = self.quote(backend.table)

    def plant(self, key: str) -> None:
        # JSON (PostgreSQL's and MariaDB's JSON columns refuse anything else), but an object
        # with a value that is no string: Flask-Session's fields as they are, not ours.
        data = json.dumps({"_permanent": True, "user_id": MARKER.decode()})
        if self.dialect == "postgresql":
            data_sql, later = "CAST(:data AS jsonb)", "now() + interval '600 seconds'"
        elif self.dialect == "sqlite":
            data_sql, later = ":data", "strftime('%Y-%m-%d %H:%M:%f', 'now', '+600 seconds')"
        else:
            data_sql, later = ":data", "TIMESTAMPADD(SECOND, 600, UTC_TIMESTAMP(6))"
        self.rows(f"INSERT INTO {self.table} (id, data, permanent, ttl, expires)"
                  f" VALUES (:id, {data_sql}, :permanent, 600, {later})",
                  id=key, data=data, permanent=True)

    def dump(self, key: str) -> Any:
        data = "CAST(data AS text)" if self.dialect == "postgresql" else "data"
        rows = self.rows(f"SELECT {data}, permanent, ttl, expires FROM {self.table}"
                         " WHERE id = :id", id=key)
        return rows[0] if rows else None


class PeeweeProbe(SqlProbe):
    """The peewee store's tables: a row per session, a row per field (name and value bytes)."""

    def __init__(self, backend: Any) -> None:
        import peewee
        import sqlalchemy as sa

        database = backend.database
        if isinstance(database, peewee.SqliteDatabase):
            url = sa.URL.create("sqlite", database=str(database.database))
        else:
            params = database.connect_params
            url = sa.URL.create("postgresql", username=params.get("user"),
                                password=params.get("password"), host=params.get("host"),
                                port=params.get("port"), database=database.database)
        super().__init__(url)
        self.sessions = self.quote(backend.table)
        self.fields = self.quote(backend.table + "_fields")

    def plant(self, key: str) -> None:
        # A live session row whose field name is not UTF-8: no name this store writes.
        self.rows(f'INSERT INTO {self.sessions} ("key", "permanent", "ttl", "expires")'
                  " VALUES (:key, :permanent, 600, :expires)",
                  key=key, permanent=True, expires=time.time() + 600)
        self.rows(f'INSERT INTO {self.fields} ("key", "name", "value")'
                  " VALUES (:key, :name, :value)",
                  key=key, name=b"user_id\xff", value=FOREIGN_MSGPACK)

    def dump(self, key: str) -> Any:
        session = self.rows(f'SELECT "permanent", "ttl", "expires" FROM {self.sessions}'
                            ' WHERE "key" = :key', key=key)
        fields = sorted(
            (bytes(name), bytes(value)) for name, value in self.rows(
                f'SELECT "name", "value" FROM {self.fields} WHERE "key" = :key', key=key
            )
        )
        if not session and not fields:
            return None
        return session, fields


class CacheLibProbe(Probe):
    """The cachelib FileSystemCache the store was given: planted through it, dumped raw."""

    def __init__(self, entry: dict[str, Any]) -> None:
        from cachelib import FileSystemCache

        self.client: Any = entry["client"]
        assert isinstance(self.client, FileSystemCache)

    def plant(self, key: str) -> None:
        # What Flask-Session 0.8 keeps in a cachelib cache: its msgpack, pickled by cachelib.
        assert self.client.set(key, FOREIGN_MSGPACK, timeout=600)

    def dump(self, key: str) -> Any:
        # The file's bytes (expiry, then the value), never read through the cache: its
        # serializer would unpickle them.
        try:
            with open(self.client._get_filename(key), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None


class ElasticsearchProbe(Probe):
    """Plain REST calls to the index (urllib), real-time gets: no refresh needed."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.url = f"{entry['url'].rstrip('/')}/{urllib.parse.quote(entry['index'], safe='')}"

    def _call(self, method: str, key: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.url}/_doc/{urllib.parse.quote(key, safe='')}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def plant(self, key: str) -> None:
        # Another library's document: its own names, none of the store's.
        status, body = self._call("PUT", key, {
            "session_id": key, "data": {"_permanent": True, "user_id": MARKER.decode()},
            "expiry": (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat(),
        })
        assert status in (200, 201), body

    def dump(self, key: str) -> Any:
        status, body = self._call("GET", key)
        if status == 404 or not body.get("found"):
            return None
        assert status == 200, body
        # The version too: a read that wrote the document back unchanged still changed it.
        return body["_source"], body["_seq_no"], body["_primary_term"]


class DynamoDBProbe(Probe):
    """A boto3 client on the same server, strongly consistent reads."""

    _CLIENT_OPTIONS = ("region_name", "endpoint_url", "aws_access_key_id",
                       "aws_secret_access_key", "aws_session_token")

    def __init__(self, entry: dict[str, Any]) -> None:
        import boto3

        self.table = entry["table"]
        self.client: Any = boto3.client(
            "dynamodb", **{k: entry[k] for k in self._CLIENT_OPTIONS if k in entry}
        )

    def plant(self, key: str) -> None:
        # Flask-Session 0.8's DynamoDB item: its value as binary, a fractional expiry.
        self.client.put_item(TableName=self.table, Item={
            "id": {"S": key}, "val": {"B": FOREIGN_MSGPACK},
            "expiration": {"N": f"{time.time() + 600:.6f}"},
        })

    def dump(self, key: str) -> Any:
        item = self.client.get_item(TableName=self.table, Key={"id": {"S": key}},
                                    ConsistentRead=True).get("Item")
        return item

    def close(self) -> None:
        self.client.close()


class DatastoreProbe(Probe):
    """Datastore's sync client on the emulator: entities of kind ``Session`` named by key."""

    def __init__(self, entry: dict[str, Any]) -> None:
        from google.cloud import datastore

        self.datastore = datastore
        self.client: Any = datastore.Client(project=entry["project"])

    def plant(self, key: str) -> None:
        # Another library's entity under the store's key: a pickle-like blob and an expiry.
        entity = self.datastore.Entity(self.client.key("Session", key),
                                       exclude_from_indexes=("data",))
        entity.update({"data": FOREIGN_MSGPACK,
                       "expiry": datetime.now(timezone.utc) + timedelta(minutes=10)})
        self.client.put(entity)

    def dump(self, key: str) -> Any:
        entity = self.client.get(self.client.key("Session", key))
        return None if entity is None else dict(entity)

    def close(self) -> None:
        api = self.client._datastore_api_internal
        if api is not None:
            api.transport.close()


def make_probe(kind: str, entry: dict[str, Any], backend: Backend) -> Probe:
    if kind == "filesystem":
        return FileProbe(backend)
    if kind in ("redis", "redis_cluster"):
        return RedisProbe(entry)
    if kind == "memcache":
        return MemcacheProbe(entry)
    if kind == "mongodb":
        return MongoProbe(entry, backend)
    if kind == "firestore":
        return FirestoreProbe(entry)
    if kind.startswith("sqlalchemy_"):
        return SQLAlchemyProbe(backend)
    if kind.startswith("peewee_"):
        return PeeweeProbe(backend)
    if kind == "cachelib":
        return CacheLibProbe(entry)
    if kind == "elasticsearch":
        return ElasticsearchProbe(entry)
    if kind == "dynamodb":
        return DynamoDBProbe(entry)
    if kind == "datastore":
        return DatastoreProbe(entry)
    raise AssertionError(kind)


# -- the harness: one store, one loop ----------------------------------------------------------


class Harness:
    """One store on an event loop of its own; calls run to completion, bounded."""

    def __init__(self, kind: str, entry: dict[str, Any], instance_path: Path) -> None:
        self.kind = kind
        self.entry = entry
        self.prefix: str = entry["key_prefix"]
        self.backend = build(entry, instance_path)
        self.loop = asyncio.new_event_loop()
        self._probe: Probe | None = None

    @property
    def probe(self) -> Probe:
        if self._probe is None:
            # Stores make their tables (SQL, DynamoDB) or index (Elasticsearch) at their
            # first write: one, so that the probe finds them.
            key = self.key()
            self.create(key, {"a": v(1)})
            self.delete(key)
            self._probe = make_probe(self.kind, self.entry, self.backend)
        return self._probe

    def key(self) -> str:
        return self.prefix + new_id()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, OP_TIMEOUT))

    def gather(self, awaitables: list[Awaitable[T]]) -> list[T]:
        async def all_of() -> list[T]:
            return list(await asyncio.gather(*awaitables))

        return self.run(all_of())

    def load(self, key: str, *, touch: bool = False) -> Record | None:
        return self.run(self.backend.load(key, touch=touch))

    def store(self, key: str, write: Write) -> bool:
        return self.run(self.backend.store(key, write))

    def create(self, key: str, fields: dict[str, bytes], *, permanent: bool = False,
               ttl: int = 600) -> None:
        written = self.store(key, Write(fields, permanent=permanent, ttl=ttl, create=True))
        assert written is True, "a create=True write must report that it wrote"

    def delete(self, key: str) -> None:
        self.run(self.backend.delete(key))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(close_loop_clients())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            if self._probe is not None:
                self._probe.close()


@pytest.fixture
def entry(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> dict[str, Any]:
    return store_config(request, kind, tmp_path)


@pytest.fixture
def s(kind: str, entry: dict[str, Any], tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(kind, entry, tmp_path)
    yield harness
    harness.close()


# -- records: fields, updates, removal, deletion -------------------------------------------------


def test_round_trip(s: Harness) -> None:
    fields = {"a": v(1), "b": v("two"), "c": v({"nested": [1, None, True]})}
    permanent, browser = s.key(), s.key()
    s.create(permanent, fields, permanent=True)
    s.create(browser, {"a": v(1)}, permanent=False)
    assert s.load(permanent) == Record(fields, True)
    assert s.load(permanent, touch=True) == Record(fields, True)
    assert s.load(browser) == Record({"a": v(1)}, False)
    assert s.load(browser, touch=True) == Record({"a": v(1)}, False)
    assert s.load(s.key()) is None
    assert s.load(s.key(), touch=True) is None


def test_location_names_the_store(s: Harness) -> None:
    assert isinstance(s.backend.location, str)
    assert s.backend.location


def test_update_keeps_the_fields_it_does_not_name(s: Harness) -> None:
    key = s.key()
    s.create(key, {"a": v(1), "b": v(2), "c": v(3)}, permanent=True)
    assert s.store(key, Write({"b": v("new")})) is True
    assert s.load(key) == Record({"a": v(1), "b": v("new"), "c": v(3)}, True)
    assert s.store(key, Write({"d": v(4)}, permanent=True, ttl=600)) is True
    assert s.load(key) == Record({"a": v(1), "b": v("new"), "c": v(3), "d": v(4)}, True)


def test_removed_fields_disappear(s: Harness) -> None:
    key = s.key()
    s.create(key, {"a": v(1), "b": v(2), "c": v(3)})
    assert s.store(key, Write({"d": v(4)}, ["b"])) is True
    assert s.load(key) == Record({"a": v(1), "c": v(3), "d": v(4)})
    # Removing a field that is not there is no error, and the others stay.
    assert s.store(key, Write({}, ["b", "never"])) is True
    assert s.load(key) == Record({"a": v(1), "c": v(3), "d": v(4)})
    # All at once: set, remove (one there, one not) and change the flag in one write.
    assert s.store(key, Write({"e": v(5)}, ["a", "never"], permanent=True, ttl=600)) is True
    assert s.load(key) == Record({"c": v(3), "d": v(4), "e": v(5)}, True)
    # A field both removed and set in one write is not possible from the engine; skip it.


def test_removing_the_last_field_deletes_the_record(s: Harness) -> None:
    key = s.key()
    s.create(key, {"a": v(1), "b": v(2)}, permanent=True)
    written = s.store(key, Write({}, ["a", "b"]))
    assert isinstance(written, bool)
    assert s.probe.dump(key) is None, "an emptied record was left on the server"
    assert s.load(key) is None
    assert s.load(key, touch=True) is None
    # Deleted, not merely empty: an update from a request that loaded it is refused.
    assert s.store(key, Write({"late": v(1)})) is False
    assert s.load(key) is None


def test_delete(s: Harness) -> None:
    key = s.key()
    s.create(key, {"a": v(1)})
    s.delete(key)
    assert s.load(key) is None
    assert s.probe.dump(key) is None
    s.delete(key)  # again: a missing record is no error
    s.delete(s.key())  # never written


@pytest.mark.parametrize("gone", ["missing", "deleted", "emptied"])
def test_update_of_a_record_that_is_gone_writes_nothing(s: Harness, gone: str) -> None:
    key = s.key()
    if gone != "missing":
        s.create(key, {"a": v(1)})
        if gone == "deleted":
            s.delete(key)
        else:
            s.store(key, Write({}, ["a"]))
    writes = [
        Write({"a": v(2)}),  # flag kept
        Write({"a": v(2)}, permanent=True, ttl=600),  # flag set
        Write({}, ["a"]),  # removal only
        Write({"b": v(3)}, ["a"]),
    ]
    for write in writes:
        assert s.store(key, write) is False, write
        assert s.load(key) is None, write
        assert s.probe.dump(key) is None, write


def test_an_unchanged_flag_is_kept(s: Harness) -> None:
    permanent, browser = s.key(), s.key()
    s.create(permanent, {"a": v(1)}, permanent=True)
    s.create(browser, {"a": v(1)}, permanent=False)
    assert s.store(permanent, Write({"b": v(2)})) is True
    assert s.store(browser, Write({"b": v(2)})) is True
    assert s.store(permanent, Write({}, ["a"])) is True
    assert s.load(permanent) == Record({"b": v(2)}, True)
    assert s.load(browser) == Record({"a": v(1), "b": v(2)}, False)
    # A write that sets the flag changes it, either way, and the next one keeps it.
    assert s.store(permanent, Write({}, permanent=False, ttl=600)) is True
    assert s.store(browser, Write({}, permanent=True, ttl=600)) is True
    assert s.store(permanent, Write({"c": v(3)})) is True
    assert s.store(browser, Write({"c": v(3)})) is True
    assert s.load(permanent) == Record({"b": v(2), "c": v(3)}, False)
    assert s.load(browser) == Record({"a": v(1), "b": v(2), "c": v(3)}, True)


def test_a_new_session_replaces_a_record_under_its_id(s: Harness) -> None:
    key = s.key()
    s.create(key, {"old": v(1), "a": v(1)}, permanent=True)
    s.create(key, {"a": v(2)}, permanent=False, ttl=600)
    assert s.load(key) == Record({"a": v(2)}, False)  # replaced, never merged with


def test_fifty_concurrent_writers_of_different_fields_all_land(s: Harness) -> None:
    # All fifty writers are in this process. cachelib's store (merges_fields = False) can
    # lose updates only between processes sharing a cache: within one it serializes the
    # writes of a key, so it passes here too.
    key = s.key()
    s.create(key, {"base": v(0)}, permanent=True)
    results = s.gather([s.backend.store(key, Write({f"f{i}": v(i)})) for i in range(50)])
    assert results == [True] * 50
    record = s.load(key)
    assert record is not None
    missing = sorted(set(f"f{i}" for i in range(50)) - record.fields.keys())
    assert not missing, f"{len(missing)} of 50 concurrent writes lost: {missing}"
    assert record == Record({"base": v(0), **{f"f{i}": v(i) for i in range(50)}}, True)


# -- what other programs leave under a key ------------------------------------------------------


def test_a_foreign_record_reads_as_none_is_left_and_is_replaced_by_a_new_session(
    s: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    key = s.key()
    s.probe.plant(key)
    before = s.probe.dump(key)
    assert before is not None
    warning = f"unreadable record {masked(key)!r} read as no session"
    for touch in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncsessions"):
            assert s.load(key, touch=touch) is None
        warned = [r for r in caplog.records if r.name.startswith("asyncsessions")
                  and r.levelno == logging.WARNING and warning in r.getMessage()]
        assert warned, f"no warning for the foreign record (touch={touch}): {caplog.text!r}"
        assert s.probe.dump(key) == before, f"the read (touch={touch}) changed the record"
    # An update from a request that loaded it: it is no session of ours, so it is gone.
    assert s.store(key, Write({"a": v(1)})) is False
    assert s.store(key, Write({"a": v(1)}, permanent=True, ttl=600)) is False
    assert s.probe.dump(key) == before, "a refused update changed the foreign record"
    # A new session under that key replaces it whole, never merged with.
    s.create(key, {"a": v(1)}, permanent=False)
    assert s.load(key) == Record({"a": v(1)}, False)
    assert MARKER not in repr(s.probe.dump(key)).encode(), "the foreign value was merged with"


# -- hostile names and values ------------------------------------------------------------------

HOSTILE_NAMES = [
    "a", ".", "a.b", "a.", ".a", "..", "$", "$set", "a$b", "%", "%25", "%2E", "%2F", "a%2Eb",
    "/", "a/b", "\\", " ", " leading space", "trailing space ", "in side", "tab\tand\nline",
    "ünïcödé", "日本語", "😀", "\u2028", "x" * 200, "__name__", "__", "", "a\0b", "'\"`",
    "{}", "[0]", "null", "-", "_id", "f", "ttl", "permanent", "expires",
]
HOSTILE_VALUES = {
    "nul": v("nul\0inside\0"),
    "nul_key\0": v({"\0": "\0"}),
    "unicode": v("😀 ünï \u2028 \\ \" '"),
    "large": v(secrets.token_hex(50_000)),  # 100 KB of JSON text
    "deep": v({"list": [1, 2.5, None, True, {"x": ["y"]}], "s": "\t\n"}),
}


#: Names nx-27017 (the MongoDB stand-in) cannot ``$unset``: it ignores the ``$unset`` of a
#: path holding ``"``, ``\\``, ``[``, a control or a non-ASCII character, and the whole
#: ``$unset`` of an update whose ``$set`` has a path with ``"`` or ``[``. MongoDB does neither.
NX_27017_CANNOT_UNSET = re.compile(r'["\\\[]|[^\x20-\x7e]')


def test_hostile_field_names_and_values_round_trip(s: Harness) -> None:
    fields = {name: v(f"value of {name!r}") for name in HOSTILE_NAMES}
    fields.update(HOSTILE_VALUES)
    assert len(fields) == len(HOSTILE_NAMES) + len(HOSTILE_VALUES)
    key = s.key()
    s.create(key, fields, permanent=True)
    assert s.load(key) == Record(fields, True)
    assert s.load(key, touch=True) == Record(fields, True)
    # Every other name removed, the rest changed, in one write: names that escape alike
    # must stay apart. On the MongoDB stand-in, what it cannot unset is changed on its own.
    if s.kind == "mongodb":
        names = [n for n in HOSTILE_NAMES if not NX_27017_CANNOT_UNSET.search(n)]
        alone = [n for n in HOSTILE_NAMES if NX_27017_CANNOT_UNSET.search(n)]
    else:
        names, alone = HOSTILE_NAMES, []
    removed = names[::2]
    changed = {name: v(["changed", name]) for name in names[1::2]}
    assert s.store(key, Write(changed, removed)) is True
    expected = {**{k: x for k, x in fields.items() if k not in removed}, **changed}
    assert s.load(key) == Record(expected, True)
    if alone:
        changed = {name: v(["changed", name]) for name in alone}
        assert s.store(key, Write(changed)) is True
        assert s.load(key) == Record({**expected, **changed}, True)


HOSTILE_PREFIXES = ["h/", "h%2F", "h%", "h.", "h..", "h$", "h\\", "ü:", "__h__", "h:%25"]


def test_hostile_key_prefixes_stay_apart(s: Harness) -> None:
    sid = new_id()
    keys = []
    for prefix in HOSTILE_PREFIXES:
        try:
            s.backend.check_key_prefix(prefix)  # what init_app refuses is no key here
        except ValueError:
            continue
        keys.append(prefix + sid)
    assert len(keys) >= 3
    for key in keys:
        s.create(key, {"k": v(key)})
    for key in keys:
        assert s.load(key) == Record({"k": v(key)}), key
    for key in keys[::2]:
        s.delete(key)
    for i, key in enumerate(keys):
        assert s.load(key) == (None if i % 2 == 0 else Record({"k": v(key)})), key


# -- a server that is down ----------------------------------------------------------------------


def test_an_unreachable_server_raises_promptly(
    kind: str, entry: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    broken = unreachable(entry)
    if broken is None and kind == "peewee_postgresql":
        from playhouse.db_url import connect

        broken = {"session_type": "peewee",
                  "database": connect("postgresql://u@127.0.0.1:1/db")}
    if broken is None:
        pytest.skip(f"{kind}: no server to lose (unreachable() has no closed-port setting)")
    if entry.get("cluster"):
        broken["cluster"] = True
    broken["key_prefix"] = entry["key_prefix"]
    s = Harness(kind, broken, tmp_path)
    key = s.key()
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("load", lambda: s.backend.load(key, touch=False)),
        ("load touch", lambda: s.backend.load(key, touch=True)),
        ("create", lambda: s.backend.store(key, Write({"a": v(1)}, permanent=False, ttl=60,
                                                      create=True))),
        ("update", lambda: s.backend.store(key, Write({"a": v(1)}))),
        ("delete", lambda: s.backend.delete(key)),
    ]

    async def outcome(call: Callable[[], Awaitable[Any]]) -> str:
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(call(), DOWN_LIMIT)
        except asyncio.TimeoutError:
            if asyncio.get_running_loop().time() - started >= DOWN_LIMIT * 0.95:
                return f"no answer within {DOWN_LIMIT:g} s"
            return "raised"  # the driver's own connect timeout
        except Exception:  # whatever the driver raises is fine: the engine names it
            return "raised"
        return "returned"

    try:
        # Concurrently: a store that hangs costs the limit once, not five times.
        results = s.gather([outcome(call) for _, call in calls])
    finally:
        s.close()
    assert dict(zip([name for name, _ in calls], results, strict=True)) == {
        name: "raised" for name, _ in calls
    }


# -- expiry: one timeline shared by every selected store -------------------------------------

#: Tests reading the shared timeline (``timeline`` runs it for the stores they select).
TIMED = {
    "test_an_expired_record_reads_as_none",
    "test_an_expired_record_is_not_resurrected",
    "test_touch_restarts_the_records_own_lifetime",
    "test_a_write_keeping_the_flag_restarts_the_records_own_lifetime",
}
#: Seconds after the first writes when the first checks run, and the lifetime of most records.
#: memcached counts expiry in whole seconds, so a record with a ttl of 3 lives between 2 and 3.
FIRST, LIFETIME, SECOND = 1.6, 3, 3.3


async def _timeline(backend: Backend, probe: Probe, prefix: str) -> dict[str, Any]:
    """Observations on records with short lifetimes.

    Records: E lives 1 s; N, T, P live 3 s; L lives 600 s. At FIRST (1.6 s after the
    writes) T and L are touched and P gets a write that keeps its flag; at SECOND (3.3 s)
    all are read again (N has expired by then, T and P live on from their restart, L is not
    cut short); 3.3 s after the restarts T and P have expired too, their own lifetime later.
    What the server holds for E is dumped (in a thread) before its reads and after the
    updates that must be refused.
    """
    loop = asyncio.get_running_loop()
    keys = {name: prefix + new_id() for name in "ENTPL"}
    seen: dict[str, Any] = {}

    async def create(name: str, ttl: int, permanent: bool = False) -> None:
        write = Write({name: v(name)}, permanent=permanent, ttl=ttl, create=True)
        assert await backend.store(keys[name], write) is True

    await asyncio.gather(create("E", 1), create("N", LIFETIME), create("T", LIFETIME),
                         create("P", LIFETIME, permanent=True), create("L", 600))
    written = loop.time()
    await asyncio.sleep(FIRST)
    seen["E.dump"] = await asyncio.to_thread(probe.dump, keys["E"])
    seen["E.load"] = await backend.load(keys["E"], touch=False)
    seen["E.touch"] = await backend.load(keys["E"], touch=True)
    seen["E.update"] = await backend.store(keys["E"], Write({"x": v(1)}))
    seen["E.update_flag"] = await backend.store(
        keys["E"], Write({"x": v(1)}, permanent=False, ttl=600)
    )
    seen["E.dump_after"] = await asyncio.to_thread(probe.dump, keys["E"])
    seen["T.touch"] = await backend.load(keys["T"], touch=True)
    seen["L.touch"] = await backend.load(keys["L"], touch=True)
    seen["P.update"] = await backend.store(keys["P"], Write({"q": v("q")}))
    restarted = loop.time()
    await asyncio.sleep(max(0.0, written + SECOND - loop.time()))
    for name in "ENTPL":
        seen[f"{name}.later"] = await backend.load(keys[name], touch=False)
    await asyncio.sleep(max(0.0, restarted + SECOND - loop.time()))
    for name in "TP":
        seen[f"{name}.end"] = await backend.load(keys[name], touch=False)
    return seen


class _Request:
    """A module-scoped request lending store_config a monkeypatch of the timeline's own."""

    def __init__(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
        self._request = request
        self._monkeypatch = monkeypatch

    def getfixturevalue(self, name: str) -> Any:
        if name == "monkeypatch":
            return self._monkeypatch
        return self._request.getfixturevalue(name)

    def addfinalizer(self, finalizer: Callable[[], object]) -> None:
        self._request.addfinalizer(finalizer)


@pytest.fixture(scope="module")
def timeline(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Per store kind: the observations of :func:`_timeline`, or what stopped it."""
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if (getattr(item, "module", None) is request.module and callspec is not None
                and getattr(item, "originalname", "") in TIMED):
            kind = callspec.params["kind"]
            if kind not in wanted:
                wanted.append(kind)
    results: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        backends: dict[str, Backend] = {}
        probes: dict[str, Probe] = {}
        for kind in wanted:
            path = tmp_path_factory.mktemp(f"timeline-{kind}")
            try:
                entry = store_config(_Request(request, monkeypatch), kind, path)  # type: ignore[arg-type]
                backends[kind] = build(entry, path)
                probes[kind] = make_probe(kind, entry, backends[kind])
            except (pytest.skip.Exception, pytest.fail.Exception, Exception) as exc:
                results[kind] = exc
                backends.pop(kind, None)

        async def one(kind: str) -> None:
            backend = backends[kind]
            try:
                results[kind] = await asyncio.wait_for(
                    _timeline(backend, probes[kind], backend_prefix[kind]), OP_TIMEOUT
                )
            except Exception as exc:
                results[kind] = exc

        async def every() -> None:
            try:
                await asyncio.gather(*(one(kind) for kind in backends))
            finally:
                await close_loop_clients()

        backend_prefix = {kind: f"tl{secrets.token_hex(4)}:" for kind in backends}
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(every())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            for probe in probes.values():
                probe.close()
    return results


def observed(timeline: dict[str, Any], kind: str) -> dict[str, Any]:
    seen = timeline.get(kind)
    if isinstance(seen, BaseException):
        raise seen
    assert seen is not None, f"the timeline did not run for {kind}"
    return dict(seen)


def test_an_expired_record_reads_as_none(kind: str, timeline: dict[str, Any]) -> None:
    seen = observed(timeline, kind)
    assert seen["E.load"] is None, "a record written with ttl=1 is there 1.6 s later"
    assert seen["E.touch"] is None, "a touching read returned an expired record"
    assert seen["N.later"] is None, f"a record written with ttl={LIFETIME} is there 3.3 s later"


def test_an_expired_record_is_not_resurrected(kind: str, timeline: dict[str, Any]) -> None:
    seen = observed(timeline, kind)
    assert seen["E.update"] is False, "an update of an expired record reported it wrote"
    assert seen["E.update_flag"] is False, "an update of an expired record reported it wrote"
    assert seen["E.later"] is None, "an update brought an expired record back"
    # Left as it was (a cleanup may have deleted it since): neither its reads nor the
    # refused updates wrote to it, or made a new one.
    assert seen["E.dump_after"] in (seen["E.dump"], None), "an expired record was written to"


def test_touch_restarts_the_records_own_lifetime(kind: str, timeline: dict[str, Any]) -> None:
    seen = observed(timeline, kind)
    assert seen["T.touch"] == Record({"T": v("T")})
    assert seen["T.later"] == Record({"T": v("T")}), (
        f"a record touched {FIRST} s into its {LIFETIME} s is gone {SECOND} s after its write"
    )
    assert seen["T.end"] is None, (
        f"a touched record outlived its own {LIFETIME} s lifetime by far (restarted longer)"
    )
    assert seen["L.touch"] == Record({"L": v("L")})
    assert seen["L.later"] == Record({"L": v("L")}), (
        "a touch cut a longer-lived record short (restarted with another record's lifetime)"
    )


def test_a_write_keeping_the_flag_restarts_the_records_own_lifetime(
    kind: str, timeline: dict[str, Any]
) -> None:
    seen = observed(timeline, kind)
    assert seen["P.update"] is True
    assert seen["P.later"] == Record({"P": v("P"), "q": v("q")}, True), (
        "a write with permanent=None did not restart the record's lifetime (or lost its flag)"
    )
    assert seen["P.end"] is None, (
        f"a write with permanent=None made the record outlive its own {LIFETIME} s by far"
    )

