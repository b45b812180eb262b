"""Tests for the SQLAlchemy session store, on real PostgreSQL and MariaDB servers and SQLite.

What the store keeps is looked at through an engine of the test's own (``Probe``), never
through the store under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import flask
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from asyncsessions import Session
from asyncsessions.backends.base import Record, Write, close_loop_clients, masked
from asyncsessions.backends.sqlalchemy import SQLAlchemyBackend, _async_url
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from storekit import v

DIALECTS = [
    pytest.param("postgresql", marks=pytest.mark.server("postgresql")),
    pytest.param("mysql", marks=pytest.mark.server("mariadb")),
    "sqlite",
]


@pytest.fixture(params=DIALECTS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    server = request.getfixturevalue(
        "postgres_server" if request.param == "postgresql" else "mariadb_server"
    )
    return str(server.url)


@pytest.fixture
def table() -> str:
    """A table of the test's own: row counts and shapes are then the test's alone."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def backend(url: str, table: str) -> AsyncIterator[SQLAlchemyBackend]:
    yield SQLAlchemyBackend(url=url, table=table)
    await close_loop_clients()


def new_key() -> str:
    return "session:" + new_id()


class Probe:
    """Raw SQL on the store's table, by the database's clock, over an engine of its own."""

    def __init__(self, backend: SQLAlchemyBackend) -> None:
        self.dialect = backend.dialect
        self.engine = create_async_engine(backend.url, isolation_level="AUTOCOMMIT")
        preparer = backend.url.get_dialect()().identifier_preparer
        self.table = preparer.quote(backend.table)

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.text(sql.format(t=self.table)), params)
            return list(result.all()) if result.returns_rows else []

    def later(self, seconds: str) -> str:
        """SQL for the database's now plus ``seconds`` (an SQL number)."""
        if self.dialect == "postgresql":
            return f"now() + ({seconds}) * interval '1 second'"
        if self.dialect == "mysql":
            return f"TIMESTAMPADD(MICROSECOND, ROUND(({seconds}) * 1000000), UTC_TIMESTAMP(6))"
        return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({seconds}) || ' seconds')"

    async def seconds_left(self, key: str) -> float:
        """Seconds until the row expires, by the database's clock."""
        if self.dialect == "postgresql":
            left = "EXTRACT(EPOCH FROM expires - now())"
        elif self.dialect == "mysql":
            left = "TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires) / 1000000"
        else:
            left = "(julianday(expires) - julianday('now')) * 86400"
        [(seconds,)] = await self.rows(f"SELECT {left} FROM {{t}} WHERE id = :id", id=key)
        return float(seconds)

    async def expire_in(self, key: str, seconds: float) -> None:
        await self.rows(
            f"UPDATE {{t}} SET expires = {self.later(':s')} WHERE id = :id", id=key, s=seconds
        )

    async def plant(self, key: str, data: str, permanent: Any = 1, ttl: Any = 600) -> None:
        pg = self.dialect == "postgresql"
        await self.rows(
            "INSERT INTO {t} (id, data, permanent, ttl, expires) VALUES (:id,"
            f" {'CAST(:data AS jsonb)' if pg else ':data'}, :p, :ttl, {self.later('600')})",
            id=key, data=data, p=bool(permanent) if pg else permanent, ttl=ttl,
        )

    async def dump(self, key: str) -> Any:
        data = "CAST(data AS text)" if self.dialect == "postgresql" else "data"
        rows = await self.rows(
            f"SELECT {data}, permanent, ttl, expires FROM {{t}} WHERE id = :id", id=key
        )
        return tuple(rows[0]) if rows else None

    async def count(self) -> int:
        [(count,)] = await self.rows("SELECT COUNT(*) FROM {t}")
        return int(count)


@pytest.fixture
async def probe(backend: SQLAlchemyBackend) -> AsyncIterator[Probe]:
    await backend.delete(new_key())  # the store makes its table first
    probe = Probe(backend)
    yield probe
    await probe.engine.dispose()


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    ("postgresql://u:pw@db/app", "postgresql+asyncpg://u:pw@db/app"),
    ("postgresql+psycopg2://u@db/app", "postgresql+asyncpg://u@db/app"),
    ("postgresql://u@db/app?sslmode=require", "postgresql+asyncpg://u@db/app?ssl=require"),
    ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
    ("mysql://u:pw@db/app", "mysql+aiomysql://u:pw@db/app?charset=utf8mb4"),
    ("mysql+pymysql://u@db/app?charset=utf8", "mysql+aiomysql://u@db/app?charset=utf8"),
    ("mariadb://u@db/app", "mariadb+aiomysql://u@db/app?charset=utf8mb4"),
    ("sqlite:///sessions.db", "sqlite+aiosqlite:///sessions.db"),
    ("sqlite+pysqlite:////var/s.db", "sqlite+aiosqlite:////var/s.db"),
])
def test_a_sync_url_gets_an_asyncio_driver(given: str, expected: str) -> None:
    assert _async_url(given).render_as_string(hide_password=False) == expected


def test_the_second_choice_driver_is_taken_when_the_first_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    missing = {"asyncpg", "aiomysql"}
    # The second choices need not be installed: only the URL they would get is checked.
    present = {"psycopg", "asyncmy"}

    def spec(name: str, *args: Any) -> Any:
        if name in missing:
            return None
        return object() if name in present else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", spec)
    assert _async_url("postgresql://u@db/app").drivername == "postgresql+psycopg"
    assert _async_url("mysql://u@db/app").drivername == "mysql+asyncmy"
    missing.add("psycopg")
    present.discard("psycopg")
    with pytest.raises(ValueError, match="no asyncio driver for postgresql is installed: "
                                         "pip install asyncpg or psycopg"):
        _async_url("postgresql://u@db/app")
    missing.add("aiosqlite")
    with pytest.raises(ValueError, match="the aiosqlite driver is not installed"):
        _async_url("sqlite+aiosqlite:///s.db")


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite://", "in-memory SQLite"),
    ("sqlite:///:memory:", "in-memory SQLite"),
    ("sqlite:///file:s?mode=memory&uri=true", "in-memory SQLite"),
    ("oracle://u@db/app", "oracle is not supported"),
    ("not a url", "url: "),
])
def test_bad_urls_are_refused_at_init(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SQLAlchemyBackend(url=url)


@pytest.mark.parametrize(("options", "key", "message"), [
    ({}, "session_type", "url or engine is required"),
    ({"url": "sqlite:///a.db", "engine": sa.create_engine("sqlite:///b.db")}, "url", "not both"),
    ({"url": 5}, "url", "url must be a str"),
    ({"engine": object()}, "engine", "engine must be a SQLAlchemy AsyncEngine"),
    ({"url": "sqlite:///a.db", "table": ""}, "table", "table must be"),
    ({"url": "sqlite:///a.db", "schema": 1}, "schema", "schema must be"),
    ({"url": "sqlite:///a.db", "create_table": "yes"}, "create_table", "True or False"),
    ({"url": "sqlite:///a.db", "cleanup_every": -1}, "cleanup_every", ">= 0"),
])
def test_bad_options_are_named(options: dict[str, Any], key: str, message: str,
                               tmp_path: Path) -> None:
    config = {"SESSION_CONFIG": [{"cookie_name": "s", "session_type": "sqlalchemy", **options}]}
    with pytest.raises(ValueError, match=rf"SESSION_CONFIG\[0\] '{key}': .*{message}"):
        parse_config(config, instance_path=str(tmp_path))


def test_key_prefixes_with_nul_are_refused(tmp_path: Path) -> None:
    backend = SQLAlchemyBackend(url=f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(ValueError, match="NUL"):
        backend.check_key_prefix("a\0:")
    with pytest.raises(ValueError, match="255"):
        backend.check_key_prefix("p" * (255 - 43 + 1))
    backend.check_key_prefix("p" * (255 - 43))


def test_location_names_server_database_and_table_never_the_password(tmp_path: Path) -> None:
    backend = SQLAlchemyBackend(url="mysql+pymysql://app:s3cret@db.internal:3307/shop?ssl=x",
                                table="web_sessions")
    assert backend.location == "mysql://app@db.internal:3307/shop?table=web_sessions"
    backend = SQLAlchemyBackend(url="postgresql://app:s3cret@db/shop", schema="web")
    assert backend.location == "postgresql://app@db/shop?table=web.sessions"
    assert "s3cret" not in repr(vars(backend).get("location"))
    path = tmp_path / "s.db"
    assert SQLAlchemyBackend(url=f"sqlite:///{path}").location == f"sqlite:///{path}?table=sessions"


def test_two_stores_on_one_table_need_their_own_prefixes(tmp_path: Path) -> None:
    entry = {"session_type": "sqlalchemy", "url": f"sqlite:///{tmp_path / 's.db'}",
             "key_prefix": "s:"}
    app = flask.Flask(__name__)
    app.config["SESSION_CONFIG"] = [{"cookie_name": "a", **entry}, {"cookie_name": "b", **entry}]
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[1\] 'key_prefix'"):
        Session(app)
    app.config["SESSION_CONFIG"][1]["table"] = "other"  # another table: no collision
    Session(app)


# -- the store on each database ---------------------------------------------------------------


@pytest.mark.anyio
async def test_expires_at_is_the_rows_expiry_in_unix_time(backend: SQLAlchemyBackend) -> None:
    key = new_key()
    assert await backend.expires_at(key) is None
    assert await backend.store(key, Write({"a": v(1)}, (), False, 600, create=True))
    at = await backend.expires_at(key)
    assert at is not None
    assert abs(at - (time.time() + 600)) < 2  # the database's clock is this machine's
    assert await backend.expires_at(key) == at  # read, never touched


@pytest.mark.anyio
async def test_names_and_values_round_trip(backend: SQLAlchemyBackend) -> None:
    fields = {name: v(name) for name in ["", "a\0b", "%", "%00", "%25", "ü😀", "\u2028", "'\""]}
    fields["nul"] = v("\0")
    fields["large"] = v(secrets.token_hex(50_000))
    key = new_key()
    assert await backend.store(key, Write(fields, (), True, 60, create=True))
    assert await backend.load(key, touch=False) == Record(fields, True)
    assert await backend.load(key, touch=True) == Record(fields, True)
    assert await backend.store(key, Write({"%00": v(1)}, ["a\0b", "%25"]))
    del fields["a\0b"], fields["%25"]
    assert await backend.load(key, touch=False) == Record({**fields, "%00": v(1)}, True)


@pytest.mark.anyio
async def test_ids_are_compared_exactly(backend: SQLAlchemyBackend) -> None:
    # MySQL compares text without case (and trailing spaces) by default: ids are bytes there.
    key = new_key()
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    assert await backend.load(key.swapcase(), touch=False) is None
    assert await backend.store(key.swapcase(), Write({"b": v(1)})) is False
    await backend.delete(key.swapcase())
    assert await backend.load(key, touch=False) == Record({"a": v(1)})


@pytest.mark.anyio
async def test_an_update_of_a_deleted_record_is_refused(
    backend: SQLAlchemyBackend, probe: Probe
) -> None:
    key = new_key()
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    await backend.delete(key)
    for write in [Write({"a": v(2)}), Write({"a": v(2)}, (), True, 60), Write({}, ["a"])]:
        assert await backend.store(key, write) is False
    assert await probe.dump(key) is None
    assert await probe.count() == 0


@pytest.mark.anyio
async def test_removing_the_last_field_deletes_the_row_but_a_new_field_keeps_it(
    backend: SQLAlchemyBackend, probe: Probe
) -> None:
    key = new_key()
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    assert await backend.store(key, Write({"b": v(2)}))  # another request added a field
    assert await backend.store(key, Write({}, ["a"]))  # this one removes what it loaded
    assert await backend.load(key, touch=False) == Record({"b": v(2)})
    assert await backend.store(key, Write({}, ["b", "never"]))
    assert await probe.dump(key) is None  # deleted, not left empty
    assert await backend.store(key, Write({"late": v(1)})) is False


@pytest.mark.anyio
async def test_concurrent_removals_of_the_last_fields_leave_no_session(
    backend: SQLAlchemyBackend, probe: Probe
) -> None:
    for _ in range(10):
        key = new_key()
        await backend.store(key, Write({"a": v(1), "b": v(2)}, (), False, 60, create=True))
        results = await asyncio.gather(backend.store(key, Write({}, ["a"])),
                                       backend.store(key, Write({}, ["b"])))
        assert results == [True, True]
        assert await backend.load(key, touch=True) is None
        assert await backend.store(key, Write({"c": v(3)})) is False
        dump = await probe.dump(key)
        # Deleted, or (when both removals passed their delete first) marked expired and empty.
        assert dump is None or (dump[0] in ("{}", "{ }") and await probe.seconds_left(key) <= 0)


@pytest.mark.anyio
async def test_an_unchanged_flag_keeps_the_stored_one_and_its_lifetime(
    backend: SQLAlchemyBackend, probe: Probe
) -> None:
    key = new_key()
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    assert await backend.store(key, Write({}, (), True, 900))  # another request: permanent
    await probe.expire_in(key, 5)
    assert await backend.store(key, Write({"b": v(2)}))  # this one left the flag alone
    assert await backend.load(key, touch=False) == Record({"a": v(1), "b": v(2)}, True)
    assert 895 < await probe.seconds_left(key) <= 900  # the record's own lifetime, from now
    await probe.expire_in(key, 5)
    assert await backend.load(key, touch=True) == Record({"a": v(1), "b": v(2)}, True)
    assert 895 < await probe.seconds_left(key) <= 900


@pytest.mark.anyio
async def test_expiry_is_by_the_databases_clock(
    backend: SQLAlchemyBackend, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    # The app's clock a day off: the store never asks it.
    monkeypatch.setattr(time, "time", lambda: 1e9)
    key = new_key()
    await backend.store(key, Write({"a": v(1)}, (), False, 600, create=True))
    assert 595 < await probe.seconds_left(key) <= 600
    await probe.expire_in(key, 0.5)
    assert await backend.load(key, touch=False) == Record({"a": v(1)})
    await probe.expire_in(key, -0.01)
    assert await backend.load(key, touch=False) is None
    assert await backend.load(key, touch=True) is None
    assert await backend.store(key, Write({"b": v(1)})) is False
    assert await probe.seconds_left(key) < 0  # not touched, not revived


@pytest.mark.anyio
async def test_huge_lifetimes_are_cut_to_what_dates_can_hold(
    backend: SQLAlchemyBackend, probe: Probe
) -> None:
    key = new_key()
    await backend.store(key, Write({"a": v(1)}, (), True, 10**15, create=True))
    assert await backend.load(key, touch=True) == Record({"a": v(1)}, True)
    assert await probe.seconds_left(key) > 3000 * 365 * 86400


@pytest.mark.anyio
async def test_fifty_concurrent_writers_of_different_fields_all_land(
    url: str, table: str
) -> None:
    # Two stores, each with its own engine and connections, stand in for two processes.
    backends = [SQLAlchemyBackend(url=url, table=table) for _ in range(2)]
    key = new_key()
    try:
        await backends[0].store(key, Write({"base": v(0)}, (), True, 600, create=True))
        results = await asyncio.gather(*(
            backends[i % 2].store(key, Write({f"f{i}": v(i)})) for i in range(50)
        ))
        record = await backends[1].load(key, touch=False)
    finally:
        await close_loop_clients()
    assert results == [True] * 50
    assert record == Record({"base": v(0), **{f"f{i}": v(i) for i in range(50)}}, True)


@pytest.mark.anyio
async def test_rows_this_store_cannot_read_read_as_none_and_are_left_alone(
    backend: SQLAlchemyBackend, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    planted = {
        "a value that is no string": ('{"user_id": 42}', 1, 600),
        "an array, not an object": ('["a"]', 1, 600),
        "a zero ttl": ('{"a": "1"}', 1, 0),
    }
    if probe.dialect != "postgresql":  # a boolean column refuses it
        planted["a flag of 2"] = ('{"a": "1"}', 2, 600)
    if probe.dialect == "sqlite":  # MySQL's and MariaDB's JSON columns refuse it
        planted["not JSON"] = ("\x82\xa7user_id*", 1, 600)
    for why, (data, permanent, ttl) in planted.items():
        key = new_key()
        await probe.plant(key, data, permanent, ttl)
        before = await probe.dump(key)
        for touch in (False, True):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="asyncsessions"):
                assert await backend.load(key, touch=touch) is None, why
            assert f"unreadable record {masked(key)!r}" in caplog.text, why
        assert await backend.store(key, Write({"a": v(1)})) is False, why
        assert await backend.store(key, Write({}, ["a"])) is False, why
        assert await backend.store(key, Write({"a": v(1)}, (), True, 60)) is False, why
        assert await probe.dump(key) == before, why
        assert await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
        assert await backend.load(key, touch=False) == Record({"a": v(1)}), why


@pytest.mark.anyio
async def test_cleanup_deletes_dead_rows_in_bounded_batches(
    url: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = SQLAlchemyBackend(url=url, table=table, cleanup_every=3)
    live = new_key()
    await backend.store(live, Write({"a": v(1)}, (), False, 600, create=True))
    probe = Probe(backend)
    try:
        dead = [(new_key(),) for _ in range(1200)]
        async with probe.engine.connect() as conn:
            await conn.execute(sa.text(
                f"INSERT INTO {probe.table} (id, data, permanent, ttl, expires)"
                f" VALUES (:id, {'CAST(:d AS jsonb)' if probe.dialect == 'postgresql' else ':d'},"
                f" {'true' if probe.dialect == 'postgresql' else '1'}, 60, {probe.later('-1')})"
            ), [{"id": key, "d": '{"a": "1"}'} for (key,) in dead])
        assert await probe.count() == 1201
        assert await backend.store(live, Write({"b": v(2)}))  # the 2nd write: no cleanup
        assert await probe.count() == 1201
        assert await backend.store(live, Write({"c": v(3)}))  # the 3rd: one batch
        assert await probe.count() == 701
        for _ in range(6):
            assert await backend.store(live, Write({"d": v(4)}))
        assert await probe.count() == 1  # two more batches; the live row stays
        assert await backend.load(live, touch=False) == Record(
            {"a": v(1), "b": v(2), "c": v(3), "d": v(4)}
        )
        # A cleanup that fails is logged; the write it follows stands.
        backend._sql = dataclasses.replace(backend._sql, cleanup=sa.text("DELETE FROM nowhere"))
        with caplog.at_level(logging.WARNING, logger="asyncsessions"):
            for _ in range(3):
                assert await backend.store(live, Write({"e": v(5)}))
        assert "cleanup of expired rows failed" in caplog.text
        assert (await backend.load(live, touch=False) or Record({})).fields["e"] == v(5)
    finally:
        await probe.engine.dispose()
        await close_loop_clients()


# -- the table --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_table_of_another_shape_raises_one_clear_error(
    url: str, table: str
) -> None:
    # What Flask-Session 0.8 makes for its SQLAlchemy store.
    metadata = sa.MetaData()
    sa.Table(table, metadata,
             sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("session_id", sa.String(255), unique=True),
             sa.Column("data", sa.LargeBinary),
             sa.Column("expiry", sa.DateTime))
    owner = create_async_engine(_async_url(url))
    async with owner.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(sa.text(f"INSERT INTO {table} (id, session_id) VALUES (1, 'x')"))
    backend = SQLAlchemyBackend(url=url, table=table)
    message = (rf"table '{table}' at .* is not an asyncsessions table \(its columns: id, "
               r"session_id, data, expiry; .*\): set table= to another name")
    try:
        for call in [backend.load(new_key(), touch=True), backend.store(new_key(), Write(
                {"a": v(1)}, (), False, 60, create=True)), backend.delete(new_key())]:
            with pytest.raises(RuntimeError, match=message):
                await call
        async with owner.connect() as conn:
            assert (await conn.execute(sa.text(f"SELECT id, session_id FROM {table}"))).all() == [
                (1, "x")]
    finally:
        await owner.dispose()
        await close_loop_clients()


@pytest.mark.anyio
async def test_without_create_table_a_missing_table_is_an_error(url: str, table: str) -> None:
    backend = SQLAlchemyBackend(url=url, table=table, create_table=False)
    try:
        with pytest.raises(RuntimeError, match=f"table '{table}' does not exist at .*create"):
            await backend.load(new_key(), touch=False)
        # Made by a migration meanwhile: the store goes on without a restart.
        await SQLAlchemyBackend(url=url, table=table).delete(new_key())
        assert await backend.load(new_key(), touch=False) is None
    finally:
        await close_loop_clients()


@pytest.mark.anyio
async def test_two_stores_with_the_same_table_in_one_process(url: str, table: str) -> None:
    # Each has its own MetaData: no "Table 'sessions' is already defined".
    first, second = (SQLAlchemyBackend(url=url, table=table) for _ in range(2))
    key = new_key()
    try:
        await asyncio.gather(first.delete(new_key()), second.delete(new_key()))
        await first.store(key, Write({"a": v(1)}, (), False, 60, create=True))
        assert await second.load(key, touch=True) == Record({"a": v(1)})
    finally:
        await close_loop_clients()


def test_two_apps_with_the_same_table_in_one_process(url: str, table: str) -> None:
    apps = []
    for _ in range(2):
        app = flask.Flask(__name__)
        app.secret_key = "test"
        app.config["SESSION_CONFIG"] = [
            {"cookie_name": "s", "session_type": "sqlalchemy", "url": url, "table": table}
        ]
        Session(app)

        @app.post("/<name>")
        def put(name: str) -> str:
            flask.session[name] = 1
            return ""

        @app.get("/")
        def get() -> str:
            return ",".join(sorted(flask.session))

        apps.append(app)
    one, two = (app.test_client() for app in apps)
    one.post("/a")
    cookie = one.get_cookie("s")
    assert cookie is not None
    two.set_cookie("s", cookie.value)
    two.post("/b")
    assert one.get("/").text == two.get("/").text == "a,b"


# -- engines ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_async_engine_lends_its_url_and_is_never_used(url: str, table: str) -> None:
    given = create_async_engine(_async_url(url))
    backend = SQLAlchemyBackend(engine=given, table=table)
    assert backend.url == given.url
    assert backend.url.password == make_url(url).password  # kept for connecting
    key = new_key()
    try:
        await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
        assert await backend.load(key, touch=True) == Record({"a": v(1)})
        assert backend.client.engine is not given
        assert given.sync_engine.pool.checkedin() == 0  # never connected
    finally:
        await close_loop_clients()
        await given.dispose()


def test_a_sync_engine_lends_its_url(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    backend = SQLAlchemyBackend(engine=engine)
    assert backend.url.drivername == "sqlite+aiosqlite"
    assert backend.url.database == str(tmp_path / "s.db")
    pytest.importorskip("pymysql")
    engine = sa.create_engine("mysql+pymysql://app:pw@db/shop")
    assert SQLAlchemyBackend(engine=engine).url.render_as_string(hide_password=False) == (
        "mysql+aiomysql://app:pw@db/shop?charset=utf8mb4")


def test_each_event_loop_gets_its_own_engine(url: str, table: str) -> None:
    backend = SQLAlchemyBackend(url=url, table=table)
    key = new_key()
    engines = []

    async def use(write: bool) -> Record | None:
        if write:
            await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
        record = await backend.load(key, touch=True)
        engines.append(backend.client.engine)
        await close_loop_clients()
        return record

    assert asyncio.run(use(True)) == Record({"a": v(1)})
    assert asyncio.run(use(False)) == Record({"a": v(1)})  # the first loop is closed
    assert engines[0] is not engines[1]
    assert all(engine.sync_engine.pool.checkedin() == 0 for engine in engines)  # disposed


@pytest.fixture
def flask_sqlalchemy() -> Any:
    return pytest.importorskip("flask_sqlalchemy")


def sync_url(url: str) -> str:
    """``url`` with a sync driver that is installed, for Flask-SQLAlchemy's own engine."""
    parsed = make_url(url)
    drivers = {"postgresql": ["psycopg", "psycopg2"], "mysql": ["pymysql"], "sqlite": ["pysqlite"]}
    for driver in drivers[parsed.get_backend_name()]:
        try:
            parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}").get_dialect(
            ).import_dbapi()
        except ImportError:
            continue
        return parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}").render_as_string(
            hide_password=False)
    pytest.skip(f"no sync driver for {parsed.get_backend_name()} (Flask-SQLAlchemy needs one)")


def test_a_flask_sqlalchemy_instance_lends_its_url(
    flask_sqlalchemy: Any, url: str, table: str
) -> None:
    db = flask_sqlalchemy.SQLAlchemy()
    with pytest.raises(ValueError, match=r"no app yet: call db\.init_app"):
        SQLAlchemyBackend(engine=db)
    url = sync_url(url)
    app = flask.Flask(__name__)
    app.secret_key = "test"
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db.init_app(app)

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = f"{table}_items"
        id = sa.Column(sa.Integer, primary_key=True)

    with app.app_context():
        db.create_all()
        assert SQLAlchemyBackend(engine=db).url == _async_url(db.engine.url)
    # Outside an app context, as init_app usually runs.
    app.config["SESSION_CONFIG"] = [
        {"cookie_name": "s", "session_type": "sqlalchemy", "engine": db, "table": table}
    ]
    Session(app)

    @app.post("/")
    def put() -> str:
        flask.session["items"] = db.session.scalar(sa.select(sa.func.count()).select_from(Item))
        return ""

    @app.get("/")
    def get() -> str:
        return str(flask.session.get("items"))

    client = app.test_client()
    client.post("/")
    assert client.get("/").text == "0"
    other = flask.Flask(__name__)
    other.config["SQLALCHEMY_DATABASE_URI"] = url
    db.init_app(other)
    with pytest.raises(ValueError, match="several apps"):
        SQLAlchemyBackend(engine=db)
    with app.app_context():
        db.engine.dispose()
    with other.app_context():
        db.engine.dispose()


# -- round trips ------------------------------------------------------------------------------


class _Proxy:
    """A loopback TCP proxy counting round trips: a client message after the server's."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.round_trips = 0
        #: Seconds each reply from the server is held back.
        self.delay = 0.0

    async def __aenter__(self) -> _Proxy:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        last = ["server"]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       side: str) -> None:
            try:
                while data := await source.read(65536):
                    if side == "client" and last[0] == "server":
                        self.round_trips += 1
                    if side == "server" and self.delay:
                        await asyncio.sleep(self.delay)
                    last[0] = side
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer, "client"),
                             pipe(upstream_reader, writer, "server"))


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", [
    pytest.param("postgresql", marks=pytest.mark.server("postgresql")),
    pytest.param("mysql", marks=pytest.mark.server("mariadb")),
])
async def test_round_trips_per_request(
    dialect: str, request: pytest.FixtureRequest, table: str
) -> None:
    server = request.getfixturevalue(
        "postgres_server" if dialect == "postgresql" else "mariadb_server")
    touch_trips = 1 if dialect == "postgresql" else 2  # MySQL has no UPDATE … RETURNING
    async with _Proxy(server.host, server.port) as proxy:
        backend = SQLAlchemyBackend(url=make_url(server.url).set(port=proxy.port),
                                    table=table, cleanup_every=0)
        key = new_key()
        await backend.store(key, Write({"a": v(1), "b": v(2)}, (), False, 60, create=True))

        async def trips(call: Any) -> int:
            before = proxy.round_trips
            await call
            return proxy.round_trips - before

        try:
            for _ in range(2):  # the second time, with the driver's statements prepared
                counted = {
                    "load": await trips(backend.load(key, touch=False)),
                    "load touch": await trips(backend.load(key, touch=True)),
                    "update": await trips(backend.store(key, Write({"c": v(3)}))),
                    "flag": await trips(backend.store(key, Write({}, (), True, 90))),
                    "remove, fields left": await trips(backend.store(key, Write({}, ["c"]))),
                    "create": await trips(backend.store(new_key(), Write(
                        {"a": v(1)}, (), False, 60, create=True))),
                    "remove the last fields": await trips(backend.store(key, Write(
                        {}, ["a", "b"]))),
                    "refused": await trips(backend.store(key, Write({"a": v(1)}))),
                    "delete": await trips(backend.delete(key)),
                }
                await backend.store(key, Write({"a": v(1), "b": v(2)}, (), False, 60,
                                               create=True))
        finally:
            await close_loop_clients()
    assert counted == {"load": 1, "load touch": touch_trips, "update": 1, "flag": 1,
                       "remove, fields left": 2, "create": 1, "remove the last fields": 1,
                       "refused": 1, "delete": 1}


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", [
    pytest.param("postgresql", marks=pytest.mark.server("postgresql")),
    pytest.param("mysql", marks=pytest.mark.server("mariadb")),
])
async def test_a_statement_cut_short_never_hands_its_reply_to_the_next(
    dialect: str, request: pytest.FixtureRequest, table: str
) -> None:
    # The store's timeout cancels statements; a connection given back with a reply still on
    # its way would answer the next statement with it (as aiomcache's did).
    server = request.getfixturevalue(
        "postgres_server" if dialect == "postgresql" else "mariadb_server")
    async with _Proxy(server.host, server.port) as proxy:
        backend = SQLAlchemyBackend(url=make_url(server.url).set(port=proxy.port), table=table)
        one, two = new_key(), new_key()
        try:
            await backend.store(one, Write({"one": v(1)}, (), False, 60, create=True))
            await backend.store(two, Write({"two": v(2)}, (), False, 60, create=True))
            for _ in range(5):
                proxy.delay = 0.2
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(backend.load(one, touch=True), 0.05)
                proxy.delay = 0.0
                await asyncio.sleep(0.3)  # the reply arrives, late
                assert await backend.load(two, touch=False) == Record({"two": v(2)})
                assert await backend.store(two, Write({"two": v(2)})) is True
        finally:
            await close_loop_clients()


@pytest.mark.anyio
async def test_a_read_never_changes_a_row_it_reads_as_expired_or_missing(
    backend: SQLAlchemyBackend, probe: Probe
) -> None:
    key = new_key()
    await backend.store(key, Write({"a": v(1)}, (), False, 60, create=True))
    await probe.expire_in(key, -5)
    before = await probe.dump(key)
    assert await backend.load(key, touch=True) is None
    assert await probe.dump(key) == before
