"""Live Flask-Session sessions survive the switch: Flask-Session 0.8 itself writes them, the
same config then runs on asyncsessions, and the user is still logged in.

Per store (redis, memcached, mongodb, sqlalchemy on PostgreSQL, dynamodb on moto) and per
format (msgpack; JSON with signed ids): the same cookie reads the same values, a read-only
request leaves their record as it is, the first write rewrites it in this library's format
(and the session reads the same after), a logout deletes it, and a pickle under the key
(Flask-Session < 0.7, Flask-Session2) reads as no session with one log line and is never
unpickled.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import pickle
import sys
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import flask
import pytest

import asyncsessions
from asyncsessions import dialects
from asyncsessions.backends import flask_session as reader
from asyncsessions.backends.base import Record, masked
from asyncsessions.backends.flask_session import decode
from asyncsessions.serialization import dumps

flask_session = pytest.importorskip("flask_session")
pytest.importorskip("msgspec")

pytestmark = pytest.mark.filterwarnings(
    # Flask-Session 0.8 deprecates its own signer, and warns about clients it creates.
    "ignore::DeprecationWarning", "ignore::RuntimeWarning",
)

#: What the user had in their session: msgpack round-trips bytes and aware datetimes.
VALUES: dict[str, Any] = {
    "_user_id": "42", "_fresh": True, "csrf_token": "abc123", "name": "Zoë",
    "roles": ["admin", "editor"], "ratio": 0.25, "prefs": {"dark": True, "lang": None},
    "since": datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=timezone.utc),
    "token": b"\x00\xffbytes",
}

HOUR = timedelta(hours=1)

#: Calls of _sprung: a pickle under a session's key must never be loaded.
SPRUNG: list[str] = []


def _sprung(why: str) -> str:
    SPRUNG.append(why)
    return why


class Trap:
    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return _sprung, ("unpickled",)


PICKLE = pickle.dumps({"_permanent": True, "_user_id": "42", "trap": Trap()})


@dataclass
class Store:
    """One SESSION_TYPE: its Flask-Session config and a look at the records it holds."""

    kind: str
    config: dict[str, Any]
    theirs: Callable[[str], bytes | None]  # their record's value under a key, if there
    ours: Callable[[str], bool]  # whether a record in this library's format is there
    plant: Callable[..., None]  # (key, value, expires=timedelta): a value in their layout
    cleanup: list[Callable[[], Any]] = field(default_factory=list)
    #: Settings an app makes for itself before the extension (its Flask-SQLAlchemy).
    setup: Callable[[flask.Flask], None] = lambda app: None


def _redis(request: pytest.FixtureRequest, prefix: str) -> Store:
    import redis

    server = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    return Store(
        "redis", {"SESSION_TYPE": "redis", "SESSION_REDIS": client},
        theirs=lambda key: client.get(key) if client.type(key) == b"string" else None,
        ours=lambda key: client.type(key) == b"hash",
        plant=lambda key, value, expires=HOUR: client.set(key, value, ex=expires),
        cleanup=[client.close],
    )


def _memcached(request: pytest.FixtureRequest, prefix: str) -> Store:
    from pymemcache.client.base import Client

    server = request.getfixturevalue("memcached_server")
    client = Client((server.host, server.port), default_noreply=False)

    # This library's items: length-prefixed entries (earlier: JSON with a NUL-named ttl).
    layouts = (b'["as1",', b'{"\\u0000ttl"')

    def theirs(key: str) -> bytes | None:
        value = client.get(key)
        return None if value is None or value.startswith(layouts) else value

    def ours(key: str) -> bool:
        value = client.get(key)
        return value is not None and value.startswith(layouts)

    return Store(
        "memcached", {"SESSION_TYPE": "memcached", "SESSION_MEMCACHED": client},
        theirs=theirs, ours=ours,
        plant=lambda key, value, expires=HOUR: client.set(key, value, expire=expires.seconds),
        cleanup=[client.close],
    )


def _mongodb(request: pytest.FixtureRequest, prefix: str) -> Store:
    import pymongo

    server = request.getfixturevalue("mongo_server")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.url)
    sessions = client["flask_session"]["sessions"]  # their defaults, and so ours

    def theirs(key: str) -> bytes | None:
        doc = sessions.find_one({"id": key})
        return None if doc is None else bytes(doc["val"])

    def plant(key: str, value: bytes, expires: timedelta = HOUR) -> None:
        sessions.insert_one({"id": key, "val": value, "expiration": datetime.utcnow() + expires})

    return Store(
        "mongodb", {"SESSION_TYPE": "mongodb", "SESSION_MONGODB": client},
        theirs=theirs, ours=lambda key: sessions.find_one({"_id": key}) is not None,
        plant=plant, cleanup=[client.close],
    )


def _sqlalchemy(request: pytest.FixtureRequest, prefix: str) -> Store:
    import sqlalchemy as sa
    from flask_sqlalchemy import SQLAlchemy

    server = request.getfixturevalue("postgres_server")
    # Tables of their own: the other SQL tests' default table is called sessions too.
    table, ours_table = f"fs_{uuid.uuid4().hex[:8]}", f"as_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(server.url)
    dbs: list[Any] = []
    # dialects.py's mapping, with a table of this test's own for ours (so that tests running
    # on one database never share it).
    patch = request.getfixturevalue("monkeypatch")
    patch.setitem(dialects.LEGACY_TYPES, "sqlalchemy", dialects.LegacyType(
        "sqlalchemy",
        {"SESSION_SQLALCHEMY": "engine", "SESSION_SQLALCHEMY_TABLE": "legacy_table",
         "SESSION_SQLALCHEMY_SCHEMA": "schema"},
        {"table": ours_table, "legacy_table": "sessions"},
    ))

    def setup(app: flask.Flask) -> None:
        # Each app its own Flask-SQLAlchemy, as each deploy of the user's app has.
        app.config["SQLALCHEMY_DATABASE_URI"] = server.url
        app.config["SESSION_SQLALCHEMY"] = db = SQLAlchemy(app)
        dbs.append((app, db))

    def query(sql: str, **params: Any) -> Any:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return result.first() if result.returns_rows else None

    def theirs(key: str) -> bytes | None:
        row = query(f"SELECT data FROM {table} WHERE session_id = :key", key=key)
        return None if row is None else bytes(row[0])

    def ours(key: str) -> bool:
        exists = query("SELECT to_regclass(:t)", t=ours_table)[0] is not None
        return exists and query(f"SELECT 1 FROM {ours_table} WHERE id = :key", key=key) is not None

    def plant(key: str, value: bytes, expires: timedelta = HOUR) -> None:
        # Their table, as Flask-Session 0.8 makes it.
        query(f"CREATE TABLE IF NOT EXISTS {table} (id SERIAL PRIMARY KEY, session_id"
              " VARCHAR(255) UNIQUE, data BYTEA, expiry TIMESTAMP WITHOUT TIME ZONE)")
        query(f"INSERT INTO {table} (session_id, data, expiry) VALUES (:k, :v, :e)",
              k=key, v=value, e=datetime.utcnow() + expires)

    def drop() -> None:
        for app, db in dbs:
            with app.app_context():
                db.engine.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}, {ours_table}"))
        engine.dispose()

    return Store(
        "sqlalchemy", {"SESSION_TYPE": "sqlalchemy", "SESSION_SQLALCHEMY_TABLE": table},
        theirs=theirs, ours=ours, plant=plant, cleanup=[drop], setup=setup,
    )


def _dynamodb(request: pytest.FixtureRequest, prefix: str, table: str = "") -> Store:
    import boto3

    if importlib.util.find_spec("mypy_boto3_dynamodb") is None:
        # Flask-Session 0.8 imports boto3's type stubs at runtime, for one annotation.
        stubs = types.ModuleType("mypy_boto3_dynamodb.service_resource")
        stubs.DynamoDBServiceResource = object  # type: ignore[attr-defined]
        patch = request.getfixturevalue("monkeypatch")
        patch.setitem(sys.modules, "mypy_boto3_dynamodb", types.ModuleType("mypy_boto3_dynamodb"))
        patch.setitem(sys.modules, "mypy_boto3_dynamodb.service_resource", stubs)
    server = request.getfixturevalue("dynamodb_server")
    # What Flask-Session 0.8's users pass as SESSION_DYNAMODB: a boto3 resource.
    resource = boto3.resource("dynamodb", **server.credentials)
    table = table or f"fs{uuid.uuid4().hex[:8]}"
    client = boto3.client("dynamodb", **server.credentials)  # (the resource's own serializes)

    def get(key: str) -> dict[str, Any]:
        found: dict[str, Any] = client.get_item(
            TableName=table, Key={"id": {"S": key}}, ConsistentRead=True).get("Item", {})
        return found

    def plant(key: str, value: bytes, expires: timedelta = HOUR) -> None:
        # Their item, as their _upsert_session writes it (their table, as they create it).
        with contextlib.suppress(client.exceptions.ResourceInUseException):
            client.create_table(
                TableName=table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        expiration = Decimal((datetime.utcnow() + expires).timestamp())
        client.put_item(TableName=table, Item={"id": {"S": key}, "val": {"B": value},
                                               "expiration": {"N": str(expiration)}})

    return Store(
        "dynamodb",
        {"SESSION_TYPE": "dynamodb", "SESSION_DYNAMODB": resource, "SESSION_DYNAMODB_TABLE": table},
        theirs=lambda key: get(key).get("val", {}).get("B"),
        ours=lambda key: "f" in get(key), plant=plant,
        cleanup=[lambda: client.delete_table(TableName=table), client.close,
                 resource.meta.client.close],
    )


STORES = {"redis": _redis, "memcached": _memcached, "mongodb": _mongodb,
          "sqlalchemy": _sqlalchemy, "dynamodb": _dynamodb}


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    prefix = f"fs{uuid.uuid4().hex[:8]}:"
    made = STORES[request.param](request, prefix)
    made.config.update(SECRET_KEY="their secret", SESSION_KEY_PREFIX=prefix)
    yield made
    for cleanup in made.cleanup:
        cleanup()


@pytest.fixture(params=["msgpack", "json+signer"])
def config(request: pytest.FixtureRequest, store: Store) -> dict[str, Any]:
    """Their whole app config: msgpack (their default), or JSON with signed ids."""
    if request.param == "json+signer":
        return {**store.config, "SESSION_SERIALIZATION_FORMAT": "json",
                "SESSION_USE_SIGNER": True}
    return dict(store.config)


#: What each app's last /show saw: the session's values and its permanent flag.
Seen = list[tuple[dict[str, Any], bool]]


def make_app(store: Store, config: dict[str, Any], extension: Any, seen: Seen) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(config)
    store.setup(app)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extension(app)

    @app.post("/login")
    def login() -> str:
        flask.session.update(VALUES)
        return "ok"

    @app.get("/show")
    def show() -> str:
        session = flask.session
        seen.append(({k: session[k] for k in session if k != "_permanent"}, session.permanent))
        return "ok"

    @app.post("/visit")
    def visit() -> str:
        flask.session["visits"] = flask.session.get("visits", 0) + 1
        return "ok"

    @app.post("/logout")
    def logout() -> str:
        flask.session.clear()
        return "ok"

    return app


def key_of(store: Store, cookie: str) -> str:
    sid = cookie.rsplit(".", 1)[0] if "." in cookie else cookie  # a signed id: sid.signature
    return str(store.config["SESSION_KEY_PREFIX"]) + sid


def logged_in_with_flask_session(
    store: Store, config: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A login on Flask-Session 0.8: the cookie, and the session as it reads it back."""
    seen: Seen = []
    client = make_app(store, config, flask_session.Session, seen).test_client()
    assert client.post("/login").status_code == 200
    assert client.get("/show").status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    (values, permanent), = seen
    assert permanent is True  # SESSION_PERMANENT defaults to True there
    return cookie.value, values


def switched(store: Store, config: dict[str, Any], cookie: str) -> tuple[Any, Seen]:
    """The same config on asyncsessions, with the user's cookie."""
    seen: Seen = []
    client = make_app(store, config, asyncsessions.Session, seen).test_client()
    client.set_cookie("session", cookie)
    return client, seen


def test_logged_in_users_stay_logged_in(
    store: Store, config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    cookie, theirs = logged_in_with_flask_session(store, config)
    if config.get("SESSION_SERIALIZATION_FORMAT", "msgpack") == "msgpack":
        assert theirs == VALUES  # what msgpack gives back: bytes and aware datetimes too
    else:
        assert theirs["since"] == "2024-05-17T08:30:15.123456Z"  # JSON's strings, as there
    key = key_of(store, cookie)
    before = store.theirs(key)
    assert before is not None

    client, seen = switched(store, config, cookie)
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert client.get("/show").status_code == 200
    assert seen == [(theirs, True)]  # the same values, still permanent
    assert "unreadable" not in caplog.text
    # A read-only request leaves their record as it is.
    assert store.theirs(key) == before
    assert not store.ours(key)

    # The first write rewrites it whole, in this library's format, under the same id.
    assert client.post("/visit").status_code == 200
    assert store.theirs(key) is None
    assert store.ours(key)
    assert key_of(store, client.get_cookie("session").value) == key  # (re-signed as ours)
    assert client.get("/show").status_code == 200
    assert seen[-1] == ({**theirs, "visits": 1}, True)


def test_logout_deletes_their_record(store: Store) -> None:
    cookie, _ = logged_in_with_flask_session(store, store.config)
    key = key_of(store, cookie)
    client, seen = switched(store, store.config, cookie)
    assert client.post("/logout").status_code == 200
    assert store.theirs(key) is None
    assert not store.ours(key)
    client.set_cookie("session", cookie)
    assert client.get("/show").status_code == 200
    assert seen == [({}, True)]  # a fresh session (permanent: their default)


def test_pickled_record_is_never_unpickled(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # What Flask-Session < 0.7 and Flask-Session2 kept under the same key: a pickle.
    sid = "p" * 43
    key = str(store.config["SESSION_KEY_PREFIX"]) + sid
    store.plant(key, PICKLE)
    client, seen = switched(store, store.config, sid)
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert client.get("/show").status_code == 200
    assert SPRUNG == []
    assert seen == [({}, True)]
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert lines == [
        f"session store 'session': unreadable record {masked(key)!r} read as no session "
        "(a pickle (Flask-Session < 0.7, Flask-Session2 or cachelib), never unpickled)"
    ]
    assert store.theirs(key) == PICKLE  # left as it is

    # A login under it: a new id, and the pickle stays where it was.
    assert client.post("/visit").status_code == 200
    new = client.get_cookie("session").value
    assert new != sid
    assert store.ours(str(store.config["SESSION_KEY_PREFIX"]) + new)
    assert SPRUNG == []


# -- the decoder alone -----------------------------------------------------------------------


def test_decoder_reads_their_msgpack_and_json() -> None:
    import msgspec

    for encode in (msgspec.msgpack.encode, msgspec.json.encode):
        record = decode(encode({"_permanent": False, "a": 1, "b": [1, "x"]}))
        assert record == Record({"a": dumps(1), "b": dumps([1, "x"])}, False, foreign=True)
    assert decode(msgspec.msgpack.encode({"_permanent": True, "since": VALUES["since"],
                                          "token": VALUES["token"]})) == Record(
        {"since": dumps(VALUES["since"]), "token": dumps(VALUES["token"])}, True, foreign=True)
    assert decode(msgspec.msgpack.encode({"_permanent": True})) is None  # no field: none
    assert decode(b"\x80") is None  # msgpack's empty map, not a pickle


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (PICKLE, "a pickle"),
        (pickle.dumps({"a": 1}, protocol=2), "a pickle"),
        (b"(dp0\nS'a'\np1\nI1\ns.", "neither msgpack nor JSON"),  # protocol 0
        (b"\xc1", "neither msgpack nor JSON"),
        (b"[1, 2]", "a list, not a session dict"),
        (b"\x81\x01\x02", "a session key is a int"),
        (b'{"\\u0000p": 1}', "starts with NUL"),
        (b"\x81\xa1a\xd4\x05\x01", "cannot store a value of type 'Ext'"),
    ],
)
def test_decoder_refuses_what_it_cannot_read(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode(value)
    assert SPRUNG == []


def test_their_expiration_is_honoured(store: Store) -> None:
    if store.kind in ("redis", "memcached"):
        pytest.skip("their native TTL: the server itself forgets the record")
    import msgspec

    prefix = str(store.config["SESSION_KEY_PREFIX"])
    live, dead = "l" * 43, "d" * 43
    value = msgspec.msgpack.encode({"_permanent": True, "_user_id": "42"})
    store.plant(prefix + live, value, expires=timedelta(minutes=1))
    store.plant(prefix + dead, value, expires=timedelta(seconds=-1))
    client, seen = switched(store, store.config, live)
    assert client.get("/show").status_code == 200
    client.set_cookie("session", dead)
    assert client.get("/show").status_code == 200
    assert seen == [({"_user_id": "42"}, True), ({}, True)]


def test_a_session_config_entry_names_their_table(request: pytest.FixtureRequest) -> None:
    """Without SESSION_TYPE: read_flask_session and legacy_table on a sqlalchemy entry."""
    store = _sqlalchemy(request, "")
    prefix = f"fs{uuid.uuid4().hex[:8]}:"
    store.config.update(SECRET_KEY="their secret", SESSION_KEY_PREFIX=prefix)
    try:
        cookie, theirs = logged_in_with_flask_session(store, store.config)
        table = store.config["SESSION_SQLALCHEMY_TABLE"]
        seen: Seen = []
        config = {"SECRET_KEY": "their secret", "SESSION_CONFIG": [{
            "cookie_name": "session", "session_type": "sqlalchemy",
            "url": request.getfixturevalue("postgres_server").url,
            "table": dialects.LEGACY_TYPES["sqlalchemy"].defaults["table"],  # as ours() looks
            "legacy_table": table, "read_flask_session": True,
            "key_prefix": prefix,
        }]}
        client = make_app(Store("none", {}, store.theirs, store.ours, store.plant), config,
                          asyncsessions.Session, seen).test_client()
        client.set_cookie("session", cookie)
        assert client.get("/show").status_code == 200
        assert seen == [(theirs, True)]
        assert client.post("/visit").status_code == 200
        assert store.theirs(prefix + cookie) is None
        assert store.ours(prefix + cookie)
    finally:
        for cleanup in store.cleanup:
            cleanup()


def test_dynamodb_their_default_table_is_where_sessions_are_read(
    request: pytest.FixtureRequest,
) -> None:
    store = _dynamodb(request, "", table="Sessions")  # Flask-Session 0.8's default
    del store.config["SESSION_DYNAMODB_TABLE"]
    store.config.update(SECRET_KEY="their secret", SESSION_KEY_PREFIX=f"fs{uuid.uuid4().hex[:8]}:")
    try:
        cookie, theirs = logged_in_with_flask_session(store, store.config)
        client, seen = switched(store, store.config, cookie)
        assert client.get("/show").status_code == 200
        assert seen == [(theirs, True)]
    finally:
        for cleanup in store.cleanup:
            cleanup()


def test_legacy_table_must_be_another_table() -> None:
    from asyncsessions.backends.sqlalchemy import SQLAlchemyBackend

    with pytest.raises(ValueError, match="set table to another name"):
        SQLAlchemyBackend(url="sqlite:///x.db", legacy_table="sessions")


def test_without_msgspec_init_fails_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "_decoders", None)
    monkeypatch.setitem(sys.modules, "msgspec", None)  # import msgspec: ImportError
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="s", SESSION_TYPE="redis")
    with pytest.raises(ImportError, match=r"pip install 'asyncsessions\[flask-session\]'"):
        asyncsessions.Session(app)
    # Only reading Flask-Session's records needs it.
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="s", SESSION_CONFIG=[
        {"cookie_name": "session", "session_type": "redis"}])
    asyncsessions.Session(app)
