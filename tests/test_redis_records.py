"""Records asyncsessions did not write, at a session's redis key: no session, never an error.

Each test runs on the three client paths: the built-in RESP client, redis-py, a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio

from asyncsessions.backends.base import Record, close_loop_clients, masked
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
    "non-UTF-8 name": {b"\0ttl": b"60", b"\0p": b"0", b"\xff\xfe": dumps(2)},
}


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


def test_a_foreign_key_reads_as_no_session_and_only_a_write_replaces_it(
    target: Target,
) -> None:
    options = {k: v for k, v in target.entry.items() if k not in ("session_type", "key_prefix")}
    backend = RedisBackend(**options)
    backend.bind(name="sid", instance_path="")
    probe = target.probe

    async def main() -> None:
        assert isinstance(backend.client, _FastClient) is (target.kind == "fast")
        for kind, plant in FOREIGN.items():
            key = target.prefix + new_id()
            plant(probe, key)
            before = probe.dump(key)
            assert await backend.load(key, touch=False) is None
            assert await backend.load(key, touch=True) is None
            assert probe.dump(key) == before, kind
            await backend.store(key, {"a": b"1"}, (), permanent=True, ttl=60)
            assert probe.hgetall(key) == {b"a": b"1", b"\0ttl": b"60", b"\0p": b"1"}, kind
            assert await backend.load(key, touch=True) == Record({"a": b"1"}, True)

    async def run() -> None:
        try:
            await main()
        finally:
            await close_loop_clients()

    asyncio.run(run())


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
