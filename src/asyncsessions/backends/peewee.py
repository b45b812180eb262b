"""peewee store: a row per session and a row per field, each write one transaction."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import peewee

from .base import Backend, Record, Write, run_blocking

__all__ = ["PeeweeBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DSN_PAIR = re.compile(r"(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))")
_FIELDS_SUFFIX = "_fields"
_MAX_IDENTIFIER = 63  # PostgreSQL's limit, for the longest name made from ``table``
_SCHEMA_TRIES = 3  # concurrent CREATE ... IF NOT EXISTS can still collide on PostgreSQL
# Statements stay under SQLite's oldest limit of 999 parameters.
_ROWS_PER_INSERT = 300
_NAMES_PER_DELETE = 900


class PeeweeBackend(Backend):
    """Sessions in a SQLite or PostgreSQL database reached through a peewee ``database``.

    Any ``peewee.SqliteDatabase`` or ``peewee.PostgresqlDatabase`` will do (pooled ones
    from ``playhouse.pool``, those ``playhouse.db_url.connect`` makes, psycopg 2 or 3), and
    peewee 4's asyncio databases (``playhouse.pwasyncio``: ``AsyncSqliteDatabase``,
    ``AsyncPostgresqlDatabase``). A sync database runs each call in a worker thread, on a
    connection of that thread opened for the call and closed after it (a pooled database
    lends and takes back one of its own: the one to give PostgreSQL, which would otherwise
    connect per call). An async database runs on the event loop, each call in a task of its
    own, so it never shares a connection or a transaction with the app's own queries in the
    request. An async database's pool belongs to one event loop: give Quart apps an async
    database and Flask apps (whose session I/O runs on several loops) a sync one.

    Two tables, made if missing: ``table`` holds a row per session (its key, permanent
    flag, lifetime and expiry, a Unix time on the database's clock) and ``<table>_fields`` a
    row per field. Each ``store`` is one transaction:

    - A new id's row is written (replacing whatever was under the key, fields too), then
      its fields.
    - An update first updates the session's row, only if it is there, not expired and
      readable (its lifetime and flag are checked in the update; the update takes the row's
      lock on PostgreSQL, the database's write lock on SQLite, until the transaction ends),
      then reads the session's field names under that lock and checks them as ``load``
      does: a session a logout or ``regenerate()`` deleted stays deleted, a row this store
      cannot read is left as it is, and ``store`` returns ``False`` having written nothing
      (the transaction is rolled back). Then its fields are set and dropped; fields the
      write does not name are left as they are, so concurrent requests that change
      different fields all survive.
    - A write that removes fields and sets none deletes the session's row if no field is
      left, in the same transaction: a field another request wrote first keeps it.
    - A write that does not set the permanent flag keeps the stored flag and lifetime, and
      the expiry restarts with that lifetime.

    PostgreSQL must run the store's transactions at READ COMMITTED, its default: under a
    stricter isolation level concurrent writes of one session fail instead of waiting.

    A read never changes a row it cannot read: the sliding refresh only restarts the expiry
    of a row ``load`` accepts.

    Round trips on PostgreSQL: a read-only request 1 when every field name of the session
    is ASCII (the read and the sliding refresh are one statement, which refreshes only a row
    whose lifetime is valid and whose names are all ASCII, so surely readable), 2 otherwise
    (the refresh follows once Python has checked the names); a writing one 1 + 5
    (``BEGIN``, the row, the field names, the fields, ``COMMIT``), one more when it removes
    fields too, 5 for a new session. A sync database that is not pooled connects before
    each of them.

    Every ``cleanup_every`` writes of this process (0: never) the write also deletes up to
    twice that many expired sessions, so they cannot pile up faster than sessions are made.
    """

    def __init__(
        self, *, database: Any = None, table: str = "asyncsessions", cleanup_every: int = 100
    ) -> None:
        if database is None:
            raise ValueError(
                "database is required: a peewee database, e.g. "
                "playhouse.db_url.connect('postgresql://user@host/app')"
            )
        if isinstance(database, peewee.Proxy):
            if database.obj is None:
                raise ValueError("database: the DatabaseProxy is not initialized yet")
            database = database.obj
        if not isinstance(database, peewee.Database):
            raise TypeError(
                f"database must be a peewee Database, "
                f"not {type(database).__module__}.{type(database).__qualname__}"
            )
        if isinstance(database, peewee.SqliteDatabase):
            sqlite = True
        elif isinstance(database, peewee.PostgresqlDatabase):
            sqlite = False
        else:
            raise TypeError(
                f"database: only SQLite and PostgreSQL databases are supported, "
                f"not {type(database).__qualname__}"
            )
        if database.deferred:
            raise ValueError("database: initialize the database (database.init(...)) first")
        self._async = _is_async(database)
        if not self._async:
            if not database.thread_safe:
                raise ValueError(
                    "database must be thread_safe (peewee's default): the store runs its "
                    "queries in worker threads, each on a connection of its own"
                )
            if sqlite and _in_memory(database.database):
                raise ValueError(
                    "database: an in-memory SQLite database exists per connection, and the "
                    "store connects per call: give a file"
                )
        if not isinstance(table, str):
            raise TypeError(f"table must be a str, not {type(table).__name__}")
        if not _IDENTIFIER.match(table) or len(table + _FIELDS_SUFFIX) > _MAX_IDENTIFIER:
            raise ValueError(
                f"table must be a plain SQL name (letters, digits, _; at most "
                f"{_MAX_IDENTIFIER - len(_FIELDS_SUFFIX)} characters), not {table!r}"
            )
        if not isinstance(cleanup_every, int) or isinstance(cleanup_every, bool):
            raise TypeError(f"cleanup_every must be an int, not {type(cleanup_every).__name__}")
        if cleanup_every < 0:
            raise ValueError(f"cleanup_every must be >= 0 (0: never), not {cleanup_every}")
        self.database: Any = database
        self.table = table
        self.cleanup_every = cleanup_every
        self.location = f"{_where(database, sqlite)} (table {table})"
        self._sql = _Sql(table, sqlite=sqlite, param=database.param)
        self._schema_ready = False
        self._writes = itertools.count(1)
        self._home: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._home_lock = threading.Lock()

    def check_key_prefix(self, prefix: str) -> None:
        if "\0" in prefix:
            raise ValueError("SQL text cannot hold NUL characters")
        super().check_key_prefix(prefix)

    async def load(self, key: str, *, touch: bool) -> Record | None:
        try:
            return await self._run(self._load, key, touch)
        except _Unreadable as exc:
            self.unreadable(key, str(exc))
            return None

    async def store(self, key: str, write: Write) -> bool:
        removed = frozenset(write.removed)
        # A snapshot (a sync database's thread runs while the caller's loop goes on); a field
        # both set and removed is removed, as in every store.
        changed = {name: bytes(value) for name, value in write.changed.items()
                   if name not in removed}
        if write.create and not changed:
            return True  # nothing to create
        written = await self._run(self._store, key, changed, removed, write)
        if self.cleanup_every and next(self._writes) % self.cleanup_every == 0:
            await self._run(self._cleanup)
        return written

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)

    # -- the CLI's (see base.py) ---------------------------------------------------------------

    purges_expired = True

    async def count(self, prefix: str) -> int | None:
        return await self._run(self._scalar, self._sql.count, (len(prefix), prefix))

    async def expires_at(self, key: str) -> float | None:
        rows = await self._run(self._rows, self._sql.expires, (key,))
        return float(rows[0][0]) if rows else None

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        # Every expired session of the table, whatever its prefix, as the cleanup deletes.
        if dry_run:
            found = await self._run(self._scalar, self._sql.count_expired)
            if found:
                yield found
            return
        while removed := await self._run(self._delete_expired, batch):
            yield removed

    # -- running calls --------------------------------------------------------------------------

    async def _run(self, job: Callable[..., T], *args: Any) -> T:
        if not self._async:
            return await run_blocking(self._connected, job, *args)
        self._check_loop()
        # A task of its own: peewee keeps an async database's connection and transaction per
        # task, and the request's task may have its own open.
        task = asyncio.get_running_loop().create_task(
            self.database.run(self._connected, job, *args)
        )
        result: T = await task
        return result

    def _connected(self, job: Callable[..., T], *args: Any) -> T:
        """``job(*args)`` on a connection opened (or taken from the pool) for it alone."""
        with self.database.connection_context():
            if not self._schema_ready:
                self._create_schema()
            return job(*args)

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        with self._home_lock:
            home = None if self._home is None else self._home()
            if home is loop:
                return
            if home is not None and not home.is_closed():
                raise RuntimeError(
                    "an async peewee database serves the one event loop its pool was opened "
                    "on, and this session store is running on another: with Flask, whose "
                    "session I/O runs on several loops, give a sync database"
                )
            self._home = weakref.ref(loop)

    # -- on a connection (a worker thread's, or the event loop's through peewee's greenlets) --

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.database.execute_sql(sql, tuple(params))

    def _transaction(self) -> Any:
        if self._sql.sqlite:
            # Take the write lock up front: a read that later writes would deadlock with
            # another such transaction, and SQLite would fail one at once.
            return self.database.atomic(lock_type="IMMEDIATE")
        return self.database.atomic()

    def _create_schema(self) -> None:
        for attempt in range(_SCHEMA_TRIES):
            try:
                with self._transaction():
                    for statement in self._sql.schema:
                        self._execute(statement)
            except peewee.DatabaseError:
                if attempt + 1 == _SCHEMA_TRIES:
                    raise
                # Another process made the tables at the same moment: they are there now.
            else:
                break
        self._schema_ready = True

    def _load(self, key: str, touch: bool) -> Record | None:
        sql = self._sql
        one_statement = touch and not sql.sqlite
        rows = self._execute(sql.load_touching if one_statement else sql.load, (key,)).fetchall()
        if not rows:
            return None
        permanent, ttl = rows[0][0], rows[0][1]
        if type(ttl) is not int or ttl < 1 or permanent not in (0, 1):
            raise _Unreadable(f"ttl {ttl!r} or permanent flag {permanent!r} of the wrong type")
        fields: dict[str, bytes] = {}
        for row in rows:
            name, value = row[2], row[3]
            if name is None:
                continue  # the outer join's row of a session without fields
            checked = _field_name(name, isinstance(value, (bytes, memoryview)))
            fields[checked] = bytes(value)
        if not fields:
            return None
        # The one statement refreshed the row only if its names are all ASCII (rows[0][4]):
        # the others are refreshed now that they are known to be readable.
        if touch and not (one_statement and rows[0][4]):
            self._execute(sql.touch, (key,))
        return Record(fields, bool(permanent))

    def _store(
        self, key: str, changed: dict[str, bytes], removed: frozenset[str], write: Write
    ) -> bool:
        try:
            return self._store_in_transaction(key, changed, removed, write)
        except _Refused:
            return False

    def _store_in_transaction(
        self, key: str, changed: dict[str, bytes], removed: frozenset[str], write: Write
    ) -> bool:
        sql = self._sql
        with self._transaction():
            if write.create:
                assert write.permanent is not None  # see Write
                assert write.ttl is not None
                # A new id has no record of ours: whatever is under it is replaced whole.
                self._execute(sql.put_session, (key, write.permanent, write.ttl, write.ttl))
                self._execute(sql.delete_fields, (key,))
            else:
                # The row first: its lock keeps every other write of the session out until
                # the commit, and a session deleted (or expired) meanwhile is not written.
                cursor = self._execute(
                    sql.update_session, (write.permanent, write.ttl, write.ttl, key)
                )
                if cursor.rowcount == 0:
                    return False
                # Under the row's lock, the names as ``load`` checks them: a session this
                # store cannot read (or one without fields, which reads as none) is no
                # session of ours, and only a new id's write replaces it.
                names_rows = self._execute(sql.field_names, (key,)).fetchall()
                try:
                    for name, value_is_bytes in names_rows:
                        _field_name(name, bool(value_is_bytes))
                except _Unreadable:
                    readable = False
                else:
                    readable = bool(names_rows)
                if not readable:
                    raise _Refused  # rolls back the row's update
                names = [name.encode("utf-8") for name in removed]
                for batch in _chunks(names, _NAMES_PER_DELETE):
                    self._execute(sql.delete_named(len(batch)), (key, *batch))
            rows = [(key, name.encode("utf-8"), value) for name, value in changed.items()]
            for chunk in _chunks(rows, _ROWS_PER_INSERT):
                self._execute(sql.put_fields(len(chunk)), list(itertools.chain(*chunk)))
            if removed and not changed:
                # Under the row's lock: a field another request wrote first is counted.
                self._execute(sql.delete_if_empty, (key, key))
        return True

    def _delete(self, key: str) -> None:
        if self._sql.sqlite:
            with self._transaction():
                self._execute(self._sql.delete_session, (key,))
                self._execute(self._sql.delete_fields, (key,))
        else:
            self._execute(self._sql.delete_session, (key,))  # the fields go by cascade

    def _cleanup(self) -> None:
        try:
            self._delete_expired(2 * self.cleanup_every)
        except peewee.DatabaseError:
            logger.warning("session cleanup in %s failed", self.location, exc_info=True)

    def _delete_expired(self, limit: int) -> int:
        """Delete up to ``limit`` expired sessions; how many went."""
        removed = 0
        with self._transaction():
            for statement in self._sql.cleanup:
                removed = self._execute(statement, (limit,)).rowcount
        return max(removed, 0)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._execute(sql, params).fetchall())

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self._execute(sql, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


class _Unreadable(Exception):
    """A row this store did not write (the message says why)."""


class _Refused(Exception):
    """Raised in a write's transaction to roll it back: the row is not a session of ours."""


def _field_name(name: Any, value_is_bytes: bool) -> str:
    """A field's name as ``load`` reads it; raises :class:`_Unreadable` for one it cannot."""
    if not isinstance(name, (bytes, memoryview)) or not value_is_bytes:
        raise _Unreadable("a field's name or value is not a byte string")
    try:
        return bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        raise _Unreadable("a field's name is not UTF-8") from None


class _Sql:
    """The statements of one table pair in one dialect.

    Table names are checked against ``_IDENTIFIER`` before they get here; values are always
    parameters.
    """

    # {s}: the sessions table, {f}: the fields table, {p}: a parameter, {now}: the clock.
    _SCHEMA = (
        'CREATE TABLE IF NOT EXISTS {s} ("key" TEXT NOT NULL PRIMARY KEY, '
        '"permanent" {boolean} NOT NULL, "ttl" INTEGER NOT NULL, "expires" {real} NOT NULL)',
        'CREATE INDEX IF NOT EXISTS {index} ON {s} ("expires")',
        # Field names are bytes (UTF-8): PostgreSQL text cannot hold NUL, which a name may.
        'CREATE TABLE IF NOT EXISTS {f} ("key" TEXT NOT NULL '
        'REFERENCES {s} ("key") ON DELETE CASCADE, "name" {blob} NOT NULL, '
        '"value" {blob} NOT NULL, PRIMARY KEY ("key", "name")){rowid}',
    )
    _LOAD = (
        'SELECT s."permanent", s."ttl", f."name", f."value" FROM {s} s '
        'LEFT JOIN {f} f ON f."key" = s."key" WHERE s."key" = {p} AND s."expires" > {now}'
    )
    # PostgreSQL: the read and the sliding refresh in one statement. The refresh is only of
    # a row surely readable (valid lifetime, fields, every name ASCII, so UTF-8); the fifth
    # column says whether it happened, and ``load`` refreshes the others it finds readable.
    _LOAD_TOUCHING = (
        'WITH s AS (SELECT "key", "permanent", "ttl" FROM {s} '
        'WHERE "key" = {p} AND "expires" > {now}), '
        't AS (UPDATE {s} SET "expires" = {now} + "ttl" '
        'WHERE "key" IN (SELECT "key" FROM s) AND "expires" > {now} AND {valid} '
        'AND EXISTS (SELECT 1 FROM {f} WHERE {f}."key" = {s}."key") '
        'AND NOT EXISTS (SELECT 1 FROM {f} WHERE {f}."key" = {s}."key" '
        "AND encode({f}.\"name\", 'hex') !~ '^([0-7][0-9a-f])*$') RETURNING 1) "
        'SELECT s."permanent", s."ttl", f."name", f."value", EXISTS (SELECT 1 FROM t) FROM s '
        'LEFT JOIN {f} f ON f."key" = s."key"'
    )
    _TOUCH = (
        'UPDATE {s} SET "expires" = {now} + "ttl" '
        'WHERE "key" = {p} AND "expires" > {now} AND {valid}'
    )
    # {valid}: the lifetime and flag ``load`` accepts, checked where SQL can.
    _UPDATE_SESSION = (
        'UPDATE {s} SET "permanent" = COALESCE({p}, "permanent"), '
        '"ttl" = COALESCE({p}, "ttl"), "expires" = {now} + COALESCE({p}, "ttl") '
        'WHERE "key" = {p} AND "expires" > {now} AND {valid}'
    )
    # The names, and whether each value is a byte string, for ``_field_name``.
    _FIELD_NAMES = 'SELECT "name", {value_is_blob} FROM {f} WHERE "key" = {p}'
    _PUT_SESSION = (
        'INSERT INTO {s} ("key", "permanent", "ttl", "expires") '
        'VALUES ({p}, {p}, {p}, {now} + {p}) ON CONFLICT ("key") DO UPDATE SET '
        '"permanent" = EXCLUDED."permanent", "ttl" = EXCLUDED."ttl", '
        '"expires" = EXCLUDED."expires"'
    )
    _DELETE_SESSION = 'DELETE FROM {s} WHERE "key" = {p}'
    _DELETE_FIELDS = 'DELETE FROM {f} WHERE "key" = {p}'
    _DELETE_IF_EMPTY = (
        'DELETE FROM {s} WHERE "key" = {p} AND NOT EXISTS (SELECT 1 FROM {f} WHERE "key" = {p})'
    )
    _DELETE_NAMED = 'DELETE FROM {f} WHERE "key" = {p} AND "name" IN ({names})'
    _PUT_FIELDS = (
        'INSERT INTO {f} ("key", "name", "value") VALUES {rows} '
        'ON CONFLICT ("key", "name") DO UPDATE SET "value" = EXCLUDED."value"'
    )
    _EXPIRED = 'SELECT "key" FROM {s} WHERE "expires" <= {now} LIMIT {p}'
    _CLEANUP_SQLITE = (
        'DELETE FROM {f} WHERE "key" IN ({expired})',
        # Sessions whose fields went with the statement before (no foreign keys).
        'DELETE FROM {s} WHERE "key" IN ({expired}) '
        'AND NOT EXISTS (SELECT 1 FROM {f} WHERE {f}."key" = {s}."key")',
    )
    # The fields go by cascade; rows another process's cleanup holds are skipped.
    _CLEANUP_POSTGRESQL = ('DELETE FROM {s} WHERE "key" IN ({expired} FOR UPDATE SKIP LOCKED)',)

    def __init__(self, table: str, *, sqlite: bool, param: str) -> None:
        self.sqlite = sqlite
        if sqlite:
            types = {"boolean": "INTEGER", "real": "REAL", "blob": "BLOB",
                     "rowid": " WITHOUT ROWID"}
            # The database's clock, in Unix seconds (julianday has milliseconds).
            now = "((julianday('now') - 2440587.5) * 86400.0)"
            # SQLite keeps whatever it is given: a hand-edited row may hold any type.
            valid = ("""typeof("ttl") = 'integer' AND "ttl" >= 1 """
                     """AND typeof("permanent") IN ('integer', 'real') AND "permanent" IN (0, 1)""")
            value_is_blob = """typeof("value") = 'blob'"""
        else:
            types = {"boolean": "BOOLEAN", "real": "DOUBLE PRECISION", "blob": "BYTEA",
                     "rowid": ""}
            now = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
            valid = '"ttl" >= 1'  # the flag is a BOOLEAN NOT NULL, the values BYTEA NOT NULL
            value_is_blob = "TRUE"
        self._names = {"s": f'"{table}"', "f": f'"{table}{_FIELDS_SUFFIX}"', "p": param,
                       "now": now, "index": f'"{table}_expires"', "valid": valid,
                       "value_is_blob": value_is_blob}
        self.schema = tuple(self._render(statement, **types) for statement in self._SCHEMA)
        self.load = self._render(self._LOAD)
        self.load_touching = self._render(self._LOAD_TOUCHING)
        self.touch = self._render(self._TOUCH)
        self.update_session = self._render(self._UPDATE_SESSION)
        self.field_names = self._render(self._FIELD_NAMES)
        self.put_session = self._render(self._PUT_SESSION)
        self.delete_session = self._render(self._DELETE_SESSION)
        self.delete_fields = self._render(self._DELETE_FIELDS)
        self.delete_if_empty = self._render(self._DELETE_IF_EMPTY)
        expired = self._render(self._EXPIRED)
        self.count = self._render('SELECT count(*) FROM {s} WHERE "expires" > {now} '
                                  'AND substr("key", 1, {p}) = {p}')
        self.expires = self._render('SELECT "expires" FROM {s} WHERE "key" = {p}')
        self.count_expired = self._render('SELECT count(*) FROM {s} WHERE "expires" <= {now}')
        self.cleanup = tuple(
            self._render(statement, expired=expired)
            for statement in (self._CLEANUP_SQLITE if sqlite else self._CLEANUP_POSTGRESQL)
        )

    def _render(self, template: str, **extra: str) -> str:
        return template.format(**self._names, **extra)

    def delete_named(self, count: int) -> str:
        return self._render(self._DELETE_NAMED, names=", ".join([self._names["p"]] * count))

    def put_fields(self, count: int) -> str:
        p = self._names["p"]
        return self._render(self._PUT_FIELDS, rows=", ".join([f"({p}, {p}, {p})"] * count))


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _is_async(database: Any) -> bool:
    # Looked up, not imported: pwasyncio needs greenlet, which a sync app may not have, and a
    # database of its classes means it was imported.
    pwasyncio = sys.modules.get("playhouse.pwasyncio")
    return pwasyncio is not None and isinstance(database, pwasyncio.AsyncDatabaseMixin)


def _in_memory(name: str) -> bool:
    return name in ("", ":memory:") or (name.startswith("file:") and "mode=memory" in name)


def _where(database: Any, sqlite: bool) -> str:
    """The database as a URL without credentials, for errors and to tell stores apart."""
    name = str(database.database)
    if sqlite:
        if _in_memory(name):
            return f"sqlite::memory: at 0x{id(database):x}"  # one per database object
        if name.startswith("file:"):
            return "sqlite:" + name.partition("?")[0]
        return "sqlite:///" + os.path.abspath(name)
    params: dict[str, Any] = dict(database.connect_params)
    if "://" in name:
        url = urlsplit(name)
        params.setdefault("host", url.hostname)
        params.setdefault("port", url.port)
        name = url.path.lstrip("/")
    elif "=" in name:  # a libpq "key=value ..." string
        pairs = {k: quoted or bare for k, quoted, bare in _DSN_PAIR.findall(name)}
        for option in ("host", "port"):
            params.setdefault(option, pairs.get(option))
        name = pairs.get("dbname", "")
    host, port = params.get("host") or "", params.get("port")
    if ":" in str(host):
        host = f"[{host}]"
    return f"postgresql://{host}{'' if port is None else f':{port}'}/{name}"
