"""Tests for the cachelib session store: SimpleCache, FileSystemCache and RedisCache clients."""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from cachelib import (
    BaseCache,
    FileSystemCache,
    MemcachedCache,
    NullCache,
    RedisCache,
    SimpleCache,
)

from asyncsessions.backends.base import Record, Write, masked
from asyncsessions.backends.cachelib import CacheLibBackend, _Verbatim
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from asyncsessions.serialization import join_fields
from storekit import v

pytestmark = pytest.mark.anyio

KINDS = ["simple", "filesystem", "filesystem_threshold", "redis"]
DAY = 86400
#: Set when a pickle this store read was run: it must never be.
RAN: list[str] = []


def _ran(what: str) -> None:
    RAN.append(what)


class Planted:
    """What another program's pickle could do when unpickled: run code."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ran, ("a pickle was unpickled",))


@pytest.fixture(params=[
    pytest.param(k, marks=[pytest.mark.server("redis")] if k == "redis" else []) for k in KINDS
])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BaseCache]:
    """The app's cache, as it would configure it (and use it for its own values too)."""
    if kind == "simple":
        yield SimpleCache()
    elif kind == "filesystem":
        yield FileSystemCache(str(tmp_path / "cache"), threshold=0)
    elif kind == "filesystem_threshold":
        yield FileSystemCache(str(tmp_path / "cache"), threshold=500)
    else:
        server = request.getfixturevalue("redis_server")
        connection = redis.Redis(host=server.host, port=server.port)
        yield RedisCache(connection, key_prefix=f"c{uuid.uuid4().hex[:6]}:")
        connection.close()


@pytest.fixture
def backend(client: BaseCache) -> CacheLibBackend:
    return CacheLibBackend(client=client)


@pytest.fixture
def key() -> str:
    return "session:" + new_id()


def raw(backend: CacheLibBackend, key: str) -> dict[str, Any] | None:
    """The stored record, parsed here (through the store's own non-pickling client copy)."""
    value = backend._cache.get(key)
    return None if value is None else dict(json.loads(value))


def plant(backend: CacheLibBackend, key: str, record: dict[str, Any], ttl: int = 60) -> None:
    """Write a record of this store's shape as bytes, as this store would."""
    fields = {k: json.dumps(v_).encode() for k, v_ in record.items()}
    assert backend._cache.set(key, join_fields(fields), timeout=ttl)


# -- the store contract -----------------------------------------------------------------------


async def test_expires_at_is_the_last_write_plus_the_lifetime(
    backend: CacheLibBackend, key: str
) -> None:
    assert await backend.expires_at(key) is None
    await backend.store(key, Write({"a": v(1)}, (), False, 600, create=True))
    at = await backend.expires_at(key)
    assert at is not None
    assert abs(at - (time.time() + 600)) < 2
    assert await backend.expires_at(key) == at  # read, never touched
    assert backend._cache.set(key, b"not a record", timeout=60)
    assert await backend.expires_at(key) is None


async def test_round_trip(backend: CacheLibBackend, key: str) -> None:
    fields = {"user_id": v(42), "name": v("Zoë"), "odd name/..:": v([1, 2]), "nul\0in": v(None)}
    assert await backend.store(key, Write(fields, (), True, 60, create=True)) is True
    assert await backend.load(key, touch=False) == Record(fields, permanent=True)
    assert await backend.load("session:" + new_id(), touch=True) is None
    stored = raw(backend, key)
    assert stored is not None
    assert (stored["\0ttl"], stored["\0p"]) == (60, True)
    assert stored["\0t"] == pytest.approx(time.time(), abs=5)


async def test_partial_update_keeps_the_fields_it_does_not_name(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1), "b": v(2), "c": v(3)}, (), False, 60,
                                   create=True))
    assert await backend.store(key, Write({"b": v(20), "d": v(4)}, ["a", "missing"]))
    assert await backend.load(key, touch=False) == Record({"b": v(20), "c": v(3), "d": v(4)})


async def test_concurrent_writes_in_one_process_all_survive(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"f0": v(0)}, (), False, 60, create=True))

    async def set_field(i: int) -> None:
        assert await backend.store(key, Write({f"f{i}": v(i)}))

    async with anyio.create_task_group() as tg:
        for i in range(1, 40):
            tg.start_soon(set_field, i)
    record = await backend.load(key, touch=False)
    assert record is not None
    assert record.fields == {f"f{i}": v(i) for i in range(40)}


async def test_update_of_a_deleted_session_is_refused_and_creates_nothing(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    await backend.delete(key)
    assert raw(backend, key) is None
    assert await backend.store(key, Write({"b": v(2)})) is False
    assert await backend.store(key, Write({"b": v(2)}, (), True, 60)) is False
    assert await backend.store(key, Write({}, ["a"])) is False
    assert raw(backend, key) is None
    await backend.delete(key)  # a missing session is no error


async def test_update_of_an_expired_session_is_refused(
    backend: CacheLibBackend, key: str
) -> None:
    # Written 61 s ago with a 60 s lifetime; the cache itself would keep it a while yet.
    plant(backend, key, {"\0ttl": 60, "\0p": False, "\0t": time.time() - 61, "a": 1})
    before = raw(backend, key)
    assert await backend.load(key, touch=True) is None
    assert await backend.store(key, Write({"b": v(2)})) is False
    assert await backend.store(key, Write({}, ["a"])) is False
    assert raw(backend, key) == before


async def test_sessions_expire_in_the_cache(backend: CacheLibBackend, key: str) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 1, create=True))
    time.sleep(2.1)  # FileSystemCache and SimpleCache count whole seconds
    assert await backend.load(key, touch=False) is None
    assert backend._cache.get(key) is None  # gone from the cache too, not only unread


async def test_removing_the_last_field_deletes_the_session(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1), "b": v(2)}, (), True, 60, create=True))
    assert await backend.store(key, Write({}, ["a"])) is True
    assert raw(backend, key) is not None
    assert await backend.store(key, Write({}, ["b"])) is True
    assert raw(backend, key) is None
    assert not backend._cache.has(key)


async def test_field_written_first_keeps_an_emptied_session(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    # Request A loaded {"a"}; request B (in this process) adds "b" before A empties it.
    assert await backend.store(key, Write({"b": v(2)}))
    assert await backend.store(key, Write({}, ["a"])) is True
    assert await backend.load(key, touch=False) == Record({"b": v(2)})


async def test_write_without_the_flag_keeps_the_stored_one_and_its_own_ttl(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    assert await backend.store(key, Write({}, (), True, 31 * DAY))  # another request's change
    assert await backend.store(key, Write({"b": v(2)}))
    stored = raw(backend, key)
    assert stored is not None
    assert (stored["\0ttl"], stored["\0p"]) == (31 * DAY, True)
    assert stored["\0t"] == pytest.approx(time.time(), abs=5)  # its lifetime restarted
    assert await backend.load(key, touch=False) == Record({"a": v(1), "b": v(2)}, True)


async def test_write_that_sets_the_flag_stores_it_with_its_ttl(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), True, 31 * DAY, create=True))
    assert await backend.store(key, Write({}, (), False, 100))
    stored = raw(backend, key)
    assert stored is not None
    assert (stored["\0ttl"], stored["\0p"]) == (100, False)


async def test_refresh_rewrites_at_most_once_per_tenth_of_the_lifetime(
    backend: CacheLibBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 1000, create=True))
    written = (raw(backend, key) or {})["\0t"]
    assert await backend.load(key, touch=True) == Record({"a": v(1)})
    assert (raw(backend, key) or {})["\0t"] == written  # fresh: read-only, nothing written
    # Written 49 s ago with 500 s to live: under a tenth, still left alone.
    plant(backend, key, {"\0ttl": 500, "\0p": False, "\0t": time.time() - 49, "a": 1})
    assert await backend.load(key, touch=True) is not None
    assert (raw(backend, key) or {})["\0t"] < time.time() - 48
    # 51 s ago: rewritten, the lifetime restarts.
    plant(backend, key, {"\0ttl": 500, "\0p": True, "\0t": time.time() - 51, "a": 1})
    assert await backend.load(key, touch=True) == Record({"a": v(1)}, True)
    assert (raw(backend, key) or {})["\0t"] == pytest.approx(time.time(), abs=5)
    # A day's lifetime is refreshed after a minute, not after 2.4 hours.
    plant(backend, key, {"\0ttl": DAY, "\0p": False, "\0t": time.time() - 61, "a": 1})
    assert await backend.load(key, touch=False) is not None
    assert (raw(backend, key) or {})["\0t"] < time.time() - 60  # no touch, no rewrite
    assert await backend.load(key, touch=True) is not None
    assert (raw(backend, key) or {})["\0t"] == pytest.approx(time.time(), abs=5)


async def test_new_id_replaces_whatever_is_under_it(backend: CacheLibBackend, key: str) -> None:
    await backend.store(key, Write({"old": v(1)}, (), True, 60, create=True))
    assert await backend.store(key, Write({"new": v(3)}, ["x"], False, 100, create=True))
    assert await backend.load(key, touch=False) == Record({"new": v(3)})
    other = "session:" + new_id()
    assert await backend.store(other, Write({"a": v(1)}, ["a"], False, 60, create=True))
    assert raw(backend, other) is None  # nothing to create


# -- never unpickling ---------------------------------------------------------------------------


@pytest.mark.parametrize("planted", [
    Planted(), {"_permanent": True, "user_id": 42}, "not json", b'{"user_id": 42}', 7,
], ids=["code", "dict", "str", "other json", "int"])
async def test_values_of_another_program_read_as_no_session_and_are_never_unpickled(
    client: BaseCache, backend: CacheLibBackend, key: str, planted: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    RAN.clear()
    client.set(key, planted, timeout=60)  # the app's own client pickles (cachelib's default)
    stored = backend._cache.get(key)
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert await backend.load(key, touch=True) is None
        assert await backend.store(key, Write({"b": v(2)})) is False
        assert await backend.store(key, Write({}, ["a"])) is False
    assert RAN == []
    assert f"unreadable record {masked(key)!r} read as no session" in caplog.text
    assert backend._cache.get(key) == stored  # left as it is
    assert await backend.store(key, Write({"b": v(2)}, (), False, 60, create=True))
    assert await backend.load(key, touch=False) == Record({"b": v(2)})
    assert RAN == []


def test_the_app_client_is_not_changed(client: BaseCache) -> None:
    CacheLibBackend(client=client)
    assert "serializer" not in vars(client)
    client.set("app's own", {"any": "pickle"})
    assert client.get("app's own") == {"any": "pickle"}


def test_serializer_passes_bytes_and_decodes_only_plain_ints() -> None:
    RAN.clear()
    serializer = _Verbatim()
    assert serializer.loads(b"{}") == b"{}"
    assert serializer.loads(pickle.dumps(Planted())) == pickle.dumps(Planted())
    for value in [0, 7, 2**70, -3]:
        file = io.BytesIO()
        serializer.dump(value, file)
        assert serializer.load(io.BytesIO(file.getvalue())) == value
    short = pickle.dumps(Planted(), protocol=0)  # whatever its size, no global is resolved
    assert serializer.load(io.BytesIO(b"\x80\x04" + short[:30])) == b"\x80\x04" + short[:30]
    for planted in [pickle.dumps(Planted()), pickle.dumps(True), pickle.dumps([1])]:
        assert serializer.load(io.BytesIO(planted)) == planted
    assert RAN == []
    with pytest.raises(TypeError):
        serializer.dumps({"not": "bytes"})


async def test_filesystem_threshold_still_counts_and_evicts(tmp_path: Path) -> None:
    client = FileSystemCache(str(tmp_path / "cache"), threshold=3)
    backend = CacheLibBackend(client=client)
    keys = ["session:" + new_id() for _ in range(6)]
    for key in keys:
        await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    # cachelib's own policy, kept: beyond its threshold it removes the oldest items.
    alive = [key for key in keys if await backend.load(key, touch=False) is not None]
    assert 1 <= len(alive) <= 4
    assert keys[-1] in alive
    assert isinstance(client._file_count, int)


# -- settings -----------------------------------------------------------------------------------


def build(tmp_path: Path, **entry: Any) -> CacheLibBackend:
    [store] = parse_config(
        {"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "cachelib", **entry}]},
        instance_path=str(tmp_path),
    )
    backend = store.backend
    assert isinstance(backend, CacheLibBackend)
    return backend


def test_merges_fields_is_false() -> None:
    assert CacheLibBackend.merges_fields is False


def test_location(tmp_path: Path) -> None:
    client = FileSystemCache(str(tmp_path / "c"), threshold=0)
    assert build(tmp_path, client=client).location == (
        f"cachelib FileSystemCache {tmp_path / 'c'}")
    redis_cache = RedisCache(redis.Redis(host="cache.internal", port=6380, db=2,
                                         password="s3cret"), key_prefix="app:")
    assert build(tmp_path, client=redis_cache).location == (
        "cachelib RedisCache cache.internal:6380/2 prefix 'app:'")
    simple = SimpleCache()
    assert build(tmp_path, client=simple).location == f"cachelib SimpleCache at 0x{id(simple):x}"


def test_two_stores_on_one_cache_need_their_own_prefixes(tmp_path: Path) -> None:
    client = SimpleCache()
    config = {"SESSION_CONFIG": [
        {"cookie_name": "a", "session_type": "cachelib", "client": client},
        {"cookie_name": "b", "session_type": "cachelib", "client": client},
    ]}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[1\] 'key_prefix': .*SimpleCache"):
        parse_config(config, instance_path=str(tmp_path))
    config["SESSION_CONFIG"][1]["key_prefix"] = "other:"
    parse_config(config, instance_path=str(tmp_path))


@pytest.mark.parametrize(
    ("client", "key", "message"),
    [
        (None, "session_type", "client is required"),
        ("redis://localhost", "client", "must be a cachelib cache"),
        # Made without its __init__, which needs a memcached driver installed.
        (MemcachedCache.__new__(MemcachedCache), "client", "session_type 'memcache'"),
        (NullCache(), "client", "session_type 'null'"),
        (BaseCache(), "client", "session_type 'null'"),
        (type("Custom", (BaseCache,), {})(), "client", "has no serializer"),
    ],
)
def test_bad_clients_are_named(tmp_path: Path, client: Any, key: str, message: str) -> None:
    entry = {} if client is None else {"client": client}
    with pytest.raises(ValueError, match=re.escape(f"SESSION_CONFIG[0] {key!r}: ")) as caught:
        build(tmp_path, **entry)
    assert message in str(caught.value)


# -- through Flask and Quart ------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["simple", "filesystem"])
def test_through_the_app(make_driver: Any, tmp_path: Path, cache: str) -> None:
    client = (SimpleCache() if cache == "simple"
              else FileSystemCache(str(tmp_path / "cache"), threshold=0))
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": "cachelib", "client": client}]})
    assert d.post("set", {"user_id": 42, "cart": [1, 2]}).status == 200
    key = "session:" + d.cookies()["sid"]
    assert d.show() == {"user_id": "42", "cart": "[1, 2]"}
    d.post("append", {"cart": 3})
    d.post("del", {"user_id": None})
    assert d.show() == {"cart": "[1, 2, 3]"}
    d.post("permanent")
    backend = CacheLibBackend(client=client)
    stored = raw(backend, key)
    assert stored is not None
    assert (stored["\0p"], stored["\0ttl"]) == (True, 31 * DAY)
    d.post("regenerate", {"more": 1})
    assert raw(backend, key) is None
    key = "session:" + d.cookies()["sid"]
    assert d.show() == {"cart": "[1, 2, 3]", "more": "1"}
    d.post("clear")
    assert d.show() == {}
    assert raw(backend, key) is None
