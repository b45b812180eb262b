"""Tests for the memcached session store, against a real memcached."""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiomcache
import anyio
import flask
import pytest

from apps import Driver
from asyncsessions import Session, SessionConfigWarning
from asyncsessions.backends.base import (
    Record,
    Write,
    close_loop_clients,
    masked,
    run_without_loop,
)
from asyncsessions.backends.memcache import (
    MemcacheBackend,
    _parse_entries,
    _Remembered,
    _rendezvous,
)
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from serverkit import Unavailable, make_memcached, serving
from servers import MemcachedServer, free_port, missing

pytestmark = pytest.mark.server("memcached")

DAY = 86400
_LAST_LINES = (b"END", b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"TOUCHED", b"DELETED")
_LAST_PREFIXES = (b"HD", b"EN", b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@pytest.fixture
async def backend(memcached_server: MemcachedServer) -> AsyncIterator[MemcacheBackend]:
    yield MemcacheBackend(host=memcached_server.host, port=memcached_server.port)
    await close_loop_clients()


def raw(server: MemcachedServer, payload: bytes) -> list[bytes]:
    """Send one text-protocol command; the reply lines up to and including the last one."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        lines = []
        while True:
            line = reader.readline().rstrip(b"\r\n")
            lines.append(line)
            if line in _LAST_LINES or line.startswith(_LAST_PREFIXES):
                return lines


def stats(server: MemcachedServer) -> dict[str, int]:
    lines = raw(server, b"stats\r\n")[:-1]
    pairs = (line.decode().split(" ", 2)[1:] for line in lines)
    return {name: int(value) for name, value in pairs if value.isdigit()}


def commands_since(server: MemcachedServer, before: dict[str, int]) -> dict[str, int]:
    after = stats(server)
    return {name: after[name] - before[name] for name in ("cmd_get", "cmd_touch", "cmd_set")}


def cas_since(server: MemcachedServer, before: dict[str, int]) -> dict[str, int]:
    after = stats(server)
    return {name: after[name] - before[name] for name in ("cas_hits", "cas_badval", "cas_misses")}


def sent_commands(backend: MemcacheBackend, refused: list[bytes] | None = None) -> list[bytes]:
    """The commands the backend's client sends from now on, by name (``b"ms+touch"``: two
    sent in one round trip); ``refused`` collects the writes refused for a changed token."""
    [client] = backend.client.clients
    sent: list[bytes] = []
    fetch, call = client.fetch, client.call

    async def counted_fetch(command: bytes, key: bytes) -> Any:
        sent.append(command.split()[0])
        return await fetch(command, key)

    async def counted_call(line: bytes, data: bytes | None = None, *, then: bytes = b"") -> bytes:
        sent.append(line.split()[0] + (b"+" + then.split()[0] if then else b""))
        reply = await call(line, data, then=then)
        if refused is not None and reply in (b"EX", b"EXISTS"):
            refused.append(line.split()[0])
        return reply

    client.fetch = counted_fetch  # type: ignore[method-assign]
    client.call = counted_call  # type: ignore[method-assign]
    return sent


def value_of(server: MemcachedServer, key: str) -> bytes | None:
    """The item's value, or None if there is no item."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"get {key}\r\n".encode())
        reader = sock.makefile("rb")
        header = reader.readline().split()
        if header == [b"END"]:
            return None
        return reader.read(int(header[3]) + 2)[:-2]


def stored_record(server: MemcachedServer, key: str) -> tuple[int, bool, dict[str, bytes]]:
    """The ttl, the permanent flag and the live fields of the record under ``key``."""
    value = value_of(server, key)
    assert value is not None
    stored = _parse_entries(value)
    return stored.ttl, stored.permanent, stored.fields


def plant(server: MemcachedServer, key: str, value: bytes, flags: int = 0) -> None:
    command = b"set %s %d 60 %d\r\n%s\r\n" % (key.encode(), flags, len(value), value)
    assert raw(server, command) == [b"STORED"]


#: What Flask-Session 0.8 keeps at ``session:<sid>``: msgpack, client flags 0.
FLASK_SESSION_MSGPACK = b"\x82\xaa_permanent\xc3\xa7user_id\x2a"


def remaining_ttl(server: MemcachedServer, key: str) -> int | None:
    """Seconds until the item expires (-1: never), or None if there is no item."""
    line = raw(server, f"mg {key} t\r\n".encode())[-1]
    return None if line == b"EN" else int(line.split(b" t")[1])


def around(ttl: int) -> range:
    """Remaining seconds of an expiry sent as a Unix time (over 30 days).

    memcached converts it on its own clock, ticked once a second and monotonic since its
    start, so the remaining time can read a few seconds off the wall clock's either way.
    """
    return range(ttl - 5, ttl + 5)


# -- the store --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("create", [True, False])
async def test_removing_from_no_record_writes_nothing(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str, create: bool
) -> None:
    assert await backend.store(key, Write({}, ["a"], False, 60, create=create)) is create
    assert remaining_ttl(memcached_server, key) is None


@pytest.mark.anyio
async def test_concurrent_stores_keep_every_field(
    memcached_server: MemcachedServer, key: str
) -> None:
    # Two instances, each with its own connections, stand in for two worker processes.
    backends = [MemcacheBackend(host=memcached_server.host, port=memcached_server.port)
                for _ in range(2)]
    await backends[0].store(key, Write({"f0": b"0"}, (), False, 60, create=True))
    refused: list[bytes] = []

    async def set_field(i: int) -> None:
        assert await backends[i % 2].store(key, Write({f"f{i}": b"%d" % i}))

    try:
        for backend in backends:
            sent_commands(backend, refused)
        async with anyio.create_task_group() as tg:
            for i in range(1, 30):
                tg.start_soon(set_field, i)
        record = await backends[0].load(key, touch=False)
    finally:
        await close_loop_clients()
    assert record == Record({f"f{i}": b"%d" % i for i in range(30)})
    assert b"ms" in refused  # they did collide


@pytest.mark.anyio
@pytest.mark.parametrize("ttl", [30 * DAY, 30 * DAY + 1, 400 * DAY])
async def test_ttl_over_30_days(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str, ttl: int
) -> None:
    # Sent as seconds, anything over 30 days would be a Unix time in 1970: gone at once.
    await backend.store(key, Write({"a": b"1"}, (), True, ttl, create=True))
    assert await backend.load(key, touch=False) == Record({"a": b"1"}, permanent=True)
    assert remaining_ttl(memcached_server, key) in around(ttl)
    raw(memcached_server, f"touch {key} 60\r\n".encode())
    assert await backend.load(key, touch=True) == Record({"a": b"1"}, permanent=True)
    assert remaining_ttl(memcached_server, key) in around(ttl)


@pytest.mark.anyio
async def test_touch_is_one_gat_and_never_rewrites(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), False, 100, create=True))
    raw(memcached_server, f"touch {key} 5\r\n".encode())

    before = stats(memcached_server)
    assert await backend.load(key, touch=True) == Record({"a": b"1"})
    assert commands_since(memcached_server, before) == {"cmd_get": 0, "cmd_touch": 1, "cmd_set": 0}
    assert remaining_ttl(memcached_server, key) in range(95, 101)

    raw(memcached_server, f"touch {key} 5\r\n".encode())
    before = stats(memcached_server)
    assert await backend.load(key, touch=False) == Record({"a": b"1"})
    assert commands_since(memcached_server, before) == {"cmd_get": 1, "cmd_touch": 0, "cmd_set": 0}
    assert remaining_ttl(memcached_server, key) in range(6)


@pytest.mark.anyio
async def test_touch_before_any_record_seen_is_get_then_touch(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    writer = MemcacheBackend(host=memcached_server.host, port=memcached_server.port)
    await writer.store(key, Write({"a": b"1"}, (), False, 100, create=True))
    raw(memcached_server, f"touch {key} 5\r\n".encode())
    before = stats(memcached_server)
    assert await backend.load(key, touch=True) == Record({"a": b"1"})  # a fresh process
    assert commands_since(memcached_server, before) == {"cmd_get": 1, "cmd_touch": 1, "cmd_set": 0}
    assert remaining_ttl(memcached_server, key) in range(95, 101)
    before = stats(memcached_server)
    assert await backend.load(key, touch=True) == Record({"a": b"1"})  # now it knows the TTL
    assert commands_since(memcached_server, before) == {"cmd_get": 0, "cmd_touch": 1, "cmd_set": 0}


@pytest.mark.anyio
async def test_longer_lived_record_is_touched_to_its_own_ttl(
    backend: MemcacheBackend, memcached_server: MemcachedServer, prefix: str
) -> None:
    short, long = prefix + "s" * 43, prefix + "l" * 43
    await backend.store(short, Write({"a": b"1"}, (), False, 100, create=True))
    await backend.store(long, Write({"a": b"2"}, (), True, 1000, create=True))
    for key, ttl, touches in [(long, 1000, 2), (short, 100, 1)]:
        raw(memcached_server, f"touch {key} 5\r\n".encode())
        before = stats(memcached_server)
        assert await backend.load(key, touch=True) is not None
        assert commands_since(memcached_server, before)["cmd_touch"] == touches
        assert remaining_ttl(memcached_server, key) in range(ttl - 5, ttl + 2)


# -- one round trip per write: cas over the item the load read ---------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("touch", [True, False])
async def test_read_then_write_is_two_round_trips(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str, touch: bool
) -> None:
    await backend.store(key, Write({"a": b"1", "b": b"2"}, (), False, 60, create=True))
    sent = sent_commands(backend)
    before = stats(memcached_server)
    assert await backend.load(key, touch=touch) == Record({"a": b"1", "b": b"2"})
    await backend.store(key, Write({"a": b"3"}, ["b"], False, 60))
    assert sent == [b"gats" if touch else b"gets", b"cas"]
    assert commands_since(memcached_server, before) == {
        "cmd_get": 0 if touch else 1, "cmd_touch": 1 if touch else 0, "cmd_set": 1}
    assert cas_since(memcached_server, before) == {"cas_hits": 1, "cas_badval": 0, "cas_misses": 0}
    assert await backend.load(key, touch=False) == Record({"a": b"3"})


@pytest.mark.anyio
async def test_new_session_is_one_add(backend: MemcacheBackend, key: str) -> None:
    sent = sent_commands(backend)
    assert await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    assert sent == [b"add"]
    assert await backend.load(key, touch=False) == Record({"a": b"1"})


@pytest.mark.anyio
async def test_write_without_a_remembered_item_is_gets_then_append_and_touch(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    writer = MemcacheBackend(host=memcached_server.host, port=memcached_server.port)
    await writer.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    raw(memcached_server, f"touch {key} 5\r\n".encode())
    sent = sent_commands(backend)
    assert await backend.store(key, Write({"b": b"2"}))  # its load ran in another process
    # Its own load's refresh is not known here: the touch restarts the expiry, same trip.
    assert sent == [b"gets", b"ms+touch"]
    assert remaining_ttl(memcached_server, key) in range(55, 62)
    assert await backend.load(key, touch=False) == Record({"a": b"1", "b": b"2"})


@pytest.mark.anyio
async def test_one_field_write_sends_about_one_field(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    value = b'"' + b"v" * 1000 + b'"'
    fields = {f"field{i}": value for i in range(200)}
    await backend.store(key, Write(fields, (), False, 60, create=True))
    assert await backend.load(key, touch=True) == Record(fields)
    sent = sent_commands(backend)
    before = stats(memcached_server)
    assert await backend.store(key, Write({"field7": b'"new"'}, ["field9"]))
    assert sent == [b"ms"]  # one append under the load's token (the load refreshed the expiry)
    written = stats(memcached_server)["bytes_read"] - before["bytes_read"]
    assert written < 200  # of a record of 200 KB
    del fields["field9"]
    assert await backend.load(key, touch=True) == Record({**fields, "field7": b'"new"'})


@pytest.mark.anyio
async def test_appended_record_is_rewritten_before_it_holds_more_dead_than_live(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    fields = {f"f{i}": b'"' + b"x" * 98 + b'"' for i in range(20)}
    await backend.store(key, Write(fields, (), False, 60, create=True))
    whole = len(value_of(memcached_server, key) or b"")
    sent = sent_commands(backend)
    for i in range(100):
        await backend.load(key, touch=True)
        fields["f0"] = b'"%s"' % (b"%d" % i).rjust(98, b"y")
        assert await backend.store(key, Write({"f0": fields["f0"]}))
        assert len(value_of(memcached_server, key) or b"") <= 2 * whole + 1024
    assert sent.count(b"cas") in range(3, 20)  # mostly appends, now and then a rewrite
    assert await backend.load(key, touch=False) == Record(fields)


@pytest.mark.anyio
async def test_small_changes_to_a_big_record_are_appended_at_most_32_times(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    # 100 KB live in 10 fields: the dead-bytes bound alone would let thousands of tiny
    # appends pile up, each a header every load parses.
    fields = {f"f{i}": b'"' + b"x" * 9998 + b'"' for i in range(10)}
    await backend.store(key, Write({**fields, "n": b"0"}, (), False, 60, create=True))
    sent = sent_commands(backend)
    for i in range(1, 70):
        await backend.load(key, touch=True)
        assert await backend.store(key, Write({"n": b"%d" % i}))
        headers = (value_of(memcached_server, key) or b"").count(b"\n")
        assert headers <= 33
    assert sent.count(b"cas") == 2  # rewritten whole after 32 appends, twice
    assert await backend.load(key, touch=False) == Record({**fields, "n": b"69"})


@pytest.mark.anyio
async def test_a_record_of_many_fields_takes_as_many_appends(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    fields = {f"f{i}": b'"' + b"x" * 998 + b'"' for i in range(50)}
    await backend.store(key, Write({**fields, "n": b"0"}, (), False, 60, create=True))
    sent = sent_commands(backend)
    for i in range(1, 60):
        await backend.load(key, touch=True)
        assert await backend.store(key, Write({"n": b"%d" % i}))
    assert sent.count(b"cas") == 1  # 51 fields: rewritten after 51 appends, not 32
    assert (value_of(memcached_server, key) or b"").count(b"\n") == 1 + 59 - 52
    assert await backend.load(key, touch=False) == Record({**fields, "n": b"59"})


@pytest.mark.anyio
async def test_records_of_the_earlier_layout_load_and_are_rewritten_at_their_write(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    # What versions before the append layout wrote: one JSON object of the fields.
    plant(memcached_server, key, b'{"\\u0000ttl":60,"\\u0000p":true,"a":1,"b":[1,2]}')
    assert await backend.load(key, touch=True) == Record({"a": b"1", "b": b"[1,2]"}, True)
    sent = sent_commands(backend)
    assert await backend.store(key, Write({"a": b"2"}))
    assert sent == [b"cas"]  # JSON takes no append: the whole record, in this layout
    assert stored_record(memcached_server, key) == (60, True, {"a": b"2", "b": b"[1,2]"})
    assert await backend.load(key, touch=False) == Record({"a": b"2", "b": b"[1,2]"}, True)


@pytest.mark.anyio
async def test_expires_at_is_the_items_expiry_without_touching_it(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    assert await backend.expires_at(key) is None
    await backend.store(key, Write({"a": b"1"}, (), True, 1000, create=True))
    raw(memcached_server, f"touch {key} 500\r\n".encode())
    expires = await backend.expires_at(key)
    assert expires is not None
    assert abs(expires - (time.time() + 500)) < 3
    assert remaining_ttl(memcached_server, key) in range(495, 502)  # not refreshed


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["other process", "same process"])
async def test_write_between_load_and_store_loses_nothing(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str, writer: str
) -> None:
    fields = {"a": b"1", "b": b"1", "gone": b"1"}
    await backend.store(key, Write(fields, (), False, 60, create=True))
    assert await backend.load(key, touch=True) == Record({"a": b"1", "b": b"1", "gone": b"1"})
    # Another request of the session writes after this one's load, before its store.
    other = (backend if writer == "same process"
             else MemcacheBackend(host=memcached_server.host, port=memcached_server.port))
    await other.store(key, Write({"b": b"2", "c": b"2"}, (), False, 60))
    sent = sent_commands(backend)
    before = stats(memcached_server)
    await backend.store(key, Write({"a": b"3", "d": b"3"}, ["gone"], False, 60))
    # The loaded b=1 is stale: the merge starts from what gets read, never from the load.
    assert await backend.load(key, touch=False) == Record(
        {"a": b"3", "b": b"2", "c": b"2", "d": b"3"})
    if writer == "other process":
        assert sent[:3] == [b"cas", b"gets", b"cas"]
        assert cas_since(memcached_server, before)["cas_badval"] == 1  # the load's token
    else:
        # The other store took the loaded item (a consistent item and token all the same).
        assert sent[:3] == [b"gets", b"cas", b"gets"]  # then the load above
        assert cas_since(memcached_server, before)["cas_badval"] == 0


@pytest.mark.anyio
async def test_loaded_item_is_used_once(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    await backend.load(key, touch=True)
    await backend.store(key, Write({"b": b"2"}, (), False, 60))
    sent = sent_commands(backend)
    before = stats(memcached_server)
    await backend.store(key, Write({"c": b"3"}, ["a"], False, 60))
    assert sent == [b"gets", b"cas"]  # no second cas with the load's token
    assert cas_since(memcached_server, before) == {"cas_hits": 1, "cas_badval": 0, "cas_misses": 0}
    assert await backend.load(key, touch=False) == Record({"b": b"2", "c": b"3"})


@pytest.mark.anyio
async def test_missing_and_deleted_records_are_forgotten(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    await backend.load(key, touch=True)
    assert len(backend._remembered) == 1
    await backend.delete(key)
    assert len(backend._remembered) == 0
    await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    await backend.load(key, touch=True)
    raw(memcached_server, f"delete {key}\r\n".encode())
    assert await backend.load(key, touch=True) is None
    assert len(backend._remembered) == 0
    assert backend._remembered.bytes == 0


@pytest.mark.anyio
async def test_remembered_items_are_bounded(
    backend: MemcacheBackend, memcached_server: MemcachedServer, prefix: str
) -> None:
    assert (backend._remembered.max_items, backend._remembered.max_bytes) == (4096, 8 << 20)
    backend._remembered = _Remembered(max_items=3, max_bytes=1000)
    keys = [prefix + f"{i:043d}" for i in range(5)]
    for key in keys:
        await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
        await backend.load(key, touch=True)  # read-only requests: nothing takes the item
    assert len(backend._remembered) == 3
    sent = sent_commands(backend)
    await backend.store(keys[0], Write({"b": b"2"}, (), False, 60))  # pushed out
    await backend.store(keys[4], Write({"b": b"2"}, (), False, 60))  # still there
    assert sent == [b"gets", b"cas", b"cas"]

    big = prefix + "b" * 43
    await backend.store(big, Write({"a": b'"' + b"x" * 600 + b'"'}, (), False, 60, create=True))
    await backend.load(big, touch=True)
    assert backend._remembered.bytes <= 1000
    await backend.load(big, touch=True)  # again: still within the bound
    assert backend._remembered.bytes <= 1000
    await backend.store(big, Write({"a": b'"' + b"y" * 1200 + b'"'}, (), False, 60))
    await backend.load(big, touch=True)  # larger than the whole budget: not kept
    assert backend._remembered.take(big) is None
    assert backend._remembered.bytes <= 1000
    for key in [*keys, big]:
        assert await backend.load(key, touch=False) is not None


@pytest.mark.anyio
async def test_touch_keeps_the_cas_token(
    backend: MemcacheBackend, memcached_server: MemcachedServer, prefix: str
) -> None:
    short, long = prefix + "s" * 43, prefix + "l" * 43
    await backend.store(long, Write({"a": b"1"}, (), True, 1000, create=True))
    [header, *_] = raw(memcached_server, f"gets {long}\r\n".encode())
    assert raw(memcached_server, f"touch {long} 500\r\n".encode()) == [b"TOUCHED"]
    assert raw(memcached_server, f"gats 700 {long}\r\n".encode())[0] == header

    # So a write after a load corrected by a touch is still one cas.
    await backend.store(short, Write({"a": b"1"}, (), False, 100, create=True))  # gats uses 100
    sent = sent_commands(backend)
    before = stats(memcached_server)
    assert await backend.load(long, touch=True) == Record({"a": b"1"}, permanent=True)
    await backend.store(long, Write({"b": b"2"}, (), True, 1000))
    assert sent == [b"gats", b"touch", b"cas"]
    assert cas_since(memcached_server, before) == {"cas_hits": 1, "cas_badval": 0, "cas_misses": 0}
    assert remaining_ttl(memcached_server, long) in range(995, 1002)


@pytest.mark.anyio
async def test_fifty_concurrent_requests_keep_every_field(
    memcached_server: MemcachedServer, key: str
) -> None:
    # Load, then store one field of its own: two instances stand in for two processes.
    backends = [MemcacheBackend(host=memcached_server.host, port=memcached_server.port)
                for _ in range(2)]
    await backends[0].store(key, Write({"start": b"0"}, (), False, 60, create=True))
    before = stats(memcached_server)

    async def request(i: int) -> None:
        backend = backends[i % 2]
        record = await backend.load(key, touch=True)
        assert record is not None
        assert record.fields["start"] == b"0"
        await anyio.sleep(0.001 * (i % 3))
        await backend.store(key, Write({f"f{i}": b"%d" % i}, (), False, 60))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(request, i)
        record = await backends[0].load(key, touch=False)
    finally:
        await close_loop_clients()
    assert record == Record({"start": b"0"} | {f"f{i}": b"%d" % i for i in range(50)})
    assert cas_since(memcached_server, before)["cas_badval"] > 0  # they did collide
    assert all(len(b._remembered) <= 1 for b in backends)


# -- updates apply only to a record that still exists, atomically ------------------------------


def other_process(server: MemcachedServer) -> MemcacheBackend:
    """A second backend with its own connections, standing in for another worker process."""
    return MemcacheBackend(host=server.host, port=server.port)


@pytest.mark.anyio
@pytest.mark.parametrize("loaded", [True, False], ids=["loaded here", "loaded elsewhere"])
@pytest.mark.parametrize(
    ("write", "commands"),
    [(Write({"a": b"2"}), [b"ms"]), (Write({"a": b"2"}, (), True, 600), [b"cas"]),
     (Write({}, ["a"]), [b"md"])],
    ids=["update", "flag", "emptying"],
)
async def test_update_of_a_deleted_record_is_refused(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str,
    loaded: bool, write: Write, commands: list[bytes],
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    if loaded:
        assert await backend.load(key, touch=True) is not None  # this request's load
    await other_process(memcached_server).delete(key)  # a concurrent logout or regenerate()
    sent = sent_commands(backend)
    assert await backend.store(key, write) is False
    assert remaining_ttl(memcached_server, key) is None  # nothing resurrected
    # With the load's token the refusal is the write itself; without, the gets finds nothing.
    assert sent == (commands if loaded else [b"gets"])


@pytest.mark.anyio
async def test_emptied_record_of_earlier_versions_is_no_session(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    empty = b'{"\\u0000ttl":60,"\\u0000p":false}'  # what earlier versions wrote instead of deleting
    plant(memcached_server, key, empty)
    assert await backend.load(key, touch=True) is None
    assert await backend.store(key, Write({"a": b"1"})) is False
    assert value_of(memcached_server, key) == empty


@pytest.mark.anyio
async def test_emptying_is_one_conditional_delete(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    await backend.store(key, Write({"a": b"1", "b": b"2"}, (), False, 60, create=True))
    assert await backend.load(key, touch=True) is not None
    sent = sent_commands(backend)
    assert await backend.store(key, Write({}, ["a", "b"])) is True
    assert sent == [b"md"]
    assert remaining_ttl(memcached_server, key) is None  # gone, no empty item left behind


@pytest.mark.anyio
@pytest.mark.parametrize("loaded", [True, False], ids=["loaded here", "loaded elsewhere"])
async def test_field_written_concurrently_keeps_an_emptied_record(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str, loaded: bool
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), True, 600, create=True))
    other = other_process(memcached_server)
    if loaded:
        assert await backend.load(key, touch=True) is not None
        # Another request adds a field after this one's load, before its write.
        assert await other.store(key, Write({"b": b"2"}))
        expected = [b"md", b"gets", b"ms+touch"]
    else:
        # Another request adds a field between this write's gets and its delete.
        [client] = backend.client.clients
        fetch, fetched = client.fetch, []

        async def fetch_then_write(command: bytes, name: bytes) -> Any:
            item = await fetch(command, name)
            if not fetched:
                fetched.append(item)
                assert await other.store(key, Write({"b": b"2"}))
            return item

        client.fetch = fetch_then_write  # type: ignore[method-assign]
        expected = [b"gets", b"md", b"gets", b"ms+touch"]
    sent = sent_commands(backend)
    assert await backend.store(key, Write({}, ["a"])) is True
    assert sent == expected
    # The field it did not know about keeps the record, with its flag and lifetime.
    assert await backend.load(key, touch=False) == Record({"b": b"2"}, permanent=True)
    assert remaining_ttl(memcached_server, key) in range(595, 602)


@pytest.mark.anyio
async def test_emptying_races_writers_and_every_answer_is_true(
    memcached_server: MemcachedServer, key: str
) -> None:
    # Requests that each load the session and add a field, racing one that empties it: a
    # writer told True has its field in the record, a writer told False has nothing there.
    backends = [other_process(memcached_server) for _ in range(2)]
    await backends[0].store(key, Write({"a": b"1"}, (), False, 60, create=True))
    answers: dict[str, bool] = {}

    async def request(i: int) -> None:
        backend = backends[i % 2]
        if await backend.load(key, touch=True) is None:
            return  # emptied already: this request sees no session
        await anyio.sleep(0.001 * (i % 4))
        if i == 5:
            assert await backend.store(key, Write({}, ["a"]))
        else:
            answers[f"f{i}"] = await backend.store(key, Write({f"f{i}": b"1"}))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(request, i)
        record = await backends[0].load(key, touch=False)
    finally:
        await close_loop_clients()
    kept = set(record.fields) if record is not None else set()
    assert "a" not in kept
    assert kept == {name for name, written in answers.items() if written}


@pytest.mark.anyio
async def test_write_without_the_flag_keeps_the_stored_one_and_its_own_ttl(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), False, 100, create=True))
    assert await backend.load(key, touch=True) is not None  # this request's load
    # A concurrent request makes the session permanent, with the permanent lifetime.
    assert await other_process(memcached_server).store(key, Write({}, (), True, 1000))
    raw(memcached_server, f"touch {key} 5\r\n".encode())  # most of that lifetime has passed
    assert await backend.store(key, Write({"b": b"2"}))  # this request did not touch the flag
    assert await backend.load(key, touch=False) == Record({"a": b"1", "b": b"2"}, permanent=True)
    assert remaining_ttl(memcached_server, key) in range(995, 1002)  # its own ttl, from now
    assert stored_record(memcached_server, key)[:2] == (1000, True)


@pytest.mark.anyio
async def test_write_that_sets_the_flag_stores_it_with_its_ttl(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), True, 1000, create=True))
    assert await backend.store(key, Write({}, (), False, 100))
    assert await backend.load(key, touch=False) == Record({"a": b"1"}, permanent=False)
    assert remaining_ttl(memcached_server, key) in range(95, 102)
    with pytest.raises(ValueError, match="ttl"):
        await backend.store(key, Write({"a": b"2"}, (), True))
    with pytest.raises(ValueError, match="ttl"):
        await backend.store(key, Write({"a": b"2"}, create=True))
    assert await backend.load(key, touch=False) == Record({"a": b"1"}, permanent=False)


@pytest.mark.anyio
async def test_new_id_replaces_an_item_found_under_it(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str
) -> None:
    plant(memcached_server, key, b'{"\\u0000ttl":60,"\\u0000p":true,"old":1}')
    sent = sent_commands(backend)
    assert await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    assert sent == [b"add", b"gets", b"cas"]
    assert await backend.load(key, touch=False) == Record({"a": b"1"})  # replaced, not merged


@pytest.mark.anyio
async def test_oversize_record_is_refused_and_the_old_one_kept(
    backend: MemcacheBackend, key: str
) -> None:
    await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
    big = b'"' + b"x" * (1024 * 1024) + b'"'
    with pytest.raises(ValueError, match=r"record of \d+ bytes refused by memcached as too large"):
        await backend.store(key, Write({"big": big}, ["a"], False, 60))
    assert await backend.load(key, touch=False) == Record({"a": b"1"})
    await backend.store(key, Write({"b": b"2"}, (), False, 60))
    assert await backend.load(key, touch=False) == Record({"a": b"1", "b": b"2"})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("flags", "value"),
    [
        (1, pickle.dumps({"user_id": "admin"})),  # how pymemcache / python-memcached pickle
        (0, pickle.dumps({"user_id": "admin"})),
        (0, FLASK_SESSION_MSGPACK),
        (0, b"not json"),
        (0, b"\xff\xfe{}"),
        (0, b"[1, 2]"),
        (0, b'{"user_id": "admin"}'),  # no ttl or permanent flag: not ours
        (0, b'{"\\u0000ttl": 0, "\\u0000p": false, "user_id": "admin"}'),
        (0, b'{"\\u0000ttl": "60", "\\u0000p": false, "user_id": "admin"}'),
        (0, b'{"\\u0000ttl": 1%s, "\\u0000p": false, "user_id": "admin"}' % (b"0" * 30)),
        (0, b'{"\\u0000ttl": 60, "\\u0000p": 1, "user_id": "admin"}'),
        (0, b"[" * 100_000),
        (0, b"[" * 100_000 + b"\n"),
        (0, b'["as1",60,false,"a",5]\n"x"'),  # cut short
        (0, b'["as1",60,false,"a",1]\n1["b",3]'),  # an appended header without its end
        (0, b'["as1",60,false,"a"]\n1'),
        (0, b'["as1",60,false,"a",-2]\n'),
        (0, b'["as1",60,false,1,1]\n1'),
        (0, b'["as1",0,false,"a",1]\n1'),
        (0, b'["as1",60,1,"a",1]\n1'),
        (0, b'["as2",60,false,"a",1]\n1'),
        (0, b'["as1",60,false,"a",1]\n1{"b":3}\n'),
    ],
)
async def test_foreign_values_read_as_no_session(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str,
    flags: int, value: bytes, caplog: pytest.LogCaptureFixture,
) -> None:
    plant(memcached_server, key, value, flags)
    # Another record first, so that the touching load is a gats, as in a running app.
    await backend.store(key + "x", Write({"a": b"1"}, (), False, 60, create=True))
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert await backend.load(key, touch=False) is None
        assert await backend.load(key, touch=True) is None
    assert caplog.text.count(f"unreadable record {masked(key)!r} read as no session") == 2
    assert value_of(memcached_server, key) == value  # reads never destroy it
    # Not a session of ours: an update finds it gone and leaves it as it is.
    assert not await backend.store(key, Write({"a": b"1"}, ["b"], False, 60))
    assert not await backend.store(key, Write({}, ["user_id"]))
    assert value_of(memcached_server, key) == value
    assert await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))  # replaced
    assert await backend.load(key, touch=False) == Record({"a": b"1"})


@pytest.mark.anyio
async def test_interrupted_command_never_leaves_a_reply_behind(
    memcached_server: MemcachedServer, prefix: str
) -> None:
    # One connection, so the command after the cancelled one would read its reply.
    client = aiomcache.Client(memcached_server.host, memcached_server.port, pool_size=1)
    backend = MemcacheBackend(client=client)
    first, second = prefix + "1" * 43, prefix + "2" * 43
    try:
        await backend.store(first, Write({"n": b"1"}, (), False, 60, create=True))
        await backend.store(second, Write({"n": b"2"}, (), False, 60, create=True))
        task = asyncio.create_task(backend.load(first, touch=False))
        await asyncio.sleep(0)  # sent, now waiting for the reply
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await backend.load(second, touch=False) == Record({"n": b"2"})
        await backend.store(second, Write({"m": b"3"}, (), False, 60))
        assert await backend.load(second, touch=False) == Record({"n": b"2", "m": b"3"})
    finally:
        await close_loop_clients()


@pytest.mark.anyio
async def test_given_client_is_cloned_with_its_settings(
    memcached_server: MemcachedServer, key: str
) -> None:
    given = aiomcache.Client(memcached_server.host, memcached_server.port, pool_size=5)
    backend = MemcacheBackend(client=given)
    try:
        await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
        assert await backend.load(key, touch=True) == Record({"a": b"1"})
        [client] = backend.client.clients
        assert isinstance(client, aiomcache.Client)
        assert client is not given
        assert client._pool._maxsize == 5
        assert given._pool.size() == 0  # the user's client is never used
    finally:
        await close_loop_clients()


# -- configuration ----------------------------------------------------------------------------


def make_app(entry: dict[str, Any]) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config["SESSION_CONFIG"] = [{"cookie_name": "sid", **entry}]
    Session(app)
    return app


@pytest.mark.parametrize(
    "prefix",
    ["session: ", "a\tb:", "new\nline:", "del\x7f:", "c1\x85:", "nbsp\xa0:", "ls\u2028:",
     "p" * (250 - 43 + 1)],
)
def test_key_prefix_must_make_valid_keys(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'key_prefix': "):
        make_app({"session_type": "memcache", "key_prefix": prefix})


def test_valid_key_prefixes_are_accepted() -> None:
    for prefix in ["", "session:", "sessión/ü:", "p" * (250 - 43)]:
        make_app({"session_type": "memcache", "key_prefix": prefix})


@pytest.mark.parametrize("name", ["memcache", "memcached"])
def test_session_type_names(name: str, tmp_path: Any) -> None:
    config = {"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": name, "host": "10.0.0.7", "port": 11311}
    ]}
    [store] = parse_config(config, instance_path=str(tmp_path))
    assert isinstance(store.backend, MemcacheBackend)
    assert (store.backend.host, store.backend.port) == ("10.0.0.7", 11311)


def test_location_names_the_server() -> None:
    assert MemcacheBackend().location == "memcached://127.0.0.1:11211"
    assert MemcacheBackend(host="cache.internal", port=11311).location == (
        "memcached://cache.internal:11311")
    assert MemcacheBackend(host="::1").location == "memcached://[::1]:11211"
    client = aiomcache.Client("10.0.0.7", 11400)
    assert MemcacheBackend(client=client).location == "memcached://10.0.0.7:11400"


def test_two_stores_on_one_server_need_their_own_prefixes() -> None:
    entry = {"session_type": "memcache", "host": "10.0.0.7", "key_prefix": "s:"}
    app = flask.Flask(__name__)
    app.config["SESSION_CONFIG"] = [{"cookie_name": "a", **entry}, {"cookie_name": "b", **entry}]
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[1\] 'key_prefix': .*memcached://10"):
        Session(app)
    app.config["SESSION_CONFIG"][1]["key_prefix"] = "t:"
    Session(app)


def fake(module: str, **attributes: Any) -> Any:
    """An instance of a class named Client in ``module``, with ``attributes``."""
    return type("Client", (), {"__module__": module, **attributes})()


python_memcached = fake("memcache", servers=[SimpleNamespace(ip="10.0.0.7", port=11311)])
pymemcache_client = fake("pymemcache.client.base", server=("10.0.0.8", 11411), key_prefix=b"")


def test_other_libraries_clients_are_read_for_their_servers() -> None:
    assert MemcacheBackend(client=python_memcached).location == "memcached://10.0.0.7:11311"
    assert MemcacheBackend(client=pymemcache_client).location == "memcached://10.0.0.8:11411"
    pymemcache = pytest.importorskip("pymemcache")
    from pymemcache.client.hash import HashClient

    assert MemcacheBackend(client=pymemcache.Client(("10.0.0.1", 11212))).servers == (
        ("10.0.0.1", 11212),)
    assert MemcacheBackend(client=pymemcache.PooledClient("10.0.0.2:11213")).servers == (
        ("10.0.0.2", 11213),)
    sharded = HashClient([("10.0.0.3", 11211), "10.0.0.4:11211", "[::1]:11214"])
    backend = MemcacheBackend(client=sharded)
    assert backend.servers == (("10.0.0.3", 11211), ("10.0.0.4", 11211), ("::1", 11214))
    assert backend.location == "memcached://10.0.0.3:11211,10.0.0.4:11211,[::1]:11214"
    memcache = pytest.importorskip("memcache")  # python-memcached
    single = memcache.Client(["10.0.0.5:11215"])
    assert MemcacheBackend(client=single).servers == (("10.0.0.5", 11215),)
    several = memcache.Client(["10.0.0.5:11215", "10.0.0.6:11216"])
    with pytest.warns(SessionConfigWarning, match="CRC32 modulo"):
        assert MemcacheBackend(client=several).servers == (
            ("10.0.0.5", 11215), ("10.0.0.6", 11216))


def test_servers_option() -> None:
    backend = MemcacheBackend(servers=[("10.0.0.1", 11211), "10.0.0.2:11311", "[::1]:11411"])
    assert backend.servers == (("10.0.0.1", 11211), ("10.0.0.2", 11311), ("::1", 11411))
    assert backend.location == "memcached://10.0.0.1:11211,10.0.0.2:11311,[::1]:11411"
    assert (backend.host, backend.port) == ("10.0.0.1", 11211)
    app = make_app({"session_type": "memcache", "servers": [("10.0.0.1", 11211)]})
    assert app.extensions["asyncsessions"].stores[0].backend.servers == (("10.0.0.1", 11211),)


class _OtherHash:
    seed = 0


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({"client": object()}, "client", 'aiomcache.Client("127.0.0.1", 11211)'),
        ({"client": fake("memcache", servers=[
            SimpleNamespace(family=socket.AF_UNIX, address="/run/mc.sock")])},
         "client", "'/run/mc.sock' is no (host, port) server"),
        ({"client": fake("pymemcache.client.base", server="/run/mc.sock", key_prefix=b"")},
         "client", "aiomcache speaks TCP only"),
        ({"client": fake("pymemcache.client.base", server=("h", 1), key_prefix=b"app:")},
         "client", "key_prefix of its own"),
        ({"client": fake("pymemcache.client.hash", clients={}, hasher=_OtherHash(),
                         key_prefix=b"")}, "client", "places keys with _OtherHash"),
        ({"client": fake("pymemcache.client.base", server=("h", 0), key_prefix=b"")},
         "client", "client: port must be 1-65535"),
        ({"client": aiomcache.Client("127.0.0.1"), "port": 11211}, "client", "not both"),
        ({"client": aiomcache.Client("127.0.0.1"), "servers": [("h", 1)]}, "client",
         "give client or servers"),
        ({"servers": [("h", 1)], "host": "h"}, "servers", "give servers or host/port"),
        ({"servers": "h:1"}, "servers", "servers must be a list"),
        ({"servers": []}, "servers", "names no server"),
        ({"servers": [("h", 1), "h:1"]}, "servers", "names a server twice"),
        ({"servers": ["h"]}, "servers", "'h' is not 'host:port'"),
        ({"servers": [("h", 1, 2)]}, "servers", "is not a (host, port) pair"),
        ({"servers": [("h", "1")]}, "servers", "servers: port must be an int"),
        ({"servers": [("", 1)]}, "servers", "servers: host must not be empty"),
        ({"host": 127001}, "host", "host must be a str"),
        ({"host": ""}, "host", "must not be empty"),
        ({"port": "11211"}, "port", "port must be an int"),
        ({"port": True}, "port", "port must be an int"),
        ({"port": 70000}, "port", "1-65535"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"SESSION_CONFIG[0] {key!r}: ")) as caught:
        make_app({"session_type": "memcache", **options})
    assert message in str(caught.value)


# -- through Flask and Quart ------------------------------------------------------------------


@pytest.mark.parametrize(("framework", "name"), [("flask", "memcache"), ("quart", "memcached")])
def test_end_to_end(
    memcached_server: MemcachedServer, prefix: str, framework: str, name: str
) -> None:
    entry = {"cookie_name": "sid", "session_type": name, "host": memcached_server.host,
             "port": memcached_server.port, "key_prefix": prefix}
    driver = Driver(framework, {"SESSION_CONFIG": [entry]})
    try:
        assert driver.post("set", {"user_id": 42, "cart": [1, 2]}).status == 200
        key = prefix + driver.cookies()["sid"]
        assert remaining_ttl(memcached_server, key) is not None

        before = stats(memcached_server)
        assert driver.show() == {"user_id": "42", "cart": "[1, 2]"}
        # A read-only request: one gat, nothing written.
        assert commands_since(memcached_server, before) == {
            "cmd_get": 0, "cmd_touch": 1, "cmd_set": 0}

        before = stats(memcached_server)
        driver.post("append", {"cart": 3})
        # A writing request: gats, then one append to what it read, under its token.
        assert commands_since(memcached_server, before) == {
            "cmd_get": 0, "cmd_touch": 1, "cmd_set": 1}
        assert stored_record(memcached_server, key)[2]["cart"] == b"[1,2,3]"
        driver.post("del", {"user_id": None})
        assert driver.show() == {"cart": "[1, 2, 3]"}
        driver.post("permanent")
        assert remaining_ttl(memcached_server, key) in around(31 * DAY)

        before = stats(memcached_server)
        driver.post("clear")
        # Emptying: gats (and a touch: the session is permanent, longer-lived than the
        # shortest TTL), then one delete conditional on its token (no empty item left).
        assert commands_since(memcached_server, before) == {
            "cmd_get": 0, "cmd_touch": 2, "cmd_set": 0}
        assert stats(memcached_server)["delete_hits"] == before["delete_hits"] + 1
        assert driver.show() == {}
        assert remaining_ttl(memcached_server, key) is None
    finally:
        driver.close()


@pytest.mark.parametrize(
    "value",
    [FLASK_SESSION_MSGPACK, b'{"user_id": 42}', b'{"\\u0000ttl": [], "\\u0000p": true}',
     b"[" * 100_000],
    ids=["flask-session", "other shape", "wrong ttl", "too deep"],
)
def test_foreign_item_is_a_fresh_session(
    make_driver: Any, memcached_server: MemcachedServer, prefix: str, value: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = make_driver({"SESSION_CONFIG": [{
        "cookie_name": "sid", "session_type": "memcache", "host": memcached_server.host,
        "port": memcached_server.port, "key_prefix": prefix}]})
    sid = new_id()
    plant(memcached_server, prefix + sid, value)
    d.set_cookie("sid", sid)
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert d.show() == {}
    assert f"session store 'sid': unreadable record {masked(prefix + sid)!r}" in caplog.text
    assert value_of(memcached_server, prefix + sid) == value

    assert d.post("set", {"user_id": 42}).status == 200
    new_sid = d.cookies()["sid"]
    assert new_sid != sid  # an id with no record of ours is never adopted
    assert stored_record(memcached_server, prefix + new_sid) == (86400, False, {"user_id": b"42"})
    assert d.show() == {"user_id": "42"}


# -- Flask-Session's items ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_flask_session_item_is_read_when_asked(
    backend: MemcacheBackend, memcached_server: MemcachedServer, key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("msgspec")
    backend.reads_flask_session = True
    plant(memcached_server, key, FLASK_SESSION_MSGPACK)  # 60 s to live
    assert await backend.load(key, touch=True) == Record({"user_id": b"42"}, True, foreign=True)
    assert remaining_ttl(memcached_server, key) in range(55, 61)  # its own expiry, untouched
    assert value_of(memcached_server, key) == FLASK_SESSION_MSGPACK
    # The engine rewrites it whole: a new record's write replaces it.
    assert await backend.store(key, Write({"user_id": b"42"}, (), True, 600, create=True))
    assert await backend.load(key, touch=False) == Record({"user_id": b"42"}, True)
    assert remaining_ttl(memcached_server, key) in range(595, 601)

    # Never a pickle, nor an item another client flagged: one log line each, left as they are.
    for value, flags, reason in [
        (pickle.dumps({"user_id": 42}), 0, "a pickle"),  # (no line break in it)
        (FLASK_SESSION_MSGPACK, 1, "client flags 1"),
    ]:
        other = key[:-1] + ("x" if key[-1] != "x" else "y")
        plant(memcached_server, other, value, flags)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncsessions"):
            assert await backend.load(other, touch=False) is None
        assert caplog.text.count("unreadable record") == 1
        assert reason in caplog.text
        assert value_of(memcached_server, other) == value


# -- several servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_memcached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemcachedServer]:
    """Another memcached, for a store sharded over two servers."""
    try:
        server = make_memcached(tmp_path_factory.mktemp("memcached-2"))
    except Unavailable as exc:
        missing(exc.what, exc.hint)
    with serving(server):
        yield server


@pytest.fixture
def two_servers(
    memcached_server: MemcachedServer, second_memcached: MemcachedServer
) -> list[MemcachedServer]:
    return [memcached_server, second_memcached]


def test_keys_go_where_pymemcache_hashclient_puts_them() -> None:
    pytest.importorskip("pymemcache")
    from pymemcache.client.rendezvous import RendezvousHash

    nodes = ("10.0.0.1:11211", "10.0.0.2:11211", "::1:11211", "cache-4.internal:11311")
    for count in range(1, len(nodes) + 1):
        hasher = RendezvousHash(list(nodes[:count]))
        for i in range(500):
            key = f"session:{new_id()}" if i % 5 else f"sessión/ü€{i}:{new_id()}"
            assert nodes[_rendezvous(nodes[:count], key)] == hasher.get_node(key)


@pytest.mark.anyio
async def test_sessions_are_spread_over_the_servers(
    two_servers: list[MemcachedServer], prefix: str
) -> None:
    nodes = tuple(f"{s.host}:{s.port}" for s in two_servers)
    backend = MemcacheBackend(servers=[(s.host, s.port) for s in two_servers])
    assert backend.location == "memcached://" + ",".join(nodes)
    keys = [prefix + new_id() for _ in range(30)]
    try:
        for key in keys:
            assert await backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
        homes = [_rendezvous(nodes, key) for key in keys]
        assert set(homes) == {0, 1}  # both hold some
        for key, home in zip(keys, homes, strict=True):
            assert value_of(two_servers[home], key) is not None
            assert value_of(two_servers[1 - home], key) is None
            assert await backend.load(key, touch=True) == Record({"a": b"1"})
            assert await backend.store(key, Write({"b": b"2"}))
            assert await backend.load(key, touch=False) == Record({"a": b"1", "b": b"2"})
            await backend.delete(key)
            assert value_of(two_servers[home], key) is None
        # One aiomcache client per server, and per event loop.
        assert [(c._pool._host, c._pool._port) for c in backend.client.clients] == [
            (s.host, s.port) for s in two_servers]
    finally:
        await close_loop_clients()


def test_each_event_loop_has_its_own_clients(two_servers: list[MemcachedServer]) -> None:
    backend = MemcacheBackend(servers=[(s.host, s.port) for s in two_servers])

    async def clients() -> tuple[Any, ...]:
        await backend.load("k" * 43, touch=False)
        try:
            return backend.client.clients
        finally:
            await close_loop_clients()

    first, second = asyncio.run(clients()), asyncio.run(clients())
    assert len(first) == len(second) == 2
    assert not set(map(id, first)) & set(map(id, second))


@pytest.mark.anyio
async def test_a_server_down_fails_only_the_sessions_it_holds(
    memcached_server: MemcachedServer, prefix: str
) -> None:
    down = ("127.0.0.1", free_port())
    nodes = (f"{memcached_server.host}:{memcached_server.port}", f"{down[0]}:{down[1]}")
    backend = MemcacheBackend(servers=[(memcached_server.host, memcached_server.port), down])
    keys = [prefix + new_id() for _ in range(20)]
    try:
        for key in keys:
            write = backend.store(key, Write({"a": b"1"}, (), False, 60, create=True))
            if _rendezvous(nodes, key) == 0:
                assert await write
                assert await backend.load(key, touch=False) == Record({"a": b"1"})
            else:
                with pytest.raises(OSError):
                    await write
    finally:
        await close_loop_clients()


def test_flask_session_sessions_on_a_hashclient_stay_logged_in(
    two_servers: list[MemcachedServer], prefix: str
) -> None:
    flask_session = pytest.importorskip("flask_session")
    pytest.importorskip("msgspec")
    from pymemcache.client.hash import HashClient

    def app(extension: Any) -> flask.Flask:
        made = flask.Flask(__name__)
        made.config.update(
            SECRET_KEY="s", SESSION_TYPE="memcached", SESSION_KEY_PREFIX=prefix,
            SESSION_MEMCACHED=HashClient([(s.host, s.port) for s in two_servers]),
        )
        extension(made)

        @made.post("/login/<int:user>")
        def login(user: int) -> str:
            flask.session["user_id"] = user
            return "ok"

        @made.get("/show")
        def show() -> str:
            return str(flask.session.get("user_id"))

        return made

    theirs = app(flask_session.Session)
    cookies = []
    for user in range(12):
        client = theirs.test_client()
        assert client.post(f"/login/{user}").status_code == 200
        cookies.append(client.get_cookie("session").value)
    stored = [[value_of(server, prefix + sid) is not None for server in two_servers]
              for sid in cookies]
    assert {tuple(where) for where in stored} == {(True, False), (False, True)}

    ours = app(Session)
    for user, sid in enumerate(cookies):
        client = ours.test_client()
        client.set_cookie("session", sid)
        assert client.get("/show").text == str(user)


# -- outside any event loop (Flask requests of one op) -------------------------------------


def test_flask_requests_of_one_op_run_without_any_event_loop(
    memcached_server: MemcachedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loop(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an event loop was made")

    monkeypatch.setattr(asyncio, "new_event_loop", no_loop)
    app = make_app({"session_type": "memcache", "host": memcached_server.host,
                    "port": memcached_server.port})
    app.secret_key = "s"

    @app.post("/put")
    def put() -> str:
        flask.session.update(flask.request.get_json())
        return "ok"

    @app.get("/get")
    def get() -> Any:
        return dict(flask.session)

    client = app.test_client()
    before = stats(memcached_server)
    client.post("/put", json={"a": 1})
    client.post("/put", json={"b": [2]})
    assert client.get("/get").get_json() == {"a": 1, "b": [2]}
    assert commands_since(memcached_server, before)["cmd_touch"] == 2  # the two gats
    # The server still counts the stats helper's own closed connections for a moment.
    deadline = time.monotonic() + 5
    while stats(memcached_server)["curr_connections"] > before["curr_connections"] + 1:
        assert time.monotonic() < deadline, "more than one connection for one thread"
        time.sleep(0.05)


def test_outside_a_loop_a_restarted_server_is_reconnected_to(
    memcached_server: MemcachedServer, key: str
) -> None:
    backend = MemcacheBackend(host=memcached_server.host, port=memcached_server.port)
    write = Write({"a": b"1"}, (), False, 60, create=True)
    assert run_without_loop(backend.store(key, write), 5) is True
    with memcached_server.down(kill=True), pytest.raises(OSError):
        run_without_loop(backend.load(key, touch=False), 5)
    # The socket of before the restart is replaced; the record went with the old process.
    assert run_without_loop(backend.load(key, touch=False), 5) is None
    assert run_without_loop(backend.store(key, write), 5) is True
    assert run_without_loop(backend.load(key, touch=False), 5) == Record({"a": b"1"}, False)


def test_outside_a_loop_a_silent_server_times_out_at_the_deadline(key: str) -> None:
    with socket.socket() as black_hole:  # accepts connections, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        backend = MemcacheBackend(host="127.0.0.1", port=black_hole.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            run_without_loop(backend.load(key, touch=True), 0.2)
        assert time.monotonic() - started < 1
