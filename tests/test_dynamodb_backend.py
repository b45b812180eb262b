"""Tests for the DynamoDB session store, over HTTP against moto's server (``moto[server]``).

Where moto differs from DynamoDB, and what these tests (and the store) do about it:

* ``SET f.#n`` with ``#n`` naming the empty string corrupts the map (moto stores the value's
  type tag as a key); the store never writes an empty name (it is escaped as ``%``), and
  DynamoDB's attribute names are one character at least.
* An update expression of about 200 actions fails with HTTP 500 (a recursion error in moto's
  parser). DynamoDB allows 300 operators and 4 KB of expression; the store sends at most 100
  field paths per update for DynamoDB's limits, which moto happens to handle too.
* moto checks the 400 KB item size on ``PutItem`` only, not on an ``UpdateItem`` that grows an
  item past it, and not the 64 KB attribute-name limit: the size error is tested on a create,
  and the name limit is the store's own check.
* Tables are ACTIVE as soon as ``CreateTable`` returns (DynamoDB: seconds later), so the
  waiter returns at once. TTL deletion is DynamoDB's (and lazy): these tests never wait for
  one, and test expiry on read by editing ``ends``.
* Like DynamoDB, moto refuses reserved words (``ttl``) as bare names in expressions; the
  store names every attribute through placeholders, and the tests' own edits do too.
* A Scan page ends at 1 MB on DynamoDB; the tests' tables fit in one, so the paging test
  asks for ``Limit`` (which both honour). Both refuse redundant parentheses
  and unused placeholders in expressions; the store's count and purge filters have neither.
* Any credentials are accepted and no signature is checked; the tests use dummy keys so no
  real AWS key from the environment is ever sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import anyio
import boto3
import botocore.session
import flask
import msgspec
import pytest
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError, EndpointConnectionError

from asyncsessions import Session
from asyncsessions.backends import dynamodb as dynamodb_module
from asyncsessions.backends.base import Record, Write, close_loop_clients, masked
from asyncsessions.backends.dynamodb import DynamoDBBackend
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from server_dynamodb import MotoServer
from storekit import create, v

pytestmark = pytest.mark.server("dynamodb")


@pytest.fixture
def table() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def key() -> str:
    return "session:" + new_id()


@pytest.fixture
def probe(dynamodb_server: MotoServer) -> Iterator[Any]:
    """A boto3 client on the same server, to look at and tamper with items."""
    client = boto3.client("dynamodb", **dynamodb_server.credentials)
    yield client
    client.close()


@pytest.fixture
async def backend(dynamodb_server: MotoServer, table: str) -> AsyncIterator[DynamoDBBackend]:
    yield DynamoDBBackend(table=table, **dynamodb_server.credentials)
    await close_loop_clients()


class Calls:
    """The DynamoDB operations every client the store opens sends, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def record(self, model: Any, **kwargs: Any) -> None:
        self.names.append(model.name)

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    recorder = Calls()
    real_open = dynamodb_module._Connection._open

    async def open_watched(self: Any) -> Any:
        client = await real_open(self)
        client.meta.events.register("before-call.dynamodb", recorder.record)
        return client

    monkeypatch.setattr(dynamodb_module._Connection, "_open", open_watched)
    return recorder


def item(probe: Any, table: str, key: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = probe.get_item(
        TableName=table, Key={"id": {"S": key}}, ConsistentRead=True
    ).get("Item")
    return found


def edit(probe: Any, table: str, key: str, expression: str,
         values: dict[str, Any] | None = None, names: dict[str, str] | None = None) -> None:
    """Another writer's UpdateItem on the raw item (names as they are stored)."""
    kwargs: dict[str, Any] = {"ExpressionAttributeValues": values} if values else {}
    if names:
        kwargs["ExpressionAttributeNames"] = names
    probe.update_item(TableName=table, Key={"id": {"S": key}}, UpdateExpression=expression,
                      **kwargs)


# -- records ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_trip_and_layout(backend: DynamoDBBackend, key: str, probe: Any,
                                     table: str) -> None:
    fields = {"user_id": v(42), "name": v("Zoë"), "cart": v([{"sku": "a.b", "n": 2}])}
    before = time.time()
    assert await backend.store(key, create(fields, permanent=True, ttl=500)) is True
    assert await backend.load(key, touch=False) == Record(fields, permanent=True)
    assert await backend.load(key, touch=True) == Record(fields, permanent=True)
    assert await backend.load(key + "x", touch=False) is None
    assert await backend.load(key + "x", touch=True) is None
    stored = item(probe, table, key)
    assert stored is not None
    assert set(stored) == {"id", "f", "permanent", "ttl", "ends", "expires"}
    assert stored["f"] == {"M": {"user_id": {"S": "42"}, "name": {"S": '"Zoë"'},
                                 "cart": {"S": '[{"sku":"a.b","n":2}]'}}}
    assert stored["permanent"] == {"BOOL": True}
    assert stored["ttl"] == {"N": "500"}
    ends = float(stored["ends"]["N"])
    assert before + 500 - 0.001 <= ends <= time.time() + 500
    assert stored["expires"] == {"N": str(math.ceil(ends))}  # whole seconds for DynamoDB's TTL


@pytest.mark.anyio
async def test_odd_field_names_round_trip_and_stay_apart(
    backend: DynamoDBBackend, key: str, probe: Any, table: str
) -> None:
    names = ["a", ".", "a.b", "#x", ":v", "[0]", "f", "ttl", "id", "%", "%25", "%00", "",
             "a\0b", "\0", "ключ 🙂", "\u2028", " ", "x" * 2000, "$set", "a.b[1]", "%%"]
    fields = {name: v(f"value of {name!r}") for name in names}
    await backend.store(key, create(fields))
    assert await backend.load(key, touch=True) == Record(fields)
    stored = item(probe, table, key)
    assert stored is not None
    assert len(stored["f"]["M"]) == len(names)
    assert "%" in stored["f"]["M"]  # "" is written as "%"
    assert "" not in stored["f"]["M"]
    assert stored["f"]["M"]["ключ 🙂"] == {"S": '"value of \'ключ 🙂\'"'}  # readable as is
    removed = names[::2]
    changed = {name: v(["changed", name]) for name in names[1::2]}
    assert await backend.store(key, Write(changed, removed)) is True
    assert await backend.load(key, touch=False) == Record(changed)


@pytest.mark.anyio
async def test_bytes_that_are_no_text_are_kept_as_binary(
    backend: DynamoDBBackend, key: str, probe: Any, table: str
) -> None:
    fields = {"raw": b"\x80\x04\x95pickle", "text": v("t")}
    await backend.store(key, create(fields))
    assert await backend.load(key, touch=False) == Record(fields)
    stored = item(probe, table, key)
    assert stored is not None
    assert stored["f"]["M"]["raw"] == {"B": b"\x80\x04\x95pickle"}


@pytest.mark.anyio
async def test_update_keeps_the_fields_it_does_not_name(
    backend: DynamoDBBackend, key: str
) -> None:
    await backend.store(key, create({"a": v(1), "b": v(2), "c": v(3)}, permanent=True))
    assert await backend.store(key, Write({"b": v("new")})) is True
    assert await backend.load(key, touch=False) == Record(
        {"a": v(1), "b": v("new"), "c": v(3)}, True
    )
    assert await backend.store(key, Write({"d": v(4)}, ["a", "never"], False, 600)) is True
    assert await backend.load(key, touch=False) == Record(
        {"b": v("new"), "c": v(3), "d": v(4)}, False
    )


@pytest.mark.anyio
async def test_a_new_session_replaces_what_is_under_its_id(
    backend: DynamoDBBackend, key: str
) -> None:
    await backend.store(key, create({"old": v(1), "a": v(1)}, permanent=True))
    await backend.store(key, create({"a": v(2)}, ttl=60))
    assert await backend.load(key, touch=False) == Record({"a": v(2)}, False)
    # A new session without fields is none: whatever was there goes.
    await backend.store(key, create({}))
    assert await backend.load(key, touch=False) is None


@pytest.mark.anyio
@pytest.mark.parametrize("gone", ["missing", "deleted", "emptied", "expired"])
async def test_update_of_a_record_that_is_gone_writes_nothing(
    backend: DynamoDBBackend, key: str, probe: Any, table: str, gone: str, calls: Calls
) -> None:
    await backend.delete(key)  # the table exists from here on
    if gone != "missing":
        await backend.store(key, create({"a": v(1)}))
    if gone == "deleted":
        await backend.delete(key)
    elif gone == "emptied":
        await backend.store(key, Write({}, ["a"]))
    elif gone == "expired":
        edit(probe, table, key, "SET ends = :past", {":past": {"N": str(time.time())}})
    before = item(probe, table, key)
    assert (before is None) is (gone != "expired")
    calls.take()
    for write in [Write({"a": v(2)}), Write({"a": v(2)}, (), True, 600), Write({}, ["a"]),
                  Write({"b": v(3)}, ["a"]), Write({})]:
        assert await backend.store(key, write) is False, write
        assert await backend.load(key, touch=True) is None, write
        assert item(probe, table, key) == before, write
    # One conditional UpdateItem per refused write, one GetItem per load, nothing else.
    assert calls.take() == ["UpdateItem", "GetItem"] * 5


@pytest.mark.anyio
async def test_emptying_deletes_in_two_calls(
    backend: DynamoDBBackend, key: str, probe: Any, table: str, calls: Calls
) -> None:
    await backend.store(key, create({"a": v(1), "b": v(2)}, permanent=True))
    calls.take()
    assert await backend.store(key, Write({}, ["a", "b"])) is True
    assert calls.take() == ["UpdateItem", "DeleteItem"]
    assert item(probe, table, key) is None
    # Removing some fields is one call.
    await backend.store(key, create({"a": v(1), "b": v(2)}))
    calls.take()
    assert await backend.store(key, Write({}, ["a"])) is True
    assert calls.take() == ["UpdateItem"]
    assert await backend.load(key, touch=False) == Record({"b": v(2)})


@pytest.mark.anyio
async def test_a_field_written_while_emptying_keeps_the_record(
    backend: DynamoDBBackend, key: str, probe: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.store(key, create({"a": v(1)}, permanent=True))
    real = DynamoDBBackend._update_item

    async def another_request_meanwhile(self: Any, *args: Any) -> Any:
        attributes = await real(self, *args)
        edit(probe, table, key, "SET f.c = :c", {":c": {"S": "3"}})
        return attributes

    monkeypatch.setattr(DynamoDBBackend, "_update_item", another_request_meanwhile)
    assert await backend.store(key, Write({}, ["a"])) is True
    monkeypatch.undo()
    assert await backend.load(key, touch=False) == Record({"c": b"3"}, True)


@pytest.mark.anyio
async def test_a_write_keeping_the_flag_keeps_anothers_and_restarts_the_records_own_ttl(
    backend: DynamoDBBackend, key: str, probe: Any, table: str, calls: Calls
) -> None:
    await backend.store(key, create({"a": v(1)}, permanent=False, ttl=1000))
    # Another request made it permanent with its own lifetime, ending soon.
    now = time.time()
    edit(probe, table, key, "SET permanent = :t, #t = :ttl, ends = :e, expires = :e",
         {":t": {"BOOL": True}, ":ttl": {"N": "50000"}, ":e": {"N": str(int(now) + 10)}},
         {"#t": "ttl"})
    calls.take()
    assert await backend.store(key, Write({"b": v(2)})) is True
    assert calls.take() == ["UpdateItem"]  # one call: the restart is arithmetic on the server
    stored = item(probe, table, key)
    assert stored is not None
    assert stored["permanent"] == {"BOOL": True}
    assert stored["ttl"] == {"N": "50000"}
    assert now + 50000 - 0.001 <= float(stored["ends"]["N"]) <= time.time() + 50000
    assert now + 50000 <= int(stored["expires"]["N"]) <= time.time() + 50001
    assert await backend.load(key, touch=False) == Record({"a": v(1), "b": v(2)}, True)


@pytest.mark.anyio
async def test_expiry_is_checked_on_read(
    backend: DynamoDBBackend, key: str, probe: Any, table: str
) -> None:
    await backend.store(key, create({"a": v(1)}, ttl=100))
    past = f"{time.time() - 0.01:.3f}"
    edit(probe, table, key, "SET ends = :p", {":p": {"N": past}})
    assert await backend.load(key, touch=False) is None
    assert await backend.load(key, touch=True) is None
    assert await backend.store(key, Write({"a": v(2)})) is False
    stored = item(probe, table, key)
    assert stored is not None
    assert (stored["ends"], stored["f"]) == ({"N": past}, {"M": {"a": {"S": "1"}}})


@pytest.mark.anyio
async def test_a_read_restarts_the_lifetime_only_past_half_of_it(
    backend: DynamoDBBackend, key: str, probe: Any, table: str, calls: Calls
) -> None:
    await backend.store(key, create({"a": v(1)}, permanent=True, ttl=1000))
    calls.take()
    for touch in (False, True):
        assert await backend.load(key, touch=touch) == Record({"a": v(1)}, True)
        assert calls.take() == ["GetItem"]
    # 600 of 1000 s gone: a refreshing read restarts it, a plain one does not.
    edit(probe, table, key, "SET ends = :e", {":e": {"N": str(time.time() + 400)}})
    assert await backend.load(key, touch=False) == Record({"a": v(1)}, True)
    assert calls.take() == ["GetItem"]
    before = time.time()
    assert await backend.load(key, touch=True) == Record({"a": v(1)}, True)
    assert calls.take() == ["GetItem", "UpdateItem"]
    stored = item(probe, table, key)
    assert stored is not None
    assert float(stored["ends"]["N"]) >= before + 1000 - 0.001
    assert int(stored["expires"]["N"]) >= before + 1000
    assert await backend.load(key, touch=True) is not None
    assert calls.take() == ["GetItem"]  # fresh again


@pytest.mark.anyio
async def test_a_restart_by_read_never_resurrects_nor_overrides_a_write(
    backend: DynamoDBBackend, key: str, probe: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.store(key, create({"a": v(1)}, ttl=1000))
    soon = str(int(time.time()) + 100)
    edit(probe, table, key, "SET ends = :e", {":e": {"N": soon}})
    real = DynamoDBBackend._run
    later = str(int(time.time()) + 99999)
    reads = 0

    async def meanwhile(self: Any, call: Any) -> Any:
        nonlocal reads
        result = await real(self, call)
        reads += 1
        if reads == 1:  # after the GetItem, before the restart
            edit(probe, table, key, "SET ends = :e, #t = :t",
                 {":e": {"N": later}, ":t": {"N": "99999"}}, {"#t": "ttl"})
        return result

    monkeypatch.setattr(DynamoDBBackend, "_run", meanwhile)
    assert await backend.load(key, touch=True) == Record({"a": v(1)})
    stored = item(probe, table, key)
    assert stored is not None
    assert stored["ends"] == {"N": later}  # the other write's expiry stands
    # Deleted between the read and the restart: the restart creates nothing.
    edit(probe, table, key, "SET ends = :e, #t = :t", {":e": {"N": soon}, ":t": {"N": "1000"}},
         {"#t": "ttl"})
    reads = 0

    async def deleted_meanwhile(self: Any, call: Any) -> Any:
        nonlocal reads
        result = await real(self, call)
        reads += 1
        if reads == 1:
            probe.delete_item(TableName=table, Key={"id": {"S": key}})
        return result

    monkeypatch.setattr(DynamoDBBackend, "_run", deleted_meanwhile)
    assert await backend.load(key, touch=True) == Record({"a": v(1)})
    assert item(probe, table, key) is None


@pytest.mark.anyio
async def test_fifty_concurrent_writers_of_different_fields_all_land(
    dynamodb_server: MotoServer, table: str, key: str
) -> None:
    # Two stores with their own clients stand in for two worker processes.
    stores = [DynamoDBBackend(table=table, **dynamodb_server.credentials) for _ in range(2)]
    await stores[0].store(key, create({"base": v(0)}, permanent=True))

    async def set_field(i: int) -> None:
        assert await stores[i % 2].store(key, Write({f"f{i}": v(i)})) is True

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(set_field, i)
    record = await stores[0].load(key, touch=False)
    assert record == Record({"base": v(0), **{f"f{i}": v(i) for i in range(50)}}, True)
    await close_loop_clients()


@pytest.mark.anyio
async def test_a_write_of_many_fields_goes_out_in_chunks(
    backend: DynamoDBBackend, key: str, calls: Calls
) -> None:
    await backend.store(key, create({f"old{i}": v(i) for i in range(30)}, ttl=1000))
    calls.take()
    changed = {f"new{i}": v(i) for i in range(230)}
    removed = [f"old{i}" for i in range(30)]
    assert await backend.store(key, Write(changed, removed, True, 5000)) is True
    assert calls.take() == ["UpdateItem"] * 3  # 260 paths, 100 per update
    assert await backend.load(key, touch=False) == Record(changed, True)
    calls.take()
    # Removing all of them is emptying: the item goes after the last chunk.
    assert await backend.store(key, Write({}, list(changed))) is True
    assert calls.take() == ["UpdateItem"] * 3 + ["DeleteItem"]
    assert await backend.load(key, touch=False) is None


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_item_over_400_kb_is_a_clear_error(
    backend: DynamoDBBackend, key: str, probe: Any, table: str
) -> None:
    with pytest.raises(ValueError, match="session too large for DynamoDB: an item holds at "
                                         "most 400 KB"):
        await backend.store(key, create({"big": v("x" * 410_000)}))
    assert item(probe, table, key) is None


@pytest.mark.anyio
async def test_a_field_name_over_64_kb_is_refused_before_any_call(
    backend: DynamoDBBackend, key: str, calls: Calls
) -> None:
    name = "n" * 65_537
    with pytest.raises(ValueError, match="attribute names hold at most 65536 bytes"):
        await backend.store(key, create({name: v(1)}))
    with pytest.raises(ValueError, match="attribute names hold at most 65536 bytes"):
        await backend.store(key, Write({}, [name]))
    assert calls.take() == []
    await backend.store(key, create({"n" * 65_536: v(1)}))  # the limit itself is fine
    assert await backend.load(key, touch=False) == Record({"n" * 65_536: v(1)})


def test_key_prefix_must_fit_the_partition_key(tmp_path: Any) -> None:
    entry = {"cookie_name": "s", "session_type": DynamoDBBackend, "region_name": "eu-west-1",
             "key_prefix": "p" * 2006}
    with pytest.raises(ValueError, match=r"'key_prefix': too long: keys must fit in 2048"):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path=str(tmp_path))
    entry["key_prefix"] = "p" * 2005
    parse_config({"SESSION_CONFIG": [entry]}, instance_path=str(tmp_path))


# -- what other programs leave under a key ----------------------------------------------------

MISSING = object()


def ours(**changes: Any) -> dict[str, Any]:
    """An item of this store's shape with ``changes`` (MISSING: the attribute left out)."""
    data: dict[str, Any] = {"f": {"M": {"a": {"S": '"x"'}}}, "permanent": {"BOOL": False},
                            "ttl": {"N": "600"}, "ends": {"N": str(time.time() + 600)},
                            "expires": {"N": str(int(time.time()) + 601)},
                            **changes}
    return {k: x for k, x in data.items() if x is not MISSING}


#: Items this store did not write: another library's, and ours with one thing wrong at the
#: top level (what the update's condition checks too).
FOREIGN: dict[str, dict[str, Any]] = {
    # Flask-Session 0.8's DynamoDB items: a pickle (or msgpack) and a fractional expiry.
    "Flask-Session 0.8": {"val": {"B": b"\x80\x04\x95FOREIGN"},
                          "expiration": {"N": str(Decimal(time.time() + 3600))}},
    "f a string": ours(f={"S": "not a map"}),
    "f a list": ours(f={"L": [{"S": '"x"'}]}),
    "no f": ours(f=MISSING),
    "ttl a string": ours(ttl={"S": "600"}),
    "no ttl": ours(ttl=MISSING),
    "permanent a number": ours(permanent={"N": "1"}),
    "ends a string": ours(ends={"S": "tomorrow"}),
    "no ends": ours(ends=MISSING),
    "expires a string": ours(expires={"S": "tomorrow"}),
}
#: Ours, damaged inside the map: unreadable, but the update's condition cannot see it.
DAMAGED: dict[str, dict[str, Any]] = {
    "ttl negative": ours(ttl={"N": "-600"}),
    "ttl a fraction": ours(ttl={"N": "600.5"}),
    "value a number": ours(f={"M": {"a": {"N": "5"}}}),
    "value a map": ours(f={"M": {"a": {"M": {"x": {"S": "1"}}}}}),
    "name badly escaped": ours(f={"M": {"a%41": {"S": '"x"'}}}),
    "name with a bare %": ours(f={"M": {"100%": {"S": '"x"'}}}),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", [*FOREIGN, *DAMAGED])
async def test_foreign_items_read_as_no_session_and_only_a_new_session_replaces_them(
    backend: DynamoDBBackend, probe: Any, table: str, case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend.bind(name="sid", instance_path="")
    key = "session:" + new_id()
    await backend.store(key, create({"warm": v(1)}))  # the table exists from here on
    probe.put_item(TableName=table, Item={"id": {"S": key}, **{**FOREIGN, **DAMAGED}[case]})
    before = item(probe, table, key)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        assert await backend.load(key, touch=False) is None
        assert await backend.load(key, touch=True) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert f"'sid': unreadable record {masked(key)!r}" in warnings[0]
    assert item(probe, table, key) == before  # a read never changes it
    if case in FOREIGN:
        assert await backend.store(key, Write({"b": v(1)}, ["a"])) is False
        assert await backend.store(key, Write({"b": v(1)}, (), True, 600)) is False
        assert item(probe, table, key) == before
    # A new session under that key replaces it whole.
    assert await backend.store(key, create({"b": v(1)}, ttl=60)) is True
    stored = item(probe, table, key)
    assert stored is not None
    assert set(stored) == {"id", "f", "permanent", "ttl", "ends", "expires"}
    assert stored["f"] == {"M": {"b": {"S": "1"}}}
    assert await backend.load(key, touch=True) == Record({"b": v(1)})


def test_a_flask_session_item_is_a_fresh_session_with_a_warning(
    make_driver: Any, dynamodb_server: MotoServer, probe: Any, table: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = make_driver({"SESSION_CONFIG": [{
        "cookie_name": "sid", "session_type": DynamoDBBackend, "table": table,
        **dynamodb_server.credentials,
    }]})
    assert d.post("set", {"warm": 1}).status == 200  # creates the table
    sid = new_id()
    probe.put_item(TableName=table, Item={"id": {"S": "session:" + sid},
                                          **FOREIGN["Flask-Session 0.8"]})
    before = item(probe, table, "session:" + sid)
    d.set_cookie("sid", sid)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        reply = d.get()
    assert (reply.status, reply.json) == (200, {})
    assert f"unreadable record {masked('session:' + sid)!r}" in caplog.text
    assert d.post("set", {"user": "ada"}).status == 200
    new = d.cookies()["sid"]
    assert new != sid  # a fresh session, never the foreign item's id
    assert d.show() == {"user": "'ada'"}
    assert item(probe, table, "session:" + sid) == before  # left as it was


# -- the table --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_missing_table_is_created_with_ttl_on_first_use(
    backend: DynamoDBBackend, key: str, probe: Any, table: str, calls: Calls
) -> None:
    assert await backend.load(key, touch=True) is None  # no table: nothing there either
    assert calls.take() == ["GetItem", "CreateTable", "DescribeTable", "UpdateTimeToLive",
                            "GetItem"]
    described = probe.describe_table(TableName=table)["Table"]
    assert described["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = probe.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires")
    await backend.store(key, create({"a": v(1)}))
    assert calls.take() == ["PutItem"]  # from then on, nothing more


@pytest.mark.anyio
async def test_a_table_another_process_created_is_waited_for_and_left_alone(
    dynamodb_server: MotoServer, table: str, key: str, probe: Any, calls: Calls
) -> None:
    stores = [DynamoDBBackend(table=table, **dynamodb_server.credentials) for _ in range(2)]
    results = await asyncio.gather(*(s.store(key + str(i), create({"a": v(i)}))
                                     for i, s in enumerate(stores)))
    assert results == [True, True]
    assert calls.take().count("UpdateTimeToLive") == 1  # only by the one that created it
    assert [await s.load(key + str(i), touch=False) for i, s in enumerate(stores)] == [
        Record({"a": v(0)}), Record({"a": v(1)})
    ]
    calls.take()
    # What a process that finds the table being created (or there) does: wait, then go on.
    await stores[1]._ensure_table(await stores[1].client.get())
    assert calls.take() == ["CreateTable", "DescribeTable"]
    await close_loop_clients()


@pytest.mark.anyio
async def test_without_create_table_a_missing_table_is_an_error(
    dynamodb_server: MotoServer, table: str, key: str, probe: Any
) -> None:
    backend = DynamoDBBackend(table=table, create_table=False, **dynamodb_server.credentials)
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        await backend.load(key, touch=False)
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        await backend.store(key, create({"a": v(1)}))
    assert table not in probe.list_tables()["TableNames"]
    await close_loop_clients()


@pytest.mark.anyio
async def test_ttl_failure_is_logged_not_raised(
    backend: DynamoDBBackend, key: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(model: Any, **kwargs: Any) -> None:
        if model.name == "UpdateTimeToLive":
            raise ClientError({"Error": {"Code": "AccessDeniedException",
                                         "Message": "not authorized"}}, "UpdateTimeToLive")

    real_open = dynamodb_module._Connection._open

    async def open_refusing(self: Any) -> Any:
        client = await real_open(self)
        client.meta.events.register("before-call.dynamodb", refuse)
        return client

    monkeypatch.setattr(dynamodb_module._Connection, "_open", open_refusing)
    with caplog.at_level(logging.WARNING, "asyncsessions.backends.dynamodb"):
        assert await backend.store(key, create({"a": v(1)})) is True
    assert "could not enable TTL on 'expires'" in caplog.text
    assert "not authorized" in caplog.text
    assert await backend.load(key, touch=False) == Record({"a": v(1)})


# -- clients and options ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_boto3_client_is_reused_per_loop(
    dynamodb_server: MotoServer, table: str, key: str
) -> None:
    sync = boto3.client("dynamodb", **dynamodb_server.credentials)
    backend = DynamoDBBackend(client=sync, table=table)
    assert backend.location == (f"dynamodb://us-east-1/{table} via "
                                f"{dynamodb_server.endpoint_url}")
    await backend.store(key, create({"a": v(1)}))
    assert await backend.load(key, touch=True) == Record({"a": v(1)})
    client = await backend.client.get()
    assert client is not sync
    assert client.meta.endpoint_url == dynamodb_server.endpoint_url
    await close_loop_clients()
    sync.close()


@pytest.mark.anyio
async def test_an_aiobotocore_client_and_sessions_are_reused(
    dynamodb_server: MotoServer, table: str, key: str
) -> None:
    credentials = dynamodb_server.credentials
    async with AioSession().create_client("dynamodb", **credentials) as given:
        backend = DynamoDBBackend(client=given, table=table)
        await backend.store(key, create({"a": v(1)}))
        assert await backend.load(key, touch=False) == Record({"a": v(1)})
        assert await backend.client.get() is not given  # each loop its own
        await close_loop_clients()
    keys = {"aws_access_key_id": credentials["aws_access_key_id"],
            "aws_secret_access_key": credentials["aws_secret_access_key"]}
    boto_session = boto3.Session(region_name="us-east-1", **keys)
    # A session has no endpoint of its own: the store then talks to AWS, so only check.
    backend = DynamoDBBackend(client=boto_session, table=table)
    assert backend.location == f"dynamodb://us-east-1/{table}"
    assert backend._settings.aws_access_key_id == "testing"
    aio = AioSession()
    aio.set_config_variable("region", "eu-north-1")
    assert DynamoDBBackend(client=aio).location == "dynamodb://eu-north-1/sessions"


def test_one_client_per_event_loop(dynamodb_server: MotoServer, table: str, key: str) -> None:
    backend = DynamoDBBackend(table=table, **dynamodb_server.credentials)

    async def use() -> tuple[Record | None, Any]:
        await backend.store(key, create({"a": v(1)}))
        try:
            return await backend.load(key, touch=True), await backend.client.get()
        finally:
            await close_loop_clients()

    first, second = asyncio.run(use()), asyncio.run(use())
    assert first[0] == second[0] == Record({"a": v(1)})
    assert first[1] is not second[1]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("client", object(), r"'client': client must be a DynamoDB client, resource or "
                             "session"),
        ("client", botocore.session.Session(profile="no-such-profile"),
         r"'client': client: cannot read the session's configuration: The config profile "
         r"\(no-such-profile\) could not be found"),
        ("client", boto3.client("s3", region_name="us-east-1"),
         r"'client': client must be a DynamoDB client, not one for 's3'"),
        ("table", "ab", "'table': table must be a DynamoDB table name"),
        ("table", "a b c", "'table': table must be a DynamoDB table name"),
        ("table", 5, "'table': table must be a DynamoDB table name"),
        ("create_table", "yes", "'create_table': create_table must be True or False"),
        ("region_name", "", "'region_name': region_name must be a non-empty str"),
        ("endpoint_url", "127.0.0.1:8000", "'endpoint_url': endpoint_url must be an http"),
        ("endpoint_url", "http://", "'endpoint_url': endpoint_url must be an http:// or "
                                    r"https:// URL with a host, like http://127.0.0.1:8000"),
        ("endpoint_url", "http://local host:8000", "'endpoint_url': endpoint_url must be"),
        ("endpoint_url", "http://localhost:80x0", r"'endpoint_url': endpoint_url "
                                                  "'http://localhost:80x0': Port could not"),
        ("endpoint_url", "http://[::1", r"'endpoint_url': endpoint_url 'http://\[::1': "
                                        "Invalid IPv6 URL"),
        ("region_name", "eu west 1", r"'region_name': region_name 'eu west 1' is no AWS "
                                     r"region name \(like 'eu-west-1'\)"),
        ("region_name", "https://dynamodb.eu-west-1.amazonaws.com",
         "'region_name': region_name 'https://dynamodb.eu-west-1.amazonaws.com' is no AWS"),
        ("aws_access_key_id", "AKIA", "'aws_access_key_id': aws_access_key_id and "
                                      "aws_secret_access_key go together"),
        ("aws_session_token", "tok", "'aws_session_token': aws_session_token needs"),
    ],
)
def test_bad_options_name_the_key(option: str, value: Any, message: str) -> None:
    entry = {"cookie_name": "s", "session_type": DynamoDBBackend, option: value}
    if option != "region_name" and option != "client":
        entry["region_name"] = "eu-west-1"
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] " + message):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path="/tmp")


def test_a_region_from_the_environment_is_checked_at_init(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu_west_1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ValueError, match=r"region_name 'eu_west_1' is no AWS region name .* "
                                         "AWS_DEFAULT_REGION"):
        DynamoDBBackend()


@pytest.mark.anyio
async def test_a_boto3_resource_is_taken_for_its_client(
    dynamodb_server: MotoServer, table: str, key: str
) -> None:
    # What Flask-Session 0.8's users pass as SESSION_DYNAMODB.
    resource = boto3.resource("dynamodb", **dynamodb_server.credentials)
    backend = DynamoDBBackend(client=resource, table=table)
    assert backend.location == (f"dynamodb://us-east-1/{table} via "
                                f"{dynamodb_server.endpoint_url}")
    await backend.store(key, create({"a": v(1)}))
    assert await backend.load(key, touch=False) == Record({"a": v(1)})
    await close_loop_clients()
    resource.meta.client.close()
    with pytest.raises(TypeError, match="not one for 's3'"):
        DynamoDBBackend(client=boto3.resource("s3", region_name="us-east-1"))


def test_client_and_settings_together_are_refused() -> None:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    with pytest.raises(ValueError, match="give client or region_name, not both"):
        DynamoDBBackend(client=client, region_name="eu-west-1")
    client.close()


def test_a_region_is_needed_at_init(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ValueError, match="region_name is needed"):
        DynamoDBBackend()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert DynamoDBBackend().location == "dynamodb://ap-south-1/sessions"


@pytest.mark.parametrize(("options", "location"), [
    ({"region_name": "eu-west-1"}, "dynamodb://eu-west-1/sessions"),
    ({"region_name": "eu-west-1", "table": "app.sessions",
      "endpoint_url": "http://ada:secret@localhost:8000/?x=1"},
     "dynamodb://eu-west-1/app.sessions via http://localhost:8000/"),
    ({"region_name": "us-east-2", "aws_access_key_id": "AKIAEXAMPLE",
      "aws_secret_access_key": "very secret"}, "dynamodb://us-east-2/sessions"),
], ids=["region", "endpoint", "keys"])
def test_location_names_region_table_and_endpoint_never_credentials(
    options: dict[str, Any], location: str
) -> None:
    assert DynamoDBBackend(**options).location == location


@pytest.mark.anyio
async def test_an_unreachable_endpoint_raises_promptly(table: str, key: str) -> None:
    backend = DynamoDBBackend(table=table, region_name="us-east-1",
                              endpoint_url="http://127.0.0.1:1",
                              aws_access_key_id="x", aws_secret_access_key="y")
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        await asyncio.wait_for(backend.load(key, touch=False), 20)
    # botocore's standard retry mode: 3 attempts, where its legacy default takes ~26 s.
    assert time.monotonic() - started < 5
    await close_loop_clients()


# -- through the app --------------------------------------------------------------------------


def test_through_the_app(make_driver: Any, dynamodb_server: MotoServer, probe: Any,
                         table: str) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": DynamoDBBackend, "table": table,
         "key_prefix": "app:", "session_fields": ["user", "cart"],
         **dynamodb_server.credentials},
        {"cookie_name": "rest", "session_fields": "auto"},
    ]})
    d.post("set", {"user": "zoë", "cart": [1, 2], "theme": "dark"})
    assert d.show() == {"user": "'zoë'", "cart": "[1, 2]", "theme": "'dark'"}
    key = "app:" + d.cookies()["sid"]
    stored = item(probe, table, key)
    assert stored is not None
    assert stored["f"] == {"M": {"user": {"S": '"zoë"'}, "cart": {"S": "[1,2]"}}}
    d.post("append", {"cart": 3})  # nested mutation is saved without .modified
    d.post("del", {"user": 1})
    d.post("permanent")
    stored = item(probe, table, key)
    assert stored is not None
    assert stored["f"] == {"M": {"cart": {"S": "[1,2,3]"}}}
    assert stored["permanent"] == {"BOOL": True}
    assert stored["ttl"] == {"N": str(31 * 86400)}
    # A planted value that is no JSON is dropped on load and removed by the next write.
    edit(probe, table, key, "SET f.#u = :p", {":p": {"S": "gASVpickle"}}, {"#u": "user"})
    assert d.show() == {"cart": "[1, 2, 3]", "theme": "'dark'"}
    d.post("set", {"theme": "light"})
    stored = item(probe, table, key)
    assert stored is not None
    assert stored["f"] == {"M": {"cart": {"S": "[1,2,3]"}}}
    d.post("del", {"cart": 1})
    assert item(probe, table, key) is None  # no fields left: the item is deleted


def test_a_read_only_request_is_one_call(
    make_driver: Any, dynamodb_server: MotoServer, table: str, calls: Calls
) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": DynamoDBBackend, "table": table,
         **dynamodb_server.credentials},
    ]})
    d.post("set", {"a": 1})
    calls.take()
    for _ in range(3):
        assert d.show() == {"a": "1"}
    assert calls.take() == ["GetItem"] * 3
    d.post("set", {"b": 2})
    assert calls.take() == ["GetItem", "UpdateItem"]


def test_a_big_session_is_a_backend_error_naming_the_store(
    make_driver: Any, dynamodb_server: MotoServer, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": DynamoDBBackend, "table": table,
         **dynamodb_server.credentials},
    ]})
    with caplog.at_level(logging.ERROR):
        assert d.post("set", {"blob": secrets.token_hex(210_000)}).status == 500
    assert (f"store failed at dynamodb://us-east-1/{table} via {dynamodb_server.endpoint_url}: "
            "ValueError: session too large for DynamoDB: an item holds at most 400 KB"
            in caplog.text)
    assert "sid" not in d.cookies()


# -- Flask-Session 0.8's items (read_flask_session) -------------------------------------------


def their_item(value: bytes, expires: float, *, clock: float | None = None) -> dict[str, Any]:
    """Flask-Session 0.8's item: ``expiration`` dated as it does (``utcnow().timestamp()``)."""
    now = datetime.utcnow().timestamp() if clock is None else clock
    return {"val": {"B": value}, "expiration": {"N": str(Decimal(now + expires))}}


@pytest.fixture
def reading(backend: DynamoDBBackend) -> DynamoDBBackend:
    backend.bind(name="sid", instance_path="")
    backend.reads_flask_session = True
    return backend


@pytest.mark.anyio
async def test_their_live_item_is_read_and_only_a_write_replaces_it(
    reading: DynamoDBBackend, probe: Any, table: str, key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await reading.store("warm:" + new_id(), create({"a": v(1)}))  # the table
    probe.put_item(TableName=table, Item={"id": {"S": key}, **their_item(
        msgspec.msgpack.encode({"_permanent": True, "_user_id": "42"}), 3600)})
    before = item(probe, table, key)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        assert await reading.load(key, touch=True) == Record(
            {"_user_id": v("42")}, True, foreign=True)
    assert caplog.records == []
    assert item(probe, table, key) == before  # not touched
    assert await reading.store(key, Write({"b": v(1)}, ["a"])) is False  # only a create
    assert await reading.expires_at(key) == pytest.approx(time.time() + 3600, abs=5)
    assert await reading.store(key, create({"_user_id": v("42")}, permanent=True)) is True
    stored = item(probe, table, key)
    assert stored is not None
    assert "val" not in stored
    assert await reading.load(key, touch=False) == Record({"_user_id": v("42")}, True)


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "reason"), [
    (pickle.dumps({"_permanent": True, "_user_id": "42"}), "a pickle"),
    (b"\xc1", "neither msgpack nor JSON"),
    (None, "without a binary val"),
])
async def test_their_unreadable_items_are_no_session_and_left_alone(
    reading: DynamoDBBackend, probe: Any, table: str, key: str, value: bytes | None,
    reason: str, caplog: pytest.LogCaptureFixture,
) -> None:
    await reading.store("warm:" + new_id(), create({"a": v(1)}))
    planted = their_item(value or b"", 3600)
    if value is None:
        planted["val"] = {"S": "text"}
    probe.put_item(TableName=table, Item={"id": {"S": key}, **planted})
    before = item(probe, table, key)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        assert await reading.load(key, touch=True) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert f"unreadable record {masked(key)!r}" in lines[0]
    assert reason in lines[0]
    assert item(probe, table, key) == before


@pytest.mark.anyio
async def test_their_expiration_is_read_on_their_clock(
    reading: DynamoDBBackend, probe: Any, table: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Flask-Session dates expiration with datetime.utcnow().timestamp(): on a machine five
    # hours behind UTC, five hours late. Read there, its sessions end when they did there.
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    try:
        assert datetime.utcnow().timestamp() - time.time() == pytest.approx(5 * 3600, abs=5)
        value = msgspec.msgpack.encode({"_permanent": True, "_user_id": "42"})
        live, dead = "session:" + new_id(), "session:" + new_id()
        await reading.store("warm:" + new_id(), create({"a": v(1)}))
        probe.put_item(TableName=table, Item={"id": {"S": live}, **their_item(value, 60)})
        probe.put_item(TableName=table, Item={"id": {"S": dead}, **their_item(value, -60)})
        assert await reading.load(live, touch=False) is not None
        assert await reading.load(dead, touch=False) is None
        assert await reading.expires_at(live) == pytest.approx(time.time() + 60, abs=5)
        assert await reading.expires_at(dead) is None
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# -- count, purge, expires_at (the CLI's) -----------------------------------------------------


def expire(probe: Any, table: str, key: str, ago: float = 10) -> None:
    """What TTL has not deleted yet: an item of ours that ended ``ago`` seconds ago."""
    edit(probe, table, key, "SET #x = :e", {":e": {"N": str(time.time() - ago)}}, {"#x": "ends"})


@pytest.mark.anyio
async def test_count_purge_and_expires_at(
    reading: DynamoDBBackend, probe: Any, table: str, calls: Calls
) -> None:
    prefix, other = "p:", "q:"
    live = [prefix + new_id() for _ in range(2)]
    dead = [prefix + new_id() for _ in range(5)]
    for key in [*live, *dead, other + new_id(), other + new_id()]:
        assert await reading.store(key, create({"a": v(1)}, ttl=600))
    for key in dead:
        expire(probe, table, key)
    value = msgspec.msgpack.encode({"_permanent": True, "u": 1})
    theirs_live, theirs_dead = prefix + new_id(), prefix + new_id()
    probe.put_item(TableName=table, Item={"id": {"S": theirs_live}, **their_item(value, 600)})
    probe.put_item(TableName=table, Item={"id": {"S": theirs_dead}, **their_item(value, -10)})
    # Not a session of anyone's (damaged at the top): neither counted nor deleted.
    odd = prefix + new_id()
    probe.put_item(TableName=table, Item={"id": {"S": odd}, **ours(ends={"N": "1"},
                                                                  f={"S": "x"})})

    assert await reading.count(prefix) == 3  # two of ours, one of theirs
    assert await reading.count(other) == 2
    assert await reading.count("") == 5
    assert await reading.expires_at(live[0]) == pytest.approx(time.time() + 600, abs=5)
    assert await reading.expires_at(dead[0]) is None
    assert await reading.expires_at(odd) is None
    assert await reading.expires_at(prefix + new_id()) is None

    # Page by page (DynamoDB's pages end at 1 MB; here at three items read).
    pages = [p async for p in reading._scan(prefix, "<=", Select="COUNT", Limit=3)]
    assert len(pages) > 2
    assert sum(p["Count"] for p in pages) == 6

    calls.take()
    assert [n async for n in reading.purge(prefix, batch=2, dry_run=True)] == [6]
    assert [n for n in calls.take() if n != "Scan"] == []  # a dry run deletes nothing
    steps = [n async for n in reading.purge(prefix, batch=2, dry_run=False)]
    assert steps == [2, 2, 2]  # six dead, at most two per step
    assert calls.take().count("DeleteItem") == 6
    for key in [*dead, theirs_dead]:
        assert item(probe, table, key) is None
    for key in [*live, theirs_live, odd]:
        assert item(probe, table, key) is not None
    assert await reading.count(prefix) == 3
    assert [n async for n in reading.purge(prefix, batch=2, dry_run=True)] == []

    # Without read_flask_session their items are nobody's here: neither counted nor purged.
    reading.reads_flask_session = False
    probe.put_item(TableName=table, Item={"id": {"S": theirs_dead}, **their_item(value, -10)})
    assert await reading.count(prefix) == 2
    assert [n async for n in reading.purge(prefix, batch=10, dry_run=False)] == []
    assert item(probe, table, theirs_dead) is not None


@pytest.mark.anyio
async def test_purge_leaves_a_session_revived_since_the_scan(
    backend: DynamoDBBackend, probe: Any, table: str, key: str
) -> None:
    await backend.store(key, create({"a": v(1)}))
    expire(probe, table, key)
    pages = backend._scan("session:", "<=", ProjectionExpression="#k")
    first = await pages.__anext__()
    assert [i["id"]["S"] for i in first["Items"]] == [key]
    await pages.aclose()
    # Between the scan and the delete a request writes it: it lives again.
    await backend.store(key, create({"a": v(2)}))
    assert await backend._delete_dead(key) == 0
    assert await backend.load(key, touch=False) == Record({"a": v(2)})


def cli_app(entry: dict[str, Any]) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "test"
    app.config["SESSION_CONFIG"] = [{**entry, "cookie_name": "s"}]

    @app.get("/set/<value>")
    def set_value(value: str) -> str:
        flask.session["value"] = value
        return "ok"

    Session(app)
    return app


def test_the_cli_counts_shows_and_purges(dynamodb_server: MotoServer, probe: Any,
                                         table: str) -> None:
    entry = {"session_type": "dynamodb", "table": table, "key_prefix": "cli:",
             **dynamodb_server.credentials}
    app = cli_app(entry)
    ids = []
    for value in ("live", "dead1", "dead2", "dead3"):
        with app.test_client() as client:
            assert client.get(f"/set/{value}").status_code == 200
            ids.append(str(client.get_cookie("s").value).split(".")[0])
    for sid in ids[1:]:
        expire(probe, table, "cli:" + sid)
    runner = app.test_cli_runner()
    invoke = lambda *args: runner.invoke(args=["sessions", *args])  # noqa: E731

    result = invoke("count")
    assert result.exit_code == 0, result.output
    assert f"s (dynamodb://us-east-1/{table} via {dynamodb_server.endpoint_url}): 1 live" in (
        result.output)
    assert "'value': 'live'" in invoke("show", "--", ids[0]).output
    assert "no session" in invoke("show", "--", ids[1]).output
    assert "would remove 3 expired" in invoke("purge", "--dry-run").output
    result = invoke("purge", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert "removed 3 expired" in result.output
    assert "would remove 0 expired" in invoke("purge", "--dry-run").output
    assert ": 1 live" in invoke("count").output
    assert [item(probe, table, "cli:" + sid) is None for sid in ids] == [False, True, True, True]


def test_the_cli_reports_a_missing_table_without_creating_it(
    dynamodb_server: MotoServer, probe: Any, table: str
) -> None:
    app = cli_app({"session_type": "dynamodb", "table": table, "create_table": False,
                   **dynamodb_server.credentials})
    result = app.test_cli_runner().invoke(args=["sessions", "count"])
    assert result.exit_code == 1
    assert "ResourceNotFoundException" in result.output
    assert table not in probe.list_tables()["TableNames"]


@pytest.mark.anyio
async def test_ttl_on_their_attribute_in_their_table(
    dynamodb_server: MotoServer, probe: Any, table: str, key: str
) -> None:
    # SESSION_TYPE = "dynamodb": the TTL attribute is Flask-Session's, so a table whose TTL
    # is on it deletes this store's items too.
    backend = DynamoDBBackend(table=table, ttl_attribute="expiration",
                              **dynamodb_server.credentials)
    backend.reads_flask_session = True
    await backend.store(key, create({"a": v(1)}, ttl=600))
    ttl = probe.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expiration")
    stored = item(probe, table, key)
    assert stored is not None
    assert set(stored) == {"id", "f", "permanent", "ttl", "ends", "expiration"}
    assert int(stored["expiration"]["N"]) == pytest.approx(time.time() + 600, abs=5)
    theirs = "session:" + new_id()
    probe.put_item(TableName=table, Item={"id": {"S": theirs}, **their_item(
        msgspec.msgpack.encode({"_permanent": False, "u": 1}), 600)})
    assert await backend.load(key, touch=False) == Record({"a": v(1)})
    assert await backend.load(theirs, touch=False) == Record({"u": v(1)}, foreign=True)
    assert await backend.store(key, Write({"b": v(2)})) is True  # the update's condition
    assert await backend.count("session:") == 2
    expire(probe, table, key)
    assert [n async for n in backend.purge("session:", batch=5, dry_run=False)] == [1]
    assert item(probe, table, theirs) is not None
    await close_loop_clients()


@pytest.mark.parametrize("name", ["", "f", "ends", "val", "id", "x" * 256, 5])
def test_ttl_attribute_must_be_a_name_of_its_own(name: Any) -> None:
    with pytest.raises(TypeError if name == 5 else ValueError, match="ttl_attribute"):
        DynamoDBBackend(region_name="eu-west-1", ttl_attribute=name)
