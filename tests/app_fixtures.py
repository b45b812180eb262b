"""App-level fixtures: the framework and store parameters every behaviour test runs under."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apps import driver_factory

STORES = [
    "secure_cookie", "filesystem", "redis", "redis_cluster", "memcache", "mongodb", "firestore",
    "sqlalchemy_postgresql", "sqlalchemy_mysql", "sqlalchemy_sqlite", "peewee_sqlite",
    "cachelib", "elasticsearch", "dynamodb", "datastore",
]
#: Every server-side store type, for the store conformance suite.
SERVER_STORES = [*STORES[1:], "peewee_postgresql"]


@pytest.fixture(params=["flask", "quart", "starlette", "fastapi"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_driver(framework: str) -> Iterator[Any]:
    make = driver_factory(framework)
    yield make
    for driver in make.made:
        driver.close()


@pytest.fixture(params=STORES)
def store_entry(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    """A SESSION_CONFIG entry (without cookie_name) for one store, on a fresh key prefix."""
    return store_config(request, str(request.param), tmp_path)


def store_config(request: pytest.FixtureRequest, kind: str, tmp_path: Any) -> dict[str, Any]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    if kind == "secure_cookie":
        return {"session_type": "secure_cookie"}
    if kind == "filesystem":
        return {"session_type": "filesystem", "directory": str(tmp_path / "sessions"),
                "key_prefix": prefix}
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        return {"session_type": "redis", "url": server.url, "key_prefix": prefix}
    if kind == "redis_cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return {"session_type": "redis", "url": cluster.url, "cluster": True,
                "key_prefix": prefix}
    if kind == "memcache":
        server = request.getfixturevalue("memcached_server")
        return {"session_type": "memcache", "host": server.host, "port": server.port,
                "key_prefix": prefix}
    if kind == "mongodb":
        server = request.getfixturevalue("mongo_server")
        return {"session_type": "mongodb", "url": server.url, "key_prefix": prefix}
    if kind == "firestore":
        emulator = request.getfixturevalue("firestore_emulator")
        request.getfixturevalue("monkeypatch").setenv(
            "FIRESTORE_EMULATOR_HOST", emulator.host_port
        )
        return {"session_type": "firestore", "project": "asyncsessions-test",
                "key_prefix": prefix}
    if kind.startswith("sqlalchemy_"):
        url = sql_url(request, kind.removeprefix("sqlalchemy_"), tmp_path)
        return {"session_type": "sqlalchemy", "url": url, "key_prefix": prefix}
    if kind.startswith("peewee_"):
        return {"session_type": "peewee", "key_prefix": prefix,
                "database": peewee_database(request, kind.removeprefix("peewee_"), tmp_path)}
    if kind == "datastore":
        emulator = request.getfixturevalue("datastore_emulator")
        request.getfixturevalue("monkeypatch").setenv(
            "DATASTORE_EMULATOR_HOST", emulator.host_port
        )
        return {"session_type": "datastore", "project": emulator.project,
                "key_prefix": prefix}
    if kind == "dynamodb":
        server = request.getfixturevalue("dynamodb_server")
        return {"session_type": "dynamodb", "table": f"s{uuid.uuid4().hex[:8]}",
                "key_prefix": prefix, **server.credentials}
    if kind == "elasticsearch":
        server = request.getfixturevalue("opensearch_server")
        return {"session_type": "elasticsearch", "url": server.url,
                "index": f"s{uuid.uuid4().hex[:8]}", "key_prefix": prefix}
    if kind == "cachelib":
        from cachelib import FileSystemCache

        return {"session_type": "cachelib", "key_prefix": prefix,
                "client": FileSystemCache(str(tmp_path / "cachelib"), threshold=0)}
    raise AssertionError(kind)


def sql_url(request: pytest.FixtureRequest, dialect: str, tmp_path: Any) -> str:
    """A database URL for one SQL server started by the test run (SQLite: a file)."""
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    if dialect == "postgresql":
        return str(request.getfixturevalue("postgres_server").url)
    if dialect == "mysql":
        return str(request.getfixturevalue("mariadb_server").url)
    raise AssertionError(dialect)


def peewee_database(request: pytest.FixtureRequest, dialect: str, tmp_path: Any) -> Any:
    """A peewee database on the same servers."""
    import peewee
    from playhouse.db_url import connect

    database: peewee.Database = connect(sql_url(request, dialect, tmp_path))
    request.addfinalizer(database.close)
    return database


def unreachable(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The same store pointed at a closed loopback port (None: the store has no server)."""
    kind = entry["session_type"]
    if kind == "redis":
        return {"session_type": "redis", "url": "redis://127.0.0.1:1/0"}
    if kind == "memcache":
        return {"session_type": "memcache", "host": "127.0.0.1", "port": 1}
    if kind == "mongodb":
        return {"session_type": "mongodb", "url": "mongodb://127.0.0.1:1"}
    if kind == "elasticsearch":
        return {"session_type": "elasticsearch", "url": "http://127.0.0.1:1"}
    if kind == "sqlalchemy" and not entry["url"].startswith("sqlite"):
        dialect = entry["url"].split(":", 1)[0]
        return {"session_type": "sqlalchemy", "url": f"{dialect}://u@127.0.0.1:1/db"}
    return None
