"""The record under a session's redis key: what asyncsessions did not write reads as no
session, never an error; an update applies only to a record that is still there and ours.

Each test runs on the three client paths: the built-in RESP client, redis-py, a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio

from asyncsessions.backends.base import Record, Write, close_loop_clients, masked
from asyncsessions.backends.redis import RedisBackend, _FastClient
from asyncsessions.ids import new_id
from asyncsessions.serialization import dumps

# What other programs keep under a session's name; Flask-Session 0.8 a msgpack string.
FOREIGN: dict[str, Callable[[Any, str], Any]] = {
    "string": lambda r, key: r.set(key, b"\x82\xaa_permanent\xc3\xa1a\x01", ex=600),
    "list": lambda r, key: r.rpush(key, b"x"),
    "set": lambda r, key: r.sadd(key, b"x"),
    "zset": lambda r, key: r.zadd(key, {b"x": 1}),
    "stream": lambda r, key: r.xadd(key, {b"f": b"v"}),
}

# Hashes this store would not have written; each has a field that would otherwise show.
SHOWN = {b"a": dumps(1)}
BAD_HASHES: dict[str, dict[bytes, bytes]] = {
    "garbage ttl": {b"\0ttl": b"soon", b"\0p": b"0"},
    "negative ttl": {b"\0ttl": b"-5", b"\0p": b"0"},
    "zero ttl": {b"\0ttl": b"0", b"\0p": b"0"},  # EXPIRE 0 would delete it
    "fractional ttl": {b"\0ttl": b"1.5", b"\0p": b"0"},
    "ttl beyond EXPIRE": {b"\0ttl": b"9" * 20, b"\0p": b"0"},
    "bad permanent flag": {b"\0ttl": b"60", b"\0p": b"yes"},
    "no metadata": {},
    "unknown metadata": {b"\0ttl": b"60", b"\0p": b"0", b"\0v": b"2"},
    "unknown metadata beside an empty name": {b"\0ttl": b"60", b"\0p": b"0", b"": dumps(3),
                                              b"\0v": b"2"},
    "non-UTF-8 name": {b"\0ttl": b"60", b"\0p": b"0", b"\xff\xfe": dumps(2)},
}
# Those whose metadata is not the store's: an update refuses them. (The two others pass its
# metadata check; only a load looks at every field name.)
BAD_METADATA = [case for case in BAD_HASHES if case not in (
    "unknown metadata", "unknown metadata beside an empty name", "non-UTF-8 name")]


@dataclass
class Target:
    kind: str
    entry: dict[str, Any]  # a SESSION_CONFIG entry without cookie_name
    probe: Any  # a sync client on the same data

    @property
    def prefix(self) -> str:
        return str(self.entry["key_prefix"])


@pytest.fixture(params=["fast", "redis-py", "cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    prefix = f"rec{uuid.uuid4().hex[:8]}:"
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        options: dict[str, Any] = {"url": cluster.url, "cluster": True}
        probe: Any = redis.RedisCluster(host=cluster.host, port=cluster.port)
    else:
        server = request.getfixturevalue("redis_server")
        probe = redis.Redis.from_url(server.url)
        # Keepalive options are a setting the fast client lacks: redis-py serves this one.
        options = {"url": server.url} if request.param == "fast" else {
            "client": redis.asyncio.Redis(host=server.host, port=server.port,
                                          socket_keepalive_options={socket.TCP_KEEPIDLE: 60})
        }
    yield Target(request.param, {"session_type": "redis", "key_prefix": prefix, **options}, probe)
    probe.close()


def on_backend(target: Target, scenario: Callable[[RedisBackend], Awaitable[None]]) -> None:
    """Run ``scenario`` with a store on ``target``, on a loop of its own."""
    options = {k: v for k, v in target.entry.items() if k not in ("session_type", "key_prefix")}
    backend = RedisBackend(**options)
    backend.bind(name="sid", instance_path="")

    async def run() -> None:
        try:
            await scenario(backend)
        finally:
            await close_loop_clients()

    asyncio.run(run())


def test_a_foreign_key_reads_as_no_session_and_only_a_write_replaces_it(
    target: Target,
) -> None:
    probe = target.probe

    async def scenario(backend: RedisBackend) -> None:
        assert isinstance(backend.client, _FastClient) is (target.kind == "fast")
        for kind, plant in FOREIGN.items():
            key = target.prefix + new_id()
            plant(probe, key)
            before = probe.dump(key)
            assert await backend.load(key, touch=False) is None
            assert await backend.load(key, touch=True) is None
            assert probe.dump(key) == before, kind
            # An update finds no record of ours to apply to, and leaves the value alone.
            assert not await backend.store(key, Write({"a": b"1"}, (), True, 60))
            assert probe.dump(key) == before, kind
            assert await backend.store(key, Write({"a": b"1"}, (), True, 60, create=True))
            assert probe.hgetall(key) == {b"a": b"1", b"\0ttl": b"60", b"\0p": b"1"}, kind
            assert await backend.load(key, touch=True) == Record({"a": b"1"}, True)

    on_backend(target, scenario)


def test_requests_on_a_foreign_key_see_no_session_and_leave_it(
    make_driver: Any, target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", **target.entry}]})
    probe = target.probe
    for kind, plant in FOREIGN.items():
        sid = new_id()
        key = target.prefix + sid
        plant(probe, key)
        before = probe.dump(key)
        d.set_cookie("sid", sid)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncsessions"):
            assert d.show() == {}
        assert f"session store 'sid': unreadable record {masked(key)!r}" in caplog.text
        assert f"a redis {kind}, not a hash" in caplog.text
        assert probe.dump(key) == before, kind  # a read never deletes it

        reply = d.post("set", {"a": 1})
        assert reply.status == 200, reply.body
        new = d.cookies()["sid"]
        assert new != sid  # an id nobody holds a record for is never adopted
        assert probe.hgetall(target.prefix + new) == {
            b"a": dumps(1), b"\0ttl": b"86400", b"\0p": b"0"
        }
        assert d.show() == {"a": "1"}
        assert probe.dump(key) == before, kind


@pytest.mark.parametrize("refresh", [True, False], ids=["refresh", "no-refresh"])
def test_a_hash_this_store_did_not_write_is_a_fresh_session(
    make_driver: Any, target: Target, caplog: pytest.LogCaptureFixture, refresh: bool
) -> None:
    d = make_driver({"SESSION_REFRESH_EACH_REQUEST": refresh,
                     "SESSION_CONFIG": [{"cookie_name": "sid", **target.entry}]})
    probe = target.probe
    for case, fields in BAD_HASHES.items():
        sid = new_id()
        key = target.prefix + sid
        probe.hset(key, mapping={**SHOWN, **fields})
        probe.expire(key, 600)
        before = probe.hgetall(key)
        d.set_cookie("sid", sid)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncsessions"):
            assert d.show() == {}, case
        assert f"unreadable record {masked(key)!r}" in caplog.text, case
        assert probe.hgetall(key) == before, case
        assert 0 < probe.ttl(key) <= 600, case  # neither touched nor expired by the read


def test_an_update_of_a_record_that_is_gone_writes_nothing(target: Target) -> None:
    probe = target.probe
    # What a request that loaded the record may send: any of them would resurrect it.
    updates = [Write({"a": b"2"}), Write({"a": b"2"}, (), True, 60), Write({}, ["a"]),
               Write({}, (), False, 60), Write({"b": b"3"}, ["a"])]

    async def scenario(backend: RedisBackend) -> None:
        deleted, expired = target.prefix + new_id(), target.prefix + new_id()
        for key in (deleted, expired):
            assert await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
        await backend.delete(deleted)  # a concurrent logout or regenerate()
        probe.pexpire(expired, 1)
        await asyncio.sleep(0.01)
        for key in (deleted, expired):
            for write in updates:
                assert await backend.store(key, write) is False, write
                assert not probe.exists(key), write

    on_backend(target, scenario)


def test_an_update_of_a_hash_it_did_not_write_leaves_it(target: Target) -> None:
    probe = target.probe

    async def scenario(backend: RedisBackend) -> None:
        for case in BAD_METADATA:
            key = target.prefix + new_id()
            probe.hset(key, mapping={**SHOWN, **BAD_HASHES[case]})
            probe.expire(key, 600)
            before = probe.hgetall(key)
            for write in (Write({"b": b"1"}, ["a"]), Write({"b": b"1"}, (), True, 60)):
                assert await backend.store(key, write) is False, case
                assert probe.hgetall(key) == before, case
                assert 500 < probe.ttl(key) <= 600, case

    on_backend(target, scenario)


def test_removing_the_last_field_deletes_the_record_unless_one_was_added(
    target: Target,
) -> None:
    probe = target.probe

    async def scenario(backend: RedisBackend) -> None:
        emptied, kept = target.prefix + new_id(), target.prefix + new_id()
        for key in (emptied, kept):
            assert await backend.store(key, Write({"a": b"1", "b": b"2"}, (), False, 600,
                                                  create=True))
        assert await backend.store(emptied, Write({}, ["a", "b"]))
        assert not probe.exists(emptied)

        probe.hset(kept, "c", b"3")  # another request's field, added after this one loaded
        probe.expire(kept, 10)
        assert await backend.store(kept, Write({}, ["a", "b"]))
        assert probe.hgetall(kept) == {b"c": b"3", b"\0ttl": b"600", b"\0p": b"0"}
        assert probe.ttl(kept) > 500  # a write restarts the record's own lifetime
        assert await backend.load(kept, touch=False) == Record({"c": b"3"}, False)

        # Emptied while setting the flag: still nothing left to keep.
        assert await backend.store(kept, Write({}, ["c"], True, 60))
        assert not probe.exists(kept)

    on_backend(target, scenario)


def test_leaving_the_flag_keeps_the_stored_one_and_its_lifetime(target: Target) -> None:
    probe = target.probe

    async def scenario(backend: RedisBackend) -> None:
        key = target.prefix + new_id()
        assert await backend.store(key, Write({"a": b"1"}, (), False, 100, create=True))
        # Another request made the session permanent, with the permanent lifetime.
        assert await backend.store(key, Write({}, (), True, 5000))
        probe.expire(key, 50)
        # This request loaded it before that and changed a field, not the flag.
        assert await backend.store(key, Write({"b": b"2"}))
        assert probe.hmget(key, ["\0p", "\0ttl"]) == [b"1", b"5000"]
        assert probe.ttl(key) > 4000
        assert await backend.load(key, touch=False) == Record({"a": b"1", "b": b"2"}, True)

        # And back: a browser session's lifetime is what the next write restarts.
        assert await backend.store(key, Write({}, (), False, 100))
        assert await backend.store(key, Write({}, ["b"]))
        assert probe.hmget(key, ["\0p", "\0ttl"]) == [b"0", b"100"]
        assert 0 < probe.ttl(key) <= 100
        assert await backend.load(key, touch=False) == Record({"a": b"1"}, False)

        with pytest.raises(ValueError, match="permanent flag and ttl"):
            await backend.store(target.prefix + new_id(), Write({"a": b"1"}, create=True))

    on_backend(target, scenario)


def test_many_fields_and_an_empty_name_round_trip(target: Target) -> None:
    async def scenario(backend: RedisBackend) -> None:
        key = target.prefix + new_id()
        fields = {"": dumps(0), "ä": dumps("ü"), **{f"f{i}": dumps(i) for i in range(300)}}
        assert await backend.store(key, Write(fields, (), True, 100, create=True))
        assert await backend.load(key, touch=True) == Record(fields, True)

    on_backend(target, scenario)


def test_expires_at_is_the_keys_expiry_without_touching_it(target: Target) -> None:
    probe = target.probe

    async def scenario(backend: RedisBackend) -> None:
        key = target.prefix + new_id()
        assert await backend.expires_at(key) is None
        assert await backend.store(key, Write({"a": b"1"}, (), True, 1000, create=True))
        probe.expire(key, 500)
        expires = await backend.expires_at(key)
        assert expires is not None
        assert abs(expires - (time.time() + 500)) < 2
        assert 495 <= probe.ttl(key) <= 500  # not refreshed

    on_backend(target, scenario)


def test_a_load_works_after_the_server_forgot_its_scripts(target: Target) -> None:
    probe = target.probe

    async def scenario(backend: RedisBackend) -> None:
        key = target.prefix + new_id()
        assert await backend.store(key, Write({"a": b"1"}, (), False, 100, create=True))
        probe.expire(key, 10)
        probe.script_flush()  # a restart or a failover to a replica that never saw them
        assert await backend.load(key, touch=True) == Record({"a": b"1"})
        assert probe.ttl(key) > 90  # refreshed with its own lifetime
        assert await backend.load(target.prefix + new_id(), touch=True) is None

    on_backend(target, scenario)
