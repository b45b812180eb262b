"""App-level fixtures: the framework and store parameters every behaviour test runs under."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apps import driver_factory

STORES = [
    "secure_cookie", "filesystem", "redis", "redis_cluster", "memcache", "mongodb", "firestore",
]


@pytest.fixture(params=["flask", "quart"])
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
    raise AssertionError(kind)


def unreachable(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The same store pointed at a closed loopback port (None: the store has no server)."""
    kind = entry["session_type"]
    if kind == "redis":
        return {"session_type": "redis", "url": "redis://127.0.0.1:1/0"}
    if kind == "memcache":
        return {"session_type": "memcache", "host": "127.0.0.1", "port": 1}
    if kind == "mongodb":
        return {"session_type": "mongodb", "url": "mongodb://127.0.0.1:1"}
    return None
