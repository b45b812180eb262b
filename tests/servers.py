"""Server fixtures: real redis, Redis Cluster, memcached, MongoDB-wire, Firestore, PostgreSQL
and MariaDB servers.

The servers themselves are in serverkit.py, which has no pytest in it so that the benchmarks
use them too; this module adds the fixtures and turns a missing server into a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from serverkit import (
    HOST,
    FirestoreEmulator,
    MariaDBServer,
    MemcachedServer,
    MongoServer,
    PostgresServer,
    RedisCluster,
    RedisServer,
    Restartable,
    Server,
    Unavailable,
    free_port,
    make_firestore,
    make_mariadb,
    make_memcached,
    make_mongo,
    make_postgres,
    make_redis,
    make_redis_cluster,
    serving,
)

# Re-exported: test modules import the server classes and free_port from here.
__all__ = [
    "HOST",
    "FirestoreEmulator",
    "MariaDBServer",
    "MemcachedServer",
    "MongoServer",
    "PostgresServer",
    "RedisCluster",
    "RedisServer",
    "Restartable",
    "Server",
    "free_port",
    "missing",
]

S = TypeVar("S", bound=Restartable)


def missing(what: str, hint: str = "") -> NoReturn:
    """Skip the test for a server that is not installed, but fail under CI (CI=true or 1)."""
    message = str(Unavailable(what, hint))
    if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
        pytest.fail(f"{message}; CI={os.environ['CI']} requires every test server", pytrace=False)
    pytest.skip(message)


def _serve(
    make: Callable[[Path], S], tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[S]:
    try:
        server = make(tmp_path_factory.mktemp(name))
    except Unavailable as exc:
        missing(exc.what, exc.hint)
    with serving(server):
        yield server


# server fixtures


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from _serve(make_redis, tmp_path_factory, "redis")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    yield from _serve(make_redis_cluster, tmp_path_factory, "redis-cluster")


@pytest.fixture(scope="session")
def memcached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemcachedServer]:
    yield from _serve(make_memcached, tmp_path_factory, "memcached")


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    yield from _serve(make_mongo, tmp_path_factory, "mongo")


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirestoreEmulator]:
    yield from _serve(make_firestore, tmp_path_factory, "firestore")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    yield from _serve(make_postgres, tmp_path_factory, "postgres")


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    yield from _serve(make_mariadb, tmp_path_factory, "mariadb")
