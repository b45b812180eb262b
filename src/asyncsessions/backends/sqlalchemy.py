"""SQL store through SQLAlchemy 2's asyncio engine: PostgreSQL, MySQL/MariaDB or SQLite.

Why SQLAlchemy async: one API over the three databases and their asyncio drivers (asyncpg,
aiomysql, aiosqlite), which are well kept; the store adds only the few lines of SQL that
differ between them (merging JSON, the clock).
"""

# S608: the only text put into SQL here is the table name, quoted by the dialect's own
# identifier preparer, and this module's constants; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import flask_session
from .base import ClientBackend, Record, Write

__all__ = ["SQLAlchemyBackend"]

logger = logging.getLogger("asyncsessions")

#: The asyncio drivers a sync URL is moved to, in order of preference.
_ASYNC_DRIVERS = {
    "postgresql": ("asyncpg", "psycopg"),
    "mysql": ("aiomysql", "asyncmy"),
    "mariadb": ("aiomysql", "asyncmy"),
    "sqlite": ("aiosqlite",),
}
_COLUMNS = ("id", "data", "permanent", "ttl", "expires")
#: Longer lifetimes are cut to this (about 3,000 years): every database's dates reach it.
_MAX_TTL = 10**11
#: Dead rows one cleanup deletes at most, so that it never holds up the write it follows.
_CLEANUP_BATCH = 500
# Field names are JSON object keys; PostgreSQL text cannot hold NUL, so it is escaped (and
# '%', to keep the escaping reversible). The engine never sends a name starting with NUL.
_ESCAPED = re.compile("[%\0]")
_UNESCAPED = re.compile("%(25|00)")


def _escape(name: str) -> str:
    return _ESCAPED.sub(lambda m: "%25" if m[0] == "%" else "%00", name)


def _unescape(name: str) -> str:
    return _UNESCAPED.sub(lambda m: "%" if m[1] == "25" else "\0", name)


def _dumps(doc: Mapping[str, str | None]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class _Statements:
    """One dialect's SQL for the store. Each runs alone, in autocommit: one round trip."""

    load: sa.TextClause
    #: PostgreSQL: read and slide the expiry in one statement; elsewhere ``touch`` follows.
    load_touch: sa.TextClause | None
    touch: sa.TextClause
    create: sa.TextClause
    update: sa.TextClause
    remove_if_empty: sa.TextClause
    delete: sa.TextClause
    cleanup: sa.TextClause
    count: sa.TextClause
    count_expired: sa.TextClause
    expires: sa.TextClause


def _statements(backend: str, table: str) -> _Statements:
    """The statements for ``backend`` on the quoted table name ``table``.

    ``ours`` is the guard of every update: the record is alive by the database's clock, and
    readable as one this store wrote (a JSON object of strings, a sane ttl and flag); an
    empty object is a record emptied a moment ago, as good as deleted.
    """
    if backend == "postgresql":
        now = "now()"

        def later(ttl: str) -> str:
            return f"now() + ({ttl}) * interval '1 second'"

        merged = "jsonb_strip_nulls(data || CAST(:patch AS jsonb))"
        empty = "{} = CAST('{{}}' AS jsonb)"
        data = "CAST(data AS text)"
        ours = (f"expires > now() AND ttl BETWEEN 1 AND {_MAX_TTL}"
                " AND jsonb_typeof(data) = 'object' AND data <> CAST('{}' AS jsonb)"
                " AND NOT jsonb_path_exists(data, '$.* ? (@.type() != \"string\")')")
        create = (f"INSERT INTO {table} (id, data, permanent, ttl, expires) VALUES (:id,"
                  " CAST(:data AS jsonb), :permanent, CAST(:ttl AS bigint),"
                  f" {later('CAST(:ttl AS bigint)')}) ON CONFLICT (id) DO UPDATE SET"
                  " data = EXCLUDED.data, permanent = EXCLUDED.permanent,"
                  " ttl = EXCLUDED.ttl, expires = EXCLUDED.expires")
        # FOR UPDATE SKIP LOCKED: cleanups of several processes never wait for each other.
        cleanup = (f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                   f" WHERE expires <= now() LIMIT CAST(:limit AS integer) FOR UPDATE SKIP LOCKED)")
    elif backend in ("mysql", "mariadb"):
        now = "UTC_TIMESTAMP(6)"  # DATETIME has no time zone: UTC, whatever the session's

        def later(ttl: str) -> str:
            return f"TIMESTAMPADD(SECOND, {ttl}, UTC_TIMESTAMP(6))"

        merged = "JSON_MERGE_PATCH(data, :patch)"
        empty = "JSON_LENGTH({}) = 0"
        data = "data"
        # CASE, not AND: MySQL's JSON functions raise on text that is not JSON.
        ours = (f"expires > UTC_TIMESTAMP(6) AND ttl BETWEEN 1 AND {_MAX_TTL}"
                " AND permanent IN (0, 1) AND CASE WHEN JSON_VALID(data) THEN"
                " JSON_TYPE(data) = 'OBJECT' AND JSON_LENGTH(data) > 0 AND NOT EXISTS"
                f" (SELECT 1 FROM JSON_TABLE({table}.data, '$.*' COLUMNS (v JSON PATH '$'))"
                " AS f WHERE JSON_TYPE(f.v) <> 'STRING') ELSE FALSE END")
        create = (f"REPLACE INTO {table} (id, data, permanent, ttl, expires)"
                  f" VALUES (:id, :data, :permanent, :ttl, {later(':ttl')})")
        cleanup = (f"DELETE FROM {table} WHERE expires <= UTC_TIMESTAMP(6)"
                   " ORDER BY expires LIMIT :limit")
    else:
        # Text that sorts as it counts, to the millisecond, in UTC.
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"

        def later(ttl: str) -> str:
            return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || ({ttl}) || ' seconds')"

        merged = "json_patch(data, :patch)"
        empty = "{} = '{{}}'"
        data = "data"
        ours = (f"expires > {now} AND typeof(ttl) = 'integer' AND ttl BETWEEN 1 AND {_MAX_TTL}"
                " AND permanent IN (0, 1) AND CASE WHEN json_valid(data) THEN"
                " json_type(data) = 'object' AND data <> '{}' AND NOT EXISTS"
                f" (SELECT 1 FROM json_each({table}.data) WHERE type <> 'text') ELSE 0 END")
        create = (f"REPLACE INTO {table} (id, data, permanent, ttl, expires)"
                  f" VALUES (:id, :data, :permanent, :ttl, {later(':ttl')})")
        cleanup = (f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                   f" WHERE expires <= {now} LIMIT :limit)")
    select = f"SELECT {data}, permanent, ttl FROM {table} WHERE id = :id AND expires > {now}"
    load_touch = None
    if backend == "postgresql":
        # The CTE's update runs to completion whatever the outer query reads; the outer query
        # reads the row as it was, so an unreadable row is still reported (and not touched).
        load_touch = (f"WITH touched AS (UPDATE {table} SET expires = {later('ttl')}"
                      f" WHERE id = :id AND {ours} RETURNING 1) {select}")
    ttl = "COALESCE(:ttl, ttl)"
    return _Statements(
        load=sa.text(select),
        load_touch=None if load_touch is None else sa.text(load_touch),
        touch=sa.text(f"UPDATE {table} SET expires = {later('ttl')}"
                      f" WHERE id = :id AND expires > {now} AND ttl BETWEEN 1 AND {_MAX_TTL}"),
        create=sa.text(create),
        # A write that empties the record marks it dead (expires now) in the same statement:
        # only a removal that raced another removal gets there, see SQLAlchemyBackend.store.
        update=sa.text(
            f"UPDATE {table} SET data = {merged}, permanent = COALESCE(:permanent, permanent),"
            f" ttl = {ttl}, expires = CASE WHEN {empty.format(merged)} THEN {now}"
            f" ELSE {later(ttl)} END WHERE id = :id AND {ours}"
        ),
        # CASE: the merge only over a row known to be ours (SQLite's JSON functions raise on
        # text that is not JSON, and AND does not promise to skip them).
        remove_if_empty=sa.text(
            f"DELETE FROM {table} WHERE id = :id"
            f" AND CASE WHEN {ours} THEN {empty.format(merged)} ELSE FALSE END"
        ),
        delete=sa.text(f"DELETE FROM {table} WHERE id = :id"),
        cleanup=sa.text(cleanup),
        count=sa.text(f"SELECT count(*) FROM {table} WHERE expires > {now}"
                      " AND substr(id, 1, :length) = :prefix"),
        count_expired=sa.text(f"SELECT count(*) FROM {table} WHERE expires <= {now}"),
        expires=sa.text(f"SELECT expires FROM {table} WHERE id = :id"),
    )


def _table(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        # Exact bytes on MySQL, whose text comparisons ignore case by default: ids are
        # case-sensitive.
        sa.Column("id", sa.String(255).with_variant(mysql.VARBINARY(255), "mysql", "mariadb"),
                  primary_key=True),
        sa.Column("data", sa.Text().with_variant(postgresql.JSONB(), "postgresql")
                  .with_variant(mysql.JSON(), "mysql", "mariadb"), nullable=False),
        sa.Column("permanent", sa.Boolean(), nullable=False),
        sa.Column("ttl", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True)
                  .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"), nullable=False),
        sa.Index(f"ix_{name}_expires", "expires"),
        schema=schema,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def _legacy_table(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    """Flask-Session's table, as its ``create_session_model`` makes it (only read here)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.String(255)),
        sa.Column("data", sa.LargeBinary()),
        sa.Column("expiry", sa.DateTime()),
        schema=schema,
    )


@dataclass
class _Database:
    """The engine of one event loop, and the lock its first uses wait on for the table."""

    engine: AsyncEngine
    setup: asyncio.Lock = field(default_factory=asyncio.Lock)


class SQLAlchemyBackend(flask_session.ReadsFlaskSession, ClientBackend[_Database]):
    """Sessions in a SQL table, through SQLAlchemy's asyncio engine.

    ``url`` is a database URL: an async one (``postgresql+asyncpg://``,
    ``mysql+aiomysql://``, ``sqlite+aiosqlite:///path``, …) or a sync one, whose driver is
    replaced with an installed asyncio driver (PostgreSQL: asyncpg, else psycopg; MySQL and
    MariaDB: aiomysql, else asyncmy; SQLite: aiosqlite). Or ``engine``: an ``AsyncEngine``,
    a sync ``Engine`` or a Flask-SQLAlchemy ``SQLAlchemy`` instance, whose URL is reused
    (not its other settings). Each event loop gets its own engine from that URL, as async
    drivers bind connections to their loop; it is disposed of with the loop.

    The table (``table``, default ``sessions``, in ``schema``) is made at first use unless
    ``create_table=False``; each store has its own ``MetaData``, so several apps in one
    process can use the same table. A table of another shape under that name (Flask-Session
    makes ``sessions(id, session_id, data, expiry)``) raises one clear error naming it:
    choose another ``table``. The store's columns::

        id         VARCHAR(255) primary key     key_prefix + session id (VARBINARY on MySQL)
        data       JSONB / JSON / TEXT          {name: value}, the value's JSON text as a
                                                string, NUL and % in names escaped as %00, %25
        permanent  BOOLEAN
        ttl        BIGINT                       seconds the record lives after a write or touch
        expires    TIMESTAMPTZ / DATETIME(6) UTC / TEXT UTC, indexed

    Every statement runs alone in autocommit and is atomic by itself, with the row lock the
    database takes for an ``UPDATE`` or ``DELETE``, which re-reads the row once a concurrent
    writer is done with it (PostgreSQL's read committed re-check, InnoDB's current read,
    SQLite's single writer). So a write merges its fields into the stored object in SQL
    (``jsonb ||``, ``JSON_MERGE_PATCH``, ``json_patch``) and concurrent writers of different
    fields all survive. Expiry is compared with the database's clock, never the app's.

    - A new id's record is an upsert: anything under the id is replaced whole.
    - An update applies only to a row that is alive and readable as ours (``WHERE``), and
      restarts its expiry with the stored ``ttl`` when the write keeps the flag. No row
      updated: the session is gone, and ``store`` returns ``False``.
    - A write that only removes fields first tries ``DELETE … WHERE`` the merge would leave
      the object empty, so a field another request added keeps the row; if nothing was
      deleted, it updates. Should a concurrent removal empty the object between the two, the
      update marks the row expired in the same statement, and the cleanup deletes it.

    Statements per request, one round trip each: read-only, 1 on PostgreSQL even with the
    touch (``WITH touched AS (UPDATE …) SELECT …``); 1 on MySQL and SQLite, 2 with the touch
    (``SELECT``, then an ``UPDATE`` of a row it could read: MySQL has no ``UPDATE …
    RETURNING``). Writing: 1 (an ``UPDATE``, an upsert, or the ``DELETE`` that empties the
    record); 2 for a removal that leaves fields (the ``DELETE`` finds some, the ``UPDATE``).

    Dead rows: every ``cleanup_every`` writes (0: never) the write is followed by a delete
    of at most 500 expired rows, on the expiry index: no background task, which would stall
    on the Flask bridge's idle loops, and a bounded cost for the write that runs it.

    Needs PostgreSQL 12+, MySQL 8.0.4+ or MariaDB 10.6+ (``JSON_TABLE``), SQLite 3.38+ or
    one built with JSON1. Field values must be UTF-8 text without NUL (the engine's JSON is).

    Flask-Session's sessions: with ``reads_flask_session`` and ``legacy_table`` (the name of
    Flask-Session's table, ``SESSION_SQLALCHEMY_TABLE``, in the same ``schema``), an id with
    no row here is looked up there (``session_id = key``, one more ``SELECT``); a row whose
    ``expiry`` (UTC, by the app's clock, as Flask-Session wrote and compared it) is ahead is
    read as a foreign record. Its first write creates the row here and deletes the one
    there; so does every new record's write (one more ``DELETE``), and a delete deletes both.
    Nothing else in that table is written: once every live session has moved
    (``PERMANENT_SESSION_LIFETIME``), it can be dropped. A ``legacy_table`` that does not
    exist is none to read.
    """

    max_key_length = 255

    def __init__(
        self,
        *,
        url: str | URL | None = None,
        engine: Any = None,
        table: str = "sessions",
        schema: str | None = None,
        create_table: bool = True,
        cleanup_every: int = 100,
        legacy_table: str | None = None,
    ) -> None:
        super().__init__()
        if url is not None and engine is not None:
            raise ValueError("give url or engine, not both")
        if url is None and engine is None:
            raise ValueError("url or engine is required, e.g. url='postgresql://user@host/db'")
        if engine is not None:
            url = _url_of(engine)
        elif not isinstance(url, (str, URL)):
            raise TypeError(f"url must be a str like 'sqlite:///sessions.db', "
                            f"not {type(url).__name__}")
        if not isinstance(table, str) or not table:
            raise TypeError("table must be a non-empty str")
        if schema is not None and (not isinstance(schema, str) or not schema):
            raise TypeError("schema must be a non-empty str or None")
        if not isinstance(create_table, bool):
            raise TypeError("create_table must be True or False")
        if not isinstance(cleanup_every, int) or isinstance(cleanup_every, bool):
            raise TypeError(f"cleanup_every must be an int, not {type(cleanup_every).__name__}")
        if cleanup_every < 0:
            raise ValueError(f"cleanup_every must be >= 0 (0: never), not {cleanup_every}")
        if legacy_table is not None and (not isinstance(legacy_table, str) or not legacy_table):
            raise TypeError("legacy_table must be a non-empty str (Flask-Session's table) or None")
        if legacy_table == table:
            raise ValueError(
                f"legacy_table {legacy_table!r} is Flask-Session's table and cannot be this "
                "store's too: set table to another name, e.g. table='asyncsessions'"
            )
        assert url is not None
        self.url: URL = _async_url(url)
        self.dialect = self.url.get_backend_name()
        self.table = table
        self.schema = schema
        self.create_table = create_table
        self.cleanup_every = cleanup_every
        self.location = _location(self.url, table, schema)
        self._table = _table(sa.MetaData(), table, schema)
        preparer = self.url.get_dialect()().identifier_preparer
        self._sql = _statements(self.dialect, preparer.format_table(self._table))
        self.legacy_table = legacy_table
        self._legacy = None if legacy_table is None else _legacy_table(
            sa.MetaData(), legacy_table, schema)
        self._legacy_live = False  # whether the legacy table exists and is read (_prepare)
        self._ready = False
        self._foreign: str | None = None  # why the table is not ours, once found out
        self._writes = itertools.count(1)

    def check_key_prefix(self, prefix: str) -> None:
        if "\0" in prefix:
            raise ValueError("keys cannot hold NUL (PostgreSQL text cannot)")
        super().check_key_prefix(prefix)

    def _new_client(self) -> _Database:
        return _Database(create_async_engine(
            self.url,
            # One statement, one round trip: no BEGIN, COMMIT or ROLLBACK around it.
            isolation_level="AUTOCOMMIT",
            skip_autocommit_rollback=True,
            # MySQL closes connections idle for 8 hours; replaced before they are reused.
            pool_recycle=3600,
        ))

    async def _close_client(self, client: _Database) -> None:
        await client.engine.dispose()

    async def _connect(self) -> AsyncConnection:
        db = self.client
        if not self._ready:
            async with db.setup:
                if not self._ready:
                    await self._prepare(db.engine)
        return db.engine.connect()

    async def load(self, key: str, *, touch: bool) -> Record | None:
        sql = self._sql
        statement = sql.load_touch if touch and sql.load_touch is not None else sql.load
        touched = statement is sql.load_touch
        async with await self._connect() as conn:
            row = (await conn.execute(statement, {"id": key})).first()
            if row is None:
                return await self._load_legacy(conn, key) if self._legacy_live else None
            try:
                record = _record(*row)
            except ValueError as exc:
                self.unreadable(key, str(exc))
                return None
            if record is not None and touch and not touched:
                await conn.execute(sql.touch, {"id": key})
        return record

    async def store(self, key: str, write: Write) -> bool:
        ttl = None if write.ttl is None else min(write.ttl, _MAX_TTL)
        sql = self._sql
        async with await self._connect() as conn:
            if write.create:
                fields = {_escape(name): value.decode("utf-8")
                          for name, value in write.changed.items() if name not in write.removed}
                if not fields:
                    return True  # nothing to create
                assert write.permanent is not None  # see Write
                await conn.execute(sql.create, {"id": key, "data": _dumps(fields),
                                                "permanent": write.permanent, "ttl": ttl})
                written = True
                await self._delete_legacy(conn, key)  # a Flask-Session row it replaces
            else:
                patch: dict[str, str | None] = {_escape(name): None for name in write.removed}
                patch.update((_escape(name), value.decode("utf-8"))
                             for name, value in write.changed.items())
                params = {"id": key, "patch": _dumps(patch)}
                written = False
                if not write.changed and write.removed:
                    # Deleting only if nothing else is left, as it stands when deleted.
                    result = await conn.execute(sql.remove_if_empty, params)
                    written = result.rowcount == 1
                if not written:
                    result = await conn.execute(
                        sql.update, {**params, "permanent": write.permanent, "ttl": ttl}
                    )
                    written = result.rowcount == 1
            if self.cleanup_every and next(self._writes) % self.cleanup_every == 0:
                await self._cleanup(conn)
        return written

    async def delete(self, key: str) -> None:
        async with await self._connect() as conn:
            await conn.execute(self._sql.delete, {"id": key})
            await self._delete_legacy(conn, key)

    # -- the CLI's (see base.py) --------------------------------------------------------------

    purges_expired = True

    async def count(self, prefix: str) -> int | None:
        async with await self._connect() as conn:
            found = await conn.scalar(self._sql.count,
                                      {"length": len(prefix), "prefix": prefix})
        return int(found or 0)

    async def expires_at(self, key: str) -> float | None:
        async with await self._connect() as conn:
            expires = await conn.scalar(self._sql.expires, {"id": key})
            if expires is None and self._legacy_live:
                assert self._legacy is not None
                legacy = self._legacy.c
                expires = await conn.scalar(
                    sa.select(legacy.expiry).where(legacy.session_id == key).limit(1))
        return _unix(expires)

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        # Every expired row of the table, whatever its prefix, with the write's cleanup
        # statement (Flask-Session's legacy table is left to Flask-Session).
        while True:
            async with await self._connect() as conn:
                if dry_run:
                    found = int(await conn.scalar(self._sql.count_expired) or 0)
                else:
                    found = (await conn.execute(self._sql.cleanup, {"limit": batch})).rowcount
            if found > 0:
                yield found
            if dry_run or found < batch:
                return

    async def _load_legacy(self, conn: AsyncConnection, key: str) -> Record | None:
        """Flask-Session's row of ``key``, if it is live."""
        assert self._legacy is not None
        legacy = self._legacy.c
        row = (await conn.execute(
            sa.select(legacy.data, legacy.expiry).where(legacy.session_id == key).limit(1)
        )).first()
        if row is None:
            return None
        data, expiry = row
        if not isinstance(expiry, datetime) or not isinstance(data, (bytes, memoryview)):
            self.unreadable(key, f"a row of {self.legacy_table!r} without data or expiry")
            return None
        if expiry.tzinfo is None:  # Flask-Session wrote datetime.utcnow() + lifetime
            expiry = expiry.replace(tzinfo=timezone.utc)
        if expiry <= datetime.now(timezone.utc):
            return None
        return flask_session.read(self, key, bytes(data))

    async def _delete_legacy(self, conn: AsyncConnection, key: str) -> None:
        if self._legacy_live:
            assert self._legacy is not None
            await conn.execute(sa.delete(self._legacy).where(self._legacy.c.session_id == key))

    async def _cleanup(self, conn: AsyncConnection) -> None:
        # The write it follows has landed: a failure here must not fail the request.
        try:
            await conn.execute(self._sql.cleanup, {"limit": _CLEANUP_BATCH})
        except Exception:
            logger.warning("session store %r: cleanup of expired rows failed", self.name,
                           exc_info=True)

    async def _prepare(self, engine: AsyncEngine) -> None:
        """Check the table once per process: ours, or made now; else one clear error."""
        if self._foreign is not None:
            raise RuntimeError(self._foreign)
        async with engine.connect() as conn:
            problem = await conn.run_sync(self._check_table)
            if problem == "missing" and self.create_table:
                # An error: another process (or loop) made it in the meantime; or not. Look.
                with contextlib.suppress(sa.exc.DBAPIError):
                    await conn.run_sync(self._table.metadata.create_all)
                problem = await conn.run_sync(self._check_table)
        if problem == "missing":
            raise RuntimeError(
                f"table {self._name!r} does not exist at {self.location}: create it, or "
                "pass create_table=True"
            )
        if problem is not None:
            self._foreign = problem
            raise RuntimeError(problem)
        if self._legacy is not None:
            async with engine.connect() as conn:
                problem = await conn.run_sync(self._check_legacy_table)
            if problem is not None and problem != "missing":
                self._foreign = problem
                raise RuntimeError(problem)
            if problem is None and not self.reads_flask_session:
                logger.warning(
                    "session store %r: legacy_table %r is read only with read_flask_session",
                    self.name, self.legacy_table,
                )
            elif problem == "missing" and self.reads_flask_session:
                logger.info(
                    "session store %r: legacy_table %r does not exist: no Flask-Session "
                    "sessions to read", self.name, self.legacy_table,
                )
            self._legacy_live = problem is None and self.reads_flask_session
        self._ready = True

    @property
    def _name(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def _check_table(self, conn: sa.Connection) -> str | None:
        """``None`` if the table is one of ours, ``"missing"``, or what is wrong with it."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.table, schema=self.schema):
            return "missing"
        columns = [c["name"] for c in inspector.get_columns(self.table, schema=self.schema)]
        key = inspector.get_pk_constraint(self.table, schema=self.schema)["constrained_columns"]
        if set(_COLUMNS) <= {c.lower() for c in columns} and [c.lower() for c in key] == ["id"]:
            return None
        return (
            f"table {self._name!r} at {self.location} is not an asyncsessions table (its "
            f"columns: {', '.join(columns)}; another program's sessions?): set table= to "
            "another name for this store, e.g. table='asyncsessions'"
        )

    def _check_legacy_table(self, conn: sa.Connection) -> str | None:
        """``None`` if ``legacy_table`` is Flask-Session's, ``"missing"``, or what is wrong."""
        assert self.legacy_table is not None
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.legacy_table, schema=self.schema):
            return "missing"
        columns = {c["name"].lower()
                   for c in inspector.get_columns(self.legacy_table, schema=self.schema)}
        if {"session_id", "data", "expiry"} <= columns:
            return None
        name = f"{self.schema}.{self.legacy_table}" if self.schema else self.legacy_table
        return (
            f"legacy_table {name!r} at {self.location} is not Flask-Session's table (no "
            "session_id, data and expiry columns): set legacy_table to the name of "
            "Flask-Session's (SESSION_SQLALCHEMY_TABLE), or remove it"
        )


def _record(data: Any, permanent: Any, ttl: Any) -> Record | None:
    """The record in a row; ``None`` if it was emptied, ``ValueError`` if it is not ours."""
    if type(ttl) is not int or not 1 <= ttl <= _MAX_TTL:
        raise ValueError("its ttl is no positive number of seconds")
    if type(permanent) not in (bool, int) or permanent not in (0, 1):
        raise ValueError("its permanent flag is neither true nor false")
    try:
        doc = json.loads(data)
    except (TypeError, ValueError, RecursionError):
        raise ValueError("its data is not JSON") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ValueError("its data is not an object of strings")
    if not doc:
        return None
    fields = {_unescape(name): value.encode("utf-8") for name, value in doc.items()}
    return Record(fields, bool(permanent))


def _url_of(engine: Any) -> URL:
    """The URL of an engine the user already has (its password included)."""
    if isinstance(engine, (AsyncEngine, sa.Engine)):
        return engine.url
    if type(engine).__module__.partition(".")[0] == "flask_sqlalchemy":
        return _flask_sqlalchemy_url(engine)
    raise TypeError(
        "engine must be a SQLAlchemy AsyncEngine or Engine, or a Flask-SQLAlchemy "
        f"SQLAlchemy instance, not {type(engine).__module__}.{type(engine).__qualname__}"
    )


def _flask_sqlalchemy_url(db: Any) -> URL:
    from flask import has_app_context

    if has_app_context():
        return db.engine.url  # type: ignore[no-any-return]
    # init_app usually runs outside an app context: then the default engine of the one app
    # that db was initialised with (Flask-SQLAlchemy 3 keeps them per app).
    engines = list(getattr(db, "_app_engines", {}).values())
    defaults = [by_bind[None] for by_bind in engines if None in by_bind]
    if len(defaults) == 1:
        return defaults[0].url  # type: ignore[no-any-return]
    raise ValueError(
        "engine: this Flask-SQLAlchemy instance has "
        + ("no app yet: call db.init_app(app) first" if not defaults else "several apps")
        + ", or pass engine=db.engine inside app.app_context()"
    )


def _async_url(url: str | URL) -> URL:
    """``url`` with an installed asyncio driver; ``ValueError`` if there is none."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"url: {exc}") from None
    backend = parsed.get_backend_name()
    candidates = _ASYNC_DRIVERS.get(backend)
    if candidates is None:
        raise ValueError(f"url: {backend} is not supported; use postgresql, mysql, mariadb "
                         "or sqlite")
    try:
        dialect = parsed.get_dialect()
    except sa.exc.NoSuchModuleError as exc:
        raise ValueError(f"url: {exc}") from None
    driver = parsed.get_driver_name()
    # A URL without a driver gets ours, not SQLAlchemy's default, which may be a sync one.
    if "+" in parsed.drivername and dialect.get_async_dialect_cls(parsed).is_async:
        if importlib.util.find_spec(_module(driver)) is None:
            raise ValueError(f"url: the {driver} driver is not installed: pip install {driver}")
    else:
        driver = next((d for d in candidates if importlib.util.find_spec(d)), "")
        if not driver:
            raise ValueError(
                f"url: no asyncio driver for {backend} is installed: pip install "
                + " or ".join(candidates)
            )
        parsed = parsed.set(drivername=f"{backend}+{driver}")
        query = dict(parsed.query)
        # libpq's name for it, which a psycopg2 URL carries; asyncpg calls it ssl.
        if driver == "asyncpg" and "sslmode" in query and "ssl" not in query:
            query["ssl"] = query.pop("sslmode")
            parsed = parsed.set(query=query)
    if backend == "sqlite" and (
        parsed.database in (None, "", ":memory:") or "memory" in str(parsed.query.get("mode"))
    ):
        raise ValueError(
            "url: an in-memory SQLite database is one per connection, so sessions would not "
            "outlive it: give a file, e.g. 'sqlite:///sessions.db'"
        )
    if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        # Else the server's default, often latin1, which cannot hold every session value.
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def _module(driver: str) -> str:
    return {"psycopg_async": "psycopg"}.get(driver, driver)


def _unix(value: Any) -> float | None:
    """An ``expires`` column's value as Unix time (naive ones, and SQLite's text, are UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    expires: datetime = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return expires.timestamp()


def _location(url: URL, table: str, schema: str | None) -> str:
    """The URL without driver, password or options, and the table: where the rows live."""
    backend = url.get_backend_name()
    name = f"{schema}.{table}" if schema else table
    if backend == "sqlite":
        return f"sqlite:///{os.path.abspath(url.database or '')}?table={name}"
    bare = URL.create(backend, username=url.username, host=url.host, port=url.port,
                      database=url.database)
    return f"{bare.render_as_string(hide_password=False)}?table={name}"
