"""The benchmark apps: the same routes under asyncsessions, its sequential twin and the peers."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .values import field_name, field_value, scaling_session

HOST = "127.0.0.1"
SECRET = "benchmark secret key, not a real one"

#: Which session fields each server-side store owns in the multi-store config; every other
#: field ("csrf_token", and "history" without Firestore) goes to the signed cookie ('auto').
MULTI_FIELDS = {
    "redis": ["user_id", "user_data"],
    "mongodb": ["cart"],
    "memcache": ["prefs"],
    "firestore": ["history"],
}
#: The same split over three redis stores (``redis``, ``redis@1``, ``redis@2``: databases 0,
#: 1 and 2 of one server): the three-store read without the test MongoDB server's own cost.
MULTI_FIELDS_REDIS3 = {
    "redis": ["user_id", "user_data"],
    "redis@1": ["cart"],
    "redis@2": ["prefs"],
}
#: The fields ``/write-all`` changes: one per store of the multi-store config.
WRITE_ALL = ["csrf_token", "user_data", "cart", "prefs", "history"]
_counter = itertools.count(1)


@dataclass(frozen=True)
class Endpoints:
    """Loopback ports of the servers (direct or through the latency proxy); None: absent."""

    redis: int | None = None
    mongodb: int | None = None
    memcached: int | None = None
    firestore: int | None = None
    postgresql: int | None = None
    moto: int | None = None  # DynamoDB (moto_server)


#: Dummy credentials and the region for moto's DynamoDB (it checks no signature).
DYNAMODB_AUTH = {"region_name": "us-east-1", "aws_access_key_id": "testing",
                 "aws_secret_access_key": "testing"}


def postgres_url(ep: Endpoints) -> str:
    """The PostgreSQL URL (the test server's trust-authenticated ``postgres`` user)."""
    return f"postgresql://postgres@{HOST}:{ep.postgresql}/postgres"


def initial_data() -> dict[str, Any]:
    """What ``/setup`` puts in the session: a field for every store."""
    return {
        "csrf_token": uuid.uuid4().hex,
        "user_id": 42,
        "user_data": {"name": "Ada Lovelace", "roles": ["admin", "dev"], "n": 0},
        "cart": [101, 102, 103],
        "prefs": {"theme": "dark", "lang": "en"},
        "history": ["/", "/cart", "/checkout"],
    }


def _changed(field: str, n: int) -> Any:
    return {
        "csrf_token": f"token-{n}",
        "user_data": {"name": "Ada Lovelace", "roles": ["admin", "dev"], "n": n},
        "cart": [101, 102, n],
        "prefs": {"theme": "dark", "lang": "en", "n": n},
        "history": ["/", f"/page/{n}"],
    }[field]


def _read(session: MutableMapping[str, Any]) -> str:
    return str(sum(session.get(k) is not None for k in initial_data()))


def _write_one(session: MutableMapping[str, Any]) -> None:
    session["user_data"] = _changed("user_data", next(_counter))


def _write_all(session: MutableMapping[str, Any]) -> None:
    n = next(_counter)
    for field in WRITE_ALL:
        session[field] = _changed(field, n)


# The scaling scenario: a session of N ~1 KB fields; a request reads or changes one of them.
SCALE_FIELD = field_name(0)


def _scale_setup(session: MutableMapping[str, Any], n: int) -> None:
    session.update(scaling_session(n))


def _scale_read(session: MutableMapping[str, Any]) -> str:
    return str(session.get(SCALE_FIELD, {}).get("version"))


def _scale_write(session: MutableMapping[str, Any]) -> None:
    session[SCALE_FIELD] = field_value(0, next(_counter))


# -- asyncsessions configs ------------------------------------------------------------------


def ours_config(kind: str, ep: Endpoints) -> list[dict[str, Any]]:
    """SESSION_CONFIG for ``kind``: one store ('redis', 'mongodb', 'memcache', 'firestore'),
    or 'multi:redis+mongodb+...': a signed cookie ('auto') plus those stores (MULTI_FIELDS)."""
    prefix = f"b{uuid.uuid4().hex[:8]}:"
    entries = {
        "redis": lambda: {"session_type": "redis", "url": f"redis://{HOST}:{ep.redis}/0"},
        "mongodb": lambda: {"session_type": "mongodb", "url": mongo_url(ep)},
        "memcache": lambda: {"session_type": "memcache", "host": HOST, "port": ep.memcached},
        "firestore": lambda: {"session_type": "firestore", "project": "demo-bench"},
        # Not Flask-Session's table names ("sessions", "Sessions"), which the peers use.
        "sqlalchemy": lambda: {"session_type": "sqlalchemy", "url": postgres_url(ep),
                               "table": "asyncsessions"},
        "dynamodb": lambda: {"session_type": "dynamodb", "table": "asyncsessions",
                             "endpoint_url": f"http://{HOST}:{ep.moto}", **DYNAMODB_AUTH},
    }
    if not kind.startswith("multi:"):
        return [{"cookie_name": "session", "key_prefix": prefix, **entries[kind]()}]
    config: list[dict[str, Any]] = [
        {"cookie_name": "data", "session_type": "secure_cookie", "session_fields": "auto"}
    ]
    for store in kind.removeprefix("multi:").split("+"):
        if "@" in store:  # another database of the same redis server
            db = int(store.partition("@")[2])
            config.append({"cookie_name": f"s_redis{db}", "key_prefix": prefix,
                           "session_fields": MULTI_FIELDS_REDIS3[store],
                           "session_type": "redis", "url": f"redis://{HOST}:{ep.redis}/{db}"})
            continue
        fields = MULTI_FIELDS_REDIS3[store] if "@" in kind else MULTI_FIELDS[store]
        config.append({"cookie_name": f"s_{store}", "key_prefix": prefix,
                       "session_fields": fields, **entries[store]()})
    return config


def mongo_url(ep: Endpoints) -> str:
    """The MongoDB URL; heartbeats every 60 s so driver chatter barely touches the counts."""
    return f"mongodb://{HOST}:{ep.mongodb}/?heartbeatFrequencyMS=60000"


# -- Flask ----------------------------------------------------------------------------------


def _flask_routes(app: Any, regenerate: Callable[[Any], None]) -> None:
    from flask import session

    @app.get("/setup")
    def setup() -> str:
        session.update(initial_data())
        return "ok"

    @app.get("/read")
    def read() -> str:
        return _read(session)

    @app.post("/write-one")
    def write_one() -> str:
        _write_one(session)
        return "ok"

    @app.post("/write-all")
    def write_all() -> str:
        _write_all(session)
        return "ok"

    @app.post("/login")
    def login() -> str:
        regenerate(session)
        session["user_id"] = next(_counter)
        return "ok"

    @app.get("/nosession")
    def nosession() -> str:
        return "ok"

    @app.get("/scale/setup/<int:n>")
    def scale_setup(n: int) -> str:
        _scale_setup(session, n)
        return "ok"

    @app.get("/scale/read")
    def scale_read() -> str:
        return _scale_read(session)

    @app.post("/scale/write-one")
    def scale_write() -> str:
        _scale_write(session)
        return "ok"


def build_flask(lib: str, kind: str, ep: Endpoints) -> Any:
    """A Flask app: ``lib`` is 'asyncsessions', 'sequential' or 'flask-session'."""
    from flask import Flask, current_app

    app = Flask(f"bench_{lib}_{kind}")
    app.secret_key = SECRET
    if lib in ("asyncsessions", "sequential"):
        from asyncsessions import Session

        app.config["SESSION_CONFIG"] = ours_config(kind, ep)
        Session(app)
        if lib == "sequential":
            from .sequential import make_sequential

            make_sequential(app)
        _flask_routes(app, lambda s: s.regenerate())
        return app
    if lib != "flask-session":
        raise ValueError(lib)
    import flask_session

    app.config["SESSION_KEY_PREFIX"] = f"fs{uuid.uuid4().hex[:8]}:"
    if kind == "redis":
        import redis

        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=redis.Redis(HOST, ep.redis))
    elif kind == "mongodb":
        import pymongo

        client: Any = pymongo.MongoClient(mongo_url(ep))
        app.config.update(SESSION_TYPE="mongodb", SESSION_MONGODB=client)
    elif kind == "memcache":
        import pymemcache.client.base

        client = pymemcache.client.base.Client((HOST, ep.memcached), no_delay=True)
        app.config.update(SESSION_TYPE="memcached", SESSION_MEMCACHED=client)
    elif kind == "sqlalchemy":
        from flask_sqlalchemy import SQLAlchemy

        app.config["SQLALCHEMY_DATABASE_URI"] = postgres_url(ep).replace(
            "postgresql://", "postgresql+psycopg2://", 1)
        app.config.update(SESSION_TYPE="sqlalchemy", SESSION_SQLALCHEMY=SQLAlchemy(app))
    elif kind == "dynamodb":
        import boto3

        resource = boto3.Session(**DYNAMODB_AUTH).resource(
            "dynamodb", endpoint_url=f"http://{HOST}:{ep.moto}")
        app.config.update(SESSION_TYPE="dynamodb", SESSION_DYNAMODB=resource)
    else:
        raise ValueError(f"Flask-Session has no {kind!r} config")
    flask_session.Session(app)
    _flask_routes(app, lambda s: current_app.session_interface.regenerate(s))
    return app


# -- Quart ----------------------------------------------------------------------------------


def _quart_routes(app: Any) -> None:
    from quart import session

    @app.get("/setup")
    async def setup() -> str:
        session.update(initial_data())
        return "ok"

    @app.get("/read")
    async def read() -> str:
        return _read(session)

    @app.post("/write-one")
    async def write_one() -> str:
        _write_one(session)
        return "ok"

    @app.get("/nosession")
    async def nosession() -> str:
        return "ok"


def build_quart(lib: str, ep: Endpoints) -> Any:
    """A Quart app on one redis store: ``lib`` is 'asyncsessions' or 'quart-session'."""
    from quart import Quart

    app = Quart(f"bench_quart_{lib}")
    app.secret_key = SECRET
    url = f"redis://{HOST}:{ep.redis}/0"
    if lib == "asyncsessions":
        from asyncsessions import Session

        app.config["SESSION_CONFIG"] = ours_config("redis", ep)
        Session(app)
    elif lib == "quart-session":
        import quart_session

        app.config.update(SESSION_TYPE="redis", SESSION_URI=url,
                          SESSION_KEY_PREFIX=f"qs{uuid.uuid4().hex[:8]}:")
        quart_session.Session(app)
    else:
        raise ValueError(lib)
    _quart_routes(app)
    return app
