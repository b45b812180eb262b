"""Tests for the Datastore session store, against the Firestore emulator in Datastore mode.

Differences from the real service found here (the store uses none of what differs):

* The emulator ignores a mutation's conflict detection (``Mutation.base_version`` and
  ``update_time``): a stale update or delete is applied, not reported as a conflict. So the
  store makes no conditional writes; its conditions are checked in transactions.
* A lookup that begins its transaction (``ReadOptions.new_transaction``) returns an id whose
  commit then waits for the lookup's own lock and fails with "Transaction lock timeout"
  (and the lock lingers for later transactions). So the store calls ``BeginTransaction``.
* The emulator runs transactions pessimistically (a service database may be set to
  optimistic concurrency instead), and a deadlock (two read the entity, then both commit)
  ends only when its 2 s lock timeout aborts one. Without the store's turns, 50 concurrent
  writers of one session fail there even with retries; the test of writers in two
  processes (which conflict on the server whatever the store does) keeps to six.
* An unchanged entity written again keeps its version and update time on the emulator.
* The emulator keeps no data across a restart, runs no TTL policy, and takes any project
  id, keeping each project's data apart (each test uses a project of its own).

The legacy Datastore emulator (``cloud_datastore_emulator start --testing``, optimistic
transactions) passes this file too when the fixture starts it instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import InvalidArgument, ServiceUnavailable
from google.auth.credentials import AnonymousCredentials
from google.cloud import datastore

import asyncsessions.backends.datastore as datastore_module
from asyncsessions.backends.base import Record, Write, close_loop_clients, masked
from asyncsessions.backends.datastore import DatastoreBackend
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from server_datastore import DatastoreEmulator
from storekit import create

SID = "AbC-_123" + "x" * 35
KEY = "session:" + SID
STORE_PROPERTIES = {"expires", "ttl", "permanent"}


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
def emulator(
    datastore_emulator: DatastoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> DatastoreEmulator:
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", datastore_emulator.host_port)
    return datastore_emulator


@pytest.fixture
def project(emulator: DatastoreEmulator) -> str:
    """A project of its own per test: the emulator keeps each project's data apart."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def backend(project: str) -> AsyncIterator[DatastoreBackend]:
    backend = DatastoreBackend(project=project)
    backend.bind(name="sid", instance_path="")
    yield backend
    await close_loop_clients()


def close_sync(client: datastore.Client) -> None:
    api = client._datastore_api_internal
    if api is not None:
        api.transport.close()


@pytest.fixture
def probe(project: str) -> Iterator[datastore.Client]:
    """The sync client, to look at and plant entities around the store under test."""
    client = datastore.Client(project=project)
    yield client
    close_sync(client)


def entity(probe: datastore.Client, name: str, kind: str = "Session") -> datastore.Entity:
    found = probe.get(probe.key(kind, name))
    assert found is not None, f"no entity {name!r}"
    return found


def plant(probe: datastore.Client, name: str, properties: dict[str, Any],
          unindexed: tuple[str, ...] = ()) -> datastore.Entity:
    item = datastore.Entity(probe.key("Session", name), exclude_from_indexes=unindexed)
    item.update(properties)
    probe.put(item)
    return entity(probe, name)


def age(probe: datastore.Client, name: str, left: float) -> None:
    """Make the record under ``name`` end ``left`` seconds from now (< 0: in the past)."""
    item = entity(probe, name)
    item["expires"] = now() + timedelta(seconds=left)
    probe.put(item)


def rpcs(backend: DatastoreBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the calls the backend's client (of this loop) makes from now on."""
    client, calls = backend.client, []
    for name in ("lookup", "begin_transaction", "commit", "rollback", "run_query"):
        real = getattr(client, name)

        async def call(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return await _real(*args, **kwargs)

        monkeypatch.setattr(client, name, call)
    return calls


async def settle(backend: DatastoreBackend) -> None:
    """Wait for the backend's background tasks (rollbacks, cleanup)."""
    while backend._tasks:
        await asyncio.gather(*backend._tasks, return_exceptions=True)


# -- round trips and layout -------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_trip_and_layout(backend: DatastoreBackend, probe: datastore.Client) -> None:
    fields = {"user_id": b"42", "name": '"Zo\u00eb"'.encode(), "not utf-8": b"\xff\x00"}
    assert await backend.store(KEY, create(fields, permanent=True))
    assert await backend.load(KEY, touch=False) == Record(fields, permanent=True)
    assert await backend.load("session:" + "y" * 43, touch=False) is None

    stored = entity(probe, KEY)
    assert dict(stored) == {
        "f:user_id": "42", "f:name": '"Zo\u00eb"', "f:not utf-8": b"\xff\x00",
        "ttl": 600, "permanent": True, "expires": stored["expires"],
    }
    left = stored["expires"] - now()
    assert timedelta(seconds=590) < left <= timedelta(seconds=600)
    # Only the expiry is indexed: cleanup queries it, nothing queries the rest.
    assert stored.exclude_from_indexes == set(stored) - {"expires"}
    query = probe.query(kind="Session")
    query.add_filter(filter=datastore.query.PropertyFilter("f:user_id", "=", "42"))
    assert list(query.fetch()) == []
    query = probe.query(kind="Session")
    query.add_filter(filter=datastore.query.PropertyFilter("expires", ">", now()))
    assert [e.key.name for e in query.fetch()] == [KEY]


NAMES = ["a.b", "a/b", "x`y", "`", "\\", "zo\u00eb", "\u65e5\u672c", "\U0001f600", "__", "___",
         "__proto__", "__key__", "", ".", "..", "%", "f:", "f:x", "expires", "ttl", "permanent",
         " ", "1st", "a\nb", "a\x00b"]


@pytest.mark.anyio
async def test_field_names_round_trip_unescaped(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    fields = {name: f'"{i}"'.encode() for i, name in enumerate(NAMES)}
    await backend.store(KEY, create(fields))
    assert await backend.load(KEY, touch=False) == Record(fields)
    assert set(entity(probe, KEY)) == {"f:" + name for name in NAMES} | STORE_PROPERTIES

    gone = {"a.b", "x`y", "__proto__", "", "expires"}
    assert await backend.store(KEY, Write({"a": b"1", "b": b"2"}, sorted(gone)))
    record = await backend.load(KEY, touch=False)
    assert record is not None
    assert record.fields == {
        **{k: v for k, v in fields.items() if k not in gone}, "a": b"1", "b": b"2"
    }


@pytest.mark.anyio
@pytest.mark.parametrize(("key", "name"), [
    ("s/1", "s/1"), (".", "."), ("..", ".."), ("%2F", "%2F"), ("x__y__", "x__y__"),
    ("p:" + "\u00e9" * 20, "p:" + "\u00e9" * 20), ("a b\nc", "a b\nc"),
    # Datastore reserves names like __x__: those, and names ending with the escape, get one.
    ("_" * 44, "_" * 44 + "~"), ("__" + SID + "__", "__" + SID + "__~"), ("x~", "x~~"),
    ("__x__~", "__x__~~"),
])
async def test_keys_are_entity_names(
    backend: DatastoreBackend, probe: datastore.Client, key: str, name: str
) -> None:
    await backend.store(key, create({"k": b"1"}))
    assert await backend.load(key, touch=False) == Record({"k": b"1"})
    assert entity(probe, name)["f:k"] == "1"


@pytest.mark.anyio
async def test_escaped_keys_stay_distinct(backend: DatastoreBackend) -> None:
    keys = ["__x__", "__x__~", "__x__~~", "x", "x~", "x~~"]
    for i, key in enumerate(keys):
        await backend.store(key, create({"i": str(i).encode()}))
    for i, key in enumerate(keys):
        assert await backend.load(key, touch=False) == Record({"i": str(i).encode()})
    await backend.delete("__x__")
    assert await backend.load("__x__", touch=False) is None
    assert await backend.load("__x__~", touch=False) is not None


def config(tmp_path: Any, **entry: Any) -> list[Any]:
    entry = {"cookie_name": "s", "session_type": DatastoreBackend, **entry}
    return parse_config({"SESSION_CONFIG": [entry]}, instance_path=str(tmp_path))


def test_key_prefix_must_fit_with_its_escape(tmp_path: Any) -> None:
    config(tmp_path, project="p", key_prefix="a" * (1500 - 44))
    config(tmp_path, project="p", key_prefix="__")
    config(tmp_path, project="p", key_prefix="")
    with pytest.raises(ValueError, match=r"'key_prefix'.*1500 bytes"):
        config(tmp_path, project="p", key_prefix="a" * (1500 - 43))
    with pytest.raises(ValueError, match=r"'key_prefix'.*1500 bytes"):
        config(tmp_path, project="p", key_prefix="\u00e9" * 729)


@pytest.mark.anyio
async def test_a_field_name_too_long_for_datastore_fails_the_write(
    backend: DatastoreBackend,
) -> None:
    with pytest.raises(InvalidArgument):
        await backend.store(KEY, create({"n" * 1499: b"1"}))
    assert await backend.load(KEY, touch=False) is None


# -- field-level writes -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_merges_and_removes_fields(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    await backend.store(KEY, create({"a": b"1", "b": b"2"}, permanent=True))
    assert await backend.store(KEY, Write({"c": b"3"}, ["a", "missing"]))
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3"}, True)
    # Only the flag changed: the fields must survive a write that names none of them.
    assert await backend.store(KEY, Write({}, (), False, 60))
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3"}, False)
    stored = entity(probe, KEY)
    assert (stored["ttl"], stored["permanent"]) == (60, False)
    assert timedelta(seconds=55) < stored["expires"] - now() <= timedelta(seconds=60)


@pytest.mark.anyio
async def test_an_update_never_resurrects_a_deleted_record(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    await backend.store(KEY, create({"a": b"1"}))
    await backend.delete(KEY)
    await backend.delete(KEY)  # a missing record is no error
    assert await backend.store(KEY, Write({"b": b"2"})) is False
    assert await backend.store(KEY, Write({"b": b"2"}, (), True, 600)) is False
    assert await backend.store(KEY, Write({}, ["a"])) is False
    assert probe.get(probe.key("Session", KEY)) is None
    assert await backend.load(KEY, touch=True) is None


@pytest.mark.anyio
async def test_removing_the_last_field_deletes_the_record(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    await backend.store(KEY, create({"a": b"1", "b": b"2"}))
    assert await backend.store(KEY, Write({}, ["a", "b"]))
    assert probe.get(probe.key("Session", KEY)) is None
    assert await backend.load(KEY, touch=False) is None
    # A new session with no field is no record either.
    assert await backend.store(KEY, create({}))
    assert probe.get(probe.key("Session", KEY)) is None


@pytest.mark.anyio
async def test_a_field_written_meanwhile_keeps_an_emptied_record(project: str) -> None:
    first, second = DatastoreBackend(project=project), DatastoreBackend(project=project)
    try:
        await first.store(KEY, create({"a": b"1"}))
        assert await first.load(KEY, touch=True) == Record({"a": b"1"})  # request 1 loads
        assert await second.store(KEY, Write({"b": b"2"}))  # request 2 adds a field
        assert await first.store(KEY, Write({}, ["a"]))  # request 1 clears what it loaded
        assert await second.load(KEY, touch=False) == Record({"b": b"2"})
    finally:
        await close_loop_clients()


@pytest.mark.anyio
async def test_a_kept_flag_keeps_its_own_lifetime(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    await backend.store(KEY, create({"a": b"1"}))
    # Another request made it permanent for 1000 s; this one only changes a field.
    assert await backend.store(KEY, Write({}, (), True, 1000))
    age(probe, KEY, 10)
    assert await backend.store(KEY, Write({"b": b"2"}))
    stored = entity(probe, KEY)
    assert (stored["ttl"], stored["permanent"]) == (1000, True)
    assert timedelta(seconds=990) < stored["expires"] - now() <= timedelta(seconds=1000)
    assert await backend.load(KEY, touch=False) == Record({"a": b"1", "b": b"2"}, True)

    # And back: a request made it a browser session of 60 s, the next keeps that.
    assert await backend.store(KEY, Write({}, (), False, 60))
    age(probe, KEY, 5)
    assert await backend.store(KEY, Write({}, ["b"]))
    stored = entity(probe, KEY)
    assert (stored["ttl"], stored["permanent"]) == (60, False)
    assert timedelta(seconds=55) < stored["expires"] - now() <= timedelta(seconds=60)


@pytest.mark.anyio
async def test_fifty_concurrent_writers_of_different_fields_all_land(
    backend: DatastoreBackend,
) -> None:
    await backend.store(KEY, create({"base": b"0"}, permanent=True))
    results = await asyncio.gather(
        *(backend.store(KEY, Write({f"f{i}": str(i).encode()})) for i in range(50))
    )
    assert results == [True] * 50
    assert await backend.load(KEY, touch=False) == Record(
        {"base": b"0", **{f"f{i}": str(i).encode() for i in range(50)}}, True
    )


@pytest.mark.anyio
async def test_writers_in_two_processes_merge(project: str) -> None:
    # Two backends, two clients: two worker processes, whose transactions conflict on the
    # server (each queues only its own), one removing a field the others do not name.
    backends = [DatastoreBackend(project=project) for _ in range(2)]
    await backends[0].store(KEY, create({"base": b"0"}))

    async def set_field(i: int) -> None:
        write = Write({f"f{i}": str(i).encode()}, ["base"] if i == 3 else ())
        assert await backends[i % 2].store(KEY, write)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(set_field, i)
        record = await backends[1].load(KEY, touch=False)
    finally:
        await close_loop_clients()
    assert record == Record({f"f{i}": str(i).encode() for i in range(6)})


def test_writes_of_one_session_take_turns_across_event_loops(
    project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flask's bridge runs a request's session I/O on any of several loops, in its thread.
    backend = DatastoreBackend(project=project)
    begun: list[bytes] = []
    real_begin = backend._begin

    async def counted_begin(*args: Any) -> bytes:
        begun.append(b"")
        return await real_begin(*args)

    monkeypatch.setattr(backend, "_begin", counted_begin)

    def in_a_loop_of_its_own(job: Callable[[], Any]) -> Any:
        async def run() -> Any:
            try:
                return await job()
            finally:
                await close_loop_clients()
        return asyncio.run(run())

    in_a_loop_of_its_own(lambda: backend.store(KEY, create({"base": b"0"})))

    def writers(thread: int) -> list[bool]:
        async def all_of() -> list[bool]:
            return list(await asyncio.gather(*(
                backend.store(KEY, Write({f"t{thread}w{i}": b"1"})) for i in range(5)
            )))
        return in_a_loop_of_its_own(all_of)  # type: ignore[no-any-return]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(writers, range(4)))
    assert results == [[True] * 5] * 4
    record = in_a_loop_of_its_own(lambda: backend.load(KEY, touch=False))
    assert record == Record({"base": b"0", **{f"t{t}w{i}": b"1" for t in range(4)
                                              for i in range(5)}})
    # One transaction each: none met another of this process on the server.
    assert len(begun) == 20


@pytest.mark.anyio
async def test_turns_go_on_past_a_cancelled_waiter_and_a_stuck_holder() -> None:
    turns = datastore_module._Turns(patience=0.3)
    order: list[str] = []
    release = asyncio.Event()

    async def write(name: str, hold: asyncio.Event | None = None) -> None:
        async with turns.turn(KEY):
            order.append(name)
            if hold is not None:
                await hold.wait()

    holder = asyncio.create_task(write("holder", release))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(write("cancelled"))
    waiting = asyncio.create_task(write("waiting"))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    release.set()
    await asyncio.gather(holder, waiting, return_exceptions=True)
    assert order == ["holder", "waiting"]
    assert cancelled.cancelled()
    assert turns._queues == {}  # nothing left waiting or held

    # A holder that never lets go holds the next write up for the patience only.
    stuck = asyncio.create_task(write("stuck", asyncio.Event()))
    await asyncio.sleep(0)
    started = time.monotonic()
    await write("impatient")
    assert 0.25 < time.monotonic() - started < 2
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)
    assert turns._queues == {}


@pytest.mark.anyio
async def test_a_cancelled_write_releases_its_transaction(
    project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck, other = DatastoreBackend(project=project), DatastoreBackend(project=project)
    try:
        await other.store(KEY, create({"a": b"1"}))
        real_commit = stuck._commit

        async def hanging_commit(*args: Any, **kwargs: Any) -> None:
            if len(args) > 2 or kwargs.get("transaction"):
                await asyncio.sleep(30)
            await real_commit(*args, **kwargs)

        monkeypatch.setattr(stuck, "_commit", hanging_commit)
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.5):
                await stuck.store(KEY, Write({"b": b"2"}))
        await settle(stuck)  # its rollback, sent in the background
        # The read lock it held is gone: another process writes without waiting it out.
        started = time.monotonic()
        assert await other.store(KEY, Write({"c": b"3"}))
        assert time.monotonic() - started < 1.5
        assert await other.load(KEY, touch=False) == Record({"a": b"1", "c": b"3"})
    finally:
        await close_loop_clients()


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_trips_per_request(
    backend: DatastoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = rpcs(backend, monkeypatch)
    await backend.store(KEY, create({"a": b"1", "b": b"2"}))
    assert calls == ["commit"]  # a new session: one upsert

    calls.clear()  # a read-only request: one lookup, refreshing or not
    assert await backend.load(KEY, touch=True) is not None
    assert await backend.load(KEY, touch=False) is not None
    assert calls == ["lookup", "lookup"]

    calls.clear()  # a writing request: its load, and a transaction of three calls
    assert await backend.load(KEY, touch=True) is not None
    assert await backend.store(KEY, Write({"c": b"3"}, ["a"]))
    assert calls == ["lookup", "begin_transaction", "lookup", "commit"]

    calls.clear()  # logout: one delete
    await backend.delete(KEY)
    assert calls == ["commit"]

    calls.clear()  # a write that finds the record gone ends its transaction
    assert await backend.store(KEY, Write({"c": b"3"})) is False
    assert calls == ["begin_transaction", "lookup", "rollback"]


# -- expiry -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_expired_record_reads_as_none_and_takes_no_update(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    await backend.store(KEY, create({"a": b"1"}, ttl=1))
    await anyio.sleep(1.2)
    assert await backend.load(KEY, touch=True) is None
    assert await backend.load(KEY, touch=False) is None
    assert await backend.store(KEY, Write({"b": b"2"})) is False
    assert await backend.store(KEY, Write({}, (), True, 600)) is False
    # Still there, unchanged: deleting is the cleanup's (or a TTL policy's) job.
    stored = entity(probe, KEY)
    assert stored["expires"] < now()
    assert set(stored) == {"f:a"} | STORE_PROPERTIES


@pytest.mark.anyio
async def test_touch_writes_only_after_half_the_lifetime(
    backend: DatastoreBackend, probe: datastore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.store(KEY, create({"a": b"1"}, permanent=True, ttl=1000))
    calls = rpcs(backend, monkeypatch)
    for _ in range(3):
        assert await backend.load(KEY, touch=True) == Record({"a": b"1"}, True)
    assert calls == ["lookup"] * 3

    # 600 of 1000 s gone: the next touching read slides the expiry back to the full ttl.
    age(probe, KEY, 400)
    calls.clear()
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"}, True)
    assert calls == ["lookup"]
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"}, True)
    assert calls == ["lookup", "lookup", "begin_transaction", "lookup", "commit"]
    stored = entity(probe, KEY)
    assert stored["expires"] - now() > timedelta(seconds=990)
    assert dict(stored) == {"f:a": "1", "ttl": 1000, "permanent": True,
                            "expires": stored["expires"]}
    calls.clear()
    assert await backend.load(KEY, touch=True) is not None  # fresh again: no write
    assert calls == ["lookup"]


@pytest.mark.anyio
async def test_refresh_never_resurrects_or_overrides(
    backend: DatastoreBackend, probe: datastore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.store(KEY, create({"a": b"1"}, ttl=1000))
    real_lookup = backend._lookup
    meanwhile: list[Callable[[], Any]] = []

    async def lookup_then_interfere(*args: Any, **kwargs: Any) -> Any:
        found = await real_lookup(*args, **kwargs)
        if meanwhile:
            meanwhile.pop()()
        return found

    monkeypatch.setattr(backend, "_lookup", lookup_then_interfere)

    # Another process made the session permanent between our read and our refresh.
    age(probe, KEY, 9)

    def made_permanent() -> None:
        item = entity(probe, KEY)
        item.update(permanent=True, ttl=100_000, expires=now() + timedelta(seconds=100_000))
        probe.put(item)

    meanwhile.append(made_permanent)
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"})  # as read
    stored = entity(probe, KEY)
    assert (stored["permanent"], stored["ttl"]) == (True, 100_000)
    assert stored["expires"] - now() > timedelta(seconds=99_000)

    # Another process deleted the session (logout) between our read and our refresh.
    age(probe, KEY, 9)
    meanwhile.append(lambda: probe.delete(probe.key("Session", KEY)))
    assert await backend.load(KEY, touch=True) is not None  # it was there when read
    assert probe.get(probe.key("Session", KEY)) is None


# -- entities this store did not write --------------------------------------------------------


FUTURE = datetime.now(timezone.utc) + timedelta(days=1)
MISSING = object()
PICKLE = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94."


def ours(**changes: Any) -> dict[str, Any]:
    """Properties of this store's shape with ``changes`` (MISSING: the property left out)."""
    props = {"f:a": '"x"', "expires": FUTURE, "ttl": 600, "permanent": False, **changes}
    return {k: v for k, v in props.items() if v is not MISSING}


FOREIGN: dict[str, dict[str, Any]] = {
    "another library's": {"data": PICKLE, "expiry": FUTURE},
    "webapp2's": {"data": PICKLE, "updated": FUTURE},
    "no expires": ours(expires=MISSING),
    "expires a string": ours(expires="tomorrow"),
    "expires a number": ours(expires=1e12),
    "expires an integer": ours(expires=2_000_000_000),
    "ttl a string": ours(ttl="600"),
    "ttl negative": ours(ttl=-600),
    "ttl zero": ours(ttl=0),
    "ttl null": ours(ttl=None),
    "ttl a bool": ours(ttl=True),
    "ttl a fraction": ours(ttl=600.5),
    "no ttl": ours(ttl=MISSING),
    "permanent a number": ours(permanent=1),
    "permanent a string": ours(permanent="yes"),
    "no permanent": ours(permanent=MISSING),
    "field a number": ours(**{"f:a": 5}),
    "field a list": ours(**{"f:a": ["x"]}),
    "field null": ours(**{"f:a": None}),
    "field a time": ours(**{"f:a": FUTURE}),
    "an extra property": ours(user="ada"),
}


@pytest.mark.anyio
async def test_foreign_entities_read_as_no_session_and_only_a_new_session_replaces_them(
    backend: DatastoreBackend, probe: datastore.Client, caplog: pytest.LogCaptureFixture
) -> None:
    for case, properties in FOREIGN.items():
        key = "session:" + new_id()
        before = plant(probe, key, properties)
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
        assert await backend.store(key, Write({}, ["a"])) is False, case
        after = entity(probe, key)
        assert dict(after) == dict(before), case
        # A new session under that key replaces it whole.
        assert await backend.store(key, create({"b": b"1"}, ttl=60)) is True, case
        stored = entity(probe, key)
        assert set(stored) == {"f:b"} | STORE_PROPERTIES, case
        assert (stored["f:b"], stored["ttl"], stored["permanent"]) == ("1", 60, False), case
        assert await backend.load(key, touch=True) == Record({"b": b"1"}), case


@pytest.mark.anyio
async def test_bytes_that_are_no_text_are_a_value(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    # What the store writes for a value that is not UTF-8; the engine drops what it can't read.
    plant(probe, KEY, ours(**{"f:p": PICKLE, "f:a": '"fine"'}))
    assert await backend.load(KEY, touch=True) == Record({"p": PICKLE, "a": b'"fine"'})


# -- cleanup ----------------------------------------------------------------------------------


def dead(probe: datastore.Client, name: str, seconds_ago: float = 60) -> None:
    plant(probe, name, ours(expires=now() - timedelta(seconds=seconds_ago)))


def names(probe: datastore.Client) -> set[str]:
    query = probe.query(kind="Session")
    query.keys_only()
    return {item.key.name for item in query.fetch()}


@pytest.mark.anyio
async def test_new_sessions_start_a_cleanup_of_dead_entities(
    backend: DatastoreBackend, probe: datastore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        dead(probe, f"dead:{i}")
    plant(probe, "foreign:dead", {"expires": now() - timedelta(hours=1), "data": PICKLE})
    plant(probe, "live", ours())
    calls = rpcs(backend, monkeypatch)
    for i in range(datastore_module._CLEANUP_EVERY - 1):
        await backend.store(f"new:{i}", create({"a": b"1"}))
    assert "run_query" not in calls
    assert not backend._tasks
    await backend.store("new:last", create({"a": b"1"}))
    await settle(backend)
    assert calls.count("run_query") == 1
    # Only what is ours and dead is gone; another program's entity stays as it is.
    assert {n for n in names(probe) if not n.startswith("new:")} == {"foreign:dead", "live"}
    assert len([n for n in names(probe) if n.startswith("new:")]) == 100


@pytest.mark.anyio
async def test_cleanup_deletes_a_bounded_batch_and_gets_past_foreign_entities(
    backend: DatastoreBackend, probe: datastore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datastore_module, "_CLEANUP_BATCH", 4)
    # The oldest dead entities are another program's: a batch that finds only those must
    # not hold the cleanup back for ever.
    for i in range(4):
        plant(probe, f"foreign:{i}", {"expires": now() - timedelta(hours=2, minutes=i)})
    for i in range(6):
        dead(probe, f"dead:{i}", seconds_ago=60 - i)
    foreign = {f"foreign:{i}" for i in range(4)}
    await backend._cleanup()
    assert names(probe) == foreign | {f"dead:{i}" for i in range(6)}
    await backend._cleanup()
    left = names(probe) - foreign
    assert len(left) == 3  # four read, one of them foreign again (the newest)
    await backend._cleanup()
    assert names(probe) == foreign


@pytest.mark.anyio
@pytest.mark.parametrize("remover", ["cleanup", "purge"])
async def test_a_record_refreshed_after_the_query_is_spared(
    backend: DatastoreBackend, probe: datastore.Client, monkeypatch: pytest.MonkeyPatch,
    remover: str,
) -> None:
    dead(probe, "revived")
    dead(probe, "dead")
    client = backend.client
    real_query = client.run_query

    async def query_then_refresh(*args: Any, **kwargs: Any) -> Any:
        found = await real_query(*args, **kwargs)
        age(probe, "revived", 600)  # as a write that read it just before its expiry would
        return found

    monkeypatch.setattr(client, "run_query", query_then_refresh)
    if remover == "cleanup":
        await backend._cleanup()
    else:
        assert await purged(backend, batch=10, dry_run=False) == [1]
    assert names(probe) == {"revived"}


@pytest.mark.anyio
async def test_a_failed_cleanup_is_logged_and_runs_again_later(
    backend: DatastoreBackend, probe: datastore.Client, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead(probe, "dead")

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ServiceUnavailable("down")

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, "asyncsessions"):
        patch.setattr(backend.client, "run_query", unavailable)
        await backend._cleanup()
    assert "session cleanup in datastore://" in caplog.text
    assert not backend._cleaning
    await backend._cleanup()
    assert names(probe) == set()


# -- the CLI's count, expires_at and purge ----------------------------------------------------


async def purged(backend: DatastoreBackend, *, batch: int, dry_run: bool) -> list[int]:
    return [step async for step in backend.purge("session:", batch=batch, dry_run=dry_run)]


@pytest.mark.anyio
async def test_purge_removes_dead_records_in_bounded_batches(
    backend: DatastoreBackend, probe: datastore.Client
) -> None:
    for i in range(5):
        dead(probe, f"other:dead:{i}", seconds_ago=60 - i)  # any prefix: dead whatever its key
    plant(probe, "foreign:dead", {"expires": now() - timedelta(hours=1), "data": PICKLE})
    await backend.store(KEY, create({"a": b"1"}))
    steps = await purged(backend, batch=2, dry_run=True)
    assert sum(steps) == 5
    assert max(steps) <= 2
    assert len(names(probe)) == 7  # a dry run removes nothing
    steps = await purged(backend, batch=2, dry_run=False)
    assert sum(steps) == 5
    assert max(steps) <= 2
    assert names(probe) == {"foreign:dead", KEY}
    assert await purged(backend, batch=2, dry_run=False) == []
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})


@pytest.mark.anyio
async def test_count_and_expires_at(backend: DatastoreBackend, probe: datastore.Client) -> None:
    other = DatastoreBackend(project=backend._resolved().project)
    await backend.store(KEY, create({"a": b"1"}, ttl=600))
    await backend.store("session:" + "y" * 43, create({"a": b"1"}))
    await other.store("other:" + SID, create({"a": b"1"}))
    dead(probe, "session:dead")
    assert await backend.count("session:") == 2
    assert await backend.count("other:") == 1
    assert await backend.count("none:") == 0

    age(probe, KEY, 100)  # past half its lifetime: a touching load would restart it
    at = await backend.expires_at(KEY)
    assert at is not None
    assert abs(at - (time.time() + 100)) < 2
    assert await backend.expires_at(KEY) == at  # read, never touched
    assert await backend.expires_at("session:nothing") is None
    plant(probe, "session:foreign", {"expires": now(), "data": PICKLE})
    assert await backend.expires_at("session:foreign") is None


# -- options, clients, namespaces -------------------------------------------------------------


@pytest.mark.anyio
async def test_namespace_and_kind_keep_stores_apart(project: str) -> None:
    a = DatastoreBackend(project=project, namespace="tenant-a", kind="WebSession")
    b = DatastoreBackend(project=project, namespace="tenant-b", kind="WebSession")
    c = DatastoreBackend(project=project, namespace="tenant-a")
    probe = datastore.Client(project=project, namespace="tenant-a")
    try:
        await a.store(KEY, create({"who": b"a"}))
        await b.store(KEY, create({"who": b"b"}))
        assert await c.load(KEY, touch=False) is None
        assert await a.load(KEY, touch=False) == Record({"who": b"a"})
        assert await b.load(KEY, touch=False) == Record({"who": b"b"})
        assert entity(probe, KEY, kind="WebSession")["f:who"] == "a"
        for backend in (a, b, c):
            await backend._cleanup()  # queries its own namespace and kind
    finally:
        await close_loop_clients()
        close_sync(probe)


@pytest.mark.anyio
async def test_sync_client_settings_are_reused_per_loop(
    project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = datastore.Client(project=project, namespace="ns")
    monkeypatch.delenv("DATASTORE_EMULATOR_HOST")  # after the client chose the emulator
    backend = DatastoreBackend(client=given, kind="S")
    assert backend.location == f"datastore://{project}/(default)/ns/S"
    try:
        await backend.store(KEY, create({"a": b"1"}))
        assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
        found = given.get(given.key("S", KEY))
        assert found is not None
        assert found["f:a"] == "1"

        # Another event loop gets a client of its own, with the same settings.
        def other_loop() -> Record | None:
            async def read() -> Record | None:
                try:
                    assert backend.client is not mine
                    return await backend.load(KEY, touch=False)
                finally:
                    await close_loop_clients()
            return asyncio.run(read())

        mine = backend.client
        assert await anyio.to_thread.run_sync(other_loop) == Record({"a": b"1"})
    finally:
        await close_loop_clients()
        close_sync(given)


@pytest.mark.anyio
@pytest.mark.parametrize("options", [
    {"api_endpoint": "https://eu-datastore.example:443"},
    ClientOptions(api_endpoint="https://eu-datastore.example:443"),
], ids=["dict", "ClientOptions"])
async def test_a_clients_endpoint_and_options_are_kept(
    options: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATASTORE_EMULATOR_HOST", raising=False)
    given = anonymous(project="p", client_options=options)
    backend = DatastoreBackend(client=given)
    try:
        # Made, never used: the sync client's URL is the generated client's host.
        assert backend.client.api_endpoint == "eu-datastore.example:443"
        assert backend.client.transport._credentials is given._credentials
    finally:
        await close_loop_clients()


@pytest.mark.anyio
async def test_closing_closes_the_channel(backend: DatastoreBackend) -> None:
    await backend.delete(KEY)
    client = backend.client
    channel = client.transport.grpc_channel
    await close_loop_clients()
    with pytest.raises(Exception, match="closed"):
        await channel.unary_unary("/x/y")(b"")
    assert backend.client is not client
    assert await backend.load(KEY, touch=False) is None  # a fresh client works


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"client": object()}, TypeError, r"client must be .*datastore\.Client\(project="),
        ({"client": "my-project"}, TypeError, r"not str"),
        ({"project": 5}, TypeError, r"project must be a non-empty str"),
        ({"project": ""}, TypeError, r"project must be"),
        ({"database": b"x"}, TypeError, r"database must be"),
        ({"namespace": 5}, TypeError, r"namespace must be a str"),
        ({"namespace": "a/b"}, ValueError, r"namespace must be .*'a/b'"),
        ({"namespace": "__x__"}, ValueError, r"namespace must be"),
        ({"namespace": "n" * 101}, ValueError, r"namespace must be"),
        ({"kind": 5}, TypeError, r"kind must be a str"),
        ({"kind": ""}, ValueError, r"kind must be"),
        ({"kind": "__Session__"}, ValueError, r"kind must be"),
        ({"kind": "k" * 1501}, ValueError, r"kind must be"),
    ],
)
def test_bad_options(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        DatastoreBackend(**options)


def anonymous(**settings: Any) -> datastore.Client:
    return datastore.Client(credentials=AnonymousCredentials(), **settings)


@pytest.mark.parametrize(("options", "location"), [
    (dict, "datastore://(project from the environment)/(default)/(default)/Session"),
    (lambda: {"project": "p", "database": "d", "namespace": "n", "kind": "K"},
     "datastore://p/d/n/K"),
    (lambda: {"client": anonymous(project="q", database="db2")},
     "datastore://q/db2/(default)/Session"),
], ids=["environment", "options", "client"])
def test_location_names_project_database_namespace_and_kind(
    options: Callable[[], dict[str, Any]], location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATASTORE_EMULATOR_HOST", raising=False)
    # The clients are never used: nothing connects, nothing needs closing.
    assert DatastoreBackend(**options()).location == location


def test_client_with_settings_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'client': give client, or"):
        config(tmp_path, client=anonymous(project="p"), namespace="n")
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'kind'"):
        config(tmp_path, project="p", kind=3)


@pytest.mark.anyio
async def test_unreachable_emulator_fails_then_recovers(
    backend: DatastoreBackend, emulator: DatastoreEmulator
) -> None:
    async def load_within(seconds: float) -> Record | None:
        with anyio.fail_after(seconds):
            return await backend.load(KEY, touch=False)

    await backend.store(KEY, create({"a": b"1"}))
    with emulator.down(), pytest.raises((TimeoutError, ServiceUnavailable)):
        await load_within(3)
    # The emulator keeps no data across restarts; the same client reconnects.
    assert await backend.load(KEY, touch=False) is None
    await backend.store(KEY, create({"a": b"2"}))
    assert await backend.load(KEY, touch=False) == Record({"a": b"2"})


# -- through an app ---------------------------------------------------------------------------


def test_app_round_trip(make_driver: Any, project: str, probe: datastore.Client) -> None:
    d = make_driver({"SESSION_CONFIG": [{
        "cookie_name": "sid", "session_type": DatastoreBackend, "project": project,
        "key_prefix": "app/1:",
    }]})
    assert d.show() == {}
    d.post("set", {"user.id": 7, "__cart__": ["a"], "when": "now"})
    assert d.show() == {"user.id": "7", "__cart__": "['a']", "when": "'now'"}
    d.post("append", {"__cart__": "b"})
    d.post("del", {"when": None})
    d.post("permanent")
    assert d.show() == {"user.id": "7", "__cart__": "['a', 'b']"}
    sid = d.cookies()["sid"]
    stored = entity(probe, "app/1:" + sid)
    assert dict(stored) == {"f:user.id": "7", "f:__cart__": '["a","b"]', "permanent": True,
                            "ttl": stored["ttl"], "expires": stored["expires"]}
    d.post("clear")
    assert d.show() == {}
    assert "sid" not in d.cookies()
    assert probe.get(probe.key("Session", "app/1:" + sid)) is None


@pytest.mark.parametrize("case", ["another library's", "ttl a string", "field a number"])
def test_app_foreign_entity_is_a_fresh_session_with_a_warning(
    make_driver: Any, project: str, probe: datastore.Client, case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = make_driver({"SESSION_CONFIG": [{
        "cookie_name": "sid", "session_type": DatastoreBackend, "project": project,
        "key_prefix": "app:",
    }]})
    sid = new_id()
    before = plant(probe, "app:" + sid, FOREIGN[case])
    d.set_cookie("sid", sid)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        reply = d.get()
    assert (reply.status, reply.json) == (200, {})
    assert f"unreadable record {masked('app:' + sid)!r}" in caplog.text
    assert d.post("set", {"user": "ada"}).status == 200
    new = d.cookies()["sid"]
    assert new != sid  # a fresh session, never the foreign entity's id
    assert entity(probe, "app:" + new)["f:user"] == '"ada"'
    assert d.show() == {"user": "'ada'"}
    assert dict(entity(probe, "app:" + sid)) == dict(before)  # left as it was
