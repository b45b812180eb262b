"""Tests for the peewee session store, on SQLite files and a real PostgreSQL, sync and async."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import peewee
import pytest
from playhouse.db_url import connect
from playhouse.pwasyncio import AsyncPostgresqlDatabase, AsyncSqliteDatabase

from app_fixtures import store_config
from asyncsessions.backends.base import Record, Write, masked
from asyncsessions.backends.peewee import PeeweeBackend
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from storekit import v

pytestmark = pytest.mark.anyio

KINDS = ["sqlite", "sqlite_async", "postgresql", "postgresql_pool", "postgresql_async"]
DAY = 86400


@pytest.fixture(params=[
    pytest.param(k, marks=[pytest.mark.server("postgresql")] if k.startswith("postgresql") else [])
    for k in KINDS
])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database as a URL (for the sync probe and for the kinds db_url can make)."""
    if kind.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    return str(request.getfixturevalue("postgres_server").url)


def make_database(kind: str, url: str) -> Any:
    if kind == "sqlite_async":
        return AsyncSqliteDatabase(url.removeprefix("sqlite:///"))
    if kind == "postgresql_async":
        parts = urlsplit(url)
        return AsyncPostgresqlDatabase(parts.path.lstrip("/"), host=parts.hostname,
                                       port=parts.port, user=parts.username)
    if kind == "postgresql_pool":
        return connect(url.replace("postgresql://", "postgresql+pool://", 1))
    return connect(url)


@pytest.fixture
def table() -> str:
    return "t" + uuid.uuid4().hex[:12]


class Probe:
    """Plain SQL on the store's tables through a sync connection of its own."""

    def __init__(self, url: str, table: str) -> None:
        self.db = connect(url)
        self.sessions, self.fields = f'"{table}"', f'"{table}_fields"'
        self.p = self.db.param

    def run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.db.connection_context():
            cursor = self.db.execute_sql(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def session(self, key: str) -> tuple[bool, int, float] | None:
        rows = self.run(f'SELECT "permanent", "ttl", "expires" FROM {self.sessions} '
                        f'WHERE "key" = {self.p}', key)
        return None if not rows else (bool(rows[0][0]), rows[0][1], rows[0][2])

    def field_rows(self, key: str) -> dict[str, bytes]:
        rows = self.run(f'SELECT "name", "value" FROM {self.fields} WHERE "key" = {self.p}', key)
        return {bytes(name).decode(): bytes(value) for name, value in rows}

    def expires_in(self, key: str, seconds: float) -> None:
        """Move the session's expiry to ``seconds`` from now (negative: expired)."""
        self.run(f'UPDATE {self.sessions} SET "expires" = {self.p} WHERE "key" = {self.p}',
                 time.time() + seconds, key)

    def count(self) -> tuple[int, int]:
        return (self.run(f"SELECT COUNT(*) FROM {self.sessions}")[0][0],
                self.run(f"SELECT COUNT(*) FROM {self.fields}")[0][0])

    def close(self) -> None:
        self.run(f"DROP TABLE IF EXISTS {self.fields}")
        self.run(f"DROP TABLE IF EXISTS {self.sessions}")
        self.db.close()


@pytest.fixture
async def backend(kind: str, url: str, table: str) -> AsyncIterator[PeeweeBackend]:
    database = make_database(kind, url)
    yield PeeweeBackend(database=database, table=table)
    if kind.endswith("_async"):
        await database.close_pool()
    elif kind == "postgresql_pool":
        database.close_all()


@pytest.fixture
def probe(backend: PeeweeBackend, url: str, table: str) -> Iterator[Probe]:
    probe = Probe(url, table)
    yield probe
    probe.close()


@pytest.fixture
def key() -> str:
    return "session:" + new_id()


# -- the store contract -----------------------------------------------------------------------


async def test_expires_at_reads_the_expiry_without_touching(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    assert await backend.expires_at(key) is None
    await backend.store(key, Write({"a": v(1)}, (), False, 600, create=True))
    probe.expires_in(key, 100)  # past half its lifetime: a touching load would restart it
    at = await backend.expires_at(key)
    assert at is not None
    assert abs(at - (time.time() + 100)) < 2
    assert await backend.expires_at(key) == at


async def test_round_trip(backend: PeeweeBackend, probe: Probe, key: str) -> None:
    fields = {"user_id": v(42), "name": v("Zoë"), "odd name/..:'\"": v([1, 2]),
              "nul\0inside": v(None)}
    assert await backend.store(key, Write(fields, (), True, 60, create=True)) is True
    assert await backend.load(key, touch=False) == Record(fields, permanent=True)
    assert await backend.load("session:" + new_id(), touch=False) is None
    permanent, ttl, expires = probe.session(key) or (None, None, 0.0)
    assert (permanent, ttl) == (True, 60)
    assert expires == pytest.approx(time.time() + 60, abs=5)
    assert probe.field_rows(key) == fields


async def test_partial_update_keeps_the_fields_it_does_not_name(
    backend: PeeweeBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1), "b": v(2), "c": v(3)}, (), False, 60,
                                   create=True))
    assert await backend.store(key, Write({"b": v(20), "d": v(4)}, ["a", "missing"]))
    assert await backend.load(key, touch=False) == Record({"b": v(20), "c": v(3), "d": v(4)})


async def test_concurrent_writes_of_different_fields_all_survive(
    backend: PeeweeBackend, key: str
) -> None:
    await backend.store(key, Write({"f0": v(0)}, (), False, 60, create=True))

    async def set_field(i: int) -> None:
        assert await backend.store(key, Write({f"f{i}": v(i)}, ["gone"]))

    async with anyio.create_task_group() as tg:
        for i in range(1, 40):
            tg.start_soon(set_field, i)
    record = await backend.load(key, touch=False)
    assert record is not None
    assert record.fields == {f"f{i}": v(i) for i in range(40)}


async def test_update_of_a_deleted_session_is_refused_and_creates_nothing(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    await backend.delete(key)
    assert probe.session(key) is None
    assert probe.field_rows(key) == {}
    assert await backend.store(key, Write({"b": v(2)})) is False
    assert await backend.store(key, Write({"b": v(2)}, (), True, 60)) is False
    assert await backend.store(key, Write({}, ["a"])) is False
    assert probe.session(key) is None
    assert probe.field_rows(key) == {}
    assert await backend.load(key, touch=True) is None
    await backend.delete(key)  # a missing session is no error


async def test_update_of_an_expired_session_is_refused_and_leaves_it(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    probe.expires_in(key, -1)
    before = probe.session(key), probe.field_rows(key)
    assert await backend.load(key, touch=True) is None
    assert await backend.store(key, Write({"b": v(2)})) is False
    assert await backend.store(key, Write({}, ["a"])) is False
    assert (probe.session(key), probe.field_rows(key)) == before  # left to the cleanup


async def test_removing_the_last_field_deletes_the_session(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"a": v(1), "b": v(2)}, (), True, 60, create=True))
    assert await backend.store(key, Write({}, ["a"])) is True
    assert probe.session(key) is not None
    assert await backend.store(key, Write({}, ["b"])) is True
    assert probe.session(key) is None
    assert probe.field_rows(key) == {}
    assert await backend.load(key, touch=False) is None


async def test_field_written_concurrently_keeps_an_emptied_session(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    # Request A loaded {"a"}; request B adds "b" before A, emptying its session, writes.
    assert await backend.store(key, Write({"b": v(2)}))
    assert await backend.store(key, Write({}, ["a"])) is True
    assert await backend.load(key, touch=False) == Record({"b": v(2)})
    assert probe.field_rows(key) == {"b": v(2)}


async def test_emptying_racing_writers_never_loses_a_written_field(
    backend: PeeweeBackend, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    results: list[bool] = []

    async def write(i: int) -> None:
        results.append(await backend.store(key, Write({f"w{i}": v(i)})))

    async def empty() -> None:
        assert await backend.store(key, Write({}, ["a"])) is True

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(write, i)
        tg.start_soon(empty)
    # Each write either landed before the emptying (and keeps the session) or after it kept
    # the session alive: none is refused, and every written field is there.
    assert results == [True] * 10
    record = await backend.load(key, touch=False)
    assert record is not None
    assert record.fields == {f"w{i}": v(i) for i in range(10)}


async def test_write_without_the_flag_keeps_the_stored_one_and_its_own_ttl(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    # Another request made the session permanent, with the permanent lifetime.
    assert await backend.store(key, Write({}, (), True, 31 * DAY))
    probe.expires_in(key, 5)
    assert await backend.store(key, Write({"b": v(2)}))  # this request left the flag alone
    permanent, ttl, expires = probe.session(key) or (None, None, 0.0)
    assert (permanent, ttl) == (True, 31 * DAY)
    assert expires == pytest.approx(time.time() + 31 * DAY, abs=5)
    assert await backend.load(key, touch=False) == Record({"a": v(1), "b": v(2)}, True)


async def test_write_that_sets_the_flag_stores_it_with_its_ttl(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), True, 31 * DAY, create=True))
    assert await backend.store(key, Write({}, (), False, 100))
    permanent, ttl, expires = probe.session(key) or (None, None, 0.0)
    assert (permanent, ttl) == (False, 100)
    assert expires == pytest.approx(time.time() + 100, abs=5)


async def test_touch_restarts_the_sessions_own_lifetime(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"a": v(1)}, (), False, 1000, create=True))
    probe.expires_in(key, 10)
    session = probe.session(key)
    assert await backend.load(key, touch=False) == Record({"a": v(1)})
    assert probe.session(key) == session
    assert await backend.load(key, touch=True) == Record({"a": v(1)})
    _, _, expires = probe.session(key) or (None, None, 0.0)
    assert expires == pytest.approx(time.time() + 1000, abs=5)


async def test_new_id_replaces_whatever_is_under_it(
    backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    await backend.store(key, Write({"old": v(1), "kept?": v(2)}, (), True, 60, create=True))
    assert await backend.store(key, Write({"new": v(3)}, ["x"], False, 100, create=True))
    assert await backend.load(key, touch=False) == Record({"new": v(3)})
    permanent, ttl, _ = probe.session(key) or (None, None, 0.0)
    assert (permanent, ttl) == (False, 100)
    # A new id with nothing to write writes nothing.
    other = "session:" + new_id()
    assert await backend.store(other, Write({"a": v(1)}, ["a"], False, 60, create=True))
    assert probe.session(other) is None


async def test_many_fields_and_long_values(backend: PeeweeBackend, key: str) -> None:
    fields = {f"field {i}": v("x" * i) for i in range(700)}  # more than one statement's worth
    await backend.store(key, Write(fields, (), False, 60, create=True))
    assert await backend.store(key, Write({"big": v("y" * 200_000)}, list(fields)[:650]))
    record = await backend.load(key, touch=True)
    assert record is not None
    assert record.fields == {**dict(list(fields.items())[650:]), "big": v("y" * 200_000)}


async def test_expired_sessions_are_cleaned_up(
    kind: str, url: str, table: str, probe: Probe
) -> None:
    database = make_database(kind, url)
    backend = PeeweeBackend(database=database, table=table, cleanup_every=2)
    try:
        keys = ["session:" + new_id() for _ in range(5)]
        for key in keys:
            await backend.store(key, Write({"a": v(1), "b": v(2)}, (), False, 60, create=True))
        for key in keys[:3]:
            probe.expires_in(key, -1)
        assert probe.count() == (5, 10)
        await backend.store(keys[3], Write({"c": v(3)}))  # the 6th write: up to 4 go
        assert probe.count() == (2, 5)
        assert await backend.load(keys[4], touch=False) == Record({"a": v(1), "b": v(2)})
    finally:
        if kind.endswith("_async"):
            await database.close_pool()
        elif kind == "postgresql_pool":
            database.close_all()


async def test_tables_are_made_once_and_found_by_the_next_store(
    kind: str, url: str, table: str, probe: Probe, key: str
) -> None:
    database = make_database(kind, url)
    statements: list[str] = []
    database.query_hooks.append(lambda event: statements.append(event.sql))
    try:
        backends = [PeeweeBackend(database=database, table=table) for _ in range(2)]
        await backends[0].store(key, Write({"a": v(1)}, (), False, 60, create=True))
        creates = [s for s in statements if s.startswith("CREATE")]
        assert len(creates) == 3  # the two tables and the expiry index
        await backends[0].load(key, touch=True)
        assert [s for s in statements if s.startswith("CREATE")] == creates
        # Another store (another process) finds the tables there and uses them.
        assert await backends[1].load(key, touch=False) == Record({"a": v(1)})
    finally:
        if kind.endswith("_async"):
            await database.close_pool()
        elif kind == "postgresql_pool":
            database.close_all()


async def test_statements_per_call(kind: str, backend: PeeweeBackend, key: str) -> None:
    statements: list[str] = []
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    backend.database.query_hooks.append(lambda event: statements.append(event.sql.split()[0]))
    sqlite = kind.startswith("sqlite")
    await backend.load(key, touch=True)
    # PostgreSQL reads and refreshes in one statement; SQLite, in process, in two.
    assert statements == (["SELECT", "UPDATE"] if sqlite else ["WITH"])
    statements.clear()
    await backend.store(key, Write({"b": v(2)}))
    # BEGIN and COMMIT are not query-hooked on sync databases: they run on the cursor. The
    # SELECT reads the field names under the row's lock, to refuse a row it cannot read.
    assert [s for s in statements if s not in ("BEGIN", "COMMIT")] == [
        "UPDATE", "SELECT", "INSERT"]
    statements.clear()
    await backend.store(key, Write({"ünï": v(3)}))
    statements.clear()
    await backend.load(key, touch=True)
    # A name that is not ASCII: PostgreSQL refreshes once Python has read it.
    assert statements == (["SELECT", "UPDATE"] if sqlite else ["WITH", "UPDATE"])
    statements.clear()
    await backend.store(key, Write({}, ["a", "b", "ünï"]))
    assert [s for s in statements if s not in ("BEGIN", "COMMIT")] == [
        "UPDATE", "SELECT", "DELETE", "DELETE"]


# -- connections --------------------------------------------------------------------------------


class CountingSqlite(peewee.SqliteDatabase):
    """Counts the connections it opens (by the thread that opened each) and closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[int] = []
        self.closed = 0
        self.counter_lock = threading.Lock()

    def _connect(self) -> Any:
        conn = super()._connect()
        with self.counter_lock:
            self.opened.append(threading.get_ident())
        return conn

    def _close(self, conn: Any) -> None:
        with self.counter_lock:
            self.closed += 1
        super()._close(conn)


async def test_sync_database_opens_a_connection_per_call_in_its_thread(
    tmp_path: Path, table: str
) -> None:
    database = CountingSqlite(str(tmp_path / "sessions.db"))
    backend = PeeweeBackend(database=database, table=table)
    keys = ["session:" + new_id() for _ in range(8)]

    async def session(key: str) -> None:
        await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
        assert await backend.load(key, touch=True) == Record({"a": v(1)})
        await backend.delete(key)

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(session, key)
    assert len(database.opened) == database.closed == 3 * len(keys)
    assert threading.get_ident() not in database.opened  # never on the event loop's thread
    assert database.is_closed()  # and none left open


def test_sync_database_closes_its_connection_when_a_call_fails(tmp_path: Path) -> None:
    database = CountingSqlite(str(tmp_path / "sessions.db"))
    backend = PeeweeBackend(database=database)

    async def main() -> None:
        with pytest.raises(ValueError, match="permanent flag"):
            await backend.store("k", Write({"a": v(1)}, (), None, None, create=True))
        await backend.store("k", Write({"a": v(1)}, (), False, 60, create=True))
        database.execute_sql("DROP TABLE asyncsessions_fields")  # breaks the next write
        with pytest.raises(peewee.OperationalError):
            await backend.store("k", Write({"b": v(2)}))

    asyncio.run(main())
    database.close()
    assert len(database.opened) == database.closed


async def test_async_database_keeps_apart_from_the_requests_own_connection(
    kind: str, backend: PeeweeBackend, probe: Probe, key: str
) -> None:
    if not kind.endswith("_async"):
        pytest.skip("async databases only")
    database = backend.database
    await database.aexecute_sql("SELECT 1")  # the app's own connection in this task
    # The app's own transaction in this very task, left open over the store's calls.
    transaction = database.atomic()
    await transaction.__aenter__()
    try:
        await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
        assert await backend.load(key, touch=True) == Record({"a": v(1)})
        assert database.in_transaction()
        assert not database.is_closed()
    finally:
        await transaction.__aexit__(RuntimeError, RuntimeError("rolled back"), None)
    # The app's rollback was not the store's: the session was committed on its own.
    assert probe.field_rows(key) == {"a": v(1)}
    await database.aclose()


def test_async_database_refuses_a_second_live_event_loop(tmp_path: Path) -> None:
    database = AsyncSqliteDatabase(str(tmp_path / "sessions.db"))
    backend = PeeweeBackend(database=database)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        first.run_until_complete(
            backend.store("k", Write({"a": v(1)}, (), False, 60, create=True)))
        with pytest.raises(RuntimeError, match="give a sync database"):
            second.run_until_complete(backend.load("k", touch=False))
        assert first.run_until_complete(backend.load("k", touch=False)) == Record({"a": v(1)})
    finally:
        first.run_until_complete(database.close_pool())
        first.close()
        second.close()


# -- reading what another program left --------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "permanent", "value"),
    [("sixty", 0, b"1"), (0, 0, b"1"), (60, 2, b"1"), (60, "yes", b"1"), (60, 0, "text")],
)
async def test_sqlite_row_of_another_shape_reads_as_none_and_is_left(
    tmp_path: Path, table: str, key: str, caplog: pytest.LogCaptureFixture,
    ttl: Any, permanent: Any, value: Any,
) -> None:
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    backend = PeeweeBackend(database=connect(url), table=table)
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    probe = Probe(url, table)
    # SQLite keeps whatever it is given: a hand-edited row.
    probe.run(f'UPDATE "{table}" SET "ttl" = ?, "permanent" = ? WHERE "key" = ?',
              ttl, permanent, key)
    probe.run(f'UPDATE "{table}_fields" SET "value" = ? WHERE "key" = ?', value, key)
    before = probe.run(f'SELECT * FROM "{table}"'), probe.run(f'SELECT * FROM "{table}_fields"')
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert await backend.load(key, touch=True) is None
    assert f"unreadable record {masked(key)!r} read as no session" in caplog.text
    after = probe.run(f'SELECT * FROM "{table}"'), probe.run(f'SELECT * FROM "{table}_fields"')
    assert after == before  # a read never changes what it cannot read
    # Nor does an update: it is no session of ours, only a new id's write replaces it.
    assert await backend.store(key, Write({"b": v(2)})) is False
    assert await backend.store(key, Write({"b": v(2)}, ["a"], True, 600)) is False
    after = probe.run(f'SELECT * FROM "{table}"'), probe.run(f'SELECT * FROM "{table}_fields"')
    assert after == before
    assert await backend.store(key, Write({"b": v(2)}, (), False, 60, create=True))
    assert await backend.load(key, touch=False) == Record({"b": v(2)})


def _rows(probe: Probe, key: str) -> tuple[Any, ...]:
    p = probe.p
    return (probe.run(f'SELECT * FROM {probe.sessions} WHERE "key" = {p}', key),
            sorted((bytes(n), bytes(v)) for n, v in probe.run(
                f'SELECT "name", "value" FROM {probe.fields} WHERE "key" = {p}', key)))


@pytest.mark.parametrize("damage", ["name_not_utf8", "one_of_many_names_not_utf8",
                                    "ttl_zero", "ttl_negative", "no_fields"])
async def test_unreadable_session_is_neither_touched_nor_updated(
    backend: PeeweeBackend, probe: Probe, key: str, damage: str
) -> None:
    """Exactly the rows ``load`` rejects are left alone by reads and by updates."""
    await backend.store(key, Write({"a": v(1), "ünï": v(2)}, (), False, 600, create=True))
    p = probe.p
    if damage == "name_not_utf8":
        probe.run(f'DELETE FROM {probe.fields} WHERE "key" = {p}', key)
        probe.run(f'INSERT INTO {probe.fields} ("key", "name", "value") VALUES ({p}, {p}, {p})',
                  key, b"user_id\xff", b"x")
    elif damage == "one_of_many_names_not_utf8":
        probe.run(f'INSERT INTO {probe.fields} ("key", "name", "value") VALUES ({p}, {p}, {p})',
                  key, b"\xed\xa0\x80", b"x")  # a surrogate: not UTF-8 to Python
    elif damage == "no_fields":
        probe.run(f'DELETE FROM {probe.fields} WHERE "key" = {p}', key)
    else:
        probe.run(f'UPDATE {probe.sessions} SET "ttl" = {p} WHERE "key" = {p}',
                  0 if damage == "ttl_zero" else -5, key)
    probe.expires_in(key, 300)
    before = _rows(probe, key)
    for touch in (True, False):
        assert await backend.load(key, touch=touch) is None
        assert _rows(probe, key) == before, f"the read (touch={touch}) changed the row"
    assert await backend.store(key, Write({"b": v(3)})) is False
    assert await backend.store(key, Write({}, ["a"])) is False
    assert await backend.store(key, Write({"b": v(3)}, (), True, 900)) is False
    assert _rows(probe, key) == before, "a refused update changed the row"
    assert await backend.store(key, Write({"b": v(3)}, (), False, 60, create=True))
    assert await backend.load(key, touch=False) == Record({"b": v(3)})


@pytest.mark.parametrize("name", ["plain", "ünïcödé", "a\0b", "😀"])
async def test_touch_refreshes_a_readable_session_whatever_its_names(
    backend: PeeweeBackend, probe: Probe, key: str, name: str
) -> None:
    await backend.store(key, Write({name: v(1), "a": v(2)}, (), False, 600, create=True))
    probe.expires_in(key, 10)
    assert await backend.load(key, touch=True) == Record({name: v(1), "a": v(2)})
    session = probe.session(key)
    assert session is not None
    assert session[2] > time.time() + 500
    assert await backend.store(key, Write({"b": v(3)}))
    assert await backend.load(key, touch=False) == Record({name: v(1), "a": v(2), "b": v(3)})


# -- settings -----------------------------------------------------------------------------------


def build(tmp_path: Path, **entry: Any) -> PeeweeBackend:
    [store] = parse_config(
        {"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "peewee", **entry}]},
        instance_path=str(tmp_path),
    )
    backend = store.backend
    assert isinstance(backend, PeeweeBackend)
    return backend


def test_location_names_the_database_and_table_never_credentials(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    assert build(tmp_path, database=peewee.SqliteDatabase(str(path))).location == (
        f"sqlite:///{path} (table asyncsessions)")
    secret = "postgresql://alice:s3cret@db.internal:5433/app?sslmode=require&password=x"
    for database in [
        connect(secret),
        peewee.PostgresqlDatabase(secret),
        peewee.PostgresqlDatabase("app", host="db.internal", port=5433, user="alice",
                                  password="s3cret"),
        peewee.PostgresqlDatabase("host=db.internal port=5433 dbname=app password='s3 cret'"),
    ]:
        location = build(tmp_path, database=database, table="sess").location
        assert location == "postgresql://db.internal:5433/app (table sess)"
    assert build(tmp_path, database=peewee.PostgresqlDatabase("app")).location == (
        "postgresql:///app (table asyncsessions)")
    memory = AsyncSqliteDatabase(":memory:")
    assert build(tmp_path, database=memory).location.startswith("sqlite::memory: at 0x")


def test_two_stores_on_one_table_need_their_own_prefixes(tmp_path: Path) -> None:
    database = peewee.SqliteDatabase(str(tmp_path / "app.db"))
    config = {"SESSION_CONFIG": [
        {"cookie_name": "a", "session_type": "peewee", "database": database},
        {"cookie_name": "b", "session_type": "peewee", "database": database},
    ]}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[1\] 'key_prefix': .*sqlite:///"):
        parse_config(config, instance_path=str(tmp_path))
    config["SESSION_CONFIG"][1]["table"] = "other"
    parse_config(config, instance_path=str(tmp_path))


def test_an_initialized_proxy_is_accepted(tmp_path: Path) -> None:
    proxy = peewee.DatabaseProxy()
    database = peewee.SqliteDatabase(str(tmp_path / "app.db"))
    proxy.initialize(database)
    assert build(tmp_path, database=proxy).database is database


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({}, "session_type", "database is required"),
        ({"database": "sqlite:///x.db"}, "database", "must be a peewee Database, not builtins.str"),
        ({"database": peewee.MySQLDatabase("app")}, "database", "SQLite and PostgreSQL"),
        ({"database": peewee.SqliteDatabase(None)}, "database", "initialize the database"),
        ({"database": peewee.DatabaseProxy()}, "database", "not initialized"),
        ({"database": peewee.SqliteDatabase("x.db", thread_safe=False)}, "database",
         "must be thread_safe"),
        ({"database": peewee.SqliteDatabase(":memory:")}, "database", "in-memory"),
        ({"table": 'x"; DROP TABLE users; --'}, "table", "plain SQL name"),
        ({"table": "t" * 57}, "table", "at most 56"),
        ({"table": 7}, "table", "table must be a str"),
        ({"cleanup_every": -1}, "cleanup_every", ">= 0"),
        ({"cleanup_every": True}, "cleanup_every", "must be an int"),
        ({"key_prefix": "a\0b"}, "key_prefix", "NUL"),
    ],
)
def test_bad_options_are_named(
    tmp_path: Path, options: dict[str, Any], key: str, message: str
) -> None:
    if "database" not in options and key not in ("session_type",):
        options = {"database": peewee.SqliteDatabase(str(tmp_path / "app.db")), **options}
    with pytest.raises(ValueError, match=re.escape(f"SESSION_CONFIG[0] {key!r}: ")) as caught:
        build(tmp_path, **options)
    assert message in str(caught.value)


def test_session_type_is_registered(tmp_path: Path) -> None:
    backend = build(tmp_path, database=peewee.SqliteDatabase(str(tmp_path / "app.db")),
                    table="sessions2", cleanup_every=0)
    assert (backend.table, backend.cleanup_every) == ("sessions2", 0)
    assert type(backend).merges_fields is True


# -- through Flask and Quart ------------------------------------------------------------------


@pytest.mark.parametrize("dialect", [
    "sqlite", pytest.param("postgresql", marks=pytest.mark.server("postgresql")),
])
def test_through_the_app(
    make_driver: Any, request: pytest.FixtureRequest, tmp_path: Path, dialect: str
) -> None:
    entry = store_config(request, f"peewee_{dialect}", tmp_path)  # as the shared suites build it
    database, prefix = entry["database"], entry["key_prefix"]
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", **entry}]})
    assert d.post("set", {"user_id": 42, "cart": [1, 2]}).status == 200
    key = prefix + d.cookies()["sid"]
    probe = Probe(str(request.getfixturevalue("postgres_server").url) if dialect == "postgresql"
                  else f"sqlite:///{tmp_path / 'sessions.db'}", "asyncsessions")
    try:
        assert probe.field_rows(key) == {"user_id": v(42), "cart": v([1, 2])}
        statements: list[str] = []
        database.query_hooks.append(lambda event: statements.append(event.sql.split()[0]))
        assert d.show() == {"user_id": "42", "cart": "[1, 2]"}
        assert statements == (["WITH"] if dialect == "postgresql" else ["SELECT", "UPDATE"])
        d.post("append", {"cart": 3})
        d.post("del", {"user_id": None})
        assert d.show() == {"cart": "[1, 2, 3]"}
        d.post("permanent")
        permanent, ttl, _ = probe.session(key) or (None, None, 0.0)
        assert (permanent, ttl) == (True, 31 * DAY)
        d.post("clear")
        assert d.show() == {}
        assert probe.session(key) is None
        assert probe.field_rows(key) == {}
    finally:
        probe.db.close()


def test_async_database_through_quart(make_driver: Any, tmp_path: Path) -> None:
    if make_driver.framework != "quart":
        pytest.skip("an async database serves Quart apps")
    database = AsyncSqliteDatabase(str(tmp_path / "sessions.db"))
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": "peewee", "database": database}]})
    try:
        assert d.post("set", {"user_id": 42}).status == 200
        assert d.show() == {"user_id": "42"}
        d.post("regenerate", {"more": 1})
        assert d.show() == {"user_id": "42", "more": "1"}
        d.post("clear")
        assert d.show() == {}
    finally:
        d.loop.run_until_complete(database.close_pool())
